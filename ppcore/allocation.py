"""PP+'s allocation (docs/algorithm.md "PP+"): how many heads and MLP channels each pruned block keeps, chosen
offline on calibration windows under the decoder FLOPs PP spends at the same nominal ratio.

1. Sensitivity (`ppcore.fitting.fit_allocation`, a step above the walk, since it runs walks): on the first
   FIT_WINDOWS calibration windows, cut to FIT_TOKENS tokens, every prunable block is pruned alone, by PP's own
   decisions (pp-plus with every switch off, the run's probe and history settings), at the fractions FIT_GRID of
   its units, and the mean per-token KL divergence of the model's next-token distribution from the dense one is
   measured. One fit serves every combination of the other switches
   (so that the allocation's effect is measured apart from theirs). Nothing else is fitted, and no evaluation text
   is read.
2. Allocation (`allocate`): the blocks' KL curves (linear between the measured points, 0 at 0, made non-decreasing)
   are treated as additive; starting from nothing pruned, the step (one block, to any larger count it allows) with
   the least KL added per decoder FLOP saved is taken until the FLOPs saved reach PP's. A block loses at most the
   larger of the largest measured fraction and what PP removes from it (beyond the last measured point the curve
   goes on along its last slope), so PP's own allocation is always within reach.

The fit is cached in memory on the calibration statistics (`CalibStats.fits`) and on disk beside the calibration
cache (``alloc/<key>.json``; `stored_fit`, `keep_fit`), keyed by the calibration's key, this module's version and
every setting the decisions depend on. FLOPs use the calibration windows' length (the official protocol scores
windows as long).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from .blocks import BLOCKS, Block
from .cache import cache_root
from .errors import ConfigError
from .flops import attn_flops, mlp_flops
from .ratios import heads_pruned, mlp_kept_for_ratio

if TYPE_CHECKING:
    from .adapters import Adapter
    from .config import PruneConfig
    from .stats import CalibStats

ALLOC_VERSION = 1  # bump when the fit or its cached format changes
FIT_GRID: tuple[float, ...] = (0.25, 0.5, 0.75)
FIT_WINDOWS = 4
FIT_TOKENS = 256
LOCAL_ROUNDS = 4  # 'local': rounds of exchanges, each block moving at most one step per round
LOCAL_MLP_STEP = 3  # 'local': an MLP step is this many multiples of mlp_multiple (192 channels by default)
Key = tuple[int, str]


# --- FLOPs and PP's budget -------------------------------------------------------------------------------------
def saved_flops(adapter: "Adapter", block: Block, pruned: int, seq_len: int) -> int:
    """Decoder FLOPs one sample of `seq_len` tokens saves when the block loses `pruned` units (query heads, their
    keys and values kept; or MLP channels): `ppcore.flops`'s count, dense minus pruned."""
    dims = adapter.dims
    if block is BLOCKS[0]:
        full = attn_flops(1, seq_len, dims, dims.num_heads, dims.num_kv_heads)
        return full - attn_flops(1, seq_len, dims, dims.num_heads - pruned, dims.num_kv_heads)
    full = mlp_flops(1, seq_len, dims, dims.intermediate, adapter.gated_mlp)
    return full - mlp_flops(1, seq_len, dims, dims.intermediate - pruned, adapter.gated_mlp)


def uniform_pruned(block: Block, ratio: float, units: int, multiple: int) -> int:
    """Units PP removes from a pruned block at per-layer ratio `ratio` (docs/algorithm.md §4.2)."""
    if block is BLOCKS[0]:
        return heads_pruned(ratio, units)
    return units - mlp_kept_for_ratio(ratio, units, multiple)


def options(block: Block, units: int, multiple: int, most: int) -> list[int]:
    """The unit counts a block may lose, ascending from 0 to `most`: any number of heads; MLP channels such that
    the kept count is a multiple of `multiple` (as PP's rounding keeps it)."""
    if block is BLOCKS[0]:
        return list(range(most + 1))
    kept = sorted({units} | {k for k in range(multiple, units, multiple)}, reverse=True)
    return [units - k for k in kept if units - k <= most]


# --- the allocation ------------------------------------------------------------------------------------------
def curve(counts: list[int], kl: list[float], at: list[int]) -> list[float]:
    """The KL at unit counts `at`: linear between (0, 0) and the measured (counts, kl), made non-decreasing, and
    beyond the last measured count along the last segment's slope."""
    xs = np.asarray([0, *counts], dtype=np.float64)
    ys = np.maximum.accumulate(np.maximum(np.asarray([0.0, *kl], dtype=np.float64), 0.0))
    x = np.asarray(at, dtype=np.float64)
    out = np.interp(x, xs, ys)
    if len(xs) > 1:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        out = np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), out)
    return [float(v) for v in out]


