"""Analytic FLOPs (2 per multiply-add) of the matrix products a block runs, and the ratios we report
(docs/algorithm.md §2.5, §9.3).

Attention scores and the weighted sum count the full L x L products that a dense kernel
computes; norms, activations and softmax are ignored (they are under 1 % here). Nothing here raises.
"""
from __future__ import annotations

from typing import Optional

from .adapters import ModelDims


def attn_flops(B: int, L: int, dims: ModelDims, heads: int, kv_heads: int, with_out: bool = True) -> int:
    """FLOPs of attention on B x L tokens with `heads` query and `kv_heads` key/value heads: q/k/v, scores and
    weighted sum, and o_proj unless `with_out` is False (the probe stops before it, docs/algorithm.md §2.5)."""
    T, d, D = B * L, dims.head_dim, dims.hidden
    proj = 2 * T * D * d * (heads + 2 * kv_heads)
    scores = 2 * 2 * B * heads * L * L * d
    out = 2 * T * heads * d * D if with_out else 0
    return proj + scores + out


def mlp_flops(B: int, L: int, dims: ModelDims, channels: int, gated: bool, with_out: bool = True) -> int:
    """FLOPs of the MLP on B x L tokens with `channels` intermediate channels: gate (if `gated`) and up, and
    down_proj unless `with_out` is False (docs/algorithm.md §2.5)."""
    T, D = B * L, dims.hidden
    front = 2 * T * D * channels * (2 if gated else 1)
    return front + (2 * T * channels * D if with_out else 0)


FLOPS_KEYS = ("dense", "pruned", "probe", "head")
RATIO_NAMES = ("flops_ratio", "decoder_flops_ratio", "probe_flops_ratio", "decoder_probe_flops_ratio")


def add_flops(total: dict[str, int], batch: dict[str, int]) -> dict[str, int]:
    """Add one batch's FLOPs counts into `total`, key by key (a run's counts are the sum over its batches)."""
    for k, v in batch.items():
        total[k] = total.get(k, 0) + int(v)
    return total


def flops_ratios(flops: dict[str, int]) -> dict[str, Optional[float]]:
    """The four FLOPs figures (docs/cli.md, docs/algorithm.md §9.3) from summed FLOPs counts.

    `flops` holds `dense` and `pruned` (whole model, LM head included, embeddings aside), `probe` (the
    probe's FLOPs) and `head` (the part outside the decoder layers, included in both dense and pruned).
    Returns `flops_ratio` and `probe_flops_ratio` (over the whole model's dense FLOPs), and
    `decoder_flops_ratio` and `decoder_probe_flops_ratio` (over the decoder layers' dense FLOPs only:
    the paper's definition). Counts without `head` (records written before it existed) give None for
    the decoder figures rather than a wrong number.
    """
    dense, pruned, probe = (int(flops.get(k, 0)) for k in FLOPS_KEYS[:3])
    out: dict[str, Optional[float]] = {
        "flops_ratio": pruned / dense if dense else 1.0,
        "decoder_flops_ratio": None,
        "probe_flops_ratio": probe / dense if dense else 0.0,
        "decoder_probe_flops_ratio": None,
    }
    if "head" in flops:
        dec = dense - int(flops["head"])
        out["decoder_flops_ratio"] = (pruned - int(flops["head"])) / dec if dec else 1.0
        out["decoder_probe_flops_ratio"] = probe / dec if dec else 0.0
    return out

