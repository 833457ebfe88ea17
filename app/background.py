"""Long computations that keep running while the person browses (issue 14 item 4).

A Streamlit script run stops as soon as the person touches any widget, so a four-minute comparison run inside it is
lost when they switch tabs. These run instead in ONE worker thread per server (2 CPU cores: two long jobs at once
would only slow both), queued in order; the page polls them and picks the result up when it is done. A job is
named by its result key (ppcore.session.result_key_of), so two sessions asking for the same thing share one job.

No streamlit here: the page side is in app/main.py. The engine never writes the model's weights, so a job and a
session's own run may read the shared model at the same time.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

# Held while a background computation runs, by this worker and by the lecture's preparation (app/lecture_job.py):
# one long computation at a time on the server, whichever asked for it.
COMPUTE_LOCK = threading.Lock()
KEEP_FINISHED = 32  # finished jobs kept for the sessions that have not picked theirs up yet (newest kept)
MAX_PER_PAGE = 4  # background computations one page may wait for at once (app/main.py)


class Cancelled(Exception):
    """Raised inside a job's progress callback once someone pressed Cancel: the computation stops at its next
    progress point (the next layer)."""


@dataclass
class Job:
    """One computation: its key and label, its progress (fraction in [0, 1] and the current step), and when done
    its value or the exception it raised. `seconds`: wall time of the computation itself (queueing excluded)."""

    key: str
    label: str
    fraction: float = 0.0
    text: str = "waiting for the computations queued before it"
    value: Any = None
    error: Optional[BaseException] = None
    seconds: float = 0.0
    submitted: float = field(default_factory=time.time)
    cancel: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    requesters: set[str] = field(default_factory=set)  # the pages waiting for it; none left: it is cancelled

    def progress(self, fraction: float, text: str) -> None:
        """The computation's Progress callback: records where it is; raises Cancelled once cancelled."""
        if self.cancel:
            raise Cancelled(f"{self.label}: cancelled")
        self.fraction, self.text = min(max(float(fraction), 0.0), 1.0), text


class Jobs:
    """The server's queue of background computations (one worker thread)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pp-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, label: str, fn: Callable[[Callable[[float, str], None]], Any],
               on_value: Optional[Callable[[Any, float], None]] = None, fresh: bool = False,
               requester: str = "") -> Job:
        """The job computing `key`: the running or finished one when there is (a failed or cancelled one, or with
        `fresh` a finished one, is started again), else a new one queued to run `fn(progress)`. `on_value(value,
        seconds)` runs in the worker once it succeeded (e.g. to keep the value on disk; what it raises is ignored:
        the value is still shown). `requester` (a page's id) is added to the pages waiting for it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.cancel and (not job.done.is_set() or (job.error is None and not fresh)):
                job.requesters.add(requester)
                return job
            job = self._jobs[key] = Job(key, label, requesters={requester})
            self._forget_old()
        self._pool.submit(self._run, job, fn, on_value)
        return job

    def _run(self, job: Job, fn: Callable[[Callable[[float, str], None]], Any],
             on_value: Optional[Callable[[Any, float], None]]) -> None:
        try:
            with COMPUTE_LOCK:
                t0 = time.perf_counter()
                job.progress(0.0, "starting")
                value = fn(job.progress)
                job.seconds = time.perf_counter() - t0
            if on_value is not None:
                try:
                    on_value(value, job.seconds)
                except Exception:  # noqa: BLE001 — keeping it on disk is a convenience; the value is right
                    pass
            job.value = value
        except BaseException as e:  # noqa: BLE001 — whatever it raised is the page's one message
            job.error = e
        finally:
            job.fraction = 1.0
            job.done.set()

    def release(self, key: str, requester: str) -> None:
        """`requester` no longer waits for the job of `key` (it cancelled, or asked for something else): the job is
        cancelled once no page waits for it, so a page can never leave work queued for nobody."""
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                return
            job.requesters.discard(requester)
            if not job.requesters and not job.done.is_set():
                job.cancel = True

    def get(self, key: str) -> Optional[Job]:
        """The job for `key`, or None (never submitted, or forgotten after KEEP_FINISHED newer ones finished)."""
        with self._lock:
            return self._jobs.get(key)

    def running(self) -> list[Job]:
        """The jobs not finished yet, oldest first."""
        with self._lock:
            return sorted((j for j in self._jobs.values() if not j.done.is_set()), key=lambda j: j.submitted)

    def wait(self, timeout: float = 900.0) -> bool:
        """Block until every job submitted so far is done (tests, scripts); False if `timeout` s passed first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.done.is_set()), key=lambda j: j.submitted)
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job.key]