def allocate(costs: dict[Key, list[tuple[int, float, float]]], target: float) -> dict[Key, int]:
    """Units removed per block: greedy on the least cost per FLOP saved until `target` FLOPs are saved.

    `costs[key]` lists the block's options (units removed, cost, FLOPs saved), ascending, the first (0, 0, 0). Each
    step moves one block from its current option to any larger one, the move with the lowest added cost per added
    FLOP saved (ties: the first block in `costs` order, then the smaller move). Raises ValueError when every block at
    its largest option saves less than `target`.
    """
    at = {k: 0 for k in costs}
    saved = 0.0
    while saved < target:
        best = None
        for k, opts in costs.items():
            i = at[k]
            for j in range(i + 1, len(opts)):
                d_saved = opts[j][2] - opts[i][2]
                if d_saved <= 0:
                    continue
                rate = (opts[j][1] - opts[i][1]) / d_saved
                if best is None or rate < best[0]:
                    best = (rate, k, j, d_saved)
        if best is None:
            raise ValueError(f"the blocks can save at most {saved:.4g} FLOPs, less than the {target:.4g} asked")
        _, k, j, d_saved = best
        at[k] = j
        saved += d_saved
    return {k: costs[k][i][0] for k, i in at.items()}


def exchange(removed: dict[Key, int], step: dict[Key, int], more: dict[Key, tuple[float, float]],
             less: dict[Key, tuple[float, float]], surplus: float) -> tuple[dict[Key, int], int]:
    """One round of the 'local' allocation's exchanges (`ppcore.fitting.fit_local`): the new units removed per block
    and the number of blocks moved.

    `removed`: units removed per block now; `step`: a block's step; `more[k]` = (KL added, FLOPs saved) by removing
    one more step of k, `less[k]` = (KL saved, FLOPs given up) by restoring one (blocks that cannot move that way
    are absent); `surplus`: FLOPs saved beyond the budget now (>= 0). Restores are taken by KL saved per FLOP, best
    first; each is paid for by the blocks with the least KL added per FLOP saved, in that order, until the FLOPs
    saved are back at or above the budget; the exchange is made only if the restore saves more KL than its payers
    add, and the first that is not ends the round. Each block moves at most once. Pure: `removed` is not changed.
    """
    out = dict(removed)
    restore = sorted(less, key=lambda k: less[k][0] / less[k][1], reverse=True)
    payers = sorted(more, key=lambda k: more[k][0] / more[k][1])
    moved: set[Key] = set()
    for r in restore:
        if r in moved:
            continue
        gain, given = less[r]
        paid, cost, chosen = surplus - given, 0.0, []
        for p in payers:
            if paid >= 0:
                break
            if p in moved or p == r:
                continue
            chosen.append(p)
            cost += more[p][0]
            paid += more[p][1]
        if paid < 0 or cost >= gain:
            break
        out[r] -= step[r]
        for p in chosen:
            out[p] += step[p]
        moved.update([r, *chosen])
        surplus = paid
    return out, len(moved)


