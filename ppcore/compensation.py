"""PP+'s compensation and error score on plain tensors (docs/algorithm.md "PP+").

Pure functions, fp32, no model and no state. Notation: a block's final projection W (D_out, C) (o_proj or
down_proj), its input channels x_c (attention: the heads' outputs, MLP: act(gate) * up), kept channels K and
pruned channels P = the others.

- Compensation: y = W[:, K] x_K + W[:, P] x_P is replaced by W[:, K] x_K + W[:, P] mu_P, mu the channels' mean, so
  the pruned channels leave only their fluctuation around the mean out of the output.
- Error score: removing channel c adds ||W[:, c]||^2 * E[x_c^2] to the output's expected squared error (to first
  order, ignoring correlations between channels), and ||W[:, c]||^2 * Var(x_c) when its mean is compensated.
  A head's score sums its channels'.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def compensation_bias(w_fin: Tensor, mean: Tensor, kept_channels: Tensor) -> Tensor:
    """W[:, P] @ mean[P] (D_out,), in the weight's dtype: what the pruned channels P (every channel not in the
    (m,) long tensor `kept_channels`) add on average. `w_fin` (D_out, C), `mean` (C,) fp32. FLOPs: `bias_flops`."""
    pruned_mean = mean.float().index_fill(0, kept_channels, 0.0)
    return (w_fin.float() @ pruned_mean).to(w_fin.dtype)


def bias_flops(w_fin: Tensor, pruned: int) -> int:
    """FLOPs of `compensation_bias` for `pruned` pruned channels: the (D_out x |P|) matrix-vector product it stands
    for, 2 * D_out * |P| (it is computed as one D_out x C product with the kept entries zeroed, which avoids a
    host sync for the pruned indices and takes no measurable time at these sizes). Never more than the FLOPs the
    pruned channels save on a single token."""
    return 2 * w_fin.shape[0] * pruned


def centred_energy(energy: Tensor, mean: Tensor, positions: int) -> Tensor:
    """(C,) the energy left after the mean is compensated: max(s_c - n * mean_c^2, 0), for an energy `energy` (C,)
    summed over `positions` (n) positions, as PP's fused energy is, and the mean (C,): the variance's
    counterpart of the fused energy (n times the variance when s_c / n is the second moment)."""
    return (energy - positions * mean.float().square()).clamp_min(0.0)


def column_sq(w_fin: Tensor) -> Tensor:
    """(C,) ||W[:, c]||_2^2 of the final projection W (D_out, C)."""
    return w_fin.float().square().sum(0)


def error_scores(energy: Tensor, w_col_sq: Tensor, head_dim: Optional[int]) -> Tensor:
    """Unit scores from the output error a unit's removal adds: e_c = energy_c * ||W[:, c]||^2 (C,); per head the
    sum over its `head_dim` channels (H,), per MLP channel e_c itself (`head_dim` None)."""
    err = energy * w_col_sq
    return err if head_dim is None else err.view(-1, head_dim).sum(1)


def batch_mean_rest(z: Tensor, valid: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The mean (C,) fp32 of `z` (B, L, C) over its samples and every position but the first (the attention sink,
    kept out of the compensation's mean), pads left out by `valid` (B, L) 0/1 or None; and whether any token
    counted (0-d bool, on z's device: no host sync)."""
    rest = z[:, 1:].float()
    if valid is None:
        count = torch.tensor(float(rest.shape[0] * rest.shape[1]), device=z.device)
        total = rest.sum((0, 1))
    else:
        v = valid[:, 1:].to(rest.dtype)
        count = v.sum()
        total = (rest * v[..., None]).sum((0, 1))
    return total / count.clamp_min(1.0), count > 0
