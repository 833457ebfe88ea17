"""Start `streamlit run app/main.py` on a free 127.0.0.1 port and drive it with Debian's chromium.

Shared by the end-to-end tests, bench/app_latency.py and bench/load_test.py. `playwright install`
cannot download here, so the browser is always /usr/bin/chromium.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
ERROR_SELECTOR = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def chromium_path() -> str | None:
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running `streamlit run` server: its URL and its process (for the load test's memory readings)."""

    url: str
    proc: subprocess.Popen


@contextlib.contextmanager
def streamlit_process(env: dict[str, str] | None = None, timeout: float = 60,
                      log: str | Path | None = None, script: Path = ROOT / "app" / "main.py") -> Iterator[Server]:
    """Start the app (or another Streamlit `script`) on a free 127.0.0.1 port and yield it once it answers its
    health check.

    The server's stdout and stderr go to `log` when given (else nowhere); the process, which this
    helper started, is terminated on exit.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    finally:
        if log:
            out.close()  # the child holds its own copy
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start on {url}")
                time.sleep(0.3)
        yield Server(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def streamlit_server(env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[str]:
    """Yield the app's URL; the server (a process this helper started) is terminated on exit."""
    with streamlit_process(env, timeout) as server:
        yield server.url


@contextlib.contextmanager
def chromium():
    """One headless Debian chromium (playwright's Browser); open pages or contexts on it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path() or CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_page(width: int = 1500, height: int = 1000):
    with chromium() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


FIGURE_TITLE = ".js-plotly-plot .gtitle, .pp-strip-title"  # a Plotly chart's title, or app/model_strip.py's
# A Vega-Lite chart (app/probe_charts.py) is named by its container's accessible name (the spec's description, which
# repeats its title); it is drawn once the container holds its SVG or canvas (Streamlit picks canvas for large data).
VEGA_CHART = '[data-testid="stVegaLiteChart"]'
VEGA_DRAWN = "svg.marks, canvas.marks"  # Vega's drawing surface (not an icon's SVG)


def chart_title(page, text: str, timeout_ms: float):
    """Wait until a drawn figure's title contains `text`: a Plotly chart's, a Vega-Lite chart's, or the lecture's
    HTML model overview's (app/model_strip.py); returns its locator (`title_text` reads the title from it)."""
    vega = page.locator(f"{VEGA_CHART}[aria-label*={json.dumps(text, ensure_ascii=False)}]").filter(
        has=page.locator(VEGA_DRAWN))
    loc = page.locator(FIGURE_TITLE, has_text=text).or_(vega).first
    loc.wait_for(state="visible", timeout=timeout_ms)
    return loc


def title_text(loc) -> str:
    """The title of the figure `chart_title` found."""
    return loc.get_attribute("aria-label") or loc.text_content()


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label).click()


# Lecture mode (app/views/lecture.py): a title each step's figure carries, by step slug (app/lecture.py STEPS).
LECTURE_FIGURES = {"model": "Where in the model", "importance": "how loud each word is",
                   "samples": "loudness at the probe", "history": "probe, history and fused energy",
                   "kept": "PPsp score of each head", "why": "heads kept by each method", "outputs": "change in loss",
                   "compare": "Perplexity against time", "sweep": "Perplexity against the pruning ratio",
                   "latency": "Per layer: pp vs dense"}


def lecture_step(page, k: int, timeout_ms: float) -> float:
    """Wait until lecture step `k` (1-based) shows its heading and its figure, with no error element; returns the
    seconds waited. Raises AssertionError naming the step when the page shows an error."""
    from app.lecture import STEPS

    t0 = time.perf_counter()
    step = STEPS[k - 1]
    page.get_by_role("heading", name=f"{k}. {step.title}").first.wait_for(state="visible", timeout=timeout_ms)
    chart_title(page, LECTURE_FIGURES[step.slug], timeout_ms)
    seconds = time.perf_counter() - t0
    if step.slug == "model":  # the overview's blocks survived st.html's sanitiser (it drops <svg>, for one)
        from app.model_strip import CELL_CLASS

        assert page.locator(f".{CELL_CLASS}").count() > 0, "lecture step 1 shows the overview's title but no blocks"
    errors = page.locator(ERROR_SELECTOR)
    assert errors.count() == 0, f"lecture step {k} ({step.slug}) shows an error: {errors.first.inner_text()[:300]}"
    return seconds


def lecture_next(page, k: int, timeout_ms: float = 30_000) -> float:
    """Press Next on lecture step `k` and wait for step k + 1 to draw; returns the seconds from the click."""
    t0 = time.perf_counter()
    page.get_by_role("button", name="Next ▶").click()
    lecture_step(page, k + 1, timeout_ms)
    return time.perf_counter() - t0
