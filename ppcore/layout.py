"""The walk's layout of a batch: validation, real tokens first, and the way back (docs/algorithm.md §2.3).

`prepare_batch` checks a caller's ids and 0/1 mask; `canonical_layout` moves every row's real tokens to
its first columns, so column t is token position t of every sample whatever side the caller padded;
`to_caller_layout` puts hidden states back where the caller's tokens were.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .adapters import Adapter
from .errors import DataError


@dataclass
class Layout:
    """A batch in the walk's layout: each row's real tokens first, in order, then its pads, and no
    pad-only columns. Column t is then token position t of every sample, whatever side the caller
    padded and however many pad columns it added, so PP's probe, its per-position history and every
    decision see the same thing for the same real tokens (docs/algorithm.md §2.3, §3.3)."""

    ids: Tensor  # (B, L_walk)
    valid: Optional[Tensor]  # (B, L_walk) float 0/1, None when no row is shorter than L_walk
    back: Optional[Tensor]  # (B, L) walk column of each caller column (0 at pads); None: same layout
    caller_valid: Optional[Tensor]  # (B, L) the caller's 0/1 mask (float), None when nothing was padded


def canonical_layout(ids: Tensor, valid: Optional[Tensor]) -> Layout:
    """Move every row's real tokens to its first columns and drop pad-only columns (see `Layout`).

    A batch already in that layout (unpadded, or right-padded to its longest row) is returned as is,
    without a copy. Shapes: `ids` (B, L) long, `valid` (B, L) 0/1 float or None. Raises nothing.
    """
    if valid is None:
        return Layout(ids, None, None, None)
    B, L = ids.shape
    real = valid.bool()
    lengths = real.sum(1)
    width = int(lengths.max())
    right = torch.arange(L, device=ids.device)[None] < lengths[:, None]
    if width == L and torch.equal(real, right):
        return Layout(ids, valid, None, valid)
    order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)[:, :width]  # real columns first, in order
    walk_valid = right[:, :width]
    back = torch.where(real, torch.cumsum(real, 1) - 1, torch.zeros_like(ids))
    return Layout(ids.gather(1, order), None if bool(walk_valid.all()) else walk_valid.float(), back, valid)


def to_caller_layout(hidden: Tensor, layout: Layout) -> Tensor:
    """(B, L_walk, D) hidden states back in the caller's (B, L, D) layout, zeros at the caller's pads.
    Raises nothing."""
    if layout.caller_valid is None:
        return hidden
    out = hidden
    if layout.back is not None:
        back = layout.back.to(hidden.device)
        out = hidden.gather(1, back[..., None].expand(-1, -1, hidden.shape[-1]))
    return out * layout.caller_valid.to(device=hidden.device, dtype=hidden.dtype)[..., None]


def prepare_batch(adapter: Adapter, input_ids: Tensor,
                  attention_mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Move a batch to the model's device and validate it; returns (ids, valid-or-None).

    `attention_mask` (B, L) 0/1: each row's real tokens must be contiguous (pads before them, after them,
    or both); a pad between two real tokens is refused, since where the tokens after it sit would be a
    guess. The context limit applies to the real tokens, not to pad columns. Raises DataError.
    """
    input_ids = _as_tensor("input_ids", input_ids)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise DataError(f"input_ids must be a non-empty (samples x tokens) array, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
        raise DataError(f"input_ids must be integer token ids, got dtype {str(input_ids.dtype).replace('torch.', '')}")
    dims = adapter.dims
    B, L = input_ids.shape
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= dims.vocab:
        raise DataError(f"token ids must lie in [0, {dims.vocab}) for this model, got {lo if lo < 0 else hi}")
    ids = input_ids.to(adapter.device, torch.long)
    valid = None
    if attention_mask is not None:
        am = _as_tensor("attention_mask", attention_mask).to(adapter.device)
        if am.shape != input_ids.shape:
            raise DataError(f"attention_mask shape {tuple(am.shape)} differs from input_ids {tuple(input_ids.shape)}")
        bad = am[(am != 0) & (am != 1)] if am.dtype != torch.bool else am[:0]
        if bad.numel():
            raise DataError(f"attention_mask values must be 0 (pad) or 1 (real token), got {bad[0].item()!r}")
        if not bool((am.sum(1) > 0).all()):
            raise DataError("every sample needs at least one real token (attention_mask row of zeros)")
        real = am.bool()
        if not bool(real.all()):
            valid = am.to(torch.float32)
            cols = torch.arange(L, device=real.device)
            first = torch.where(real, cols, L).amin(1)
            last = torch.where(real, cols, -1).amax(1)
            holes = (last - first + 1) != real.sum(1)
            if bool(holes.any()):
                row = int(holes.nonzero()[0, 0])
                raise DataError(f"attention_mask row {row} has a pad between real tokens; pad each row on its left "
                                "or right only (as tokenizers do), or split the row into separate samples")
    width = L if valid is None else int(valid.sum(1).max())
    if dims.max_positions and width > dims.max_positions:
        raise DataError(f"sequence length {width} exceeds the model's context of {dims.max_positions} tokens; "
                        "use a shorter --seq-len or truncate the inputs")
    return ids, valid


def _as_tensor(name: str, x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{name} must be a rectangular array of numbers ({type(e).__name__}: {e})") from None
