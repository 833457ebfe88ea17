"""The fitting step some configs need before their first batch, beside calibration and above the walk (a fit runs
walks, so it cannot live in a method): today PP+'s sensitivity allocation (`ppcore.allocation`, docs/algorithm.md
"PP+"). `build_pruner` is the one way the commands, the app and lm-eval make a Pruner: it fits what the config
needs (once per calibration; then from memory or the disk cache), reporting progress, and builds the Pruner.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable, Optional

import torch

from .adapters import Adapter
from .allocation import (FIT_GRID, fit_key, fit_windows, keep_fit, stored_fit, uniform_pruned)
from .blocks import BLOCKS
from .cache import windows_hash
from .config import PruneConfig
from .methods import Pruner
from .stats import CalibStats
from .walk import walk

Progress = Callable[[float, str], None]


def silent(fraction: float, text: str) -> None:
    """A progress callback that says nothing."""


def printed(every: float = 0.1) -> Progress:
    """A progress callback for the command line: prints its text to stderr at the start, every `every` of the way
    and at the end (a fit reports after each of its ~160 walks)."""
    shown = [-1.0]

    def say(fraction: float, text: str) -> None:
        if fraction == 0.0 or fraction >= 1.0 or fraction - shown[0] >= every:
            shown[0] = fraction
            print(f"{text} ({fraction:.0%})", file=sys.stderr, flush=True)

    return say


def needs_fit(cfg: PruneConfig) -> bool:
    """Whether `cfg` prunes with a fitted allocation (pp-plus with allocation 'sensitivity', the default)."""
    return cfg.prunes and cfg.allocation == "sensitivity"


@torch.inference_mode()
def fit_allocation(adapter: Adapter, cfg: PruneConfig, calib: CalibStats,
                   progress: Progress = silent) -> dict[str, Any]:
    """Each prunable block's KL curve on calibration windows (`ppcore.allocation` module docstring, step 1), or the
    fit already made for `cfg` on `calib` (`stored_fit`).

    Returns {"key", "fitted_on": {calibration key, windows, tokens, windows_sha256_16}, "grid", "curves":
    {"<layer>.<block>": [[units removed...], [KL...]]}}, kept by `keep_fit`. Costs one dense walk and up to
    len(FIT_GRID) walks per prunable block on FIT_WINDOWS windows of FIT_TOKENS tokens (for the default model and
    PP's skipped layers: 163 walks of 4 x 256 tokens, a few minutes on 2 CPU cores); holds the dense
    log-probabilities (windows x tokens x vocabulary fp32, 200 MB for the default model) while it runs.
    `progress(fraction, text)` after every walk. Raises ConfigError when `calib` does not carry its windows.
    """
    fit = stored_fit(cfg, calib)
    if fit is not None:
        return fit
    ids = fit_windows(calib).to(adapter.device)
    dims = adapter.dims

    def log_probs(pruner: Pruner) -> list[torch.Tensor]:
        res = walk(adapter, pruner, ids, level="none", update_history=False, timing=False)
        return [adapter.head(res.hidden[i, :-1]).float().log_softmax(-1) for i in range(ids.shape[0])]

    sub = replace(cfg, allocation="uniform", compensate="off", error_score="off")  # PP's decisions
    plan: list[tuple[int, Any, int, list[int]]] = []
    for layer in range(dims.num_layers):
        if layer in cfg.skip_layers:
            continue
        for block in BLOCKS:
            if not getattr(cfg, block.switch):
                continue
            units = block.units(dims)
            counts = sorted({uniform_pruned(block, g, units, cfg.mlp_multiple) for g in FIT_GRID} - {0})
            plan.append((layer, block, units, [n for n in counts if n < units]))
    total = 1 + sum(len(counts) for *_, counts in plan)
    progress(0.0, f"fitting pp-plus's allocation: {total} walks on {ids.shape[0]} calibration windows")
    ref = log_probs(Pruner(adapter, PruneConfig(method="dense")))
    done = 1
    curves: dict[str, list[list[float]]] = {}
    for layer, block, units, counts in plan:
        kls = []
        for n in counts:
            out = log_probs(Pruner(adapter, sub, calib, kept_units={block.key(layer): units - n}))
            kls.append(sum(float((r.exp() * (r - q)).sum(-1).mean()) for r, q in zip(ref, out)) / len(ref))
            done += 1
            progress(done / total, f"fitting pp-plus's allocation: layer {layer} {block.name}, walk {done} of {total}")
        curves[f"{layer}.{block.name}"] = [counts, kls]
    fit = {"key": fit_key(cfg, calib), "grid": list(FIT_GRID), "curves": curves,
           "fitted_on": {"calibration": calib.meta.get("key"), "windows": int(ids.shape[0]),
                         "tokens": int(ids.shape[1]), "windows_sha256_16": windows_hash(ids.cpu())}}
    keep_fit(fit, calib)
    return fit


def build_pruner(adapter: Adapter, cfg: PruneConfig, calib: Optional[CalibStats] = None, *,
                 progress: Progress = silent, kept_units: Optional[dict[tuple[int, str], int]] = None) -> Pruner:
    """`Pruner(adapter, cfg, calib, kept_units=...)` after the fit `cfg` needs (`needs_fit`; none for every method
    but pp-plus), reported through `progress(fraction, text)`. Raises what `Pruner` and `fit_allocation` raise."""
    cfg.check_layers(adapter.dims.num_layers)  # before minutes of fitting on a skip list the model refuses
    if needs_fit(cfg) and calib is not None and not kept_units:
        fit_allocation(adapter, cfg, calib, progress)
    return Pruner(adapter, cfg, calib, kept_units=kept_units)
