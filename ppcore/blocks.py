"""The two prunable blocks of a decoder layer, attention and MLP, as objects (docs/algorithm.md §1, §4, §5).

Everything that differs between the blocks lives here, so the walk, the methods and generation iterate
over `BLOCKS` and never compare block names: each `Block` knows its unit (a query head or an MLP
channel) and how many there are, its norm and its final projection (o_proj / down_proj), how to slice
its weights to a keep-set and run the slice, its FLOPs, its scores, and the key under which records,
statistics and PP's history file it. The math itself is in `ppcore.slices` and `ppcore.masks`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Optional, Union

from torch import Tensor, nn

from .adapters import Adapter, LayerWeights, ModelDims
from .flops import attn_flops, mlp_flops
from .masks import attention_mask_4d
from .ratios import heads_pruned, mlp_kept_for_ratio
from .record import BLOCK_NAMES
from .scores import head_sums, keep_top_channels, keep_top_heads, ppsp_channels, ppsp_heads
from .slices import (AttnSlice, Buffers, KVStore, MlpSlice, Slice, attn_front, attn_out, head_channels, mlp_front,
                     mlp_out, slice_attn, slice_mlp)

if TYPE_CHECKING:
    from .config import PruneConfig

Rotary = Optional[tuple[Tensor, Tensor]]  # (cos, sin), each (B, L, d)


class Block:
    """One kind of prunable block. Instances are the singletons `ATTN` and `MLP`; compare them with `is`.

    Shapes: B samples, L tokens, D hidden size, C the final projection's input width (`channels`), U the
    number of prunable units (`units`: query heads or MLP channels). Methods raise nothing of their own;
    torch raises RuntimeError on tensors of the wrong shape.
    """

    name: ClassVar[str]  # as in records, statistics and PP's history: one of record.BLOCK_NAMES
    switch: ClassVar[str]  # the PruneConfig field that turns this block's pruning on

    def __repr__(self) -> str:
        return self.name.upper()

    def key(self, layer: int) -> tuple[int, str]:
        """(layer, name): the key of this block in calibration statistics, PP's history and the walk's clocks."""
        return (layer, self.name)

    def enabled(self, cfg: "PruneConfig") -> bool:
        """Whether `cfg` prunes this kind of block at all: its switch (`prune_attn` / `prune_mlp`) is on and its
        ratio (`PruneConfig.block_ratio`) above 0. A block at ratio 0 is never probed, decided or counted."""
        return bool(getattr(cfg, self.switch)) and cfg.block_ratio(self.name) > 0

    # --- sizes -----------------------------------------------------------------------------------
    def units(self, dims: ModelDims) -> int:
        """U: query heads (attention) or intermediate channels (MLP)."""
        raise NotImplementedError

    def channels(self, dims: ModelDims) -> int:
        """C: the final projection's input width, H*d (attention) or I (MLP) (docs/algorithm.md §3.1)."""
        raise NotImplementedError

    def unit_channels(self, units: Tensor, dims: ModelDims) -> Tensor:
        """(n,) kept units -> their (m,) channel indices in the final projection's input (docs/algorithm.md §4.2)."""
        raise NotImplementedError

    # --- weights and the block's math ------------------------------------------------------------
    def norm(self, w: LayerWeights) -> nn.Module:
        """The norm in front of the block: (B, L, D) residual -> (B, L, D) block input x."""
        raise NotImplementedError

    def post_norm(self, w: LayerWeights) -> Optional[nn.Module]:
        """The norm on the block's output before the residual add (Gemma 3), or None: (B, L, D) in and out."""
        raise NotImplementedError

    def final_weight(self, w: LayerWeights) -> Tensor:
        """W, the final projection's weight (D_out, C): o_proj or down_proj (fc2 on OPT)."""
        raise NotImplementedError

    def slice_final(self, sl: Slice) -> Tensor:
        """The slice's final projection weight (D_out, C_kept)."""
        raise NotImplementedError

    def with_slice_final(self, sl: Slice, weight: Tensor) -> Slice:
        """A copy of the slice whose final projection weight is `weight` (D_out, C_kept) (PP+'s recovery)."""
        raise NotImplementedError

    def slice(self, w: LayerWeights, dims: ModelDims, kept: Optional[Tensor],
              buffers: Optional[Buffers] = None, final_t: Optional[Tensor] = None) -> Slice:
        """The weights restricted to the ascending (n,) kept units; None: all, without a copy. `buffers`: a run's
        reusable tensors for the copies, whose previous slice no longer runs; `final_t`: the final projection's
        weight transposed and contiguous (`Adapter.transposed`), so that its kept columns are copied as rows, or
        None (docs/algorithm.md §5)."""
        raise NotImplementedError

    def window(self, adapter: Adapter, layer: int) -> Optional[int]:
        """The layer's sliding attention window in tokens (None: attends to everything, or no attention)."""
        return None

    def front(self, adapter: Adapter, sl: Slice, x: Tensor, rot: Rotary, mask: Optional[Tensor],
              store: Optional[tuple[KVStore, int]] = None) -> Tensor:
        """Everything before the final projection on `sl`: x (B, L, D) -> z (B, L, C_kept).

        `rot`, `mask` and `store` (where keys and values go and come from: a `KVStore` and the layer) matter
        to attention only (docs/algorithm.md §2.4, §5). No host-device sync.
        """
        raise NotImplementedError

    def out(self, sl: Slice, z: Tensor, bias: Optional[Tensor]) -> Tensor:
        """The final projection on the kept channels, plus FLAP's compensation `bias` (D,) or None:
        z (B, L, C_kept) -> (B, L, D) (docs/algorithm.md §5, §8.1c)."""
        raise NotImplementedError

    def probe_context(self, rot: Rotary, xp: Tensor, samples: Tensor, tokens: Tensor,
                      valid: Optional[Tensor], window: Optional[int]) -> tuple[Rotary, Optional[Tensor]]:
        """Rotary and mask of PP's probe (xp: (n_b, n_t, D), rows `samples` and columns `tokens` of the batch):
        the batch's rotary `rot` at its tokens' original positions, causal among them (docs/algorithm.md §2.4).
        The MLP needs neither. No host-device sync."""
        return None, None

    # --- cost --------------------------------------------------------------------------------------
    def flops(self, adapter: Adapter, B: int, L: int, sl: Optional[Slice] = None, with_out: bool = True) -> int:
        """Analytic FLOPs of the block on B x L tokens: on slice `sl`, or dense when None; without the final
        projection when `with_out` is False (the probe's cost, docs/algorithm.md §2.5)."""
        raise NotImplementedError

    # --- scores and keep-sets ----------------------------------------------------------------------
    def unit_scores(self, channel_scores: Tensor, dims: ModelDims) -> Tensor:
        """(C,) per-channel scores -> (U,) per-unit scores: summed within a head, as is for MLP channels
        (Wanda-sp and FLAP, docs/algorithm.md §4.1)."""
        raise NotImplementedError

    def ppsp(self, energy: Tensor, w_pow4: Tensor, dims: ModelDims) -> Tensor:
        """PPsp unit scores (U,) from channel energies s (C,) and sum_i W[i, c]^4 (C,) (docs/algorithm.md §4)."""
        raise NotImplementedError

    def keep_top(self, scores: Tensor, ratio: float, dims: ModelDims, multiple: int) -> Tensor:
        """The units a pruned block keeps at per-layer ratio `ratio`, ascending (docs/algorithm.md §4.2):
        heads lose int(ratio * H); MLP channels keep I - int(ratio * I) rounded up to `multiple`."""
        raise NotImplementedError


