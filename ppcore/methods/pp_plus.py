"""`pp-plus` (PP+): Probe Pruning with three switches of ours (docs/algorithm.md "PP+"), each off giving PP exactly.

- `compensate`: the block's output gains W[:, P] @ mu_P, the pruned channels' mean contribution; mu is a running
  mean per channel over every position but the first, seeded from calibration (`BlockStats.mean_rest`) and moved
  by the same EMA as PP's history on the channels each batch kept.
- `error_score`: units are ranked by the output error their removal adds, the fused energy (with `compensate`,
  the energy left around the mean) times the squared weight-column norm, summed within a head.
- `allocation` 'sensitivity': each block's keep count from `ppcore.allocation`, fitted on calibration windows
  under PP's decoder FLOPs (`ppcore.fitting`, before the Pruner is built); blocks it leaves whole are not probed.
  'local': the keep counts of exchanges from PP's allocation measured at the run's operating point (`ppcore.fitting`).
- `recover`: the pruned channels' contribution is replaced by its least-squares estimate from kept channels, on
  covariances fitted once on calibration windows (`ppcore.recovery`, `ppcore.fitting.fit_recovery`): every kept
  channel regresses for attention; for the MLP a fixed core of channels, always kept, does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from ..adapters import LayerWeights
from ..allocation import local_allocation, saved_flops, sensitivity_allocation
from ..blocks import BLOCKS, Block
from ..compensation import batch_mean_rest, bias_flops, centred_energy, column_sq, compensation_bias, error_scores
from ..errors import ConfigError
from ..recovery import MAX_COST_SHARE, BlockCov, recovery_fit, recovery_flops, recovery_record, recovery_terms
from ..slices import Buffers
from ..walk_context import WalkCtx
from .base import Decision
from .probe import PP, Probe

if TYPE_CHECKING:
    from ..config import PruneConfig
    from .pruner import Pruner


class PPPlus(PP):
    """PP with compensation, the error score and a fitted allocation, each by its switch (module docstring).

    State per run, beside PP's history: the compensation's running means, (C,) fp32 per pruned block (for the
    default model 30 x (576 + 1536) floats, 250 KB), and the squared weight-column norms, (C,) per block, computed
    once; with `recover`, the fit's covariances (87 MB for the default model). The loaded model is never written:
    the bias and recovered weights are new tensors per block and batch. `fitted` records what the allocation and
    the recovery were fitted on (None when neither was). Raises ConfigError for calibration statistics without
    the compensation's means, or without a fit for this config (`ppcore.build_pruner` makes it).
    """

    calib_hint = " (pp-plus seeds its history and means from them and its allocation is fitted on their windows)"

    def __init__(self, run: "Pruner") -> None:
        super().__init__(run)
        cfg = run.cfg
        self.compensate = cfg.compensate == "on"
        self.error_score = cfg.error_score == "on"
        self._col_sq: dict[tuple[int, str], Tensor] = {}
        self.means: dict[tuple[int, str], Tensor] = {}
        self.fitted: Optional[dict[str, Any]] = None
        self.recover = cfg.recover == "on"
        self._cov: dict[tuple[int, str], BlockCov] = {}  # recovery's statistics, on their layer's device
        self._shape: Optional[tuple[int, int]] = None  # the batch being decided (B, L): what recovery may cost
        self._gate: dict[tuple[int, str], tuple[tuple[int, int], bool]] = {}  # `recovers` per block, for a shape
        if not cfg.prunes:
            return
        if self.recover:
            fit = recovery_fit(cfg, run.calib)
            self._cov = {k: st.to(run.adapter.layer_device(k[0])) for k, st in fit.items()}
            recovery = recovery_record(cfg, run.calib, fit)
        if self.compensate:
            for key, st in run.calib.blocks.items():
                if st.mean_rest is None:
                    raise ConfigError("these calibration statistics have no per-channel mean (they predate pp-plus): "
                                      "recalibrate to use compensate")
                self.means[key] = st.mean_rest.float().clone()
        if cfg.allocation == "sensitivity" and not run.kept_units:
            kept, self.fitted = sensitivity_allocation(run.adapter, cfg, run.calib, run.r_eff_of, run.calib.seq_len)
            run.kept_units.update(kept)
        elif cfg.allocation == "local" and not run.kept_units:
            kept, self.fitted = local_allocation(cfg, run.calib)
            run.kept_units.update(kept)
        if self.recover:
            self.fitted = {**(self.fitted or {}), "recovery": recovery}

    @classmethod
    def needs_calibration(cls, cfg: "PruneConfig") -> bool:
        """The history, the compensation's means and the allocation all start from calibration."""
        return cfg.use_history or cfg.compensate == "on" or cfg.allocation != "uniform" or cfg.recover == "on"

    def state(self) -> dict[str, dict[tuple[int, str], Tensor]]:
        """PP's history and, with `compensate`, the compensation's running means ("means", (C,) fp32)."""
        return {**super().state(), **({"means": self.means} if self.means else {})}

    @property
    def ppsp_scored(self) -> bool:
        return not self.error_score and super().ppsp_scored

    def unit_scores(self, layer: int, block: Block, w: LayerWeights, s: Tensor, pow4: Tensor, p: Probe) -> Tensor:
        """PPsp, or with `error_score` the error score of `ppcore.compensation.error_scores` on the fused energy,
        centred on the compensation's mean when `compensate` is on."""
        if not self.error_score:
            return super().unit_scores(layer, block, w, s, pow4, p)
        key = block.key(layer)
        if key not in self._col_sq:
            self._col_sq[key] = column_sq(block.final_weight(w))
        energy = centred_energy(s, self.means[key], p.tokens.shape[0]) if self.compensate else s
        return error_scores(energy, self._col_sq[key], self.run.dims.head_dim if block is BLOCKS[0] else None)

    def compensation(self, layer: int, block: Block, w: LayerWeights, kept: Tensor) -> tuple[Optional[Tensor], int]:
        """W[:, P] @ mu_P (D,) and its FLOPs with `compensate`, else none."""
        if not self.compensate or kept.shape[0] == block.units(self.run.dims):  # a shape: no sync
            return None, 0
        w_fin = block.final_weight(w)
        kept_ch = block.unit_channels(kept, self.run.dims)
        pruned = block.channels(self.run.dims) - kept_ch.shape[0]  # shapes: no sync
        return compensation_bias(w_fin, self.means[block.key(layer)], kept_ch), bias_flops(w_fin, pruned)

    def decide(self, ctx: WalkCtx, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """PP's decision, with the batch's shape noted first: whether a block recovers depends on it (`recovers`)."""
        self._shape = (x.shape[0], x.shape[1])
        return super().decide(ctx, layer, block, w, resid, x)

    def _kept_units(self, layer: int, block: Block) -> int:
        run = self.run
        default = block.units(run.dims) - run.n_heads_pruned if block is BLOCKS[0] else run.n_mlp_kept
        return run.kept_units.get(block.key(layer), default)

    def recovers(self, layer: int, block: Block) -> bool:
        """Whether this block recovers on the batch being decided: `recover` on, and its solve (`recovery_flops`)
        at most MAX_COST_SHARE of the FLOPs its pruning saves on the batch's B x L tokens (from shapes alone: no
        sync). Always, for a decision made outside a walk (no batch shape noted)."""
        if not self.recover:
            return False
        if self._shape is None:
            return True
        key = block.key(layer)
        hit = self._gate.get(key)
        if hit is None or hit[0] != self._shape:  # keep, decision and _core all ask, once per block and batch
            hit = self._gate[key] = (self._shape, self._pays(layer, block))
        return hit[1]

    def _pays(self, layer: int, block: Block) -> bool:
        """`recovers`'s cost rule for the noted batch shape (see there)."""
        assert self._shape is not None
        dims, units = self.run.dims, block.units(self.run.dims)
        kept_units = self._kept_units(layer, block)
        if kept_units >= units:
            return False
        per = block.channels(dims) // units
        kept_ch = kept_units * per
        cols = self._cov[block.key(layer)].cols.shape[0]
        r = min(cols, kept_ch) if block is not BLOCKS[0] else kept_ch
        cost = recovery_flops(dims.hidden, block.channels(dims) - kept_ch, r)
        B, L = self._shape
        return cost <= MAX_COST_SHARE * B * saved_flops(self.run.adapter, block, units - kept_units, L)

    def _core(self, layer: int, block: Block, kept_count: int) -> Optional[Tensor]:
        """The MLP's core channels (r,), best first, cut to what the block keeps; None for attention (every kept
        channel regresses), without recovery, or where the block does not recover on this batch."""
        if block is BLOCKS[0] or not self.recovers(layer, block):
            return None
        cols = self._cov[block.key(layer)].cols
        return cols[:min(cols.shape[0], kept_count)]

    def keep(self, layer: int, block: Block, scores: Tensor) -> Tensor:
        """PP's keep-set, with recovery's MLP core always in it: the core's units rank first, the other kept units
        by their scores (the recorded scores stay as scored)."""
        core = self._core(layer, block, self._kept_units(layer, block))
        if core is None:
            return super().keep(layer, block, scores)
        return self.run.keep_top(block, scores.index_fill(0, core, float("inf")), layer)

    def decision(self, layer: int, block: Block, w: LayerWeights, kept: Tensor, *, bias: Optional[Tensor] = None,
                 buffers: Optional[Buffers] = None, **fields: Any) -> Decision:
        """PP's decision; with `recover`, its final projection's regressor columns gain M and its output the bias b
        of `ppcore.recovery.recovery_terms`, counted in `extra_flops` (new tensors: the model is not written)."""
        d = super().decision(layer, block, w, kept, bias=bias, buffers=buffers, **fields)
        if d.kept is None or not self.recovers(layer, block):
            return d
        dims = self.run.dims
        st = self._cov[block.key(layer)]
        kept_ch = block.unit_channels(d.kept, dims)
        core = self._core(layer, block, kept_ch.shape[0])
        if core is None:  # attention: every kept channel; its position in `cols` is the channel itself
            reg_pos, cols = kept_ch, None
        else:
            reg_pos = torch.arange(core.shape[0], device=core.device)
            cols = torch.searchsorted(kept_ch, core)  # the core's columns in the sliced weights
        m, b, flops = recovery_terms(block.final_weight(w), st, kept_ch, reg_pos)
        if core is not None:
            d.forced = core.sort().values  # kept whatever their score: the record and the "why" view say so
        fin = block.slice_final(d.slice)
        new = fin + m.to(fin.dtype) if cols is None else fin.index_add(1, cols, m.to(fin.dtype))
        d.slice = block.with_slice_final(d.slice, new)
        d.bias = b.to(fin.dtype) if d.bias is None else d.bias + b.to(fin.dtype)
        d.extra_flops += flops
        return d

    def observe(self, ctx: WalkCtx, layer: int, block: Block, z: Tensor, d: Decision) -> None:
        """PP's history update, and with `compensate` the same EMA of the batch's mean (every position but the
        first) on the kept channels; pruned channels keep their mean."""
        super().observe(ctx, layer, block, z, d)
        if not self.compensate or not ctx.update_history or not d.pruned:
            return
        key = block.key(layer)
        mean, seen = batch_mean_rest(z, ctx.valid)
        old = self.means[key]
        kept = None if d.kept is None else block.unit_channels(d.kept, self.run.dims)
        m = self.run.cfg.ema
        cur = old if kept is None else old.index_select(0, kept)
        new = cur * m + mean * (1 - m)
        new = new.where(seen, cur)
        if kept is None:
            old.copy_(new)
        else:
            old.index_copy_(0, kept, new)
