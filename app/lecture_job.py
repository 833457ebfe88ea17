"""The lecture's data, computed once per server and shared by every session (app/lecture.py says what it holds).

One `LectureJob` per lecture settings, held by st.cache_resource (at most MAX_LECTURES at once): the first session
that opens the lecture starts the job's thread, which reads each part back from the server's disk or computes it
(app/stored.py), and every session, that one included, polls the job's progress until the data is there. The thread
belongs to no session, so a page that reruns (a click on Next) or closes does not stop it, and two sessions never
compute the same lecture twice. Jobs run one at a time, and never beside a tab's background computation
(app/background.py COMPUTE_LOCK), so lectures on several settings cannot take every core at once. Once done,
the data stays in memory: a step only redraws.

A lecture prepared on the server's disk before class (`python -m app.lecture_prepare`) is read back into memory
once the server has drawn its first page (`preload`), so that the first student to open it does not wait for the
disk either; a lecture that is not (completely) on the disk is left alone there: nobody asked for it yet.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional, TypeVar

import streamlit as st

from ppcore import session
from ppcore.session import Stored

from . import engine, lecture, messages, stored
from .lecture import NotStored
from .background import COMPUTE_LOCK
from .state import Settings

T = TypeVar("T")
MAX_LECTURES = 4  # lectures (settings) held in memory at once; the demo has one
THREAD_PREFIX = "lecture-job-"
_ONE_AT_A_TIME = COMPUTE_LOCK  # one long computation at a time, server-wide: lectures and the tabs' background jobs


class _QuietLectureThreads(logging.Filter):
    """Streamlit warns when a cached function runs outside a session's script thread ("missing ScriptRunContext"),
    which a job's thread does on purpose (the shared model and calibration): drop that warning for those threads
    only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (threading.current_thread().name.startswith(THREAD_PREFIX)
                    and "missing ScriptRunContext" in record.getMessage())


logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_QuietLectureThreads())


class LectureJob:
    """The lecture data for one settings record: its progress while it is prepared (`fraction` in [0, 1], `text`),
    then `data` (app/lecture.py LectureData), or `error` (one message) when the analysis or the model failed."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.fraction, self.text = 0.0, "waiting to start"
        self.data: Optional[lecture.LectureData] = None
        self.error: Optional[str] = None
        self.seconds: Optional[float] = None  # how long the preparation took, once done
        self.started: Optional[float] = None  # time.perf_counter() when the running preparation was started
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._wanted = False  # a page asked for the lecture: a preload that finds a part missing computes it

    @property
    def elapsed(self) -> Optional[float]:
        """Seconds since the preparation was started (None before, and once its data is there): shown while a page
        waits."""
        return time.perf_counter() - self.started if self.started is not None and self.data is None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, stored_only: bool = False) -> None:
        """Start preparing, unless the data is there or a preparation runs; after a failure, start again.
        `stored_only` (a preload): read the lecture back from the server's disk if every part is there, else stop
        and compute nothing, unless a page asks for it meanwhile (`start()`)."""
        with self._lock:
            self._wanted = self._wanted or not stored_only
            if self.data is not None or self.running:
                return
            self.fraction, self.text, self.error = 0.0, "waiting for another lecture's preparation to finish", None
            self.started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name=f"{THREAD_PREFIX}{self.settings.key()}",
                                            daemon=True)
            self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Block until the preparation ends or `timeout` seconds pass; whether it ended (for scripts and tests)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.running

    def _say(self, fraction: float, text: str) -> None:
        self.fraction, self.text = min(max(fraction, 0.0), 1.0), messages.clean(text)

    def _run(self) -> None:
        t0 = time.perf_counter()
        with _ONE_AT_A_TIME:
            try:
                try:
                    self.data = build(self.settings, self._say, stored_only=not self._wanted)
                except NotStored:
                    with self._lock:  # nobody asked: stop; a page that asks from now on starts a new thread
                        if not self._wanted:
                            self._thread, self.fraction, self.text = None, 0.0, "waiting to start"
                            return
                    self.data = build(self.settings, self._say)  # a page asked meanwhile: compute what is missing
                self.seconds = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 — one message on every page that waits for it
                self.error = messages.failure(e)


def build(s: Settings, progress: session.Progress, stored_only: bool = False) -> lecture.LectureData:
    """The lecture data for the lecture settings `s`: the shared model and calibration (app/engine.py), then every
    part read back from the server's disk or computed and kept there when the settings may be written
    (app/stored.py). Raises as app/lecture.py `prepare` does, and for a model that does not load; with
    `stored_only`, raises NotStored at the first part the disk lacks (before loading anything when the store is
    off), having computed nothing."""
    if stored_only and stored.store() is None:
        raise NotStored("the result store is off")
    progress(0.0, f"loading the model {s.model!r} (quick once this server has loaded it)")
    session.prepare(s.model, progress)  # an embedded model's first use: joined and converted once
    lm, calib = engine.for_settings(s)
    return lecture.prepare(s, lm, calib, _from_disk if stored_only else stored.remembered, stored.writable(s),
                           progress)


def _from_disk(key: str, compute: Callable[[], T], write: bool) -> tuple[T, Stored]:
    """app/stored.py `remembered` for a preload: the stored value, or NotStored (nothing is computed)."""
    hit = stored.lookup(key)
    if hit is None:
        raise NotStored(key)
    return hit.value, hit


@st.cache_resource(show_spinner=False, max_entries=MAX_LECTURES)
def job(key: str, _settings: Settings) -> LectureJob:
    """The server's one job for the lecture settings whose key is `key` (`Settings.key()`)."""
    return LectureJob(_settings)


@st.cache_resource(show_spinner=False)
def preload() -> Optional[LectureJob]:
    """Once per server, after its first page: the default settings' lecture (the demo's in demo mode) read back from
    the server's disk into memory in the background, when `python -m app.lecture_prepare` (or any session) stored
    all of it; nothing happens when a part is missing or the store is off. Returns that lecture's job."""
    if stored.store() is None:
        return None
    s, _ = lecture.lecture_settings(Settings())
    j = job(s.key(), s)
    j.start(stored_only=True)
    return j


def forget() -> None:
    """Drop every lecture held in memory (tests; the disk keeps what it stored)."""
    job.clear()
