"""Per-batch state shared by the walk and the methods: masks, positions, rotary, clocks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class WalkCtx:
    position_ids: Tensor  # (B, L)
    valid: Optional[Tensor]  # (B, L) 1 for real tokens, 0 for pads; None when nothing is padded
    mask4d: Optional[Tensor]  # (B, 1, L, L) bool, or None for plain causal attention
    rot: Optional[tuple[Tensor, Tensor]]  # rotary cos/sin for the full batch (Llama family)
    update_history: bool = True
    timing: bool = True  # per-block clocks (synchronises CUDA at each reading)
    cuda: bool = False
    times: dict[tuple[int, str], dict[str, float]] = field(default_factory=dict)

    def move_to(self, device: torch.device) -> None:
        """Follow a dispatched model to the next layer's device (done once per device boundary)."""
        self.position_ids = self.position_ids.to(device)
        self.valid = None if self.valid is None else self.valid.to(device)
        self.mask4d = None if self.mask4d is None else self.mask4d.to(device)
        self.rot = None if self.rot is None else (self.rot[0].to(device), self.rot[1].to(device))

    def now(self) -> float:
        if not self.timing:
            return 0.0
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add_time(self, layer: int, block: str, **values: float) -> None:
        slot = self.times.setdefault((layer, block), {})
        for k, v in values.items():
            slot[k] = slot.get(k, 0.0) + v
