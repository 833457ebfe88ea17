"""`flap`: FLAP's fluctuation metric, standardised global allocation and compensation bias (docs/algorithm.md §8.1)."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Optional

from torch import Tensor

from ..adapters import LayerWeights
from ..blocks import ATTN, BLOCKS, MLP, Block
from ..scores import flap_channels, flap_head_weight, flap_ratios
from ..stats import CalibStats
from .static import Choice, StaticMethod

if TYPE_CHECKING:
    from .pruner import Pruner


def check_fluctuation(calib: CalibStats) -> None:
    """Warn (UserWarning) about statistics whose fluctuation is zero everywhere (docs/algorithm.md §8.1a): the
    official update leaves it untouched on the first calibration batch, so a calibration that ran in one
    batch gives FLAP a metric of zeros, and FLAP then prunes nothing, as the official code would."""
    if any(bool(st.fluc.any()) for st in calib.blocks.values()):
        return
    windows, batch = calib.meta.get("windows"), calib.meta.get("batch_size")
    ran = f"its {windows} windows in one batch (batch size {batch})" if windows and batch else "in one batch"
    warnings.warn(f"FLAP needs at least two calibration batches: its fluctuation statistic skips the first batch "
                  f"(as the official code does), and this calibration ran {ran}, so FLAP prunes nothing. "
                  f"Calibrate on more windows or with a smaller calibration batch size "
                  f"(e.g. --calib-batch-size {max(1, (windows or 2) // 2)})", UserWarning, stacklevel=3)


class Flap(StaticMethod):
    """Plans every pruned block at once in `prepare` (the global allocation reads every layer), then runs as
    any static method. Warns when the calibration cannot support FLAP (`check_fluctuation`). Raises
    KeyError from `choose` for a block the plan does not cover (none, by design)."""

    def __init__(self, run: "Pruner") -> None:
        super().__init__(run)
        if run.cfg.prunes and run.calib is not None:
            check_fluctuation(run.calib)

    def prepare(self) -> None:
        """The allocation, once (docs/algorithm.md §8.1b)."""
        if self.run.cfg.prunes and not self._plan:
            self._plan.update(self._allocate())

    def choose(self, layer: int, block: Block, w: LayerWeights) -> Choice:
        """The block's entry in the global plan (docs/algorithm.md §8.1b); KeyError for a block not pruned."""
        self.prepare()
        return self._plan[block.key(layer)]

    def _allocate(self) -> dict[tuple[int, str], Choice]:
        """Per pruned block: FLAP's ratio from the standardised global search, then the mask from the raw metric.

        Each layer is materialised on its own, so an offloaded model never holds two at once; the slices are
        built when a layer runs.
        """
        run = self.run
        dims, ad, cfg = run.dims, run.adapter, run.cfg
        layers = [i for i in range(dims.num_layers) if i not in cfg.skip_layers]
        metric: dict[tuple[int, Block], Tensor] = {}
        for i in layers:
            with ad.materialized(i):
                w = ad.layer(i)
                for block in BLOCKS:
                    if run.prunes_block(i, block):
                        metric[(i, block)] = flap_channels(block.final_weight(w), run.calib.get(i, block.name).fluc)
        keys = {b: [k for k in metric if k[1] is b] for b in BLOCKS}
        hw = flap_head_weight(run.calib.seq_len, dims.hidden, dims.num_heads, dims.gqa, dims.head_dim)
        # The global allocation compares every block's metric: gather them on one device for it.
        here = ad.device
        a_r, m_r = flap_ratios([metric[k].to(here) for k in keys[ATTN]], [metric[k].to(here) for k in keys[MLP]],
                               dims.head_dim, hw, run.r_eff)
        ratio = dict(zip(keys[ATTN], a_r)) | dict(zip(keys[MLP], m_r))
        out: dict[tuple[int, str], Choice] = {}
        for i in layers:
            with ad.materialized(i):
                w = ad.layer(i)
                for block in BLOCKS:
                    if (i, block) not in metric:
                        continue
                    scores = block.unit_scores(metric[(i, block)], dims)
                    kept = block.keep_top(scores, ratio[(i, block)], dims, cfg.mlp_multiple)
                    out[block.key(i)] = Choice(kept, scores, self._bias(i, block, w, kept))
        return out

    def _bias(self, layer: int, block: Block, w: LayerWeights, kept: Tensor) -> Optional[Tensor]:
        """W[:, pruned] @ calib[pruned] (D_out,), in the weight's dtype (docs/algorithm.md §8.1c): calib is the
        official baseline (mean / calibration batch size) or the true mean (`flap_bias`); None for 'none'
        or when every channel is kept."""
        run = self.run
        mode = run.cfg.flap_bias
        kept_ch = block.unit_channels(kept, run.dims)
        if mode == "none" or kept_ch.numel() == block.channels(run.dims):
            return None
        st = run.calib.get(layer, block.name)
        calib = (st.baseline if mode == "official" else st.mean).clone()
        calib[kept_ch] = 0
        w_fin = block.final_weight(w)
        return (w_fin.float() @ calib).to(w_fin.dtype)
