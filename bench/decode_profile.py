"""Where a decode step's time goes, per method: matrix products against everything else (torch profiler).

Usage: python -m bench.decode_profile [--methods dense,pp,wanda-sp] [--ratio 0.4] [--batch-size 4]
                                      [--new-tokens 33] [--repeats 3] [--json PATH]

The prompts and calibration are `ppcore speed --batch-size B --seq-len 64 --generate N`'s (wiki-vital, seed 0,
calibration windows as long as the prompts). For each method, interleaved over the repeats, one generation of
N new tokens runs under the profiler and one of a single new token (the prefill alone); their difference over the
N - 1 decode steps gives, per step: the wall time (ppcore.clock, profiled), the self time of `aten::mm` (every
projection and the LM head), of scaled-dot-product attention, and of every other operator, each the median over
repeats. Profiling adds overhead to the small operators, so read the shares, not the absolute milliseconds;
`ppcore speed --generate` gives the unprofiled tokens/s.

Why it is here: issue 11 asks decoding at 40 % for 1.33x dense tokens/s. The last column, "bound", is dense's
step over this method's if everything but the products vanished (compiled, no Python): the most any overhead
cut could give at this batch with these kernels.
"""
from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ppcore.calibrate import calibrate
from ppcore.config import CalibConfig, PruneConfig
from ppcore.fitting import build_pruner
from ppcore.generate import Generation, generate
from ppcore.loading import load_model
from ppcore.speed import speed_windows

PROMPT_TOKENS = 64
SDPA = "aten::_scaled_dot_product_flash_attention_for_cpu"


def _profiled(run) -> tuple[Generation, dict[str, float]]:
    """Run `run()` under the CPU profiler; its Generation and each operator's self milliseconds."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        g = run()
    return g, {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def _per_step(short: tuple[Generation, dict[str, float]], long: tuple[Generation, dict[str, float]],
              steps: int) -> dict[str, float]:
    """Per decode step (ms): the long run minus the prefill-only run, over `steps`."""
    ops = {k: (v - short[1].get(k, 0.0)) / steps for k, v in long[1].items()}
    mm, sdpa = ops.get("aten::mm", 0.0), ops.get(SDPA, 0.0)
    return {"wall_ms": long[0].decode_s / long[0].decode_steps * 1e3, "mm_ms": mm, "sdpa_ms": sdpa,
            "other_ms": sum(ops.values()) - mm - sdpa}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="dense,pp,wanda-sp")
    ap.add_argument("--ratio", type=float, default=0.4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=33)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    methods = a.methods.split(",")
    if "dense" not in methods:
        methods.insert(0, "dense")
    lm = load_model("default", device="cpu", dtype="float32")
    calib = CalibConfig(seq_len=PROMPT_TOKENS)
    batch, _, cwin, _ = speed_windows(lm, a.batch_size, PROMPT_TOKENS, calib)
    stats = calibrate(lm, cwin, calib.batch_size, progress=False)
    rows = batch.tolist()
    pruners = {m: build_pruner(lm.adapter, PruneConfig(method=m, ratio=0.0 if m == "dense" else a.ratio), stats)
               for m in methods}
    steps = a.new_tokens - 1
    with torch.inference_mode():
        for p in pruners.values():  # warm-up, as `speed` does
            generate(lm.adapter, p, rows, 2, level="none")
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(a.repeats):
            for m, p in pruners.items():
                def gen(n: int, p=p) -> Generation:
                    return generate(lm.adapter, p, rows, n, level="none", update_history=False)
                short = _profiled(lambda: gen(1))
                runs[m].append(_per_step(short, _profiled(lambda: gen(a.new_tokens)), steps))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    d = med["dense"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {a.batch_size}, {PROMPT_TOKENS}-token "
          f"prompts, {steps} decode steps, ratio {a.ratio}, median of {a.repeats}; ms per decode step (profiled)\n")
    print("| method | wall | mm | attention | other | mm / dense mm | wall / dense wall | bound |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in med.items():
        bound = (d["mm_ms"] + d["sdpa_ms"]) / (r["mm_ms"] + r["sdpa_ms"])
        print(f"| {m} | {r['wall_ms']:.1f} | {r['mm_ms']:.1f} | {r['sdpa_ms']:.1f} | {r['other_ms']:.1f} | "
              f"{r['mm_ms'] / d['mm_ms']:.3f} | {r['wall_ms'] / d['wall_ms']:.3f} | {bound:.2f}x |")
    if a.json:
        out: dict[str, Any] = {"date": date.today().isoformat(),
                               "batch": a.batch_size, "prompt_tokens": PROMPT_TOKENS, "decode_steps": steps,
                               "ratio": a.ratio, "repeats": a.repeats, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "median_ms_per_step": med, "runs": runs}
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
