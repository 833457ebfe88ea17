"""Handing freed heap memory back to the operating system between the runs of a long grid.

Why: an `ablate` grid runs a dozen configurations one after another in one process. Each run's batch allocates
and frees gigabytes of activations; glibc keeps much of what is freed in its heap instead of returning it, so the
process's resident memory grows to about twice what it holds live (measured on 2026-12-03 on the score grid, two
batches of 20 x 512: 6.2 GB resident after the warm-ups, 3.4 GB after `malloc_trim`). Two grids side by side
(`bench/ablations.sh`) then took about 20 of the machine's 24 GB.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache
from typing import Any, Optional


@lru_cache(maxsize=1)
def _libc() -> Optional[Any]:
    """glibc, where this process runs on it (Linux); None elsewhere (macOS, Windows, musl without malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed_heap() -> bool:
    """Return the heap's free memory to the operating system (glibc's `malloc_trim(0)`); True where it ran.

    Frees nothing that is in use, so results are unchanged; the next allocations may fault their pages in again,
    so call it between runs whose times are not compared to the microsecond (an ablation grid), not inside a
    timed loop. A no-op returning False where the C library has no `malloc_trim`. Raises nothing.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
