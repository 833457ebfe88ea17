"""Count the tensor calls that would synchronise host and device on a GPU, while a region of code runs.

On the CPU nothing waits, so the test patches the calls that read a device tensor back to the host
(`item`, `tolist`, `cpu`, `numpy`, `nonzero`, `unique`, `masked_select`, `bincount`, `equal`, `allclose`,
one-argument `where`, `repeat_interleave` with tensor repeats and no `output_size`, Python's
bool/int/float/array of a tensor, and indexing with a boolean or uint8 mask) and counts them while
`counting` is on. With a GPU, `torch.cuda.set_sync_debug_mode("error")` says the same thing on the real
device (tests/test_syncs.py).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import torch

_TENSOR_METHODS = ("item", "tolist", "cpu", "numpy", "nonzero", "unique", "masked_select", "__bool__", "__int__",
                   "__float__", "__index__", "__array__", "bincount", "equal", "allclose")
_TORCH_FUNCTIONS = ("nonzero", "unique", "unique_consecutive", "masked_select", "argwhere", "bincount", "equal",
                    "allclose")


def _has_bool_index(index: Any) -> bool:
    """A boolean or uint8 mask anywhere in an index (a tuple or list of indices included)."""
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in items)


class SyncCounter:
    """`calls`: the name of every syncing call made while `counting` was on (outside it, nothing is counted)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.depth = 0

    def note(self, name: str) -> None:
        if self.depth > 0:
            self.calls.append(name)

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def region(self, fn: Callable) -> Callable:
        """`fn`, counting the syncs made inside it."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.counting():
                return fn(*args, **kwargs)
        return wrapper


def patch_syncs(monkeypatch) -> SyncCounter:
    """Patch every syncing call (see the module's docstring) to report to a new `SyncCounter`."""
    counter = SyncCounter()

    def wrap(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def patched(*args, **kwargs):
            counter.note(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, patched)

    for name in _TENSOR_METHODS:
        wrap(torch.Tensor, name)
    for name in _TORCH_FUNCTIONS:
        wrap(torch, name)
    def counting_if(owner: Any, name: str, syncs: Callable[..., bool]) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def patched(*args, **kwargs):
            if syncs(*args, **kwargs):
                counter.note(name)
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, patched)

    # where(cond) alone is nonzero; repeat_interleave with tensor repeats needs output_size to stay on device.
    counting_if(torch, "where", lambda *a, **k: len(a) + len(k) == 1)
    for owner in (torch, torch.Tensor):
        counting_if(owner, "repeat_interleave", lambda x, repeats=None, *a, **k:
                    isinstance(repeats, torch.Tensor) and k.get("output_size") is None)
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def patched(self, index, *rest, _original=original, _name=name):
            if _has_bool_index(index):
                counter.note(f"{_name}[bool]")
            return _original(self, index, *rest)
        monkeypatch.setattr(torch.Tensor, name, patched)
    return counter
