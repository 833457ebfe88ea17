"""Checks that a loaded checkpoint is usable before anything runs on it.

A checkpoint with NaN or infinite weights loads without complaint and then yields NaN losses and
arbitrary pruning decisions; `check_finite` refuses it at load time, naming the tensor.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import ModelLoadError

CHUNK = 1 << 24  # elements checked at a time, so a huge matrix never needs a full-size bool copy


def _bad_counts(t: torch.Tensor) -> tuple[int, int]:
    """(NaN count, +-inf count) of a floating-point tensor, read in chunks."""
    flat = t.detach().reshape(-1)
    nan = inf = 0
    for s in range(0, flat.numel(), CHUNK):
        part = flat[s:s + CHUNK]
        if bool(torch.isfinite(part).all()):
            continue
        n = int(torch.isnan(part).sum())
        nan += n
        inf += int((~torch.isfinite(part)).sum()) - n
    return nan, inf


@torch.no_grad()
def check_finite(model: nn.Module, spec: str) -> None:
    """Raise ModelLoadError if any floating-point parameter holds NaN or +-inf values.

    Meta (offloaded, not materialised) tensors are skipped: their values are not in memory.
    """
    bad: list[str] = []
    for name, p in model.named_parameters():
        if p.device.type == "meta" or not p.is_floating_point() or p.numel() == 0:
            continue
        nan, inf = _bad_counts(p)
        if nan or inf:
            what = " and ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
            bad.append(f"{name} holds {what} value{'s' if nan + inf > 1 else ''}")
    if bad:
        more = f" (and {len(bad) - 3} more tensors)" if len(bad) > 3 else ""
        raise ModelLoadError(f"{spec}: {'; '.join(bad[:3])}{more}; the checkpoint is corrupt, "
                             "re-download or re-export it")
