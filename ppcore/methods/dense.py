"""`dense`: keeps every head and channel (the unpruned reference; calibration runs it)."""
from __future__ import annotations

from torch import Tensor

from ..adapters import LayerWeights
from ..blocks import Block
from ..walk_context import WalkCtx
from .base import Decision, Method


class Dense(Method):
    """Keeps everything. Its config prunes nothing, so the Pruner never asks; `decide` says the same."""

    def decide(self, ctx: WalkCtx, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """The full weights of the block, marked not pruned."""
        return self.run.full_decision(layer, block, w)
