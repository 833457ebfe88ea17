"""What a method is: the `Method` base class and the `Decision` it returns for one block.

How to add a method
-------------------
1. One file in ``ppcore/methods/`` holding a subclass of `Method`: override `decide` (and, where the method
   needs them, `prepare`, `observe`, `needs_calibration`, `static`).
2. One line in ``ppcore/methods/registry.py``: ``"my-method": MyMethod,``. The name then exists for
   `PruneConfig`, the CLI and the app.
The `Pruner` builds one instance per run, and asks it only about the blocks the config prunes (the
skipped layers and switched-off blocks keep everything without asking); `self.run` is that Pruner: the
adapter, the config, the model's dims, the calibration statistics, r_eff and the cached full slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

import torch
from torch import Tensor

from ..adapters import LayerWeights
from ..blocks import Block
from ..errors import DataError
from ..scores import FUSION_EPS
from ..slices import Buffers, Slice
from ..stats import History
from ..walk_context import WalkCtx

if TYPE_CHECKING:
    from ..config import PruneConfig
    from .pruner import Pruner


@dataclass(frozen=True)
class Energies:
    """PP's per-channel activation energies of one block (docs/algorithm.md §3.3), kept per probe position so that
    a walk without a record never reduces them: `probe_rows` and `history_rows` (n_t, C) fp32 (history None
    without one), `fused` (C,) the fused energy the PPsp score used, `weight_pow4` (C,) sum_i W[i, c]^4 of the
    block's final projection (PPsp's static factor, a cached tensor: no copy; None when another score ranked
    the units), `fixed_weight` the probe's weight under fixed fusion (None: importance-scaled). `probe` and
    `history` sum the rows over the probe's positions (C,)."""

    probe_rows: Tensor
    history_rows: Optional[Tensor]
    fused: Tensor
    weight_pow4: Optional[Tensor] = None
    fixed_weight: Optional[float] = None  # the probe's weight under fixed fusion; None: importance-scaled

    @property
    def probe(self) -> Tensor:
        """(C,) the probe's own energy, summed over its positions."""
        return self.probe_rows.sum(0)

    @property
    def history(self) -> Optional[Tensor]:
        """(C,) the history's energy at the probe's positions, or None without a history."""
        return None if self.history_rows is None else self.history_rows.sum(0)

    @property
    def fusion_weight(self) -> Optional[Tensor]:
        """(C,) the fusion's weight on the probe, a = P / (P + G + eps), averaged over the probe's positions
        (docs/algorithm.md §3.3), or None without a history."""
        if self.history_rows is None:
            return None
        if self.fixed_weight is not None:  # fixed fusion: the same weight everywhere
            return torch.full_like(self.fused, self.fixed_weight)
        return (self.probe_rows / (self.probe_rows + self.history_rows + FUSION_EPS)).mean(0)


@dataclass(kw_only=True)
class Decision:
    """What one block keeps for one batch, and why (docs/algorithm.md §4.2, §5).

    Units are query heads (attention) or intermediate channels (MLP); index tensors are long, ascending,
    on the model's device; `scores` (U,) fp32 per unit.
    """

    slice: Optional[Slice]  # the weights to run; None only in a generation capture of an offloaded layer
    kept: Optional[Tensor] = None  # kept units; None = all of them
    bias: Optional[Tensor] = None  # FLAP's compensation (D,), added to the block output (docs/algorithm.md §8.1c)
    pruned: bool = False  # whether the method decided (False: skipped layer, switched-off block, dense)
    probe_tokens: Optional[Tensor] = None  # probe's token positions (docs/algorithm.md §2.3)
    probe_samples: Optional[Tensor] = None  # probe's samples (docs/algorithm.md §2.3)
    scores: Optional[Tensor] = None
    energies: Optional[Energies] = None
    probe_flops: int = 0
    extra_flops: int = 0  # work outside the slice's matrix products, counted as pruned FLOPs (PP+'s compensation)
    forced: Optional[Tensor] = None  # units kept whatever their score (PP+'s recovery core), ascending, or None


