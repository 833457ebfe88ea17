"""Load test: N sessions at once against ONE `streamlit run` server on 127.0.0.1, in real browser pages.

1. Concurrency. N sessions (separate browser contexts of one headless Debian chromium, so no shared
   cookies or storage), each with its own batch, method and ratio, are opened together. Every page's
   eight header numbers (perplexity dense and pruned with its delta, KL, top-1 agreement, and the FLOPs
   and probe FLOPs ratios over the whole model and over the decoder layers) must equal those of the same
   run done alone: the engine run in this process, the way
   the app runs it (ppcore.session.analyse on app.batch.build_batch), formatted as the page formats them.
   No page may show an error or exception element, and the server's log must hold no traceback.
2. Memory. R repeated runs over the open sessions, cycling through them (--at-once at a time; one by
   default, so that each reading is of an idle server after one more run): each changes its ratio in
   the sidebar (alternating between two values, so every run's numbers differ from the page's previous
   ones) and presses Run, and is checked against its run alone as above. The server's resident memory
   (VmRSS of the process and any children, from /proc) is read after every step. After the warm-up
   (the first W runs), neither the growth (median reading of the last 20 runs less that of the first 20
   after the warm-up) nor the fitted trend over the runs may exceed the stated bound.

3. Lecture sessions (--lecture K): K of the N sessions open lecture mode (all the same lecture: the small settings
   below), prepared on the server's disk first, as `python -m app.lecture_prepare` does. Each must draw step 1's
   figure with no error; in the repeated runs a lecture session's turn is a click on Next (Previous from the last
   step back), and the step it lands on must draw its figure with no error. The memory bound covers them too.

Bounded in count (--sessions, --repeats) and in time (--timeout: an overall deadline; past it the script
stops, writes what it has, and exits 2). Loopback only: the server listens on 127.0.0.1 and the
browser opens nothing else. Exit status 0 when everything holds, 1 when something does not.

    .venv/bin/python -m bench.load_test [--sessions 8] [--lecture 0] [--repeats 100] [--at-once 1] [--bound-mb 300]
        [--timeout 2400] [--out bench/results/load_test.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlencode

from app.header import header_metrics as page_metrics
from app.state import Settings
from tests.browser_util import (ERROR_SELECTOR, FIGURE_TITLE, LECTURE_FIGURES,  # run from the repository root (-m)
                                chromium, streamlit_process)

METHODS = ("pp", "wanda-sp", "flap", "fullbatch", "ppsp-calib")
RATIOS = (0.2, 0.3, 0.4, 0.5, 0.25, 0.35, 0.45, 0.15)
STEP = 0.05  # the repeated runs alternate each session's ratio between r and r + STEP
METRIC = '[data-testid="stMetric"]'
BUSY = '[data-testid="stStatusWidget"], [data-stale="true"]'  # the script is running / old elements shown
CALIB, CALIB_LEN = 8, 64  # small calibration, cached on disk after the first use
# Every lecture session's settings: one lecture, shared by all of them (app/lecture_job.py).
LECTURE = replace(Settings(), batch_size=4, seq_len=48, calib_windows=CALIB, calib_seq_len=CALIB_LEN)


@dataclass(frozen=True)
class LectureStep:
    """What a lecture session must show: step `k` (1-based) of the lecture, drawn."""

    k: int

    def after_click(self) -> tuple[str, "LectureStep"]:
        """The button a turn presses (Next, or Previous from the last step) and the step it leads to."""
        from app.lecture import STEPS

        return ("Next ▶", LectureStep(self.k + 1)) if self.k < len(STEPS) else ("◀ Previous", LectureStep(self.k - 1))


def lecture_query() -> str:
    return "/?" + urlencode({"lecture": "1", **LECTURE.to_query()})


def prepare_lecture(say: Callable[[str], None]) -> None:
    """The lecture sessions' lecture on the server's disk (app/lecture_prepare.py); quick when it is there."""
    from app import lecture_job
    from app.lecture import lecture_settings

    s, _ = lecture_settings(LECTURE)
    data = lecture_job.build(s, lambda v, text: None)
    if data.errors:
        raise RuntimeError(f"the lecture could not be prepared: {data.errors}")
    say("lecture prepared: " + "; ".join(f"{k} {v}" for k, v in data.when.items()))


class LoadTestTimeout(Exception):
    pass


class Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise LoadTestTimeout(f"the load test ran past its {self.seconds:.0f} s deadline while {what}")


# --- the sessions and their runs alone ---------------------------------------------------------------

def session_settings(n: int) -> list[Settings]:
    """N different sessions: example prompts or corpus windows, 2 to 4 samples of 32 to 48 tokens,
    a method and a ratio each, their own seed (which also picks the calibration windows)."""
    out = []
    for i in range(n):
        out.append(replace(Settings(), source="corpus" if i % 2 else "examples", batch_size=2 + i % 3,
                           seq_len=(32, 48, 40)[i % 3], method=METHODS[i % len(METHODS)],
                           ratio=round(RATIOS[i % len(RATIOS)] + 0.01 * (i // len(RATIOS)), 2),
                           calib_windows=CALIB, calib_seq_len=CALIB_LEN, seed=i))
    return out


def run_ratios(s: Settings) -> tuple[float, float]:
    """The two ratios a session alternates between in the repeated runs (the first is its own)."""
    return s.ratio, round(s.ratio + STEP, 2)


def query(s: Settings) -> str:
    return "/?" + urlencode(s.to_query())


HEADER_METRICS = 8  # the header's st.metric elements, first on the page


def header_metrics(summary: dict[str, float], method: str) -> list[list[str]]:
    """The page's header metrics as (label, value[, delta]) strings: app/header.py, which the page draws from."""
    return [m.lines() for m in page_metrics(summary, method)]


