"""Formulas of Probe Pruning and its baselines, on plain tensors (docs/algorithm.md §2-4, §8).

Everything here is pure: no model, no state. All arithmetic is fp32 (or fp64 where FLAP's global
search asks for it), whatever the model dtype. Shapes: B samples, L tokens, D hidden size, C a final
projection's input channels, H heads of d channels. Nothing here raises on its own; torch raises
RuntimeError for tensors of the wrong shape.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

FUSION_EPS = 1e-6


# --- probe selection (docs/algorithm.md §2.2-2.3) ----------------------------------------------
def residual_importance(resid: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Residual importance N (B, L) fp32: N[b, t] = ||resid[b, t, :]||_2 of resid (B, L, D); pad positions
    (valid (B, L) == 0) get 0. docs/algorithm.md §2.2."""
    n = torch.linalg.vector_norm(resid.float(), ord=2, dim=-1)
    if valid is not None:
        n = n * valid.to(n.dtype)
    return n


def probe_token_count(L: int, frac: float) -> int:
    """Probe tokens out of L: min(max(ceil(L * frac), 2), L), or L when L < 2 (docs/algorithm.md §2.3)."""
    return min(max(math.ceil(L * frac), 2), L) if L >= 2 else L


def probe_sample_count(B: int, frac: float) -> int:
    """Probe samples out of B: min(max(ceil(B * frac), 1), B) (docs/algorithm.md §2.3)."""
    return min(max(math.ceil(B * frac), 1), B)


def select_tokens(N: Tensor, frac: float) -> Tensor:
    """Top tokens (n_t,) by ||N[:, t]||_2 over the batch, sorted ascending; token 0 forced when <= 10 kept.

    `N` (B, L) residual importance. docs/algorithm.md §2.3.
    """
    L = N.shape[1]
    n_t = probe_token_count(L, frac)
    score = torch.linalg.vector_norm(N, ord=2, dim=0)
    idx = torch.topk(score, n_t).indices.sort().values
    if n_t <= 10:
        idx[0] = 0
    return idx


def select_samples(N: Tensor, tokens: Tensor, frac: float) -> Tensor:
    """Top samples (n_b,) by the L2 norm of N (B, L) over the already-selected `tokens` only, sorted
    ascending (docs/algorithm.md §2.3)."""
    n_b = probe_sample_count(N.shape[0], frac)
    score = torch.linalg.vector_norm(N.index_select(1, tokens), ord=2, dim=1)
    return torch.topk(score, n_b).indices.sort().values


