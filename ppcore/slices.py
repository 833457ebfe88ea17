"""Pruned weights and the math run on them: one attention block and one MLP block (docs/algorithm.md §5).

Pruning is physical: a keep-set becomes smaller, contiguous weight matrices (`slice_attn`,
`slice_mlp`), built once per decision and reused; with no keep-set the model's own tensors are
used as they are, without a copy. Nothing here reads the model or writes to a weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapters import LayerWeights, ModelDims


def head_channels(heads: Tensor, head_dim: int) -> Tensor:
    """Channel indices in the H*d projection space of the given heads, head by head.

    `heads` (n,) long -> (n * head_dim,) long: head h owns channels h*d .. h*d + d - 1
    (docs/algorithm.md §4.2). Raises nothing; an empty `heads` gives an empty result.
    """
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def _rows(t: Optional[Tensor], idx: Optional[Tensor]) -> Optional[Tensor]:
    if t is None or idx is None:
        return t
    return t.index_select(0, idx)


@dataclass(frozen=True)
class AttnSlice:
    """Attention weights restricted to a set of query heads and the key/value heads they read
    (docs/algorithm.md §4.2 grouped-query attention, §5).

    Weights in PyTorch layout (out x in), on the layer's device: q_w (n_heads*d, D), k_w and v_w
    (n_kv*d, D), o_w (D_out, n_heads*d); biases match their rows or are None.
    """

    heads: Optional[Tensor]  # kept query heads, ascending (None = all)
    n_heads: int
    n_kv: int
    q_w: Tensor
    q_b: Optional[Tensor]
    k_w: Tensor
    k_b: Optional[Tensor]
    v_w: Tensor
    v_b: Optional[Tensor]
    o_w: Tensor  # (D_out, n_heads * d)
    o_b: Optional[Tensor]
    # Uneven kept heads per kv head: (first q head, end q head) per kept kv head, in order, so each
    # group runs SDPA's GQA mode on its own kv head without materialising repeated keys/values.
    groups: Optional[tuple[tuple[int, int], ...]]


def slice_attn(w: LayerWeights, dims: ModelDims, heads: Optional[Tensor]) -> AttnSlice:
    """Slice q and o by query heads; keep a key/value head only while one of its query heads is kept.

    `heads` (n,) long, ascending, or None for every head (the model's own tensors, no copy).
    docs/algorithm.md §4.2 (grouped-query attention), §5. Raises nothing; indices out of range fail
    in `index_select` (IndexError / RuntimeError).
    """
    d = dims.head_dim
    if heads is None:
        return AttnSlice(None, dims.num_heads, dims.num_kv_heads, w.q_w, w.q_b, w.k_w, w.k_b,
                         w.v_w, w.v_b, w.o_w, w.o_b, None)
    heads = heads.to(w.q_w.device)
    qi = head_channels(heads, d)
    kv_of_head = torch.div(heads, dims.group, rounding_mode="floor")
    needed, counts = torch.unique(kv_of_head, sorted=True, return_counts=True)
    kvi = head_channels(needed, d)
    # Heads are sorted, so query heads come grouped by kv head; equal group sizes fit SDPA's GQA mode.
    sizes = counts.tolist()
    groups = None
    if len(set(sizes)) > 1:
        ends = torch.tensor(sizes).cumsum(0).tolist()
        groups = tuple((e - n, e) for n, e in zip(sizes, ends))
    return AttnSlice(
        heads=heads, n_heads=int(heads.numel()), n_kv=int(needed.numel()),
        q_w=w.q_w.index_select(0, qi), q_b=_rows(w.q_b, qi),
        k_w=w.k_w.index_select(0, kvi), k_b=_rows(w.k_b, kvi),
        v_w=w.v_w.index_select(0, kvi), v_b=_rows(w.v_b, kvi),
        o_w=w.o_w.index_select(1, qi).contiguous(), o_b=w.o_b, groups=groups,
    )


def rotate_half(x: Tensor) -> Tensor:
    """Rotary helper: (..., 2k) -> (..., 2k) with halves (x1, x2) mapped to (-x2, x1) (docs/algorithm.md §2.4)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


KV = tuple[Tensor, Tensor]  # rotated keys and values, each (B, n_kv, L_keys, d)


def attn_front(
    s: AttnSlice,
    x: Tensor,
    head_dim: int,
    rot: Optional[tuple[Tensor, Tensor]],
    mask: Optional[Tensor],
    past: Optional[KV] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Input of o_proj for the kept heads, (B, L, n_heads * d), and this call's keys and values.

    `x` (B, L, D) normed block input; `rot` the rotary (cos, sin), each (B, L, d), or None; `mask` a
    boolean (B or 1, 1, L, L_keys) mask (True = attend) or None: plain causal attention, or, with
    `past` (cached keys and values, (B, n_kv, L_past, d)), attention to every cached key.
    The returned keys and values (B, n_kv, L_past + L, d) are rotated, before any GQA expansion.
    With no head kept, the input is (B, L, 0) and keys and values are empty. docs/algorithm.md §2.4, §5.
    Raises RuntimeError (from torch) on shapes that do not fit the slice.
    """
    B, L, _ = x.shape
    if s.n_heads == 0:
        empty = x.new_zeros(B, 0, L if past is None else past[0].shape[2] + L, head_dim)
        return x.new_zeros(B, L, 0), empty, empty
    q = F.linear(x, s.q_w, s.q_b).view(B, L, s.n_heads, head_dim).transpose(1, 2)
    k = F.linear(x, s.k_w, s.k_b).view(B, L, s.n_kv, head_dim).transpose(1, 2)
    v = F.linear(x, s.v_w, s.v_b).view(B, L, s.n_kv, head_dim).transpose(1, 2)
    if rot is not None:
        cos, sin = rot[0].unsqueeze(1), rot[1].unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    causal = mask is None and past is None
    if s.groups is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             enable_gqa=s.n_kv != s.n_heads).transpose(1, 2)
    else:
        out = torch.cat([
            F.scaled_dot_product_attention(q[:, a:b], k[:, g:g + 1], v[:, g:g + 1], attn_mask=mask,
                                           is_causal=causal, enable_gqa=True).transpose(1, 2)
            for g, (a, b) in enumerate(s.groups)
        ], dim=2)
    return out.reshape(B, L, s.n_heads * head_dim), k, v


def project_out(w: Tensor, b: Optional[Tensor], z: Tensor, extra_bias: Optional[Tensor] = None) -> Tensor:
    """The block's final projection on the kept input columns (o_proj / down_proj / fc2), docs/algorithm.md §5.

    `w` (D_out, C_kept), `z` (B, L, C_kept) -> (B, L, D_out). With nothing kept the output is just the
    biases; `extra_bias` (D_out,) is FLAP's compensation (docs/algorithm.md §8.1c). Raises nothing beyond torch.
    """
    if z.shape[-1] == 0:
        out = z.new_zeros(*z.shape[:-1], w.shape[0])
        if b is not None:
            out = out + b
    else:
        out = F.linear(z, w, b)
    return out if extra_bias is None else out + extra_bias


def attn_out(s: AttnSlice, z: Tensor, extra_bias: Optional[Tensor] = None) -> Tensor:
    """o_proj on the kept heads' channels: `z` (B, L, n_heads*d) -> (B, L, D) (see `project_out`)."""
    return project_out(s.o_w, s.o_b, z, extra_bias)


@dataclass(frozen=True)
class MlpSlice:
    """MLP weights restricted to a set of intermediate channels (docs/algorithm.md §5).

    gate_w and up_w (kept, D) (gate None on OPT: no gated MLP), down_w (D_out, kept), contiguous.
    """

    channels: Optional[Tensor]  # kept intermediate channels (None = all)
    gate_w: Optional[Tensor]
    gate_b: Optional[Tensor]
    up_w: Tensor
    up_b: Optional[Tensor]
    down_w: Tensor  # (D_out, kept)
    down_b: Optional[Tensor]


def slice_mlp(w: LayerWeights, channels: Optional[Tensor]) -> MlpSlice:
    """Slice gate and up by rows and down by columns: `channels` (n,) long ascending, or None for all
    (the model's own tensors, no copy). docs/algorithm.md §5. Indices out of range fail in torch."""
    if channels is None:
        return MlpSlice(None, w.gate_w, w.gate_b, w.up_w, w.up_b, w.down_w, w.down_b)
    ch = channels.to(w.up_w.device)
    return MlpSlice(
        channels=ch,
        gate_w=_rows(w.gate_w, ch), gate_b=_rows(w.gate_b, ch),
        up_w=w.up_w.index_select(0, ch), up_b=_rows(w.up_b, ch),
        down_w=w.down_w.index_select(1, ch).contiguous(), down_b=w.down_b,
    )


def mlp_front(s: MlpSlice, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    """Input of down_proj / fc2 for the kept channels: act(gate) * up, or act(fc1) without a gate.

    `x` (B, L, D) -> (B, L, kept). docs/algorithm.md §2.4, §5. Raises nothing beyond torch.
    """
    up = F.linear(x, s.up_w, s.up_b)
    if s.gate_w is None:
        return act(up)
    return act(F.linear(x, s.gate_w, s.gate_b)) * up


def mlp_out(s: MlpSlice, z: Tensor, extra_bias: Optional[Tensor] = None) -> Tensor:
    """down_proj / fc2 on the kept channels: `z` (B, L, kept) -> (B, L, D) (see `project_out`)."""
    return project_out(s.down_w, s.down_b, z, extra_bias)


Slice = Union[AttnSlice, MlpSlice]