class AttnBlock(Block):
    """Self-attention: units are query heads; keys and values follow the heads that read them."""

    name = BLOCK_NAMES[0]
    switch = "prune_attn"

    def units(self, dims: ModelDims) -> int:
        return dims.num_heads

    def channels(self, dims: ModelDims) -> int:
        return dims.num_heads * dims.head_dim

    def unit_channels(self, units: Tensor, dims: ModelDims) -> Tensor:
        return head_channels(units, dims.head_dim)

    def norm(self, w: LayerWeights) -> nn.Module:
        return w.attn_norm

    def post_norm(self, w: LayerWeights) -> Optional[nn.Module]:
        return w.attn_post_norm

    def final_weight(self, w: LayerWeights) -> Tensor:
        return w.o_w

    def slice_final(self, sl: AttnSlice) -> Tensor:
        return sl.o_w

    def with_slice_final(self, sl: AttnSlice, weight: Tensor) -> AttnSlice:
        return replace(sl, o_w=weight)

    def slice(self, w: LayerWeights, dims: ModelDims, kept: Optional[Tensor],
              buffers: Optional[Buffers] = None, final_t: Optional[Tensor] = None) -> AttnSlice:
        return slice_attn(w, dims, kept, buffers, final_t)

    def window(self, adapter: Adapter, layer: int) -> Optional[int]:
        return adapter.windows[layer]

    def front(self, adapter: Adapter, sl: AttnSlice, x: Tensor, rot: Rotary, mask: Optional[Tensor],
              store: Optional[tuple[KVStore, int]] = None) -> Tensor:
        return attn_front(sl, x, adapter.dims.head_dim, rot, mask, store, scale=adapter.dims.attn_scale)

    def out(self, sl: AttnSlice, z: Tensor, bias: Optional[Tensor]) -> Tensor:
        return attn_out(sl, z, bias)

    def probe_context(self, rot: Rotary, xp: Tensor, samples: Tensor, tokens: Tensor,
                      valid: Optional[Tensor], window: Optional[int]) -> tuple[Rotary, Optional[Tensor]]:
        if rot is not None:  # the batch's cos and sin at the probe's rows and columns: the same values, not recomputed
            rot = (rot[0].index_select(0, samples).index_select(1, tokens),
                   rot[1].index_select(0, samples).index_select(1, tokens))
        # Causal among the probe's tokens at their original positions, and within the layer's window.
        mask = attention_mask_4d(valid, xp.shape[1], xp.device, window=window,
                                 positions=None if window is None else tokens[None])
        return rot, mask

    def flops(self, adapter: Adapter, B: int, L: int, sl: Optional[AttnSlice] = None, with_out: bool = True) -> int:
        dims = adapter.dims
        heads, kv = (dims.num_heads, dims.num_kv_heads) if sl is None else (sl.n_heads, sl.n_kv)
        return attn_flops(B, L, dims, heads, kv, with_out=with_out)

    def unit_scores(self, channel_scores: Tensor, dims: ModelDims) -> Tensor:
        return head_sums(channel_scores, dims.head_dim)

    def ppsp(self, energy: Tensor, w_pow4: Tensor, dims: ModelDims) -> Tensor:
        return ppsp_heads(energy, w_pow4, dims.head_dim)

    def keep_top(self, scores: Tensor, ratio: float, dims: ModelDims, multiple: int) -> Tensor:
        return keep_top_heads(scores, heads_pruned(ratio, dims.num_heads))


