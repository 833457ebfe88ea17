"""Pruned weights and the math run on them: one attention block and one MLP block (docs/algorithm.md §5).

Pruning is physical: a keep-set becomes smaller, contiguous weight matrices (`slice_attn`,
`slice_mlp`), built once per decision and reused; with no keep-set the model's own tensors are
used as they are, without a copy. Nothing here reads the model or writes to a weight.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


Buffers = dict[str, Tensor]  # a run's reusable slice tensors by weight name: only ever tensors `_gather` allocated


def _columns(w: Tensor, w_t: Optional[Tensor], idx: Tensor, buffers: Optional[Buffers], name: str) -> Tensor:
    """Columns `idx` of `w` (out, in) as an (out, n) tensor: gathered from `w` itself, or, given `w_t` = w.T
    contiguous (in, out), as whole rows of it, returned as their transposed view (a row copy is 3 to 4 times
    faster than a strided column gather on a CPU; `F.linear` on either layout computes the same sums, equal up to
    float rounding)."""
    if w_t is None:
        return _gather(w, 1, idx, buffers, name)
    return _gather(w_t, 0, idx, buffers, name + "_t").t()


def _gather(src: Tensor, dim: int, idx: Tensor, buffers: Optional[Buffers], name: str) -> Tensor:
    """src.index_select(dim, idx): written into buffers[name] when that has the result's shape, dtype and device
    (no allocation), else a new tensor, kept in `buffers` for the next slice. The model's tensors are only read."""
    if buffers is None:
        return src.index_select(dim, idx)
    buf = buffers.get(name)
    shape = src.shape[:dim] + (idx.numel(),) + src.shape[dim + 1:]
    if buf is not None and buf.shape == shape and buf.dtype == src.dtype and buf.device == src.device:
        return torch.index_select(src, dim, idx, out=buf)
    buffers[name] = out = src.index_select(dim, idx)
    return out


