"""Comparisons between runs: keep-set agreement, output divergence, top-k, stability, cost-benefit.

Pure torch/numpy over walk results and run records, so the app and scripts share one definition
of every number they show. Nothing here touches the model's weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .head_chunks import MAX_SAMPLES, head_blocks
from .ratios import adjusted_ratio, heads_pruned, mlp_kept_for_ratio
from .record import BLOCK_NAMES, BatchRecord

if TYPE_CHECKING:  # annotations only: analysis reads the LM head, nothing else of an adapter
    from .adapters import Adapter
    from .config import PruneConfig


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets agree fully (1.0)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def keep_jaccard(a: BatchRecord, b: BatchRecord, block: str) -> list[Optional[float]]:
    """Per layer, Jaccard of the two runs' keep-sets; None where neither run pruned that block."""
    _check_block(block)
    if len(a.layers) != len(b.layers):
        raise ValueError(f"records have {len(a.layers)} and {len(b.layers)} layers")
    out: list[Optional[float]] = []
    for la, lb in zip(a.layers, b.layers):
        ba, bb = getattr(la, block), getattr(lb, block)
        out.append(jaccard(ba.kept, bb.kept) if (ba.pruned or bb.pruned) else None)
    return out


def kept_fractions(rec: BatchRecord, block: str) -> list[float]:
    """Per layer, the fraction of the block's heads or channels kept (1.0 where it was not pruned)."""
    _check_block(block)
    return [getattr(layer, block).kept_fraction for layer in rec.layers]


def uniform_kept_fractions(rec: BatchRecord, cfg: "PruneConfig", block: str) -> list[float]:
    """Per layer, the fraction of the block's heads or channels PP keeps at `cfg`'s nominal ratio (docs/algorithm.md
    §4.2, §6; 1.0 in skipped layers and switched-off blocks): the uniform allocation an allocation of PP+'s is drawn
    against. The block's unit count is the record's."""
    _check_block(block)
    total = getattr(rec.layers[0], block).total
    n = len(rec.layers)
    r_eff = adjusted_ratio(cfg.block_ratio(block), n, len(cfg.skip_layers))
    if not cfg.prunes or not getattr(cfg, f"prune_{block}"):
        return [1.0] * n
    kept = (total - heads_pruned(r_eff, total) if block == "attn" else
            mlp_kept_for_ratio(r_eff, total, cfg.mlp_multiple))
    return [1.0 if i in cfg.skip_layers else kept / total for i in range(n)]


def kept_matrix(rec: BatchRecord, block: str) -> np.ndarray:
    """(layers x units) 0/1 matrix: 1 where the head or channel was kept."""
    _check_block(block)
    total = getattr(rec.layers[0], block).total
    m = np.zeros((len(rec.layers), total), dtype=np.int8)
    for i, layer in enumerate(rec.layers):
        m[i, getattr(layer, block).kept] = 1
    return m


def probe_token_matrix(rec: BatchRecord, block: str, seq_len: int) -> np.ndarray:
    """(layers x token positions) 0/1 matrix of the probe's token picks: how the pick moves by layer."""
    _check_block(block)
    m = np.zeros((len(rec.layers), seq_len), dtype=np.int8)
    for i, layer in enumerate(rec.layers):
        toks = [t for t in getattr(layer, block).probe_tokens if t < seq_len]
        m[i, toks] = 1
    return m


def stability(records: Sequence[BatchRecord], block: str) -> np.ndarray:
    """Jaccard of each layer's keep-set between consecutive batches: (len(records)-1 x layers), NaN if unpruned."""
    if len(records) < 2:
        raise ValueError("stability needs at least two batches")
    rows = []
    for prev, cur in zip(records[:-1], records[1:]):
        rows.append([np.nan if v is None else v for v in keep_jaccard(prev, cur, block)])
    return np.asarray(rows, dtype=np.float64)


@dataclass
class NextTokens:
    """Next-token agreement between a reference run and another, per position, all on the CPU.

    kl: (B, L) fp32, KL(ref || other) in nats. top1: (B, L) fp32, 1 where the most likely next token
    agrees. ref_ids / ids: (B, L, k) int32, the k most likely next tokens of each run, most likely
    first; ref_probs / probs: (B, L, k) fp32, their probabilities. k is 0 when no top-k was asked for.
    """

    kl: Tensor
    top1: Tensor
    ref_ids: Tensor
    ref_probs: Tensor
    ids: Tensor
    probs: Tensor


