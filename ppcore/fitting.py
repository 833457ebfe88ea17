"""The fitting step some configs need before their first batch, beside calibration and above the walk (a fit runs
walks, so it cannot live in a method): today PP+'s allocations, 'sensitivity' and 'local' (`ppcore.allocation`),
and its recovery's covariances (`ppcore.recovery`), docs/algorithm.md §10. `build_pruner` is the one way the
commands, the app and lm-eval make a Pruner: it fits what the config needs (once per calibration; then from
memory or the disk cache), reporting progress, and builds the Pruner.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, Callable, Optional

import torch

from .adapters import Adapter, LayerWeights
from .allocation import (FIT_GRID, LOCAL_MLP_STEP, LOCAL_ROUNDS, Key, exchange, fit_key, fit_windows, keep_fit,
                         saved_flops, stored_fit, uniform_pruned)
from .blocks import BLOCKS, BlockLike, as_block
from .cache import windows_hash
from .config import PruneConfig
from .errors import ConfigError
from .methods import Decision, Pruner
from .ratios import adjusted_ratio
from .recovery import BlockCov, Fit, core_ranking, core_size, keep_recovery, recover_key, stored_recovery
from .stats import CalibStats
from .walk import walk
from .walk_context import WalkCtx

Progress = Callable[[float, str], None]


def silent(fraction: float, text: str) -> None:
    """A progress callback that says nothing."""


def printed(every: float = 0.1) -> Progress:
    """A progress callback for the command line: prints its text to stderr at the start, every `every` of the way
    and at the end (a fit reports after each of its hundreds of walks)."""
    shown = [-1.0]

    def say(fraction: float, text: str) -> None:
        if fraction == 0.0 or fraction >= 1.0 or fraction - shown[0] >= every:
            shown[0] = fraction
            print(f"{text} ({fraction:.0%})", file=sys.stderr, flush=True)

    return say


def needs_fit(cfg: PruneConfig) -> bool:
    """Whether `cfg` prunes with something fitted on calibration windows: pp-plus with a fitted allocation
    ('sensitivity', its default, or 'local') or with `recover` (its default)."""
    return cfg.prunes and (cfg.allocation in ("sensitivity", "local") or cfg.recover == "on")


def fits_missing(cfg: PruneConfig, calib: CalibStats, allocation: bool = True) -> bool:
    """Whether `fit_for` would compute a fit (one neither in memory nor in the disk cache): minutes of work that a
    progress bar should give most of its length to."""
    if not needs_fit(cfg):
        return False
    if cfg.recover == "on" and stored_recovery(cfg, calib) is None:
        return True
    return allocation and cfg.allocation in ("sensitivity", "local") and stored_fit(cfg, calib) is None


def fit_for(adapter: Adapter, cfg: PruneConfig, calib: CalibStats, progress: Progress = silent,
            allocation: bool = True) -> None:
    """Every fit `cfg` needs (`needs_fit`), each from the cache when it was made before: recovery's covariances
    first (a 'local' allocation is walked with recovery on), then the allocation unless `allocation` is False
    (explicit keep counts). `progress(fraction, text)` over both: recovery's pass takes the first fifth when an
    allocation follows. Raises what `fit_recovery` and `fit_allocation` raise."""
    if not cfg.prunes:
        return
    alloc = allocation and cfg.allocation in ("sensitivity", "local")
    split = 0.2 if alloc else 1.0
    if cfg.recover == "on":
        fit_recovery(adapter, cfg, calib, lambda f, text: progress(split * f, text))
    if alloc:
        start = split if cfg.recover == "on" else 0.0
        fit_allocation(adapter, cfg, calib, lambda f, text: progress(start + (1 - start) * f, text))


def _kl_to_dense(adapter: Adapter, ids: torch.Tensor) -> Callable[[Pruner], float]:
    """A function from a Pruner to the mean per-token KL divergence of its next-token distributions from dense's
    on `ids` (the fits' measure), with dense's log-probabilities computed once here."""
    def log_probs(pruner: Pruner) -> list[torch.Tensor]:
        res = walk(adapter, pruner, ids, level="none", update_history=False, timing=False)
        return [adapter.head(res.hidden[i, :-1]).float().log_softmax(-1) for i in range(ids.shape[0])]

    ref = log_probs(Pruner(adapter, PruneConfig(method="dense")))

    def kl(pruner: Pruner) -> float:
        out = log_probs(pruner)
        return sum(float((r.exp() * (r - q)).sum(-1).mean()) for r, q in zip(ref, out)) / len(ref)

    return kl


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
    if cfg.allocation == "local":
        return fit_local(adapter, cfg, calib, progress)
    ids = fit_windows(calib).to(adapter.device)
    dims = adapter.dims
    # PP's decisions; with recovery when the run recovers (it changes what pruning a block costs; `fit_key` has it)
    sub = replace(cfg, allocation="uniform", compensate="off", error_score="off")
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
    kl = _kl_to_dense(adapter, ids)
    done = 1
    curves: dict[str, list[list[float]]] = {}
    for layer, block, units, counts in plan:
        kls = []
        for n in counts:
            kls.append(kl(Pruner(adapter, sub, calib, kept_units={block.key(layer): units - n})))
            done += 1
            progress(done / total, f"fitting pp-plus's allocation: layer {layer} {block.name}, walk {done} of {total}")
        curves[f"{layer}.{block.name}"] = [counts, kls]
    fit = {"key": fit_key(cfg, calib), "grid": list(FIT_GRID), "curves": curves,
           "fitted_on": {"calibration": calib.meta.get("key"), "windows": int(ids.shape[0]),
                         "tokens": int(ids.shape[1]), "windows_sha256_16": windows_hash(ids.cpu())}}
    keep_fit(fit, calib)
    return fit


@torch.inference_mode()
def fit_local(adapter: Adapter, cfg: PruneConfig, calib: CalibStats, progress: Progress = silent) -> dict[str, Any]:
    """The 'local' allocation (docs/algorithm.md "PP+"): exchanges from PP's own allocation, measured where the run
    operates.

    Start from the units PP removes from each prunable block at the run's ratio. Each of LOCAL_ROUNDS rounds walks
    the fit windows with every block at its current count (KL k0, as `fit_allocation` measures it) and, for every
    block, once with one more step removed and once with one step restored (a step: one head; LOCAL_MLP_STEP
    multiples of mlp_multiple channels), each walk with the run's own switches (compensation, error score), every
    other block pruned. Then, best first, a block whose restored step buys the most KL per decoder FLOP is restored
    and the blocks whose next step costs the least KL per FLOP pay for it, while the KL the restore saves exceeds
    what its payers add; each block moves at most one step per round, and the FLOPs saved never fall below PP's.

    Returns {"key", "fitted_on", "rounds": [{"kl", "moves"}...] plus the final {"kl"}, "kept": {"<layer>.<block>":
    units}, "flops_saved_per_token", "pp_flops_saved_per_token"}, kept by `keep_fit`. Costs
    LOCAL_ROUNDS x (1 + 2 x prunable blocks) + 2 walks of the fit windows (for the default model, 438 walks of
    4 x 256 tokens, about 20 minutes on 2 CPU cores), once per calibration and config. Raises ConfigError when
    `calib` does not carry its windows.
    """
    ids = fit_windows(calib).to(adapter.device)
    dims = adapter.dims
    seq_len = calib.seq_len
    r_eff = {b.name: adjusted_ratio(cfg.block_ratio(b.name), dims.num_layers, len(cfg.skip_layers)) for b in BLOCKS}
    blocks = {b.key(layer): b for layer in range(dims.num_layers) if layer not in cfg.skip_layers
              for b in BLOCKS if getattr(cfg, b.switch)}
    units = {k: b.units(dims) for k, b in blocks.items()}
    step = {k: 1 if b is BLOCKS[0] else LOCAL_MLP_STEP * cfg.mlp_multiple for k, b in blocks.items()}
    most = {k: units[k] - (1 if b is BLOCKS[0] else cfg.mlp_multiple) for k, b in blocks.items()}  # keep one unit
    removed = {k: uniform_pruned(b, r_eff[b.name], units[k], cfg.mlp_multiple) for k, b in blocks.items()}

    def saved(k: Key, n: int) -> float:
        return float(saved_flops(adapter, blocks[k], n, seq_len))

    target = sum(saved(k, n) for k, n in removed.items())
    sub = replace(cfg, allocation="uniform")  # the run's own decisions and switches, at explicit counts

    def pruner(counts: dict[Key, int]) -> Pruner:
        return Pruner(adapter, sub, calib, kept_units={k: units[k] - n for k, n in counts.items()})

    total = LOCAL_ROUNDS * (1 + 2 * len(blocks)) + 2
    progress(0.0, f"fitting pp-plus's local allocation: {total} walks on {ids.shape[0]} calibration windows")
    kl = _kl_to_dense(adapter, ids)
    done = 1
    rounds: list[dict[str, Any]] = []
    for rnd in range(LOCAL_ROUNDS):
        k0 = kl(pruner(removed))
        done += 1
        more: dict[Key, tuple[float, float]] = {}  # block -> (KL added, FLOPs saved) by one more step removed
        less: dict[Key, tuple[float, float]] = {}  # block -> (KL saved, FLOPs given up) by one step restored
        for k in blocks:
            for sign, out in ((1, more), (-1, less)):
                n = removed[k] + sign * step[k]
                if 0 <= n <= most[k]:
                    d_kl = kl(pruner({**removed, k: n})) - k0
                    out[k] = (sign * d_kl, sign * (saved(k, n) - saved(k, removed[k])))
                done += 1
                progress(done / total, f"fitting pp-plus's local allocation: round {rnd + 1}, layer {k[0]} {k[1]}, "
                                       f"walk {done} of {total}")
        surplus = sum(saved(k, n) for k, n in removed.items()) - target
        removed, moves = exchange(removed, step, more, less, surplus)
        rounds.append({"kl": k0, "moves": moves})
    rounds.append({"kl": kl(pruner(removed))})
    progress(1.0, "fitting pp-plus's local allocation: done")
    got = sum(saved(k, n) for k, n in removed.items())
    fit = {"key": fit_key(cfg, calib), "rounds": rounds,
           "kept": {f"{k[0]}.{k[1]}": units[k] - n for k, n in sorted(removed.items())},
           "flops_saved_per_token": got / seq_len, "pp_flops_saved_per_token": target / seq_len,
           "fitted_on": {"calibration": calib.meta.get("key"), "windows": int(ids.shape[0]),
                         "tokens": int(ids.shape[1]), "windows_sha256_16": windows_hash(ids.cpu())}}
    keep_fit(fit, calib)
    return fit


class _CovObserver(Pruner):
    """A dense pruner that ranks each MLP's core on its first batch (from the calibration energies and the
    weights the walk hands it) and adds every block's (B, L, C) final-projection input, all positions but the
    first, to running sums for `fit_recovery`."""

    def __init__(self, adapter: Adapter, cfg: PruneConfig, calib: CalibStats) -> None:
        super().__init__(adapter, PruneConfig(method="dense"))
        self.energy = {k: st.sq.sum(0) for k, st in calib.blocks.items()}
        self.m = core_size(adapter.dims.intermediate, cfg.mlp_multiple)
        self.cols: dict[tuple[int, str], torch.Tensor] = {}
        self.sums: dict[tuple[int, str], list] = {}

    def decide(self, ctx: WalkCtx, layer: int, block: BlockLike, w: LayerWeights, resid: torch.Tensor,
               x: torch.Tensor) -> Decision:
        block = as_block(block)
        key = block.key(layer)
        if key not in self.cols:
            if block is BLOCKS[0]:  # attention: any kept channel may be a regressor
                self.cols[key] = torch.arange(block.channels(self.dims), device=x.device)
            else:
                self.cols[key] = core_ranking(self.energy[key].to(x.device), block.final_weight(w))[:self.m]
        return super().decide(ctx, layer, block, w, resid, x)

    def observe(self, ctx: WalkCtx, layer: int, block: BlockLike, z: torch.Tensor, d: Decision) -> None:
        key = as_block(block).key(layer)
        rest = z[:, 1:].float()
        if ctx.valid is not None:
            rest = rest * ctx.valid[:, 1:, None].to(rest.dtype)
            n = ctx.valid[:, 1:].sum()
        else:
            n = torch.tensor(float(rest.shape[0] * rest.shape[1]), device=z.device)
        flat = rest.reshape(-1, rest.shape[-1])
        cross = flat.T @ flat.index_select(1, self.cols[key])  # (C, r0)
        total = flat.sum(0)
        if key in self.sums:
            acc = self.sums[key]
            acc[0] += cross
            acc[1] += total
            acc[2] += n
        else:
            self.sums[key] = [cross, total, n]

    def result(self) -> Fit:
        out: Fit = {}
        for key, (cross, total, n) in self.sums.items():
            n = n.clamp_min(1.0)  # one-token windows leave no position: then no covariance, and recovery adds nothing
            mean = total / n
            cols = self.cols[key]
            out[key] = BlockCov(cols.cpu(), (cross / n - torch.outer(mean, mean.index_select(0, cols))).cpu(),
                                mean.cpu())
        return out


@torch.inference_mode()
def fit_recovery(adapter: Adapter, cfg: PruneConfig, calib: CalibStats, progress: Progress = silent) -> Fit:
    """The covariances PP+'s recovery regresses with (`ppcore.recovery`, docs/algorithm.md §10.5), or the fit already
    made for this calibration (`stored_recovery`).

    One dense pass over every calibration window (in the calibration's batches): for each layer's attention, the
    covariance of its o_proj input channels (C x C); for each MLP, the covariance of every down_proj input channel
    with its core (C x r0, the core ranked by `core_ranking` on the calibration energies); and the means. Every
    position but the first of each window counts. For the default model: 87 MB in memory and on disk, about the time
    of the calibration pass itself. Raises ConfigError when `calib` does not carry its windows.
    """
    key = recover_key(cfg, calib)
    fit = stored_recovery(cfg, calib)
    if fit is not None:
        return fit
    if calib.source is None:
        raise ConfigError("pp-plus's recovery is fitted on the calibration windows, and these calibration statistics "
                          "do not carry them: compute them with ppcore.calibrate.calibrate")
    windows = calib.source.windows
    bs = max(1, calib.batch_size)
    obs = _CovObserver(adapter, cfg, calib)
    starts = list(range(0, windows.shape[0], bs))
    progress(0.0, f"fitting pp-plus's recovery: {len(starts)} dense batches of calibration windows")
    for i, s in enumerate(starts):
        walk(adapter, obs, windows[s:s + bs].to(adapter.device), level="none", update_history=False, timing=False)
        progress((i + 1) / len(starts), f"fitting pp-plus's recovery: batch {i + 1} of {len(starts)}")
    fit = obs.result()
    keep_recovery(key, fit, calib)
    return fit


def build_pruner(adapter: Adapter, cfg: PruneConfig, calib: Optional[CalibStats] = None, *,
                 progress: Progress = silent, kept_units: Optional[dict[tuple[int, str], int]] = None) -> Pruner:
    """`Pruner(adapter, cfg, calib, kept_units=...)` after the fits `cfg` needs (`fit_for`; none for every method
    but pp-plus), reported through `progress(fraction, text)`. Raises what `Pruner` and `fit_for` raise."""
    cfg.check_layers(adapter.dims.num_layers)  # before minutes of fitting on a skip list the model refuses
    if needs_fit(cfg) and calib is not None:
        fit_for(adapter, cfg, calib, progress, allocation=not kept_units)
    return Pruner(adapter, cfg, calib, kept_units=kept_units)
