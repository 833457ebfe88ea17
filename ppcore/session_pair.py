"""The facade's side by side (see ppcore.session, which re-exports it): two pruning configurations on the same
batch (issue 14 item 3: PP against PP without history, PP against FLAP, 0.2 against 0.4), with what tells them
apart: per layer, the units one keeps and the other does not; per token, the difference of their losses.

One batch, no warm-up, each configuration through a fresh Pruner (PP's history is the calibration's), as every
other view of the app.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from torch import Tensor

from .analysis import jaccard, perplexity
from .config import PruneConfig
from .errors import ConfigError
from .flops import flops_ratios
from .fitting import build_pruner
from .progress import Progress, layer_ticks, quiet
from .record import BLOCK_NAMES, BatchRecord
from .walk import token_nll, walk

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .session import Batch, Calibration


@dataclass
class LayerDiff:
    """One block of one layer in both runs: `pruned_a`/`pruned_b` whether each run decided it, the units
    (heads or channels) only A keeps, only B keeps, both keep, and the Jaccard of the two keep-sets (1.0 when
    neither pruned)."""

    layer: int
    block: str
    pruned_a: bool
    pruned_b: bool
    only_a: list[int]
    only_b: list[int]
    both: int
    jaccard: float


@dataclass
class SideBySide:
    """Two configurations on one batch.

    cfg_a, cfg_b: the configs (to_dict); record_a, record_b: their batch records (level "summary"); nll_a, nll_b:
    (B, L-1) fp32 per-token losses in nats, and mask (B, L-1) 0/1 (the same for both: the same batch); ppl_a,
    ppl_b: perplexities over the batch; flops_a, flops_b: `ppcore.flops.flops_ratios` of each; layers: one
    `LayerDiff` per (block, layer), attention first.
    """

    cfg_a: dict[str, Any]
    cfg_b: dict[str, Any]
    record_a: BatchRecord
    record_b: BatchRecord
    nll_a: Tensor
    nll_b: Tensor
    mask: Tensor
    ppl_a: float
    ppl_b: float
    flops_a: dict[str, Optional[float]]
    flops_b: dict[str, Optional[float]]
    layers: list[LayerDiff]

    @property
    def loss_diff(self) -> Tensor:
        """(B, L-1) nll_b - nll_a in nats, 0 where masked: where B predicts worse (> 0) or better than A."""
        return (self.nll_b - self.nll_a) * self.mask

    def jaccard_by_layer(self, block: str) -> np.ndarray:
        """(layers,) the keep-sets' Jaccard per layer for `block` ('attn' or 'mlp'), NaN where neither pruned."""
        return np.array([d.jaccard if (d.pruned_a or d.pruned_b) else np.nan for d in self.layers if d.block == block])


def layer_diffs(a: BatchRecord, b: BatchRecord) -> list[LayerDiff]:
    """Per block kind (attention first) and layer, what the two records' keep-sets share and where they differ.
    Raises ConfigError when the records have different layer counts (different models)."""
    if len(a.layers) != len(b.layers):
        raise ConfigError(f"the two runs have {len(a.layers)} and {len(b.layers)} layers: not the same model")
    out = []
    for block in BLOCK_NAMES:
        for i, (la, lb) in enumerate(zip(a.layers, b.layers)):
            ra, rb = getattr(la, block), getattr(lb, block)
            sa, sb = set(ra.kept), set(rb.kept)
            out.append(LayerDiff(i, block, ra.pruned, rb.pruned, sorted(sa - sb), sorted(sb - sa), len(sa & sb),
                                 jaccard(sa, sb)))
    return out


def side_by_side(lm: "LoadedModel", calib: Optional["Calibration"], batch: "Batch", cfg_a: PruneConfig,
                 cfg_b: PruneConfig, progress: Progress = quiet) -> SideBySide:
    """Walk `batch` (ids (B, L), mask) with `cfg_a` and with `cfg_b` (level "summary", fresh Pruners), then compare:
    per-token losses (nats), perplexities, FLOPs ratios, and per layer the keep-sets (`layer_diffs`).
    `progress(fraction, text)` per layer. Raises ConfigError for a config this model cannot take or one that needs
    calibration when `calib` is None (before any walk), and what `walk` raises."""
    n_layers = lm.adapter.dims.num_layers
    for name, cfg in (("A", cfg_a), ("B", cfg_b)):
        try:
            cfg.check_layers(n_layers)
        except ConfigError as e:
            raise ConfigError(f"configuration {name}: {e}") from None
        if cfg.needs_calibration and calib is None:
            raise ConfigError(f"configuration {name} ({cfg.method}) needs calibration statistics")
    out = []
    for k, (name, cfg) in enumerate((("A", cfg_a), ("B", cfg_b))):
        label = f"{name}: {cfg.method} at ratio {cfg.ratio:.2f}"
        progress(k / 2, label)
        pruner = build_pruner(lm.adapter, cfg, calib.stats if calib is not None and cfg.needs_calibration else None)
        res = walk(lm.adapter, pruner, batch.ids, batch.mask, level="summary",
                   on_layer=layer_ticks(progress, k / 2, (k + 1) / 2, label))
        nll, mask = token_nll(lm.adapter, res.hidden, batch.ids, res.valid)
        assert res.record is not None  # level "summary" records
        out.append((res.record, nll.cpu(), mask.cpu()))
    progress(1.0, "done")
    (ra, na, mask), (rb, nb, _) = out
    return SideBySide(cfg_a.to_dict(), cfg_b.to_dict(), ra, rb, na, nb, mask, perplexity(na, mask),
                      perplexity(nb, mask), flops_ratios(ra.flops), flops_ratios(rb.flops), layer_diffs(ra, rb))