@torch.inference_mode()
def next_tokens(adapter: Adapter, hidden_ref: Tensor, hidden: Tensor, k: int = 0,
                chunk: int = MAX_SAMPLES) -> NextTokens:
    """KL, top-1 agreement and each run's top-k next tokens from two (B, L, D) final hidden states.

    The LM head runs a block at a time (`ppcore.head_chunks.head_blocks`: up to `chunk` samples, or a run of
    one sample's tokens): full-vocabulary logits never exist for the whole batch.
    Raises ValueError when the shapes differ or k is negative.
    """
    if hidden_ref.shape != hidden.shape:
        raise ValueError(f"hidden shapes differ: {tuple(hidden_ref.shape)} vs {tuple(hidden.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    B, L = hidden.shape[:2]
    kl = torch.empty(B, L, dtype=torch.float32)
    top1 = torch.empty(B, L, dtype=torch.float32)
    ids = [torch.empty(B, L, k, dtype=torch.int32) for _ in range(2)]
    probs = [torch.empty(B, L, k, dtype=torch.float32) for _ in range(2)]
    for s, t in head_blocks(B, L, adapter.dims.vocab, max_samples=chunk):
        lp_ref = F.log_softmax(adapter.head(hidden_ref[s, t]).float(), -1)
        lp = F.log_softmax(adapter.head(hidden[s, t]).float(), -1)
        kl[s, t] = (lp_ref.exp() * (lp_ref - lp)).sum(-1).clamp_min(0).cpu()
        top1[s, t] = (lp_ref.argmax(-1) == lp.argmax(-1)).float().cpu()
        for j, run in enumerate((lp_ref, lp)):
            if k:
                v, i = run.topk(min(k, run.shape[-1]), -1)
                ids[j][s, t], probs[j][s, t] = i.int().cpu(), v.exp().cpu()
    return NextTokens(kl, top1, ids[0], probs[0], ids[1], probs[1])


def logit_agreement(adapter: Adapter, hidden_ref: Tensor, hidden: Tensor,
                    chunk: int = MAX_SAMPLES) -> tuple[Tensor, Tensor]:
    """Per position KL(ref || other) in nats and top-1 agreement (0/1), both (B, L) fp32 on the CPU."""
    out = next_tokens(adapter, hidden_ref, hidden, 0, chunk)
    return out.kl, out.top1


@torch.inference_mode()
def top_k_next(adapter: Adapter, hidden: Tensor, sample: int, position: int,
               k: int = 10) -> tuple[list[int], list[float]]:
    """The k most likely next tokens after `position` of `sample`, with their probabilities."""
    B, L = hidden.shape[:2]
    if not (0 <= sample < B and 0 <= position < L):
        raise IndexError(f"(sample {sample}, position {position}) outside the batch ({B} x {L})")
    probs = F.softmax(adapter.head(hidden[sample, position][None]).float(), -1)[0]
    p, i = probs.topk(min(k, probs.numel()))
    return i.tolist(), p.tolist()


def masked_mean(values: Tensor, mask: Optional[Tensor]) -> float:
    """Mean over positions where mask is 1 (all positions when mask is None); NaN when none are."""
    if mask is None:
        return float(values.float().mean()) if values.numel() else float("nan")
    m = mask.to(values.device, torch.float32)
    n = float(m.sum())
    return float((values.float() * m).sum() / n) if n else float("nan")


def perplexity(nll: Tensor, mask: Tensor) -> float:
    """exp(mean token NLL) over the batch's scored positions."""
    return math.exp(masked_mean(nll, mask))


# Times within 3 % of each other count as equal: below what repeats on a busy CPU tell apart (the app's words about
# a run's time and the PRR it shows for one batch both use it).
TIME_TIE = 0.03


def prr(ppl: float, ppl_dense: float, seconds: float, seconds_dense: float, min_saved: float = 0.0) -> Optional[float]:
    """PRR, performance degradation per unit of runtime reduction: (ppl - ppl_dense) / (1 - seconds /
    seconds_dense), the perplexity added per unit fraction of dense runtime saved (lower is better).

    Perplexities are unitless, seconds are wall seconds of the same batches. Returns None when the run
    saved no time, or no more than `min_saved` (a fraction: `TIME_TIE` for one batch's timings, whose noise
    would otherwise divide by almost nothing and print PRRs in the thousands).
    """
    saved = 1.0 - seconds / seconds_dense if seconds_dense > 0 else 0.0
    if saved <= max(min_saved, 0.0):
        return None
    return (ppl - ppl_dense) / saved


def _check_block(block: str) -> None:
    if block not in BLOCK_NAMES:
        raise ValueError(f"block must be 'attn' or 'mlp', got {block!r}")