class MlpBlock(Block):
    """The MLP: units are intermediate channels (gate/up rows, down_proj columns)."""

    name = BLOCK_NAMES[1]
    switch = "prune_mlp"

    def norm(self, w: LayerWeights) -> nn.Module:
        return w.mlp_norm

    def post_norm(self, w: LayerWeights) -> Optional[nn.Module]:
        return w.mlp_post_norm

    def final_weight(self, w: LayerWeights) -> Tensor:
        return w.down_w

    def units(self, dims: ModelDims) -> int:
        return dims.intermediate

    def channels(self, dims: ModelDims) -> int:
        return dims.intermediate

    def unit_channels(self, units: Tensor, dims: ModelDims) -> Tensor:
        return units  # a unit is a channel

    def slice_final(self, sl: MlpSlice) -> Tensor:
        return sl.down_w

    def with_slice_final(self, sl: MlpSlice, weight: Tensor) -> MlpSlice:
        return replace(sl, down_w=weight)

    def slice(self, w: LayerWeights, dims: ModelDims, kept: Optional[Tensor],
              buffers: Optional[Buffers] = None, final_t: Optional[Tensor] = None) -> MlpSlice:
        return slice_mlp(w, kept, buffers, final_t)

    def front(self, adapter: Adapter, sl: MlpSlice, x: Tensor, rot: Rotary, mask: Optional[Tensor],
              store: Optional[tuple[KVStore, int]] = None) -> Tensor:
        return mlp_front(sl, x, adapter.act)

    def out(self, sl: MlpSlice, z: Tensor, bias: Optional[Tensor]) -> Tensor:
        return mlp_out(sl, z, bias)

    def flops(self, adapter: Adapter, B: int, L: int, sl: Optional[MlpSlice] = None, with_out: bool = True) -> int:
        dims = adapter.dims
        channels = dims.intermediate if sl is None else sl.up_w.shape[0]
        return mlp_flops(B, L, dims, channels, adapter.gated_mlp, with_out=with_out)

    def unit_scores(self, channel_scores: Tensor, dims: ModelDims) -> Tensor:
        return channel_scores

    def ppsp(self, energy: Tensor, w_pow4: Tensor, dims: ModelDims) -> Tensor:
        return ppsp_channels(energy, w_pow4)

    def keep_top(self, scores: Tensor, ratio: float, dims: ModelDims, multiple: int) -> Tensor:
        return keep_top_channels(scores, mlp_kept_for_ratio(ratio, dims.intermediate, multiple))


ATTN = AttnBlock()
MLP = MlpBlock()
BLOCKS: tuple[Block, ...] = (ATTN, MLP)  # in the order a decoder layer runs them (record.BLOCK_NAMES)
_BY_NAME: dict[str, Block] = {b.name: b for b in BLOCKS}
BlockLike = Union[Block, str]


def as_block(block: BlockLike) -> Block:
    """`block` itself, or the block of that name ("attn", "mlp"). Raises ValueError for another name."""
    if isinstance(block, Block):
        return block
    try:
        return _BY_NAME[block]
    except (KeyError, TypeError):
        raise ValueError(f"unknown block {block!r}; the blocks are {', '.join(BLOCK_NAMES)}") from None

