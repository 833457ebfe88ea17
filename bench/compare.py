"""Methods x ratios on one loaded model and one calibration, printed as a Markdown table.

Default protocol (DESIGN.md: wiki-vital, seq 512, batch 20, 10 scored batches, calibration 100):
    python bench/compare.py --methods dense,pp,wanda-sp,flap --ratios 0.4 --out bench/results/default.json
The official run's own windows, with the official figures beside ours:
    python bench/compare.py --official ../shared/reference/official_cpu_run --out bench/results/official.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppcore import PruneConfig  # noqa: E402
from ppcore.config import CALIB_BATCH_SIZE  # noqa: E402
from ppcore.experiment import prepare  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", default=None, help="folder with eval_windows.npy, calib_windows.npy, results.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", default="dense,pp,fullbatch,wanda-sp,flap")
    ap.add_argument("--ratios", default="0.2,0.4")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--calib-seqs", type=int, default=100)
    ap.add_argument("--calib-batch-size", type=int, default=CALIB_BATCH_SIZE,
                    help=f"windows per calibration batch (default {CALIB_BATCH_SIZE}, the official protocol's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--flap-bias", default="official")
    a = ap.parse_args()
    official: list[dict] = []
    kw: dict = {}
    if a.official:
        ref = Path(a.official)
        official = json.loads((ref / "results.json").read_text())["results"]
        kw = {"windows_file": str(ref / "eval_windows.npy"), "calib_windows_file": str(ref / "calib_windows.npy")}
    setup = prepare(seq_len=a.seq_len, batch_size=a.batch_size, batches=a.batches, calib_seqs=a.calib_seqs,
                    seed=a.seed, device=a.device, dtype=a.dtype, calib_batch_size=a.calib_batch_size, **kw)
    rows = []
    for method in a.methods.split(","):
        for ratio in [0.0] if method == "dense" else [float(r) for r in a.ratios.split(",")]:
            res = setup.run(PruneConfig(method=method, ratio=ratio, flap_bias=a.flap_bias))
            row = res.summary()
            off = next((o for o in official if o["method"] == method and abs(o["ratio"] - ratio) < 1e-9), None)
            row["official_ppl"] = off["ppl"] if off else None
            row["official_batch_loss"] = off["batch_loss"] if off else None
            rows.append(row)
            print(res.line() + (f" official={off['ppl']}" if off else ""), file=sys.stderr, flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(rows, indent=1))
    print(table(rows, with_official=bool(official)))
    return 0


def _ratio(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(rows: list[dict], with_official: bool) -> str:
    """Markdown: our runs (with the official figures beside them when given). FLOPs are shown over the whole
    model (LM head included) and over the decoder layers only (the paper's definition)."""
    dense = next((r for r in rows if r["method"] == "dense"), None)
    head = ("| method | ratio | ppl | FLOPs ratio (model) | FLOPs ratio (decoder) | probe FLOPs (model) | "
            "probe FLOPs (decoder) | seconds | time vs dense |")
    if with_official:
        head = "| method | ratio | ppl | official ppl | diff | our batch losses | official batch losses |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if with_official:
            off = r["official_ppl"]
            diff = f"{100 * (r['ppl'] / off - 1):+.2f} %" if off else "-"
            ours = ", ".join(f"{x:.4f}" for x in r["batch_loss"])
            theirs = ", ".join(f"{x:.4f}" for x in r["official_batch_loss"]) if off else "-"
            lines.append(f"| {r['method']} | {r['ratio']:.0%} | {r['ppl']:.2f} | {off or '-'} | {diff} | {ours} | {theirs} |")
        else:
            rel = f"{r['seconds'] / dense['seconds']:.3f}" if dense else "-"
            lines.append(f"| {r['method']} | {r['ratio']:.0%} | {r['ppl']:.2f} | {r['flops_ratio']:.3f} | "
                         f"{_ratio(r.get('decoder_flops_ratio'), '.3f')} | {r['probe_flops_ratio']:.2%} | "
                         f"{_ratio(r.get('decoder_probe_flops_ratio'), '.2%')} | {r['seconds']:.1f} | {rel} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
