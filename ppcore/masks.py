"""Boolean attention masks: causal, key padding and sliding windows (docs/algorithm.md §2.4, §5).

True means "may attend". The walk builds one mask per batch (and one per sliding window), the probe
one for its own tokens at their original positions, and each decode step one row per new token.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def attention_mask_4d(key_valid: Optional[Tensor], L: int, device: torch.device, *,
                      window: Optional[int] = None, positions: Optional[Tensor] = None) -> Optional[Tensor]:
    """Causal mask combined with a key-padding mask and a sliding window; None when neither applies.

    Shapes: `key_valid` (B, L) 1/0 or None; `positions` (B, L) or None, each column's token position
    (default: the column index; the probe passes its tokens' original positions). With `window`, a
    query at position p sees keys at positions p - window < q <= p, as Hugging Face's sliding-window
    layers do. Returns a boolean (B or 1, 1, L, L) mask, True = attend. Each query may always attend
    to itself so that pad rows never see an empty softmax (NaN); their outputs are excluded from
    every statistic and loss downstream. docs/algorithm.md §2.4 (the probe's mask), §5. Raises nothing.
    """
    if key_valid is None and window is None:
        return None
    if window is None and positions is None:
        m = torch.ones(L, L, dtype=torch.bool, device=device).tril()[None]
    else:
        pos = torch.arange(L, device=device)[None] if positions is None else positions.to(device)
        q, k = pos[:, :, None], pos[:, None, :]
        m = k <= q
        if window is not None:
            m = m & (k > q - window)
    if key_valid is not None:
        m = m & key_valid[:, None, :].bool()
    m = m | torch.eye(L, dtype=torch.bool, device=device)[None]
    return m[:, None]


def decode_key_mask(key_valid: Tensor, key_pos: Tensor, pos: Tensor, window: Optional[int],
                    padded: bool) -> Optional[Tensor]:
    """Keys one new token per sample may see while decoding: real ones, within a sliding window.

    `key_valid` (B, K) bool (real cached keys), `key_pos` (B, K) their token positions, `pos` (B, 1) the
    new token's position. A query at p sees keys at p - window < q <= p (Hugging Face's rule); with no
    window and no padding every key is visible and the mask is None. Returns (B, 1, 1, K) bool or None.
    Raises nothing.
    """
    if window is None:
        return key_valid[:, None, None, :] if padded else None
    return (key_valid & (key_pos > pos - window))[:, None, None, :]
