"""Checks that a loaded checkpoint is usable before anything runs on it.

A checkpoint with NaN or infinite weights loads without complaint and then yields NaN losses and
arbitrary pruning decisions; `check_finite` refuses it at load time, naming the tensor. A checkpoint
whose tensors do not match its config (a tensor missing, one the config has no place for, a shape
that differs) loads with random or dropped weights; `check_loading_info` refuses it, naming them.
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


LISTED = 10  # tensors named in a mismatch message before "and N more"


def check_loading_info(info: dict, spec: str) -> None:
    """Raise ModelLoadError if the checkpoint's tensors do not match what its config describes.

    `info` is what `from_pretrained(..., output_loading_info=True)` reports, after transformers has tied
    the weights the config ties: `missing_keys` (tensors the config needs and the file lacks; they would
    hold fresh random values that change from load to load), `unexpected_keys` (tensors in the file the
    config has no place for; they would be dropped) and `mismatched_keys` ((name, file shape, config
    shape) tuples). Any of them makes every number computed on the model wrong, so the load is refused,
    naming the tensors.
    """
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: m[0])
    if not (missing or unexpected or mismatched):
        return
    items = ([f"{k} is missing from the file (it would get random weights)" for k in missing]
             + [f"{k} is in the file but not in the config (it would be ignored)" for k in unexpected]
             + [f"{name} has shape {tuple(got)} in the file but {tuple(want)} in the config"
                for name, got, want in mismatched])
    more = f"; and {len(items) - LISTED} more" if len(items) > LISTED else ""
    hints = []
    if any(k.endswith("lm_head.weight") for k in missing):
        hints.append("if the LM head shares the input embeddings, set tie_word_embeddings to true in config.json")
    if any(k.endswith(".bias") for k in unexpected):
        hints.append("if the model has attention or MLP biases, say so in config.json (e.g. attention_bias, mlp_bias)")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise ModelLoadError(
        f"{spec}: the checkpoint does not match its config: {'; '.join(items[:LISTED])}{more}. "
        f"Re-export the checkpoint together with its config, or fix config.json to describe it{hint}"
    )
