"""Per-batch state shared by the walk and the methods: masks, positions, rotary, clocks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from . import clock
from .adapters import Rotaries
from .masks import attention_mask_4d


@dataclass
class WalkCtx:
    """One batch in the walk's layout: real tokens first in every row (right-padded), so that column t
    is token position t of every sample (see `layout.canonical_layout`, docs/algorithm.md §2.3).

    It is the walk's `ppcore.layer_step.AttnInputs`: rotary, the attention mask of each layer's window,
    and the move to the next layer's device on a dispatched model. Times are seconds on `ppcore.clock`.
    """

    position_ids: Tensor  # (B, L)
    valid: Optional[Tensor]  # (B, L) 1 for real tokens, 0 for pads; None when nothing is padded
    mask4d: Optional[Tensor]  # (B, 1, L, L) bool, or None for plain causal attention (full-attention layers)
    rot: Optional[Rotaries]  # rotary {kind: (cos, sin)} for the full batch, each (B, L, d); None without rotary
    update_history: bool = True
    keeps_decisions: bool = False  # the walk hands its decisions on (generation): no slice may be overwritten
    timing: bool = True  # per-block clocks (synchronise the device at each reading)
    device: Optional[torch.device] = None  # the device the clock synchronises: the current layer's
    times: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)  # (layer, block) -> name -> s
    _window_masks: dict[int, Optional[Tensor]] = field(default_factory=dict)

    def attn_mask(self, window: Optional[int]) -> Optional[Tensor]:
        """The full batch's (B, 1, L, L) bool attention mask for a layer with this sliding window (None:
        full attention); None for plain causal attention. docs/algorithm.md §5.

        A window at least as long as the batch changes nothing, so those layers share the plain mask.
        """
        L = self.position_ids.shape[1]
        if window is None or window >= L:
            return self.mask4d
        if window not in self._window_masks:
            self._window_masks[window] = attention_mask_4d(self.valid, L, self.position_ids.device, window=window)
        return self._window_masks[window]

    def move_to(self, device: torch.device) -> None:
        """Follow a dispatched model to the next layer's device (done once per device boundary)."""
        self.position_ids = self.position_ids.to(device)
        self.valid = None if self.valid is None else self.valid.to(device)
        self.mask4d = None if self.mask4d is None else self.mask4d.to(device)
        self.rot = None if self.rot is None else {k: (c.to(device), s.to(device)) for k, (c, s) in self.rot.items()}
        self._window_masks = {w: None if m is None else m.to(device) for w, m in self._window_masks.items()}
        self.device = device

    def now(self) -> float:
        """Seconds on `ppcore.clock` after the device's queued work; 0.0 (and no sync) with timing off."""
        return clock.now(self.device) if self.timing else 0.0

    def add_time(self, layer: int, block: str, **values: float) -> None:
        """Add seconds to the (layer, block name) slot: probe_s, decide_s, full_s."""
        slot = self.times.setdefault((layer, block), {})
        for k, v in values.items():
            slot[k] = slot.get(k, 0.0) + v
