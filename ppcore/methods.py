"""Methods decide, per layer and block, which heads or channels the full inference keeps.

One `Pruner` per run holds the method's state (PP's history, the static methods' precomputed
slices); the loaded model is only read. `dense` keeps everything; `pp` probes every batch;
`fullbatch` probes with the whole batch (an oracle); `wanda-sp`, `flap` and `ppsp-calib` decide
once from calibration statistics and reuse their slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from . import scores as S
from .adapters import Adapter, LayerWeights
from .blocks import (AttnSlice, MlpSlice, attention_mask_4d, attn_front, head_channels, mlp_front,
                     slice_attn, slice_mlp)
from .config import PruneConfig, adjusted_ratio, heads_pruned, mlp_kept, mlp_kept_for_ratio
from .errors import ConfigError
from .flops import attn_flops, mlp_flops
from .stats import CalibStats, History
from .walk_context import WalkCtx

Slice = Union[AttnSlice, MlpSlice]
StaticChoice = tuple[Tensor, Tensor, Optional[Tensor]]  # kept, scores, compensation bias


@dataclass
class Decision:
    slice: Optional[Slice]  # None only in a generation capture of an offloaded layer (rebuilt per step)
    kept: Optional[Tensor]  # kept heads (attn) or channels (mlp) on the model's device; None = all
    bias: Optional[Tensor] = None  # FLAP's compensation, added to the block output
    pruned: bool = False
    probe_tokens: Optional[Tensor] = None
    probe_samples: Optional[Tensor] = None
    scores: Optional[Tensor] = None
    energies: Optional[tuple[Tensor, Optional[Tensor], Tensor]] = None  # probe, history, fused
    probe_flops: int = 0


def _check_calib(calib: CalibStats, cfg: PruneConfig, dims) -> None:
    """Calibration statistics must come from a model of this shape: every pruned block present, with
    this block's channel count (ConfigError otherwise, instead of an index error mid-walk)."""
    if not isinstance(calib, CalibStats) or not calib.blocks:
        raise ConfigError(f"calib must be CalibStats from calibrate(...) on this model, got {type(calib).__name__}")
    width = {"attn": dims.num_heads * dims.head_dim, "mlp": dims.intermediate}
    deepest = max(layer for layer, _ in calib.blocks)
    if deepest >= dims.num_layers:
        raise ConfigError(f"the calibration statistics cover {deepest + 1} layers but this model has "
                          f"{dims.num_layers}: they were computed on a different model; recalibrate on this one")
    for layer in range(dims.num_layers):
        if layer in cfg.skip_layers:
            continue
        for block, on in (("attn", cfg.prune_attn), ("mlp", cfg.prune_mlp)):
            if not on:
                continue
            st = calib.blocks.get((layer, block))
            if st is None:
                raise ConfigError(f"the calibration statistics have no entry for layer {layer} {block}: "
                                  f"they were computed on a different model; recalibrate on this one")
            if st.sq.dim() != 2 or st.sq.shape[1] != width[block]:
                raise ConfigError(f"the calibration statistics of layer {layer} {block} have {tuple(st.sq.shape)} "
                                  f"(positions x channels) but this model has {width[block]} channels there: "
                                  "they were computed on a different model; recalibrate on this one")


