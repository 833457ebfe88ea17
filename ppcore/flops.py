"""Analytic FLOPs (2 per multiply-add) of the matrix products a block runs.

Attention scores and the weighted sum count the full L x L products that a dense kernel
computes; norms, activations and softmax are ignored (they are under 1 % here).
"""
from __future__ import annotations

from .adapters import ModelDims


def attn_flops(B: int, L: int, dims: ModelDims, heads: int, kv_heads: int, with_out: bool = True) -> int:
    T, d, D = B * L, dims.head_dim, dims.hidden
    proj = 2 * T * D * d * (heads + 2 * kv_heads)
    scores = 2 * 2 * B * heads * L * L * d
    out = 2 * T * heads * d * D if with_out else 0
    return proj + scores + out


def mlp_flops(B: int, L: int, dims: ModelDims, channels: int, gated: bool, with_out: bool = True) -> int:
    T, D = B * L, dims.hidden
    front = 2 * T * D * channels * (2 if gated else 1)
    return front + (2 * T * channels * D if with_out else 0)


def head_flops(B: int, L: int, dims: ModelDims) -> int:
    """The LM head, never pruned."""
    return 2 * B * L * dims.hidden * dims.vocab