class Alone:
    """Runs done alone, in this process, exactly as the app runs them (one model, calibration per seed)."""

    def __init__(self) -> None:
        from ppcore import session

        s = Settings()
        self.lm = session.open_model(s.model, s.device, s.dtype)
        self.calib: dict[tuple, Any] = {}
        self.cache: dict[str, dict[str, Any]] = {}

    def calibration(self, s: Settings):
        from app.state import calib_config
        from ppcore import session

        config = calib_config(s)
        if (config, s.seed) not in self.calib:  # as app.engine.get_calibration
            self.calib[config, s.seed] = session.calibration(self.lm, config, s.seed)
        return self.calib[config, s.seed]

    def __call__(self, s: Settings) -> dict[str, Any]:
        from app.batch import build_batch
        from app.state import prune_config
        from ppcore import session

        key = s.key()
        if key not in self.cache:
            batch = build_batch(self.lm.tokenizer, self.lm.adapter.dims.vocab, s, None, self.lm.bos_id)
            a = session.analyse(self.lm, self.calibration(s), prune_config(s), batch, ratio=s.ratio, seed=s.seed)
            summary = a.summary()
            self.cache[key] = {"summary": summary, "metrics": header_metrics(summary, a.cfg.method)}
        return self.cache[key]


# --- the pages -----------------------------------------------------------------------------------------

def header_pattern(s: Settings) -> re.Pattern:
    """The result header of a run with these settings (its method and ratio)."""
    return re.compile(rf"method {re.escape(s.method)} at ratio {s.ratio:.2f}, skipped layers")


def read_metrics(page) -> list[list[str]]:
    """The first HEADER_METRICS st.metric elements (the header's), each as its non-empty lines."""
    texts = page.locator(METRIC).all_inner_texts()[:HEADER_METRICS]
    return [[line.strip() for line in t.split("\n") if line.strip()] for t in texts]


def lecture_ready(page, want: LectureStep) -> bool:
    """Whether the lecture page shows step `want.k`'s heading and figure."""
    from app.lecture import STEPS

    step = STEPS[want.k - 1]
    return (page.get_by_role("heading", name=f"{want.k}. {step.title}").count() > 0 and
            page.locator(FIGURE_TITLE, has_text=LECTURE_FIGURES[step.slug]).count() > 0)