# --- the sensitivity fit -------------------------------------------------------------------------------------
def fit_key(cfg: "PruneConfig", calib: "CalibStats") -> str:
    """Key (20 hex digits) of an allocation fit: the calibration's key, ALLOC_VERSION, the fit's sizes and grid, and
    every setting the fit depends on. A 'sensitivity' fit prunes one block at a time by PP's decisions, so neither
    the ratio (it only sets the budget) nor PP+'s switches enter, but for `recover`, which the fit keeps; a 'local'
    fit is made at the run's ratio with its switches, so every setting enters."""
    d = cfg.to_dict()
    drop = ("ratio", "attn_ratio", "mlp_ratio", "allocation", "compensate", "error_score")
    for name in drop if cfg.allocation != "local" else ():
        d.pop(name, None)
    local = [str(LOCAL_ROUNDS), str(LOCAL_MLP_STEP)] if cfg.allocation == "local" else []
    parts = [str(calib.meta.get("key")), str(ALLOC_VERSION), str(FIT_GRID), str(FIT_WINDOWS), str(FIT_TOKENS),
             *local, json.dumps(d, sort_keys=True)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def fit_windows(calib: "CalibStats") -> torch.Tensor:
    """The windows the fit runs on: the first FIT_WINDOWS calibration windows, their first FIT_TOKENS tokens.
    Raises ConfigError for statistics that do not say which windows they came from."""
    if calib.source is None:
        raise ConfigError("pp-plus's allocation is fitted on the calibration windows, and these calibration "
                          "statistics do not carry them: compute them with ppcore.calibrate.calibrate")
    return calib.source.windows[:FIT_WINDOWS, :FIT_TOKENS]


def stored_fit(cfg: "PruneConfig", calib: "CalibStats") -> Optional[dict[str, Any]]:
    """The allocation fit ('sensitivity' or 'local') for `cfg` on `calib` (`fit_key`) if one was made: from memory
    (`calib.fits`), else from the disk cache beside the calibration's (kept in memory then); None when there is
    none. A damaged disk entry reads as none (it is fitted again)."""
    key = fit_key(cfg, calib)

    def read(path: Path) -> Optional[dict[str, Any]]:
        fit = json.loads(path.read_text())
        return fit if isinstance(fit, dict) and fit.get("key") == key else None

    return calib.stored_fit(key, fit_path, read)


def keep_fit(fit: dict[str, Any], calib: "CalibStats") -> None:
    """Keep a new fit in memory and, when the calibration is cached on disk, beside it (`CalibStats.keep_fit`)."""
    calib.keep_fit(fit["key"], fit, fit_path, lambda f, path: path.write_text(json.dumps(f)))


NOT_FITTED = ("pp-plus's allocation 'sensitivity' is fitted on the calibration windows before the first batch, and "
              "these calibration statistics hold no fit for this config: build the pruner with "
              "ppcore.build_pruner(adapter, cfg, calib) (it fits once, then reads the cache), or set "
              "allocation='uniform'")


def sensitivity_allocation(adapter: "Adapter", cfg: "PruneConfig", calib: "CalibStats", r_eff: dict[str, float],
                           seq_len: int) -> tuple[dict[Key, int], dict[str, Any]]:
    """Units kept per pruned block under PP's decoder FLOPs at per-layer ratios `r_eff` ({block name: ratio}), from
    the sensitivity fit (`ppcore.fitting.fit_allocation`, read back by `stored_fit`), and what the run records about
    it: the fit's key and windows, the FLOPs saved against PP's, the predicted KL and the units kept per block.
    Raises ConfigError (NOT_FITTED) when no fit for `cfg` was made on `calib`."""
    dims = adapter.dims
    fit = stored_fit(cfg, calib)
    if fit is None:
        raise ConfigError(NOT_FITTED)
    costs: dict[Key, list[tuple[int, float, float]]] = {}
    target = 0.0
    for name, (counts, kls) in fit["curves"].items():
        layer_s, block_name = name.split(".")
        block = next(b for b in BLOCKS if b.name == block_name)
        if not block.enabled(cfg):
            continue
        units = block.units(dims)
        pp = uniform_pruned(block, r_eff[block_name], units, cfg.mlp_multiple)
        opts = options(block, units, cfg.mlp_multiple, max([pp, *counts]))
        kl = curve(counts, kls, opts) if counts else [0.0 if n == 0 else float("inf") for n in opts]
        costs[(int(layer_s), block_name)] = [(n, c, float(saved_flops(adapter, block, n, seq_len)))
                                             for n, c in zip(opts, kl)]
        target += saved_flops(adapter, block, pp, seq_len)
    pruned = allocate(costs, target)
    got = sum(dict((o[0], o[2]) for o in costs[k])[n] for k, n in pruned.items())
    predicted = sum(dict((o[0], o[1]) for o in costs[k])[n] for k, n in pruned.items())
    kept = {k: next(b for b in BLOCKS if b.name == k[1]).units(dims) - n for k, n in pruned.items()}
    record = {"allocation": "sensitivity", "fit_key": fit["key"], "fitted_on": fit["fitted_on"], "grid": fit["grid"],
              "flops_saved_per_token": got / seq_len, "pp_flops_saved_per_token": target / seq_len,
              "predicted_kl": float(predicted), "kept": {f"{k[0]}.{k[1]}": v for k, v in sorted(kept.items())}}
    return kept, record


def local_allocation(cfg: "PruneConfig", calib: "CalibStats") -> tuple[dict[Key, int], dict[str, Any]]:
    """Units kept per pruned block from the 'local' fit for `cfg` on `calib` (`ppcore.fitting.fit_local`), and what
    the run records about it (the fit's key, windows, rounds with their KL, FLOPs saved against PP's, units kept).
    Raises ConfigError (NOT_FITTED) when no such fit was made."""
    fit = stored_fit(cfg, calib)
    if fit is None:
        raise ConfigError(NOT_FITTED.replace("'sensitivity'", "'local'"))
    kept = {(int(k.split(".")[0]), k.split(".")[1]): int(v) for k, v in fit["kept"].items()}
    record = {"allocation": "local", "fit_key": fit["key"], "fitted_on": fit["fitted_on"], "rounds": fit["rounds"],
              "flops_saved_per_token": fit["flops_saved_per_token"],
              "pp_flops_saved_per_token": fit["pp_flops_saved_per_token"], "kept": fit["kept"]}
    return kept, record


def fit_path(key: str, cache_dir: str | Path | None = None) -> Path:
    """Where a sensitivity fit with `key` is cached on disk."""
    return cache_root(cache_dir) / "alloc" / f"{key}.json"
