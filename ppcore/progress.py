"""Progress callbacks of the session functions (`ppcore.session` and the modules it re-exports): a `Progress` takes
(fraction done in [0, 1], text); one that raises stops the computation there."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]


def quiet(fraction: float, text: str) -> None:
    """The default progress callback: says nothing."""


def layer_ticks(progress: Progress, lo: float, hi: float, label: str) -> Callable[[int, int], None]:
    """A walk's `on_layer(done, total)` that reports progress from `lo` to `hi` over the layers."""
    def tick(done: int, total: int) -> None:
        progress(lo + (hi - lo) * done / total, f"{label}: {done} of {total} layers")
    return tick


def within(progress: Progress, lo: float, hi: float) -> Progress:
    """`progress` for one part of a longer computation: its fractions 0..1 reported as `lo`..`hi`."""
    def part(fraction: float, text: str) -> None:
        progress(lo + (hi - lo) * fraction, text)
    return part
