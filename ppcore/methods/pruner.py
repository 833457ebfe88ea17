"""`Pruner`: one run's decision maker, the object the walk asks about every block.

It checks the config and the calibration statistics against the model, derives what every method
shares (r_eff, the unpruned slices), builds the config's method from the registry and delegates to
it; the loaded model is only read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import Tensor

from ..adapters import Adapter, LayerWeights, ModelDims
from ..blocks import BLOCKS, BlockLike, as_block
from ..errors import ConfigError
from ..ratios import adjusted_ratio, heads_pruned, mlp_kept_for_ratio
from ..scores import keep_top_channels, keep_top_heads
from ..slices import Buffers, Slice, copied_bytes
from ..stats import CalibStats, History
from ..walk_context import WalkCtx
from .base import Decision, Method
from .registry import method_class

if TYPE_CHECKING:
    from ..config import PruneConfig


def _check_calib(calib: CalibStats, cfg: "PruneConfig", dims: ModelDims) -> None:
    """Calibration statistics must come from a model of this shape: every pruned block present, with
    this block's channel count (ConfigError otherwise, instead of an index error mid-walk)."""
    if not isinstance(calib, CalibStats) or not calib.blocks:
        raise ConfigError(f"calib must be CalibStats from calibrate(...) on this model, got {type(calib).__name__}")
    deepest = max(layer for layer, _ in calib.blocks)
    if deepest >= dims.num_layers:
        raise ConfigError(f"the calibration statistics cover {deepest + 1} layers but this model has "
                          f"{dims.num_layers}: they were computed on a different model; recalibrate on this one")
    for layer in range(dims.num_layers):
        if layer in cfg.skip_layers:
            continue
        for block in BLOCKS:
            if not block.enabled(cfg):
                continue
            st = calib.blocks.get(block.key(layer))
            if st is None:
                raise ConfigError(f"the calibration statistics have no entry for layer {layer} {block.name}: "
                                  f"they were computed on a different model; recalibrate on this one")
            width = block.channels(dims)
            if st.sq.dim() != 2 or st.sq.shape[1] != width:
                raise ConfigError(f"the calibration statistics of layer {layer} {block.name} have "
                                  f"{tuple(st.sq.shape)} (positions x channels) but this model has {width} channels "
                                  "there: they were computed on a different model; recalibrate on this one")


def keep_top_units(block: BlockLike, scores: Tensor, kept: int, dims: ModelDims) -> Tensor:
    """The `kept` best of the block's (U,) unit scores, ascending, by the same rules as a ratio's keep-set
    (docs/algorithm.md §4.2): heads drop the lowest, MLP channels keep the highest."""
    block = as_block(block)
    units = block.units(dims)
    if block.name == BLOCKS[0].name:
        return keep_top_heads(scores, units - kept)
    return keep_top_channels(scores, kept)