# --- fusion (docs/algorithm.md §3.3) -------------------------------------------------------------
def probe_energy(zp: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """P[t, c] = sum_b zp[b, t, c]^2 / (non-pad probe samples at t): (n_t, C) fp32 from the probe's final
    projection input `zp` (n_b, n_t, C) and its 0/1 `valid` (n_b, n_t) or None (docs/algorithm.md §3.3)."""
    z2 = zp.float().square()
    if valid is None:
        # One sample (the usual probe): its squares are the mean already (a sum of one term, divided by 1).
        return z2[0] if zp.shape[0] == 1 else z2.sum(0) / zp.shape[0]
    v = valid.to(z2.dtype)
    return (z2 * v[..., None]).sum(0) / v.sum(0).clamp_min(1.0)[:, None]


def fuse(P: Tensor, G: Tensor) -> Tensor:
    """Importance-scaled fusion of probe P and history G, both (n_t, C), element-wise per (position, channel):
    a = P / (P + G + 1e-6), F = (1 - a) * G + a * P (docs/algorithm.md §3.3)."""
    # The formula's operations in its order, on two temporaries instead of seven.
    a_p = torch.add(P, G).add_(FUSION_EPS)
    torch.div(P, a_p, out=a_p)
    return torch.rsub(a_p, 1).mul_(G).add_(a_p.mul_(P))


def fuse_fixed(P: Tensor, G: Tensor, probe_weight: float) -> Tensor:
    """Fixed-weight fusion, the paper's fusion ablation: F = X * P + (1 - X) * G with X = `probe_weight`, both
    (n_t, C), for attention and MLP alike (the official code swaps P and G for the MLP, docs/algorithm.md §12:
    its X on the MLP is 1 - X here)."""
    return torch.lerp(G, P, probe_weight)


# --- scores (docs/algorithm.md §4, §4.1) ---------------------------------------------------------
def column_pow4(w_fin: Tensor) -> Tensor:
    """(C,) sum_i W[i, c]^4 of the final projection W (D_out, C): static, precomputed once per layer
    (docs/algorithm.md §4)."""
    return w_fin.float().pow(4).sum(0)


def ppsp_channels(s: Tensor, w_pow4: Tensor) -> Tensor:
    """MLP channel scores (C,): I_c = s_c * sqrt(sum_i W_ic^4), from energies s and `column_pow4`
    (docs/algorithm.md §4)."""
    return s * w_pow4.sqrt()


def ppsp_heads(s: Tensor, w_pow4: Tensor, head_dim: int) -> Tensor:
    """Head scores (H,): I_h = sqrt(sum_{c in h} s_c^2 * sum_i W_ic^4) = L2 over (out dim, head channels),
    from energies s (H*d,) and `column_pow4` (H*d,) (docs/algorithm.md §4)."""
    return (s.square() * w_pow4).view(-1, head_dim).sum(1).sqrt()


def wanda_sp_channels(w_fin: Tensor, sq_energy: Tensor) -> Tensor:
    """Wanda-sp channel scores (C,): ||W[:, c]||_1 * sqrt(sum_t H[t, c]) (docs/algorithm.md §4.1)."""
    return w_fin.float().abs().sum(0) * sq_energy.sqrt()


def flap_channels(w_fin: Tensor, fluc: Tensor) -> Tensor:
    """FLAP's WIFV (C,): fluctuation `fluc` (C,), summed over positions, times the squared column norm of
    W (D_out, C) (docs/algorithm.md §8.1b)."""
    return fluc * w_fin.float().square().sum(0)


def head_sums(channel_scores: Tensor, head_dim: int) -> Tensor:
    """(H*d,) channel scores summed within each head -> (H,) (docs/algorithm.md §4.1)."""
    return channel_scores.view(-1, head_dim).sum(1)


# --- keep-sets (docs/algorithm.md §4.2) ----------------------------------------------------------
def keep_top_heads(head_scores: Tensor, num_pruned: int) -> Tensor:
    """Drop the `num_pruned` lowest of the (H,) head scores; the kept heads, sorted ascending (docs/algorithm.md §4.2).
    Ties: stable sort."""
    order = torch.argsort(head_scores, stable=True)
    return order[num_pruned:].sort().values


def keep_top_channels(scores: Tensor, num_kept: int) -> Tensor:
    """Keep the `num_kept` highest of the (C,) channel scores, returned sorted ascending (contiguous slices;
    docs/algorithm.md §4.2). Ties: stable sort."""
    order = torch.argsort(scores, stable=True)
    return order[scores.numel() - num_kept:].sort().values


# --- FLAP global allocation (docs/algorithm.md §8.1b) --------------------------------------------
def flap_head_weight(seq_len: int, hidden: int, num_heads: int, gqa: bool, head_dim: Optional[int] = None) -> float:
    """FLOPs of one head in units of one MLP channel: (L*D*d*k + 2*L^2*d) / (3*L*D), d the head width
    (`head_dim`; D/H as in the official code when not given, which is the same on Llama-shaped models but not on
    Gemma 3, whose heads are 256 wide at D = 640 over 4 heads), k = 2 with grouped-query attention, else 4
    (docs/algorithm.md §8.1b)."""
    d = head_dim if head_dim is not None else hidden / num_heads
    k = 2 if gqa else 4
    return (seq_len * hidden * d * k + 2 * seq_len**2 * d) / (3 * seq_len * hidden)


def _zscore(x: Tensor) -> Tensor:
    return (x - x.mean(dim=-1, keepdim=True)) / x.std(dim=-1, keepdim=True)


def flap_ratios(
    attn_metrics: list[Tensor],
    mlp_metrics: list[Tensor],
    head_dim: int,
    head_weight: float,
    r_eff: float,
) -> tuple[list[float], list[float]]:
    """Per-module pruning ratios from FLAP's standardised global search.

    `attn_metrics[i]` is the (H*d,) WIFV of layer i's o_proj input, `mlp_metrics[i]` the (I,) one of
    its down_proj input (pruned layers only). Returns (attention ratios, MLP ratios): per module, the
    fraction of its units at or below the global threshold (docs/algorithm.md §8.1b). Raises IndexError
    when both lists are empty.
    """
    parts: list[Tensor] = []
    weights: list[Tensor] = []
    if attn_metrics:
        a = _zscore(torch.stack(attn_metrics).double())
        heads = a.view(a.shape[0], -1, head_dim).mean(-1).reshape(-1)
        parts.append(heads)
        weights.append(torch.full_like(heads, head_weight))
    if mlp_metrics:
        m = _zscore(torch.stack(mlp_metrics).double()).reshape(-1)
        parts.append(m)
        weights.append(torch.ones_like(m))
    scores = torch.cat(parts)
    order = torch.argsort(scores, stable=True)
    cum = torch.cumsum(torch.cat(weights)[order], 0)
    target = torch.tensor(r_eff * float(cum[-1]), dtype=cum.dtype, device=cum.device)
    index = int(torch.searchsorted(cum, target, right=True).clamp_max(scores.numel() - 1))
    threshold = scores[order][index].float()

    def ratio(metric: Tensor, per_head: bool) -> float:
        z = _zscore(metric.float())
        units = z.view(-1, head_dim).mean(-1) if per_head else z
        return int((units <= threshold).sum()) / units.numel()

    return [ratio(x, True) for x in attn_metrics], [ratio(x, False) for x in mlp_metrics]
