"""The probing methods: `pp` (Probe Pruning) and `fullbatch` (the whole batch as the probe, an oracle).

Both run a probe through the block's unpruned front, turn its output into per-channel energies, score
them with PPsp and keep the top units; PP picks a small probe by residual importance and fuses it with
its history, which it updates after every full inference; `fullbatch` probes with every token of every
sample and has no history (docs/algorithm.md §2.2-2.4, §3.3-3.4, §4, §4.2, §8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from ..adapters import LayerWeights
from ..blocks import Block, Rotary
from ..scores import column_pow4, fuse, fuse_fixed, probe_energy, residual_importance, select_samples, select_tokens
from ..stats import History
from ..walk_context import WalkCtx
from .base import Decision, Energies, Method
from .unit_score import unit_scores

if TYPE_CHECKING:
    from ..config import PruneConfig
    from .pruner import Pruner


@dataclass(frozen=True)
class Probe:
    """The rows a probe runs: x (n_b, n_t, D) with its 0/1 `valid` (n_b, n_t) or None, its rotary and
    attention mask, and which `tokens` (n_t,) and `samples` (n_b,) of the batch it holds (docs/algorithm.md §2.3)."""

    x: Tensor
    valid: Optional[Tensor]
    rot: Rotary
    mask: Optional[Tensor]
    tokens: Tensor
    samples: Tensor


class ProbeMethod(Method):
    """A method that probes every batch: subclasses choose the probe (`probe`); the scoring is shared."""

    def __init__(self, run: "Pruner") -> None:
        super().__init__(run)
        self._pow4: dict[tuple[int, str], Tensor] = {}

    def probe(self, ctx: WalkCtx, layer: int, block: Block, resid: Tensor, x: Tensor,
              window: Optional[int]) -> Probe:
        """The probe of this block's batch; `window` is the layer's sliding window when it matters
        (docs/algorithm.md §2.3, §2.4)."""
        raise NotImplementedError

    def decide(self, ctx: WalkCtx, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """Probe, fuse, score with PPsp (or the config's `score`) and keep the top units at the block's r_eff
        (docs/algorithm.md §2-4; the ablation settings fusion, score and the block ratios: docs/ablations.md).

        Adds probe_s (probe and its energies) and decide_s (scores and slicing) to `ctx`'s clock for the block.
        """
        run = self.run
        ad = run.adapter
        full = run.full_slice(layer, block, w)
        t0 = ctx.now()
        # The walk's layout puts every row's real tokens first (column = token position), so the probe's
        # columns are original positions; a probe column holds a pad only in samples shorter than it.
        window = block.window(ad, layer)
        if window is not None and window >= x.shape[1]:
            window = None  # no two tokens of this batch are a window apart
        p = self.probe(ctx, layer, block, resid, x, window)
        zp = block.front(ad, full, p.x, p.rot, p.mask)
        probe_flops = block.flops(ad, p.x.shape[0], p.x.shape[1], with_out=False)
        P = probe_energy(zp, p.valid)
        t1 = ctx.now()
        G = None
        cfg = run.cfg
        if self.history is not None and self.history.has(layer, block.name):
            G = self.history.rows(layer, block.name, p.tokens, x.shape[1])
            s = (fuse(P, G) if cfg.fusion == "importance" else fuse_fixed(P, G, cfg.probe_weight)).sum(0)
        else:
            s = P.sum(0)
        pow4 = self._pow4_of(layer, block, w)
        scores = self.unit_scores(layer, block, w, s, pow4, p)
        kept = self.keep(layer, block, scores)
        bias, extra = self.compensation(layer, block, w, kept)
        # PPsp's weight factor feeds the record's probe-alone counterfactual: only where PPsp scored.
        energies = Energies(P, G, s, pow4 if self.ppsp_scored else None,
                            fixed_weight=cfg.probe_weight if cfg.fusion == "fixed" else None)
        d = self.decision(layer, block, w, kept, bias=bias, buffers=run.slice_buffers(ctx, block),
                          probe_tokens=p.tokens, probe_samples=p.samples, scores=scores, energies=energies,
                          probe_flops=probe_flops, extra_flops=extra)
        if ctx.timing:
            ctx.add_time(layer, block.name, probe_s=t1 - t0, decide_s=ctx.now() - t1)
        return d

    @property
    def ppsp_scored(self) -> bool:
        """Whether `unit_scores` is PPsp (the record's probe-alone counterfactual needs it)."""
        return self.run.cfg.score == "ppsp"

    def unit_scores(self, layer: int, block: Block, w: LayerWeights, s: Tensor, pow4: Tensor, p: Probe) -> Tensor:
        """(U,) unit scores from the fused energy s (C,) and sum_i W[i, c]^4 (C,): PPsp, or the config's `score`
        (docs/algorithm.md §4, docs/ablations.md)."""
        cfg, dims = self.run.cfg, self.run.dims
        if cfg.score == "ppsp":
            return block.ppsp(s, pow4, dims)
        # The score ablation: Wanda-sp's or FLAP's metric on the fused energy (docs/ablations.md). FLAP's official
        # fluctuation is close to a running mean of z^2 (docs/algorithm.md §8.1a): on a probe, the fused energy is
        # its counterpart.
        return unit_scores(block, cfg.score, block.final_weight(w), s, dims, fluc=s)

    def keep(self, layer: int, block: Block, scores: Tensor) -> Tensor:
        """The units (n,) the block keeps from its unit scores (U,): the top ones at its r_eff (`Pruner.keep_top`;
        PP+'s recovery overrides it)."""
        return self.run.keep_top(block, scores, layer)

    def compensation(self, layer: int, block: Block, w: LayerWeights, kept: Tensor) -> tuple[Optional[Tensor], int]:
        """A bias (D,) added to the block's output for what the pruned units no longer add, and its FLOPs: none
        for PP (PP+ overrides it)."""
        return None, 0

    def _pow4_of(self, layer: int, block: Block, w: LayerWeights) -> Tensor:
        """sum_i W[i, c]^4 of the block's final projection, computed once per block (docs/algorithm.md §4)."""
        key = block.key(layer)
        if key not in self._pow4:
            self._pow4[key] = column_pow4(block.final_weight(w))
        return self._pow4[key]


class PP(ProbeMethod):
    """Probe Pruning: a residual-importance probe, fused with a calibration-initialised history."""

    calib_hint = " or set use_history=False"

    def __init__(self, run: "Pruner") -> None:
        super().__init__(run)
        if run.cfg.use_history and run.cfg.prunes:
            self.history = History(run.calib)

    @classmethod
    def needs_calibration(cls, cfg: "PruneConfig") -> bool:
        """The history starts from calibration statistics (docs/algorithm.md §3.2), unless it is off."""
        return cfg.use_history

    def probe(self, ctx: WalkCtx, layer: int, block: Block, resid: Tensor, x: Tensor,
              window: Optional[int]) -> Probe:
        """Tokens first, then samples, by residual importance (docs/algorithm.md §2.2-2.3)."""
        cfg = self.run.cfg
        N = residual_importance(resid, ctx.valid)
        tokens = select_tokens(N, cfg.token_frac)
        samples = select_samples(N, tokens, cfg.sample_frac)
        xp = x.index_select(0, samples).index_select(1, tokens)
        valid = None if ctx.valid is None else ctx.valid.index_select(0, samples).index_select(1, tokens)
        rot, mask = block.probe_context(self.run.adapter.layer_rotary(ctx.rot, layer), xp, samples, tokens, valid,
                                        window)
        return Probe(xp, valid, rot, mask, tokens, samples)

    def observe(self, ctx: WalkCtx, layer: int, block: Block, z: Tensor, d: Decision) -> None:
        """EMA of the batch's energies on the kept channels (docs/algorithm.md §3.4); never on the warm-up batch
        (`ctx.update_history` False) nor on a block the method did not decide."""
        if self.history is None or not ctx.update_history or not d.pruned:
            return
        kept = None if d.kept is None else block.unit_channels(d.kept, self.run.dims)
        self.history.ema(layer, block.name, z, kept, ctx.valid, self.run.cfg.ema)


class FullBatch(ProbeMethod):
    """Full-batch probing: the probe is the whole batch (docs/algorithm.md §8), no history. Costs more than dense."""

    def probe(self, ctx: WalkCtx, layer: int, block: Block, resid: Tensor, x: Tensor,
              window: Optional[int]) -> Probe:
        """Every sample and token, with the batch's own rotary and mask."""
        B, L = x.shape[:2]
        return Probe(x, ctx.valid, self.run.adapter.layer_rotary(ctx.rot, layer), ctx.attn_mask(window),
                     tokens=torch.arange(L, device=x.device),
                     samples=torch.arange(B, device=x.device))