@dataclass(frozen=True)
class AttnSlice:
    """Attention weights restricted to a set of query heads (docs/algorithm.md §4.2 grouped-query attention, §5).

    Weights in PyTorch layout (out x in), on the layer's device: q_w (n_heads*d, D), k_w and v_w
    (n_kv*d, D), o_w (D_out, n_heads*d); biases match their rows or are None. Every shape follows from the
    number of kept heads alone, never from which heads they are, so slicing needs no host-device sync:
    with one key/value head per query head (multi-head attention) k and v keep the kept heads' rows; with
    grouped-query attention they keep every key/value head, as the official code does, and `kv_index`
    says which one each kept query head reads.
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
    # (n_heads,) long: the key/value head of each kept query head, or None when SDPA's own grouping holds
    # (query head i reads key/value head i // (n_heads / n_kv)). Keys and values are expanded to one per kept
    # query head as soon as they are computed (an index_select, no sync), and cached that way.
    kv_index: Optional[Tensor]
    # Per-head RMSNorms on q and k over d (Gemma 3), applied before rotary; the model's modules (shared by every
    # head, so a slice needs no copy of them), or None.
    q_norm: Optional[nn.Module] = None
    k_norm: Optional[nn.Module] = None


def slice_attn(w: LayerWeights, dims: ModelDims, heads: Optional[Tensor],
               buffers: Optional[Buffers] = None, o_t: Optional[Tensor] = None) -> AttnSlice:
    """Slice q and o by query heads; k and v by the same heads (multi-head) or not at all (grouped-query).

    `heads` (n,) long, ascending, or None for every head (the model's own tensors, no copy). `buffers`: the
    run's reusable tensors for the copies (a previous slice's, no longer running), or None for new ones.
    `o_t`: o_proj's weight transposed and contiguous (`Adapter.transposed`), to copy o's kept columns as rows
    (the slice's o_w is then a transposed view), or None.
    docs/algorithm.md §4.2 (grouped-query attention), §5. Raises nothing; indices out of range fail
    in `index_select` (IndexError / RuntimeError). No host-device sync.
    """
    d = dims.head_dim
    if heads is None:
        return AttnSlice(None, dims.num_heads, dims.num_kv_heads, w.q_w, w.q_b, w.k_w, w.k_b,
                         w.v_w, w.v_b, w.o_w, w.o_b, None, w.q_norm, w.k_norm)
    heads = heads.to(w.q_w.device)
    qi = head_channels(heads, d)
    n = int(heads.numel())  # a shape, known without reading the tensor
    if dims.group == 1:
        k_w, v_w = _gather(w.k_w, 0, qi, buffers, "k_w"), _gather(w.v_w, 0, qi, buffers, "v_w")
        k_b, v_b = _rows(w.k_b, qi), _rows(w.v_b, qi)
        n_kv, kv_index = n, None
    else:
        # Which key/value heads the kept query heads read depends on the data; keeping them all keeps the
        # shapes static (the official code and its FLOPs count keep them too).
        k_w, k_b, v_w, v_b = w.k_w, w.k_b, w.v_w, w.v_b
        n_kv, kv_index = dims.num_kv_heads, torch.div(heads, dims.group, rounding_mode="floor")
    return AttnSlice(
        heads=heads, n_heads=n, n_kv=n_kv,
        q_w=_gather(w.q_w, 0, qi, buffers, "q_w"), q_b=_rows(w.q_b, qi), k_w=k_w, k_b=k_b, v_w=v_w, v_b=v_b,
        o_w=_columns(w.o_w, o_t, qi, buffers, "o_w"), o_b=w.o_b, kv_index=kv_index, q_norm=w.q_norm, k_norm=w.k_norm,
    )


def rotate_half(x: Tensor) -> Tensor:
    """Rotary helper: (..., 2k) -> (..., 2k) with halves (x1, x2) mapped to (-x2, x1) (docs/algorithm.md §2.4)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


KV = tuple[Tensor, Tensor]  # rotated keys and values, each (B, heads, L_keys, d)


class KVStore(Protocol):
    """Where attention's keys and values go: the walk's capture, or generation's preallocated cache."""

    def extend(self, layer: int, k: Tensor, v: Tensor) -> KV:
        """Store this call's keys and values (B, h, L, d) for `layer`; return every key and value the new
        queries attend to (the cached ones first), each (B, h, L_keys, d)."""


def attn_front(
    s: AttnSlice,
    x: Tensor,
    head_dim: int,
    rot: Optional[tuple[Tensor, Tensor]],
    mask: Optional[Tensor],
    store: Optional[tuple[KVStore, int]] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """Input of o_proj for the kept heads, (B, L, n_heads * d).

    `x` (B, L, D) normed block input; `rot` the rotary (cos, sin), each (B, L, d), or None; `mask` a
    boolean (B or 1, 1, L, L_keys) mask (True = attend) or None: plain causal attention when the keys are
    this call's own, else attention to every key. `store` (a `KVStore`, the layer): where this call's
    rotated keys and values go (one per key/value head of the slice, or, with a `kv_index`, already one per
    kept query head), and which keys the queries see (cached ones included).
    `scale` multiplies q.k (None: 1 / sqrt(d)); a slice's q/k norms run on each head before rotary.
    With no head kept, the input is (B, L, 0).
    docs/algorithm.md §2.4, §5. Raises RuntimeError (from torch) on shapes that do not fit the slice.
    No host-device sync.
    """
    B, L, _ = x.shape
    if s.n_heads == 0:
        if store is not None:
            empty = x.new_zeros(B, 0, L, head_dim)
            store[0].extend(store[1], empty, empty)
        return x.new_zeros(B, L, 0)
    q = F.linear(x, s.q_w, s.q_b).view(B, L, s.n_heads, head_dim)
    k = F.linear(x, s.k_w, s.k_b).view(B, L, s.n_kv, head_dim)
    if s.q_norm is not None:  # over d, per head and token: the same before or after the transpose
        q = s.q_norm(q)
    if s.k_norm is not None:
        k = s.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = F.linear(x, s.v_w, s.v_b).view(B, L, s.n_kv, head_dim).transpose(1, 2)
    if rot is not None:
        cos, sin = rot[0].unsqueeze(1), rot[1].unsqueeze(1)
        # q * cos + rotate_half(q) * sin, the same operations in the same order, in place where the tensor is ours.
        q = q.mul(cos).add_(rotate_half(q).mul_(sin))
        k = k.mul(cos).add_(rotate_half(k).mul_(sin))
    if s.kv_index is not None:
        # One key/value head per kept query head, before caching: a decode step then expands only its own new
        # column, not every cached one again (that copy grew with the continuation: O(n^2) in all). The price: a
        # pruned layer caches one entry per kept query head, (kept fraction x group) times a dense layer's cache
        # (2x on the default model at 40 %; at most `group` x, i.e. the size of multi-head attention's cache).
        k, v = k.index_select(1, s.kv_index), v.index_select(1, s.kv_index)
    if store is not None:
        k, v = store[0].extend(store[1], k, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and k.shape[2] == L,
                                         enable_gqa=k.shape[1] != s.n_heads, scale=scale).transpose(1, 2)
    return out.reshape(B, L, s.n_heads * head_dim)


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

    gate_w and up_w (kept, D) (gate None on OPT: no gated MLP), contiguous; down_w (D_out, kept), contiguous or the
    transposed view of a (kept, D_out) copy (`slice_mlp`'s `down_t`).
    """

    channels: Optional[Tensor]  # kept intermediate channels (None = all)
    gate_w: Optional[Tensor]
    gate_b: Optional[Tensor]
    up_w: Tensor
    up_b: Optional[Tensor]
    down_w: Tensor  # (D_out, kept)
    down_b: Optional[Tensor]


def slice_mlp(w: LayerWeights, channels: Optional[Tensor], buffers: Optional[Buffers] = None,
              down_t: Optional[Tensor] = None) -> MlpSlice:
    """Slice gate and up by rows and down by columns: `channels` (n,) long ascending, or None for all
    (the model's own tensors, no copy); `buffers` as in `slice_attn`; `down_t` down_proj's weight transposed
    (as `o_t` in `slice_attn`) or None. docs/algorithm.md §5. Indices out of range fail in torch. No
    host-device sync."""
    if channels is None:
        return MlpSlice(None, w.gate_w, w.gate_b, w.up_w, w.up_b, w.down_w, w.down_b)
    ch = channels.to(w.up_w.device)
    return MlpSlice(
        channels=ch,
        gate_w=None if w.gate_w is None else _gather(w.gate_w, 0, ch, buffers, "gate_w"), gate_b=_rows(w.gate_b, ch),
        up_w=_gather(w.up_w, 0, ch, buffers, "up_w"), up_b=_rows(w.up_b, ch),
        down_w=_columns(w.down_w, down_t, ch, buffers, "down_w"), down_b=w.down_b,
    )


def mlp_front(s: MlpSlice, x: Tensor, act: Callable[[Tensor], Tensor]) -> Tensor:
    """Input of down_proj / fc2 for the kept channels: act(gate) * up, or act(fc1) without a gate.

    `x` (B, L, D) -> (B, L, kept). docs/algorithm.md §2.4, §5. Raises nothing beyond torch.
    """
    up = F.linear(x, s.up_w, s.up_b)
    if s.gate_w is None:
        return act(up)
    # In place on tensors computed here: the same arithmetic as act(gate) * up, without two more allocations.
    return act(F.linear(x, s.gate_w, s.gate_b)).mul_(up)


def mlp_out(s: MlpSlice, z: Tensor, extra_bias: Optional[Tensor] = None) -> Tensor:
    """down_proj / fc2 on the kept channels: `z` (B, L, kept) -> (B, L, D) (see `project_out`)."""
    return project_out(s.down_w, s.down_b, z, extra_bias)


Slice = Union[AttnSlice, MlpSlice]


def copied_bytes(sl: Slice) -> int:
    """Bytes of the weight copies a slice holds: its gathered tensors, never the model's own (an unpruned
    slice holds none; a grouped-query slice shares the model's k and v)."""
    if isinstance(sl, AttnSlice):
        if sl.heads is None:
            return 0
        owned = [sl.q_w, sl.q_b, sl.o_w] + ([sl.k_w, sl.k_b, sl.v_w, sl.v_b] if sl.kv_index is None else [])
    else:
        if sl.channels is None:
            return 0
        owned = [sl.gate_w, sl.gate_b, sl.up_w, sl.up_b, sl.down_w]
    return sum(t.numel() * t.element_size() for t in owned if t is not None)
