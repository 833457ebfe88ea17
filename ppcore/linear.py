"""The engine's one matrix product with a weight, `linear` (F.linear with a fast path for few rows on the CPU)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SKINNY_ROWS = 4  # at most this many rows (tokens x samples) take `linear`'s skinny path on the CPU


def linear(x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    """F.linear: x (..., K) @ w (N, K)^T + b (N,) -> (..., N), contiguous.

    For very few rows on the CPU (a decode step of a small batch: at most `SKINNY_ROWS`), the same product
    is computed as (w @ x^T)^T: CPU BLAS runs a short, wide operand faster in that role (on 2 cores, 1.1x to
    3.6x at 2 and 4 rows for the default model's weights; from 8 rows on it gains nothing or loses:
    `python -m bench.skinny_linear`). The results agree with F.linear's to float rounding, not always to
    the bit. On other devices, and for more rows, it is F.linear itself. Raises RuntimeError (from torch)
    on shapes that do not fit.
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 0 < rows <= SKINNY_ROWS:
        return F.linear(x, w, b)
    xt = x.reshape(rows, x.shape[-1]).t()
    out = torch.mm(w, xt) if b is None else torch.addmm(b[:, None], w, xt)
    return out.t().contiguous().view(*x.shape[:-1], w.shape[0])
