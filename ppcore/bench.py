"""`python -m ppcore bench`: methods x ratios x seeds on one loaded model, interleaved batch by batch.

Every run of a seed advances one batch at a time in turn, so machine noise hits all methods alike.
Each batch is timed `repeats` times (the first run is the scored one; the others recompute the same
decisions without touching the history) and the median is kept.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .config import CALIB_BATCH_SIZE, PruneConfig
from .flops import add_flops, flops_ratios
from .methods import Pruner
from .experiment import EvalSetup, prepare
from .loading import Placement
from .walk import token_nll, walk


OFFICIAL_BATCH_SIZE = 20  # the official run's eval and calibration batch size (reference/official_cpu_run)


@dataclass
class _Run:
    cfg: PruneConfig
    pruner: Pruner
    losses: list[float] = field(default_factory=list)
    secs: list[float] = field(default_factory=list)
    tokens: int = 0
    flops: dict[str, int] = field(default_factory=dict)  # summed by key: dense, pruned, probe, head


def _timed_batch(setup: EvalSetup, run: _Run, ids: torch.Tensor, repeats: int) -> None:
    lm = setup.lm
    cuda = lm.device.type == "cuda"
    times: list[float] = []
    for rep in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = walk(lm.adapter, run.pruner, ids, update_history=rep == 0, level="none", timing=False)
        nll, mask = token_nll(lm.adapter, res.hidden, ids, res.valid)
        loss = float(nll.double().sum() / mask.double().sum())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if rep == 0:
            run.losses.append(loss)
            run.tokens += int(mask.sum())
            add_flops(run.flops, res.flops)
    run.secs.append(statistics.median(times))


def bench_setup(setup: EvalSetup, cfgs: list[PruneConfig], repeats: int = 1, seed: int = 0,
                progress: bool = True) -> list[dict[str, Any]]:
    """Run every config on `setup`'s windows, interleaved batch by batch; one result dict per config."""
    runs = []
    for cfg in cfgs:
        runs.append(_Run(cfg, Pruner(setup.lm.adapter, cfg, setup.calibration() if cfg.needs_calibration else None)))
    bs = setup.batch_size
    warm = setup.windows[:bs]
    for run in runs:  # warm-up: unscored, untimed, no history update
        walk(setup.lm.adapter, run.pruner, warm, update_history=False, level="none", timing=False)
    n_batches = setup.windows.shape[0] // bs
    for b in tqdm(range(n_batches), desc=f"bench seed {seed}", unit="batch", disable=not progress):
        ids = setup.windows[b * bs:(b + 1) * bs]
        for run in runs:
            _timed_batch(setup, run, ids, repeats)
    out = []
    for run in runs:
        out.append({
            "method": run.cfg.method, "ratio": run.cfg.ratio, "seed": seed,
            "ppl": math.exp(sum(run.losses) / len(run.losses)), "tokens": run.tokens,
            "seconds": sum(run.secs), **flops_ratios(run.flops), "flops": dict(run.flops),
            "batch_loss": run.losses, "batch_seconds": run.secs, "repeats": repeats,
            "protocol": dict(setup.protocol, config=run.cfg.to_dict(), interleaved=[c.method for c in cfgs]),
        })
    return out


def configs(methods: list[str], ratios: list[float], flap_bias: str = "official") -> list[PruneConfig]:
    """One config per method and ratio (dense once, at ratio 0)."""
    out = []
    for m in methods:
        for r in [0.0] if m == "dense" else ratios:
            out.append(PruneConfig(method=m, ratio=r, flap_bias=flap_bias))
    return out


def run_bench(methods: list[str], ratios: list[float], seeds: list[int], *, model: str = "default",
              device: str = "auto", dtype: str = "auto", seq_len: int = 512, batch_size: int = 20,
              batches: int = 10, calib_seqs: int = 100, repeats: int = 1, flap_bias: str = "official",
              official_dir: Optional[str] = None, cache_dir: Optional[str] = None,
              progress: bool = True, placement: Optional[Placement] = None,
              calib_batch_size: int = CALIB_BATCH_SIZE) -> dict[str, list[dict[str, Any]]]:
    """The seeded default protocol for every seed, plus the official windows when given.

    The seeded runs calibrate in batches of `calib_batch_size`; the official windows are run as the
    official protocol ran them (eval and calibration batches of 20), whatever the arguments say. Each
    row's protocol records the calibration batch size it used.
    """
    if "dense" not in methods:
        methods = ["dense"] + methods  # every relative number needs the dense run of the same batches
    cfgs = configs(methods, ratios, flap_bias)
    results: dict[str, list[dict[str, Any]]] = {"seeded": [], "official": []}
    for seed in seeds:
        setup = prepare(model=model, device=device, dtype=dtype, seq_len=seq_len, batch_size=batch_size,
                        batches=batches, calib_seqs=calib_seqs, seed=seed, cache_dir=cache_dir, progress=progress,
                        placement=placement, calib_batch_size=calib_batch_size)
        results["seeded"] += bench_setup(setup, cfgs, repeats, seed, progress)
    if official_dir:
        ref = Path(official_dir)
        setup = prepare(model=model, device=device, dtype=dtype, batch_size=OFFICIAL_BATCH_SIZE,
                        windows_file=str(ref / "eval_windows.npy"), calib_windows_file=str(ref / "calib_windows.npy"),
                        cache_dir=cache_dir, progress=progress, placement=placement,
                        calib_batch_size=OFFICIAL_BATCH_SIZE)
        official = json.loads((ref / "results.json").read_text())["results"]
        for row in bench_setup(setup, cfgs, 1, 0, progress):
            off = next((o for o in official if o["method"] == row["method"]
                        and abs(o["ratio"] - row["ratio"]) < 1e-9), None)
            row["official_ppl"] = off["ppl"] if off else None
            results["official"].append(row)
    return results
