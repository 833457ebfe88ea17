"""The LM head over many rows, a block at a time: full-vocabulary logits never exist for a whole batch.

Gemma 3's vocabulary has 262,144 entries: a 20 x 512 batch's logits would take about 10 GiB in fp32. Every
caller that needs the head on more than a few rows (losses, next-token comparisons, speed measurements)
walks the blocks `head_blocks` gives; each block's logits stay under `LOGITS_BUDGET` elements.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from .adapters import Adapter

LOGITS_BUDGET = 1 << 27  # logits elements held at once: 512 MiB in fp32
LOGITS_LIMIT = 1 << 30  # `ppcore.logits` refuses more at once (4 GiB in fp32; a 20 x 512 batch of the default
# model is 0.5 G values, of Gemma 3's 262k vocabulary 2.7 G)
MAX_SAMPLES = 4  # whole samples per block when they fit (the default model's 20 x 512 losses: 4 samples a block)


def head_blocks(B: int, L: int, vocab: int, budget: int = LOGITS_BUDGET,
                max_samples: int = MAX_SAMPLES) -> Iterator[tuple[slice, slice]]:
    """(samples, tokens) slices covering a (B, L) grid, each block at most `budget` logits of `vocab` entries.

    Whole samples (up to `max_samples`) go together while they fit; a sample longer than the budget is cut
    into runs of tokens. Raises ValueError for a vocabulary of 0 or a budget below one row.
    """
    if vocab < 1 or budget < vocab:
        raise ValueError(f"a logits budget of {budget} elements cannot hold one row of {vocab}")
    per_sample = L * vocab
    if per_sample <= budget:
        step = max(1, min(max_samples, budget // max(per_sample, 1)))
        for s in range(0, B, step):
            yield slice(s, s + step), slice(0, L)
        return
    tokens = budget // vocab
    for s in range(B):
        for t in range(0, L, tokens):
            yield slice(s, s + 1), slice(t, t + tokens)


@torch.inference_mode()
def run_head(adapter: Adapter, hidden: Tensor) -> None:
    """The LM head on every row of `hidden` (B, L, D), block by block, keeping nothing: the head's cost as a
    whole batch's forward pays it (speed measurements), without its logits in memory. Raises what torch raises."""
    B, L = hidden.shape[:2]
    for s, t in head_blocks(B, L, adapter.dims.vocab):
        adapter.head(hidden[s, t])
