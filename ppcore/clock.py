"""The one device-synchronised clock: every wall time ppcore reports is read through it.

On CUDA, kernels run asynchronously, so a reading without a synchronisation measures the launch,
not the work. `now(device)` synchronises that device first; `Stopwatch` and `timed` build on it.
On the CPU a reading costs one `time.perf_counter()` call and nothing else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

DeviceLike = Union[torch.device, str, None]


def device_sync(device: DeviceLike = None) -> None:
    """Wait for every queued kernel on `device` (a no-op on the CPU and when `device` is None)."""
    dev = torch.device(device) if isinstance(device, str) else device
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)


def now(device: DeviceLike = None) -> float:
    """Seconds (time.perf_counter) after the device's queued work has finished."""
    device_sync(device)
    return time.perf_counter()


def timed(fn: Callable[[], Any], device: DeviceLike = None) -> tuple[Any, float]:
    """Run `fn()` between two synchronised readings; returns (its result, seconds)."""
    t0 = now(device)
    out = fn()
    return out, now(device) - t0


@dataclass
class Stopwatch:
    """Named laps on one device: `lap("head_s")` stores the seconds since the previous reading.

    `enabled=False` makes every reading free (returns 0.0, no sync): for hot paths timed elsewhere.
    """

    device: DeviceLike = None
    enabled: bool = True
    laps: dict[str, float] = field(default_factory=dict)
    _last: Optional[float] = None

    def start(self) -> "Stopwatch":
        self._last = self.read()
        return self

    def read(self) -> float:
        return now(self.device) if self.enabled else 0.0

    def lap(self, name: str) -> float:
        """Seconds since the last reading, added to `laps[name]`; starts the watch when it was not."""
        t = self.read()
        dt = 0.0 if self._last is None else t - self._last
        self.laps[name] = self.laps.get(name, 0.0) + dt
        self._last = t
        return dt

    @property
    def total(self) -> float:
        return sum(self.laps.values())
