"""Finished results kept on the server's disk and shared by every session (ppcore.result_store; issue 14 item 4).

One store per server process (st.cache_resource). A result is looked up before it is computed; a computed one is
kept unless the store may not be written: in demo mode visitors choose what is computed, so only results of the
default settings' analysis and lecture (a fixed, bounded set: what the lecture and a first visit show) are written,
and everything else is computed in memory as before (SECURITY.md, resource exhaustion).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, TypeVar

import streamlit as st

from ppcore import PPCoreError
from ppcore.session import ResultStore, Stored

from .batch import LeftOut, TextBatch
from .state import Settings, demo

T = TypeVar("T")
# The app's own records that stored results hold (an analysis of pasted text keeps its TextBatch): the store reads
# back only the classes it is told of.
STORED_APP_CLASSES = (TextBatch, LeftOut)


def store() -> Optional[ResultStore]:
    """The server's result store ($PPCORE_CACHE and $PPCORE_RESULT_CACHE_MB as they are now), or None when it is
    switched off ($PPCORE_RESULT_CACHE_MB=0) or its folder cannot be created: results are then computed each time."""
    return _store(os.environ.get("PPCORE_CACHE", ""), os.environ.get("PPCORE_RESULT_CACHE_MB", ""))


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(cache: str, megabytes: str) -> Optional[ResultStore]:
    """One store per (cache folder, bound): the arguments only key the cache; ResultStore reads the environment."""
    try:
        s = ResultStore(classes=STORED_APP_CLASSES)
    except (PPCoreError, OSError, ValueError):
        return None
    return s if s.max_bytes > 0 else None


def writable(settings: Settings, upload_digest: str = "", on_request: bool = False) -> bool:
    """Whether results for these settings may be written: always outside demo mode; in demo mode only the analysis
    and the lecture of the default settings with no upload, never a result a visitor asked for on request (their
    prompts, ratios, repeats and tasks are theirs to choose: `on_request`)."""
    return not demo() or (not on_request and not upload_digest and settings.key() == Settings().locked().key())


def lookup(key: str) -> Optional[Stored]:
    """The result stored under `key`, or None (not stored, or no store)."""
    s = store()
    return None if s is None else s.get(key)


def keeper(key: str, write: bool) -> Callable[[object, float], None]:
    """A function (value, seconds) that keeps a value computed in `seconds` under `key` when `write` (and a store
    exists); it may run in another thread: the store is found now, in the script's."""
    s = store() if write else None
    return lambda value, seconds: None if s is None else s.put(key, value, seconds)


def remembered(key: str, compute: Callable[[], T], write: bool, fresh: bool = False) -> tuple[T, Optional[Stored]]:
    """The result stored under `key`, else `compute()` (then stored when `write`). Returns (value, the Stored it
    came from or None when it was computed now). `fresh` computes again even when stored (a new measurement), and
    replaces the stored one when `write`. What `compute` raises passes through and nothing is stored."""
    hit = None if fresh else lookup(key)
    if hit is not None:
        return hit.value, hit
    t0 = time.perf_counter()
    value = compute()
    keeper(key, write)(value, time.perf_counter() - t0)
    return value, None


def reused_note(hit: Stored) -> str:
    """'computed on 2026-12-01 04:12 UTC in 41.2 s, kept on this server': for a caption under a reused result."""
    return f"computed on {hit.when()} in {hit.seconds:.1f} s, kept on this server"