class Method:
    """One pruning method, per run: decides each pruned block's keep-set from the block's input.

    Class attributes: `static` (decides once from calibration and reuses its slices) and `calib_hint`
    (appended to the error when calibration statistics are missing). Raises nothing of its own unless
    a subclass says so.
    """

    static: ClassVar[bool] = False
    calib_hint: ClassVar[str] = ""

    def __init__(self, run: "Pruner") -> None:
        self.run = run
        self.history: Optional[History] = None  # PP's per-run state (docs/algorithm.md §3.1); None elsewhere

    @classmethod
    def needs_calibration(cls, cfg: "PruneConfig") -> bool:
        """Whether a pruning run of this method with `cfg` reads calibration statistics (docs/algorithm.md §7)."""
        return False

    def state(self) -> dict[str, dict[tuple[int, str], Tensor]]:
        """What this run carries from one scored batch to the next, by name, per (layer, block name): PP's history
        states ("history", (positions x channels) fp32, docs/algorithm.md §3.1); empty for a method without one.
        The live tensors, not copies: a checkpoint saves them (`ppcore.scoring.ScoredRun.checkpoint`)."""
        return {} if self.history is None else {"history": self.history.states}

    def load_state(self, state: dict[str, dict[tuple[int, str], Tensor]]) -> None:
        """Take `state` (what `state()` of a run of the same config gave, e.g. read from a checkpoint) as this
        run's own, each tensor moved beside the one it replaces. Raises DataError when its names, blocks or
        channel counts are not this run's (a checkpoint of another model or config)."""
        own = self.state()
        if set(state) != set(own):
            raise DataError(f"the saved state holds {sorted(state)} but this run carries {sorted(own)}: it is from "
                            "another method or config")
        for name, tensors in own.items():
            saved = state[name]
            if set(saved) != set(tensors) or any(saved[k].dim() != t.dim() or saved[k].shape[-1] != t.shape[-1]
                                                      for k, t in tensors.items()):
                raise DataError(f"the saved {name} covers other blocks or channel counts than this run's: it is "
                                "from another model or config")
            for k, t in tensors.items():
                tensors[k] = saved[k].to(device=t.device, dtype=t.dtype)

    def held_slices(self) -> list[Slice]:
        """The slices this run keeps between batches (a static method's decisions); none by default."""
        return []

    def prepare(self) -> None:
        """Work that reads every layer, once, before a walk's first layer (FLAP's global allocation)."""

    def decide(self, ctx: WalkCtx, layer: int, block: Block, w: LayerWeights, resid: Tensor, x: Tensor) -> Decision:
        """The keep-set of one pruned block: `resid` (B, L, D) the residual entering it, `x` (B, L, D) its
        normed input, both in the walk's layout (`ctx`)."""
        raise NotImplementedError

    def observe(self, ctx: WalkCtx, layer: int, block: Block, z: Tensor, d: Decision) -> None:
        """After the block's full inference: `z` (B, L, C_kept) is its final projection's input
        (PP's history update, docs/algorithm.md §3.4)."""

    def decision(self, layer: int, block: Block, w: LayerWeights, kept: Tensor, *, bias: Optional[Tensor] = None,
                 buffers: Optional[Buffers] = None, **fields) -> Decision:
        """The decision that keeps units `kept` (n,) of this block: a slice of them, or the full weights (and no
        bias) when every unit is kept. `buffers`: reusable tensors for the slice (see `Pruner.slice_buffers`).
        `fields` are the other `Decision` fields (scores, probe picks, ...)."""
        run = self.run
        if kept.numel() == block.units(run.dims):
            return Decision(slice=run.full_slice(layer, block, w), pruned=True, **fields)
        # A per-batch slice copies the final projection's kept columns as rows of its transpose on the CPU (faster;
        # equal up to rounding, `Adapter.transposed`); a slice kept for many batches (a static method's, generation's)
        # copies them once, from the model.
        final_t = None if buffers is None else run.adapter.transposed(layer, block.name, block.final_weight(w))
        return Decision(slice=block.slice(w, run.dims, kept, buffers, final_t), kept=kept, bias=bias, pruned=True,
                        **fields)