class Pruner:
    """Stateful per-run decision maker used by the walk."""

    def __init__(self, adapter: Adapter, cfg: PruneConfig, calib: Optional[CalibStats] = None) -> None:
        dims = adapter.dims
        cfg.check_layers(dims.num_layers)
        needs_calib = cfg.needs_calibration
        if needs_calib and calib is None:
            raise ConfigError(
                f"method {cfg.method!r} needs calibration statistics: pass calib=calibrate(...)"
                + (" or set use_history=False" if cfg.method == "pp" else "")
            )
        if calib is not None and needs_calib:
            _check_calib(calib, cfg, dims)
        self.adapter, self.cfg, self.dims = adapter, cfg, dims
        # Statistics live beside their layer (several devices when accelerate dispatched the model).
        self.calib = calib.to_layers(adapter.layer_device) if calib is not None and needs_calib else None
        self.r_eff = adjusted_ratio(cfg.ratio, dims.num_layers, len(cfg.skip_layers))
        self.n_heads_pruned = heads_pruned(self.r_eff, dims.num_heads)
        self.n_mlp_kept = mlp_kept_for_ratio(self.r_eff, dims.intermediate, cfg.mlp_multiple)
        self.history = (
            History(self.calib) if cfg.method == "pp" and cfg.use_history and cfg.prunes else None
        )
        # Set when a batch went non-finite after PP's history had taken its EMA: that history holds inf/NaN
        # from then on, so this pruner refuses further batches rather than decide from it.
        self.poisoned: Optional[str] = None
        self._full: dict[tuple[int, str], Slice] = {}
        self._pow4: dict[tuple[int, str], Tensor] = {}
        self._static: dict[tuple[int, str], Decision] = {}
        # Static methods' choices per block, (kept, scores, compensation bias): always kept, even for
        # offloaded layers, whose slices (the weights) are rebuilt from them per batch.
        self._plan: dict[tuple[int, str], StaticChoice] = {}

    def prepare(self) -> None:
        """Work that reads every layer, done once before a walk's first layer (FLAP's allocation)."""
        if self.cfg.method == "flap" and self.cfg.prunes and not self._plan:
            self._plan = self._flap_plan()

    def _cacheable(self, layer: int) -> bool:
        """Slices of an offloaded layer are rebuilt per batch: caching them would pin its weights."""
        return not self.adapter.offloaded(layer)
    # --- which blocks are pruned -----------------------------------------------------------------
    def prunes_block(self, layer: int, block: str) -> bool:
        if not self.cfg.prunes or layer in self.cfg.skip_layers:
            return False
        return self.cfg.prune_attn if block == "attn" else self.cfg.prune_mlp

    def full_slice(self, layer: int, block: str, w: LayerWeights) -> Slice:
        key = (layer, block)
        if key in self._full:
            return self._full[key]
        sl = slice_attn(w, self.dims, None) if block == "attn" else slice_mlp(w, None)
        if self._cacheable(layer):
            self._full[key] = sl
        return sl

    # --- the decision ------------------------------------------------------------------------------
    def decide(self, ctx: WalkCtx, layer: int, block: str, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        if not self.prunes_block(layer, block):
            return Decision(self.full_slice(layer, block, w), None)
        if self.cfg.is_static:
            key = (layer, block)
            if key in self._static:
                return self._static[key]
            if key not in self._plan:
                self.prepare()
                if key not in self._plan:
                    self._plan[key] = self._static_choice(layer, block, w)
            d = self._static_decision(layer, block, w, *self._plan[key])
            if self._cacheable(layer):
                self._static[key] = d
            return d
        return self._probe_decision(ctx, layer, block, w, resid, x)

    def observe(self, ctx: WalkCtx, layer: int, block: str, z: Tensor, d: Decision) -> None:
        """After full inference: PP's EMA on the kept channels (never on the warm-up batch)."""
        if self.history is None or not ctx.update_history or not d.pruned:
            return
        kept = None if d.kept is None else (
            head_channels(d.kept, self.dims.head_dim) if block == "attn" else d.kept)
        self.history.ema(layer, block, z, kept, ctx.valid, self.cfg.ema)

    # --- PP and full-batch probing -----------------------------------------------------------------
    def _pow4_of(self, layer: int, block: str, w: LayerWeights) -> Tensor:
        key = (layer, block)
        if key not in self._pow4:
            self._pow4[key] = S.column_pow4(w.o_w if block == "attn" else w.down_w)
        return self._pow4[key]

    def _probe_decision(self, ctx: WalkCtx, layer: int, block: str, w: LayerWeights, resid: Tensor,
                        x: Tensor) -> Decision:
        cfg, dims, ad = self.cfg, self.dims, self.adapter
        full = self.full_slice(layer, block, w)
        t0 = ctx.now()
        # The walk's layout puts every row's real tokens first (column = token position), so the probe's
        # columns are original positions; a probe column holds a pad only in samples shorter than it.
        window = ad.windows[layer] if block == "attn" else None
        if window is not None and window >= x.shape[1]:
            window = None  # no two tokens of this batch are a window apart
        if cfg.method == "fullbatch":
            B, L = x.shape[:2]
            samples = torch.arange(B, device=x.device)
            tokens = torch.arange(L, device=x.device)
            xp, pvalid, rot, mask = x, ctx.valid, ctx.rot, ctx.attn_mask(window)
        else:
            N = S.residual_importance(resid, ctx.valid)
            tokens = S.select_tokens(N, cfg.token_frac)
            samples = S.select_samples(N, tokens, cfg.sample_frac)
            xp = x.index_select(0, samples).index_select(1, tokens)
            pvalid = None if ctx.valid is None else ctx.valid.index_select(0, samples).index_select(1, tokens)
            rot = mask = None
            if block == "attn":
                if ad.uses_rotary:
                    pos = ctx.position_ids.index_select(0, samples).index_select(1, tokens)
                    rot = ad.rotary(xp, pos)
                # Causal among the probe's tokens at their original positions, and within the layer's window.
                mask = attention_mask_4d(pvalid, xp.shape[1], xp.device, window=window,
                                         positions=None if window is None else tokens[None])
        if block == "attn":
            zp = attn_front(full, xp, dims.head_dim, rot, mask)[0]
            pf = attn_flops(xp.shape[0], xp.shape[1], dims, dims.num_heads, dims.num_kv_heads, with_out=False)
        else:
            zp = mlp_front(full, xp, ad.act)
            pf = mlp_flops(xp.shape[0], xp.shape[1], dims, dims.intermediate, ad.gated_mlp, with_out=False)
        P = S.probe_energy(zp, pvalid)
        t1 = ctx.now()
        e_probe = P.sum(0)
        e_hist = None
        if self.history is not None and self.history.has(layer, block):
            G = self.history.rows(layer, block, tokens)
            e_hist = G.sum(0)
            s = S.fuse(P, G).sum(0)
        else:
            s = e_probe
        pow4 = self._pow4_of(layer, block, w)
        if block == "attn":
            sc = S.ppsp_heads(s, pow4, dims.head_dim)
            kept = S.keep_top_heads(sc, self.n_heads_pruned)
            sl = full if kept.numel() == dims.num_heads else slice_attn(w, dims, kept)
        else:
            sc = S.ppsp_channels(s, pow4)
            kept = S.keep_top_channels(sc, self.n_mlp_kept)
            sl = full if kept.numel() == dims.intermediate else slice_mlp(w, kept)
        ctx.add_time(layer, block, probe_s=t1 - t0, decide_s=ctx.now() - t1)
        return Decision(sl, None if sl is full else kept, None, True, tokens, samples, sc,
                        (e_probe, e_hist, s), pf)

    # --- static baselines --------------------------------------------------------------------------
    def _static_choice(self, layer: int, block: str, w: LayerWeights) -> StaticChoice:
        """Wanda-sp or PPsp-calib: one block's keep-set from its calibration statistics."""
        st = self.calib.get(layer, block)
        energy = st.sq.sum(0)
        w_fin = w.o_w if block == "attn" else w.down_w
        if self.cfg.method == "wanda-sp":
            ch = S.wanda_sp_channels(w_fin, energy)
            sc = S.head_sums(ch, self.dims.head_dim) if block == "attn" else ch
        else:  # ppsp-calib
            pow4 = S.column_pow4(w_fin)
            sc = S.ppsp_heads(energy, pow4, self.dims.head_dim) if block == "attn" else S.ppsp_channels(energy, pow4)
        if block == "attn":
            kept = S.keep_top_heads(sc, self.n_heads_pruned)
        else:
            kept = S.keep_top_channels(sc, self.n_mlp_kept)
        return kept, sc, None

    def _static_decision(self, layer: int, block: str, w: LayerWeights, kept: Tensor, sc: Tensor,
                         bias: Optional[Tensor]) -> Decision:
        total = self.dims.num_heads if block == "attn" else self.dims.intermediate
        if kept.numel() == total:
            return Decision(self.full_slice(layer, block, w), None, None, True, scores=sc)
        sl = slice_attn(w, self.dims, kept) if block == "attn" else slice_mlp(w, kept)
        return Decision(sl, kept, bias, True, scores=sc)

    def _flap_plan(self) -> dict[tuple[int, str], StaticChoice]:
        """FLAP: standardised global allocation over all pruned blocks, masks from the raw metric.

        Returns (kept, scores, compensation bias) per pruned block; slices are built when a layer
        runs. Each layer is materialised on its own, so an offloaded model never holds two at once.
        """
        dims, ad, cfg = self.dims, self.adapter, self.cfg
        layers = [i for i in range(dims.num_layers) if i not in cfg.skip_layers]
        metric: dict[tuple[int, str], Tensor] = {}
        for i in layers:
            with ad.materialized(i):
                w = ad.layer(i)
                for block in ("attn", "mlp"):
                    if self.prunes_block(i, block):
                        w_fin = w.o_w if block == "attn" else w.down_w
                        metric[(i, block)] = S.flap_channels(w_fin, self.calib.get(i, block).fluc)
        attn_keys = [k for k in metric if k[1] == "attn"]
        mlp_keys = [k for k in metric if k[1] == "mlp"]
        calib_len = self.calib.seq_len
        hw = S.flap_head_weight(calib_len, dims.hidden, dims.num_heads, dims.gqa)
        # The global allocation compares every block's metric: gather them on one device for it.
        here = ad.device
        a_r, m_r = S.flap_ratios([metric[k].to(here) for k in attn_keys], [metric[k].to(here) for k in mlp_keys],
                                 dims.head_dim, hw, self.r_eff)
        ratio = dict(zip(attn_keys, a_r)) | dict(zip(mlp_keys, m_r))
        out: dict[tuple[int, str], StaticChoice] = {}
        for i in layers:
            with ad.materialized(i):
                w = ad.layer(i)
                for block in ("attn", "mlp"):
                    key = (i, block)
                    if key not in metric:
                        continue
                    m, r = metric[key], ratio[key]
                    if block == "attn":
                        sc = S.head_sums(m, dims.head_dim)
                        kept = S.keep_top_heads(sc, int(r * dims.num_heads))
                        kept_ch = head_channels(kept, dims.head_dim)
                        w_fin, total_ch = w.o_w, dims.num_heads * dims.head_dim
                    else:
                        sc = m
                        kept = S.keep_top_channels(sc, mlp_kept(int(r * dims.intermediate), dims.intermediate,
                                                                cfg.mlp_multiple))
                        kept_ch, w_fin, total_ch = kept, w.down_w, dims.intermediate
                    out[key] = (kept, sc, self._flap_bias(i, block, w_fin, kept_ch, total_ch))
        return out

    def _flap_bias(self, layer: int, block: str, w_fin: Tensor, kept_ch: Tensor, total: int) -> Optional[Tensor]:
        mode = self.cfg.flap_bias
        if mode == "none" or kept_ch.numel() == total:
            return None
        st = self.calib.get(layer, block)
        calib = (st.baseline if mode == "official" else st.mean).clone()
        calib[kept_ch] = 0
        return (w_fin.float() @ calib).to(w_fin.dtype)

