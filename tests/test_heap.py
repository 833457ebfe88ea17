"""ppcore.heap: freed heap memory goes back to the OS between an ablation's runs, and the results do not change."""
from __future__ import annotations

import sys

import pytest
import torch

from ppcore import heap


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim: Linux only")
def test_freed_heap_memory_is_returned():
    # Many mid-sized blocks, every other one kept: the freed ones stay in the heap until trimmed.
    blocks = [torch.ones(30_000) for _ in range(4000)]  # 120 kB each (below glibc's mmap threshold), 480 MB
    keep = blocks[::50]
    del blocks
    before = _rss_kb()
    assert heap.release_freed_heap() is True
    after = _rss_kb()
    assert before - after > 100_000, (before, after)  # at least 100 MB of the 470 freed handed back
    assert all(float(t.sum()) == 30_000 for t in keep)  # what is in use is untouched


def test_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.release_freed_heap() is False