def page_state(page, s: Settings | LectureStep) -> str:
    """'error', 'ready' (the result of `s`, or the lecture step, is shown and the script is idle) or 'busy'."""
    if page.locator(ERROR_SELECTOR).count():
        return "error"
    if isinstance(s, LectureStep):
        return "ready" if not page.locator(BUSY).count() and lecture_ready(page, s) else "busy"
    if page.locator(BUSY).count() or page.get_by_text(header_pattern(s)).count() == 0:
        return "busy"
    return "ready" if page.locator(METRIC).count() >= HEADER_METRICS else "busy"


def wait_all(pages: dict[int, Any], want: dict[int, Any], started: dict[int, float], deadline: Deadline,
             what: str, poll: float = 0.2) -> dict[int, tuple[str, float]]:
    """Poll the pages until each shows its result or an error: {session: (state, seconds since started)}."""
    pending, done = set(pages), {}
    while pending:
        deadline.check(f"{what} ({len(pending)} of {len(pages)} sessions unfinished: {sorted(pending)})")
        for i in sorted(pending):
            state = page_state(pages[i], want[i])
            if state != "busy":
                done[i] = (state, time.monotonic() - started[i])
                pending.discard(i)
        if pending:
            time.sleep(poll)
    return done


def check_page(page, s: Settings | LectureStep, expected: list[list[str]], state: str) -> Optional[str]:
    """None when the page shows exactly the run-alone numbers (a lecture page: its step) and no error; else what is
    wrong."""
    if state == "error" or page.locator(ERROR_SELECTOR).count():
        return "the page shows an error: " + " | ".join(page.locator(ERROR_SELECTOR).all_inner_texts())[:500]
    if isinstance(s, LectureStep):
        return None if lecture_ready(page, s) else f"lecture step {s.k} is not drawn"
    got = read_metrics(page)
    if got != expected:
        time.sleep(1.0)  # read once more, in case the DOM was caught mid-update
        got = read_metrics(page)
    if got != expected:
        return f"numbers differ from the run alone: page {got}, alone {expected}"
    return None


def set_ratio_and_run(page, ratio: float, deadline: Deadline) -> None:
    """Type a new ratio into the sidebar, wait for the page to notice, press Run."""
    box = page.get_by_role("spinbutton", name="Pruning ratio", exact=True)
    box.fill(f"{ratio:.2f}")
    box.press("Enter")
    page.get_by_text("The sidebar settings differ").wait_for(timeout=max(1.0, min(300.0, deadline.left())) * 1000)
    page.get_by_role("button", name="Run", exact=True).click()


# --- memory --------------------------------------------------------------------------------------------

