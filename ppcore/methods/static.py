"""The static methods: decide once per block from calibration statistics, then reuse the slices.

`StaticMethod` holds what they share (the plan of keep-sets, the cached decisions). `wanda-sp` and
`ppsp-calib` score each block on its own from its calibration energies (docs/algorithm.md §4.1, §8);
FLAP, which allocates over all blocks at once, is in `flap.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from torch import Tensor

from ..adapters import LayerWeights
from ..blocks import Block
from ..scores import wanda_sp_channels
from ..slices import Slice
from ..walk_context import WalkCtx
from .base import Decision, Method
from .unit_score import unit_scores

if TYPE_CHECKING:
    from ..config import PruneConfig
    from .pruner import Pruner


@dataclass(frozen=True)
class Choice:
    """A static method's choice for one block: kept units (n,), unit scores (U,), FLAP's bias (D,) or None."""

    kept: Tensor
    scores: Tensor
    bias: Optional[Tensor] = None


class StaticMethod(Method):
    """Decides each block once (`choose`) and reuses the decision for every batch (docs/algorithm.md §7, §8).

    Choices are always kept; the decisions (holding the sliced weights) only for layers that are not
    offloaded, whose slices would otherwise pin their weights in memory: those are rebuilt per batch.
    """

    static = True

    def __init__(self, run: "Pruner") -> None:
        super().__init__(run)
        self._plan: dict[tuple[int, str], Choice] = {}
        self._decisions: dict[tuple[int, str], Decision] = {}

    @classmethod
    def needs_calibration(cls, cfg: "PruneConfig") -> bool:
        """Always: the choice is made from calibration statistics."""
        return True

    def choose(self, layer: int, block: Block, w: LayerWeights) -> Choice:
        """This block's keep-set from the calibration statistics."""
        raise NotImplementedError

    def held_slices(self) -> list[Slice]:
        """Every cached decision's slice: the kept weights, copied once per run."""
        return [d.slice for d in self._decisions.values() if d.slice is not None]

    def decide(self, ctx: WalkCtx, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """The block's choice as a decision; the batch (`resid`, `x`) is not read."""
        key = block.key(layer)
        if key in self._decisions:
            return self._decisions[key]
        if key not in self._plan:
            self._plan[key] = self.choose(layer, block, w)
        c = self._plan[key]
        d = self.decision(layer, block, w, c.kept, bias=c.bias, scores=c.scores)
        if self.run.cacheable(layer):
            self._decisions[key] = d
        return d


class CalibScoreMethod(StaticMethod):
    """Scores each block from its own calibration energy sum_t H[t, c] and keeps the top units at r_eff."""

    def unit_scores(self, block: Block, w_fin: Tensor, energy: Tensor, fluc: Tensor) -> Tensor:
        """(U,) unit scores from the final projection's weight (D_out, C), the energy (C,) and FLAP's
        fluctuation (C,), both summed over positions."""
        raise NotImplementedError

    def choose(self, layer: int, block: Block, w: LayerWeights) -> Choice:
        run = self.run
        st = run.calib.get(layer, block.name)
        scores = self.unit_scores(block, block.final_weight(w), st.sq.sum(0), st.fluc)
        return Choice(run.keep_top(block, scores), scores)


class WandaSp(CalibScoreMethod):
    """Wanda-sp: ||W[:, c]||_1 * sqrt(sum_t H[t, c]), summed within a head (docs/algorithm.md §4.1)."""

    def unit_scores(self, block: Block, w_fin: Tensor, energy: Tensor, fluc: Tensor) -> Tensor:
        return block.unit_scores(wanda_sp_channels(w_fin, energy), self.run.dims)


class PpspCalib(CalibScoreMethod):
    """PPsp on calibration energies only, no probe (docs/algorithm.md §8, the ablation isolating probing); with the
    config's `score`, Wanda-sp's or FLAP's metric on the same calibration statistics, at the same uniform ratio
    and without FLAP's allocation or bias (docs/ablations.md)."""

    def unit_scores(self, block: Block, w_fin: Tensor, energy: Tensor, fluc: Tensor) -> Tensor:
        return unit_scores(block, self.run.cfg.score, w_fin, energy, self.run.dims, fluc=fluc)
