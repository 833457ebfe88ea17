"""The one device-synchronised clock: every wall time ppcore reports is read through it.

On CUDA, kernels run asynchronously, so a reading without a synchronisation measures the launch,
not the work. `now(device)` synchronises that device first; `timed` builds on it.
On the CPU a reading costs one `time.perf_counter()` call and nothing else.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Union

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