def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB (VmRSS from /proc/<pid>/status)."""
    total = 0
    for p in [pid] + _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def memory_verdict(samples: list[dict[str, Any]], warmup: int, window: int,
                   bound_mb: Optional[float]) -> dict[str, Any]:
    """Flat or not, from the readings taken after each round of repeated runs.

    Readings at idle still move by hundreds of MiB from round to round (freed memory kept by the
    allocator, Python's cycle collector running late), so one reading against another says little.
    Growth is the median reading over the last `window` runs less the median over the first `window`
    runs after the warm-up; the trend is the least-squares slope of the readings after the warm-up,
    times the number of runs after the warm-up. Both must stay within the bound.
    """
    runs = [x for x in samples if x["phase"] == "runs"]
    out: dict[str, Any] = {"warmup_runs": warmup, "window_runs": window, "bound_mb": bound_mb}
    if not runs:
        return {**out, "verdict": "no repeated runs"}
    out.update(max_rss_mb=max(x["rss_mb"] for x in samples), final_rss_mb=runs[-1]["rss_mb"])
    after = [x for x in runs if x["runs"] > warmup]
    total = runs[-1]["runs"]
    first = [x["rss_mb"] for x in after if x["runs"] <= warmup + window]
    last = [x["rss_mb"] for x in after if x["runs"] > total - window]
    if len(after) < 3 or not first or not last or total - window < warmup + window:
        return {**out, "verdict": "too few runs after warm-up"}
    ys = [x["rss_mb"] for x in after]
    out.update(first_window_median_mb=statistics.median(first), last_window_median_mb=statistics.median(last),
               after_warmup_min_mb=min(ys), after_warmup_max_mb=max(ys))
    out["growth_mb"] = out["last_window_median_mb"] - out["first_window_median_mb"]
    out["trend_mb"] = _slope([x["runs"] for x in after], ys) * (total - warmup)
    if bound_mb is None:
        out["verdict"] = "not checked"
    else:
        out["verdict"] = "pass" if max(out["growth_mb"], out["trend_mb"]) <= bound_mb else "fail"
    return out


# --- the whole test ------------------------------------------------------------------------------------

def _spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else {}


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def server_problems(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [f"the server logged a traceback: {text[m.start():m.start() + 800]}"
            for m in re.finditer(r"Traceback \(most recent call last\)", text)][:3]


def run_load_test(sessions: int = 8, repeats: int = 100, timeout: float = 2400, at_once: int = 1,
                  warmup: int = 10, window: int = 20, bound_mb: Optional[float] = 300,
                  say: Callable[[str], None] = print, log_dir: Optional[Path] = None,
                  lecture: int = 0) -> dict[str, Any]:
    """The load test; returns the report (its 'problems' list is empty and its 'verdict' 'pass' when all holds).

    The last `lecture` of the `sessions` are lecture sessions (walking the lecture's steps). The repeated runs go
    `at_once` sessions at a time, cycling over the sessions. Raises LoadTestTimeout past `timeout` seconds, with
    the report so far attached as .report."""
    deadline = Deadline(timeout)
    t_start = time.monotonic()
    lecture = max(0, min(lecture, sessions))
    settings = session_settings(sessions - lecture)
    wants: list[Any] = [*settings, *[LectureStep(1)] * lecture]  # what each session shows first
    at_once = max(1, min(at_once, sessions))
    report: dict[str, Any] = {"sessions": sessions, "lecture_sessions": lecture, "repeats": repeats,
                              "runs_at_once": at_once, "cpus": os.cpu_count(), "load_before": _loadavg(),
                              "problems": []}
    problems: list[str] = report["problems"]
    tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="pp-load-")
    try:
        say(f"runs alone: {sessions} sessions x {2 if repeats else 1} ratios, in this process")
        alone = Alone()
        t0 = time.monotonic()
        for s in settings:
            for r in run_ratios(s)[: 2 if repeats else 1]:
                alone(replace(s, ratio=r))
                deadline.check("running the sessions alone")
        report["alone_seconds"] = round(time.monotonic() - t0, 1)
        if lecture:
            prepare_lecture(say)
        firsts = [tuple(map(tuple, alone(s)["metrics"])) for s in settings]
        if len(set(firsts)) != len(firsts):
            problems.append("two sessions have the same numbers alone: the sessions do not really differ")

        log = Path(log_dir or tmp.name) / "streamlit.log"
        with streamlit_process(log=log) as server, chromium() as browser:
            pid = server.proc.pid
            samples: list[dict[str, Any]] = []
            report["memory_samples"] = samples

            def sample(phase: str, runs: int) -> None:
                samples.append({"phase": phase, "runs": runs, "t_s": round(time.monotonic() - t_start, 1),
                                "rss_mb": round(rss_mb(pid), 1)})

            sample("started", 0)
            contexts = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in wants]
            pages = {i: c.new_page() for i, c in enumerate(contexts)}
            say(f"opening {sessions} sessions at once ({lecture} in lecture mode) on {server.url}")
            started = {}
            for i, s in enumerate(wants):
                started[i] = time.monotonic()
                pages[i].goto(server.url + (query(s) if isinstance(s, Settings) else lecture_query()),
                              wait_until="commit")
            done = wait_all(pages, dict(enumerate(wants)), started, deadline, "waiting for the first results")
            detail = []
            for i, s in enumerate(wants):
                state, secs = done[i]
                if isinstance(s, LectureStep):
                    bad = check_page(pages[i], s, [], state)
                    if bad:
                        problems.append(f"session {i} ({lecture_query()}): {bad}")
                    detail.append({"session": i, "query": lecture_query(), "lecture": True,
                                   "seconds": round(secs, 2), "ok": bad is None})
                    continue
                expected = alone(s)["metrics"]
                bad = check_page(pages[i], s, expected, state)
                if bad:
                    problems.append(f"session {i} ({query(s)}): {bad}")
                detail.append({"session": i, "query": query(s), "method": s.method, "ratio": s.ratio,
                               "source": s.source, "batch": [s.batch_size, s.seq_len], "seed": s.seed,
                               "seconds": round(secs, 2), "ok": bad is None,
                               "numbers": {m[0]: " ".join(m[1:]) for m in expected}})
            report["concurrent"] = detail
            report["time_per_session_s"] = _spread([d["seconds"] for d in detail])
            say(f"first results: {sum(d['ok'] for d in detail)}/{sessions} equal to the runs alone, seconds "
                + ", ".join(f"{d['seconds']:.1f}" for d in detail))
            sample("concurrent", 0)

            runs: list[dict[str, Any]] = []
            report["runs"] = runs
            count = [0] * sessions  # runs per session: its ratio alternates, so each run changes its numbers
            while len(runs) < repeats:
                group = [(len(runs) + k) % sessions for k in range(min(at_once, repeats - len(runs)))]
                want, started = {}, {}
                for i in group:
                    count[i] += 1
                    started[i] = time.monotonic()
                    if isinstance(wants[i], LectureStep):  # a lecture session's turn: one step on
                        button, wants[i] = wants[i].after_click()
                        want[i] = wants[i]
                        pages[i].get_by_role("button", name=button).click()
                        continue
                    want[i] = replace(settings[i], ratio=run_ratios(settings[i])[count[i] % 2])
                    set_ratio_and_run(pages[i], want[i].ratio, deadline)
                done = wait_all({i: pages[i] for i in group}, want, started, deadline,
                                f"waiting for repeated runs {len(runs) + 1} to {len(runs) + len(group)}")
                for i in group:
                    state, secs = done[i]
                    lecturing = isinstance(want[i], LectureStep)
                    bad = check_page(pages[i], want[i], [] if lecturing else alone(want[i])["metrics"], state)
                    if bad:
                        problems.append(f"run {len(runs) + 1}, session {i} at ratio {want[i].ratio}: {bad}")
                    runs.append({"run": len(runs) + 1, "session": i, "seconds": round(secs, 2), "ok": bad is None,
                                 **({"lecture_step": want[i].k} if lecturing else {"ratio": want[i].ratio})})
                sample("runs", len(runs))
                if len(runs) % 10 < len(group) or len(runs) == repeats:
                    say(f"{len(runs)}/{repeats} repeated runs, server RSS {samples[-1]['rss_mb']:.0f} MiB, "
                        f"{sum(not r['ok'] for r in runs)} wrong")
            report["run_seconds"] = _spread([r["seconds"] for r in runs])
            for c in contexts:
                c.close()
            time.sleep(2)
            sample("closed", len(runs))
        problems += server_problems(log)
        report["memory"] = memory_verdict(report["memory_samples"], warmup, window, bound_mb)
        m = report["memory"]
        if m["verdict"] == "fail":
            problems.append(f"server memory not flat after warm-up: growth {m['growth_mb']:+.0f} MiB, trend "
                            f"{m['trend_mb']:+.0f} MiB, bound {bound_mb:.0f} MiB")
        report["verdict"] = "fail" if problems else "pass"
        return report
    except LoadTestTimeout as e:
        report["verdict"] = "timeout"
        problems.append(str(e))
        e.report = report  # type: ignore[attr-defined]
        raise
    except Exception as e:  # a browser call that failed (e.g. an element that never came): keep the report
        report["verdict"] = "error"
        problems.append(f"{type(e).__name__}: {e}"[:2000])
        e.report = report  # type: ignore[attr-defined]
        raise
    finally:
        report["wall_s"] = round(time.monotonic() - t_start, 1)
        report["load_after"] = _loadavg()
        if tmp is not None:
            tmp.cleanup()


def summary_lines(rep: dict[str, Any]) -> list[str]:
    out = [f"verdict: {rep['verdict']} ({rep['sessions']} sessions, {len(rep.get('runs', []))} repeated runs, "
           f"{rep['wall_s']:.0f} s; load average before {rep['load_before'][0]:.1f}, after {rep['load_after'][0]:.1f})"]
    t = rep.get("time_per_session_s")
    if t:
        out.append(f"time per session, {rep['sessions']} at once: min {t['min']:.1f} s, median {t['median']:.1f} s, "
                   f"max {t['max']:.1f} s")
    r = rep.get("run_seconds")
    if r:
        out.append(f"repeated run (ratio changed, Run pressed): median {r['median']:.1f} s, max {r['max']:.1f} s")
    m = rep.get("memory", {})
    if "growth_mb" in m:
        out.append(f"server RSS after warm-up ({m['warmup_runs']} runs): {m['after_warmup_min_mb']:.0f} to "
                   f"{m['after_warmup_max_mb']:.0f} MiB; median of runs {m['warmup_runs'] + 1}-"
                   f"{m['warmup_runs'] + m['window_runs']} {m['first_window_median_mb']:.0f} MiB, of the last "
                   f"{m['window_runs']} {m['last_window_median_mb']:.0f} MiB: growth {m['growth_mb']:+.0f} MiB, "
                   f"trend {m['trend_mb']:+.0f} MiB (bound {m['bound_mb']} MiB): {m['verdict']}")
    out += [f"PROBLEM: {p}" for p in rep["problems"]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8, help="sessions at once (1 to 32)")
    ap.add_argument("--lecture", type=int, default=0, help="how many of the sessions are in lecture mode")
    ap.add_argument("--repeats", type=int, default=100, help="repeated runs for the memory check (0 to 1000)")
    ap.add_argument("--at-once", type=int, default=1, help="sessions running at a time in the repeated runs")
    ap.add_argument("--warmup", type=int, default=10, help="runs before the memory readings count")
    ap.add_argument("--window", type=int, default=20, help="runs in each of the two windows compared")
    ap.add_argument("--bound-mb", type=float, default=300, help="allowed RSS growth after warm-up, MiB")
    ap.add_argument("--timeout", type=float, default=2400, help="overall deadline, seconds")
    ap.add_argument("--out", default="bench/results/load_test.json")
    args = ap.parse_args()
    if not (1 <= args.sessions <= 32 and 0 <= args.repeats <= 1000 and args.timeout > 0):
        ap.error("use 1 to 32 sessions, 0 to 1000 repeats and a positive timeout")

    def alarm(*_):  # the backstop, should a single browser call hang past the deadline
        raise LoadTestTimeout(f"hard limit of {args.timeout + 120:.0f} s reached")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(args.timeout) + 120)
    code = 0
    try:
        rep = run_load_test(args.sessions, args.repeats, args.timeout, args.at_once, args.warmup, args.window,
                            args.bound_mb, say=lambda m: print(m, file=sys.stderr, flush=True), lecture=args.lecture)
        code = 0 if rep["verdict"] == "pass" else 1
    except Exception as e:
        timeout = isinstance(e, LoadTestTimeout)
        rep = getattr(e, "report", None) or {"verdict": "timeout" if timeout else "error", "sessions": args.sessions,
                                             "problems": [f"{type(e).__name__}: {e}"], "load_before": _loadavg(),
                                             "load_after": _loadavg(), "wall_s": 0.0}
        code = 2 if timeout else 1
    finally:
        signal.alarm(0)
    rep["command"] = (f".venv/bin/python -m bench.load_test --sessions {args.sessions} --lecture {args.lecture} "
                      f"--repeats {args.repeats} "
                      f"--at-once {args.at_once} --warmup {args.warmup} --window {args.window} "
                      f"--bound-mb {args.bound_mb:g} "
                      f"--timeout {args.timeout:g}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rep, indent=2, ensure_ascii=False))
    print("\n".join(summary_lines(rep)))
    print(f"report: {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