class Pruner:
    """One run's decisions: `decide` for every block of every layer, `observe` after its full inference.

    Built from the loaded model's adapter, a `PruneConfig` and, where the config needs them, calibration
    statistics from `ppcore.calibrate.calibrate` on this model (moved beside each layer). The method is
    `method_class(cfg.method)(self)`; blocks the config does not prune (skipped layers, switched-off
    blocks, dense, ratio 0) keep everything without asking it. Blocks are `ppcore.blocks.Block` objects
    or their names ("attn", "mlp").

    Attributes: `r_eff` (docs/algorithm.md §6) and `r_eff_of` per block kind (the same unless the config sets
    attn_ratio or mlp_ratio), `n_heads_pruned` and `n_mlp_kept` (per pruned layer, §4.2), `kept_units` (an explicit
    allocation, {(layer, block name): units kept}: PP+'s, or the `kept_units` argument; empty for every other method:
    only the blocks it names are then pruned, each to its count),
    `history` (PP's state or None), `poisoned` (set when a batch went non-finite after the history took it).
    Raises ConfigError for a skip list that does not fit the model, missing calibration statistics, or
    statistics from another model.
    """

    def __init__(self, adapter: Adapter, cfg: "PruneConfig", calib: Optional[CalibStats] = None, *,
                 kept_units: Optional[dict[tuple[int, str], int]] = None) -> None:
        dims = adapter.dims
        cfg.check_layers(dims.num_layers)
        method_cls = method_class(cfg.method)
        needs_calib = cfg.needs_calibration
        if needs_calib and calib is None:
            raise ConfigError(f"method {cfg.method!r} needs calibration statistics: pass calib=calibrate(...)"
                              + method_cls.calib_hint)
        if calib is not None and needs_calib:
            _check_calib(calib, cfg, dims)
        self.adapter, self.cfg, self.dims = adapter, cfg, dims
        # Statistics live beside their layer (several devices when accelerate dispatched the model).
        self.calib = calib.to_layers(adapter.layer_device) if calib is not None and needs_calib else None
        self.r_eff = adjusted_ratio(cfg.ratio, dims.num_layers, len(cfg.skip_layers))
        # Per block kind: the same as r_eff unless the config gives attention or the MLP its own ratio.
        self.r_eff_of = {b.name: adjusted_ratio(cfg.block_ratio(b.name), dims.num_layers, len(cfg.skip_layers))
                         for b in BLOCKS}
        self.n_heads_pruned = heads_pruned(self.r_eff_of["attn"], dims.num_heads)
        self.n_mlp_kept = mlp_kept_for_ratio(self.r_eff_of["mlp"], dims.intermediate, cfg.mlp_multiple)
        # Set when a batch went non-finite after PP's history had taken its EMA: that history holds inf/NaN
        # from then on, so this pruner refuses further batches rather than decide from it.
        self.poisoned: Optional[str] = None
        self._full: dict[tuple[int, str], Slice] = {}
        self._buffers: dict[str, Buffers] = {}
        self.kept_units: dict[tuple[int, str], int] = dict(kept_units or {})
        self.method: Method = method_cls(self)

    def keep_top(self, block: BlockLike, scores: Tensor, layer: Optional[int] = None) -> Tensor:
        """The units (n,) the block keeps at its r_eff (`r_eff_of`) from its unit scores (U,) (docs/algorithm.md
        §4.2, §6); the count `kept_units` gives for this `layer`'s block where it gives one."""
        block = as_block(block)
        kept = self.kept_units.get(block.key(layer)) if layer is not None else None
        if kept is not None:
            return keep_top_units(block, scores, kept, self.dims)
        return block.keep_top(scores, self.r_eff_of[block.name], self.dims, self.cfg.mlp_multiple)

    @property
    def history(self) -> Optional[History]:
        """PP's per-position history (docs/algorithm.md §3.1), or None for every other method."""
        return self.method.history

    def prepare(self) -> None:
        """Work that reads every layer, done once before a walk's first layer (FLAP's allocation)."""
        self.method.prepare()

    def cacheable(self, layer: int) -> bool:
        """Whether slices of this layer may be kept: an offloaded layer's are rebuilt per batch, since
        keeping them would pin its weights in memory."""
        return not self.adapter.offloaded(layer)

    def prunes_block(self, layer: int, block: BlockLike) -> bool:
        """Whether the method decides this block (False: dense, ratio 0, skipped layer, switched-off block)."""
        if not self.cfg.prunes or layer in self.cfg.skip_layers:
            return False
        block = as_block(block)
        if self.kept_units:  # an explicit allocation prunes the blocks it names, and only where it removes a unit
            return self.kept_units.get(block.key(layer), block.units(self.dims)) < block.units(self.dims)
        return block.enabled(self.cfg)

    def full_slice(self, layer: int, block: BlockLike, w: LayerWeights) -> Slice:
        """The block's unpruned weights (the model's own tensors, no copy), cached unless offloaded."""
        block = as_block(block)
        key = block.key(layer)
        if key in self._full:
            return self._full[key]
        sl = block.slice(w, self.dims, None)
        if self.cacheable(layer):
            self._full[key] = sl
        return sl

    def held_bytes(self) -> int:
        """Bytes of weight copies this run holds now: a static method's kept slices, and the one reusable set of
        per-batch slice tensors per block kind (`slice_buffers`). The copies kept per loaded model
        (`Adapter.transposed`, shared by every run) are `LoadedModel.extra_weight_bytes`, not counted here."""
        buffers = sum(t.numel() * t.element_size() for b in self._buffers.values() for t in b.values())
        return buffers + sum(copied_bytes(sl) for sl in self.method.held_slices())

    def slice_buffers(self, ctx: WalkCtx, block: BlockLike) -> Optional[Buffers]:
        """Tensors a per-batch slice of this kind of block may be written into, or None for new ones.

        The walk runs one block at a time, so when a layer's block is decided the same block of the layer
        before has finished: one set of copies per block kind serves every layer (no allocation per batch
        and layer). Not when the walk keeps its decisions (`ctx.keeps_decisions`: generation reuses them)."""
        if ctx.keeps_decisions:
            return None
        return self._buffers.setdefault(as_block(block).name, {})

    def full_decision(self, layer: int, block: BlockLike, w: LayerWeights) -> Decision:
        """Keep everything, undecided (`pruned` False)."""
        return Decision(slice=self.full_slice(layer, block, w))

    def decide(self, ctx: WalkCtx, layer: int, block: BlockLike, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """The keep-set of one block for this batch: `resid` (B, L, D) is the residual entering the block and
        `x` (B, L, D) its normed input, in the walk's layout (docs/algorithm.md §1)."""
        block = as_block(block)
        if not self.prunes_block(layer, block):
            return self.full_decision(layer, block, w)
        return self.method.decide(ctx, layer, block, w, resid, x)

    def observe(self, ctx: WalkCtx, layer: int, block: BlockLike, z: Tensor, d: Decision) -> None:
        """After full inference: `z` (B, L, C_kept) is the block's final projection input
        (PP's EMA, docs/algorithm.md §3.4)."""
        self.method.observe(ctx, layer, as_block(block), z, d)
