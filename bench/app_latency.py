"""How fast the app answers in a real browser (headless Debian chromium via playwright).

1. First result: seconds from opening the page (fresh server, default settings) until the probe heat
   map is drawn, with a warm disk cache (model converted, calibration cached; this script warms both); then the
   same in a new browser session on the running server (issue 14: <= 5 s), the result on its disk.
2. Layer switch: seconds from clicking "next layer" in the probe view until the new layer's heat map
   is drawn (median and max of several clicks).
3. Lecture mode (issue 14: first figure <= 3 s, every next step <= 1 s): with the lecture prepared on disk (this
   script prepares it after 1 and 2, as `python -m app.lecture_prepare` does; the first time takes minutes) and the
   server already running (it has served the page above), by the page's own clock: seconds from opening
   `?lecture=1` in a new session until step 1's figure is painted (the server reads the lecture back from disk),
   the same in a second new session (the lecture already in the server's memory), and from each click on Next
   until the next step's figure is painted, Next pressed `--dwell` seconds (default 3) after the step before was
   drawn, as a lecturer speaks over each step; then the same in a third session with Next pressed at once.
4. Pruned channels and Compare (issue 14: the tab <= 5 s; "Compare all methods" for a batch already compared
   <= 2 s): the first session opens the Pruned channels tab (its baselines computed, or read back from the server's
   disk when any session computed them before) and compares every method once (untimed when it was not stored);
   then a NEW session opens the page, and the script times opening Pruned channels until its Jaccard chart is drawn,
   and pressing "Compare all methods" until the comparison's chart is drawn.
5. Yardstick: a new session's time to draw the smallest Streamlit page with one Plotly chart
   (bench/yardstick_page.py) on a server of its own, before the app's starts: how fast this machine's browser is
   today, apart from the app
   (1.75-1.9 s on 2026-12-01, 3.35-3.8 s on 2026-12-02 on the same 2-core machine).
With --shots DIR it also saves a screenshot of each view (the README's pictures).

    .venv/bin/python -m bench.app_latency [--shots assets] [--no-lecture] [--dwell 3]
        [--out bench/results/app_latency.json]
    .venv/bin/python -m bench.app_latency --first-only 4 --out ...   # 1 and 5 only, quickly
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from pathlib import Path

from app.state import Settings, calib_config
from tests.browser_util import (FIGURE_TITLE, LECTURE_FIGURES, VEGA_CHART, VEGA_DRAWN, browser_page, chart_title,
                                chromium, lecture_step, open_tab, streamlit_process, streamlit_server, title_text)


def warm_cache() -> None:
    """The measured condition is a warm cache: convert the model and calibrate with the app's defaults."""
    from ppcore import session

    s = Settings()
    session.calibration(session.open_model(s.model, s.device, s.dtype), calib_config(s), s.seed)


def warm_lecture(query: str = "") -> None:
    """The lecture of the default settings (or of a link's `query`) prepared on the server's disk
    (app/lecture_prepare.py); quick when it is already there. Raises RuntimeError when the result store is off or
    a part failed."""
    from app import lecture_prepare

    if lecture_prepare.main(["--query", query] if query else []) != 0:
        raise RuntimeError("the lecture could not be prepared (see above)")


# Lecture timings are taken by the page's own clock: a MutationObserver notes when a step's heading and figure title
# are in the page, and the time after the next frame (they are painted by then). Playwright's role queries, which
# `lecture_step` uses to check each step, compute ARIA roles over the whole page on every poll: on 2 cores that
# polling took 0.2-0.4 s of the browser's time per step, which no lecturer's browser spends.
_DRAWN_JS = """([title, figure]) => new Promise(done => {
  const seen = () => [...document.querySelectorAll('h2')].some(h => h.textContent.startsWith(title)) &&
    ([...document.querySelectorAll('""" + FIGURE_TITLE + """')].some(f => f.textContent.includes(figure)) ||
     [...document.querySelectorAll('""" + VEGA_CHART + """')].some(f =>
       (f.getAttribute('aria-label') || '').includes(figure) && f.querySelector('""" + VEGA_DRAWN + """')));
  const painted = () => requestAnimationFrame(() => setTimeout(() => done(performance.now()), 0));
  if (seen()) { painted(); return; }
  const watch = new MutationObserver(() => { if (seen()) { watch.disconnect(); painted(); } });
  watch.observe(document, {subtree: true, childList: true, characterData: true});
})"""
# Next is clicked once it is in the page (a new page shows step 1's figure before its buttons' code has loaded).
_NEXT_JS = """async ([title, figure]) => {
  let next;
  while (!(next = [...document.querySelectorAll('button')].find(b => b.textContent.includes('Next'))))
    await new Promise(r => requestAnimationFrame(r));
  const drawn = (%s)([title, figure]);
  const t0 = performance.now();
  next.click();
  return (await drawn) - t0;
}""" % _DRAWN_JS


def _step_id(k: int) -> list[str]:
    """Lecture step k's heading start and its figure's title (what `_DRAWN_JS` waits for)."""
    from app.lecture import STEPS

    step = STEPS[k - 1]
    return [f"{k}. {step.title}", LECTURE_FIGURES[step.slug]]


def lecture_timings(browser, url: str, query: str = "", dwell: float = 3.0) -> dict:
    """Lecture mode in new sessions of a running server, by the page's clock: the first figure (lecture read from
    disk; seconds from the start of navigation until step 1's figure is painted), the first figure again (from the
    server's memory), and each Next: seconds from the click until the next step's figure is painted, pressed
    `dwell` seconds after the step before was drawn (a lecturer speaks over each step; 0: at once), and again with
    no dwell. Each step is then checked for errors (`lecture_step`). `query`: the lecture's settings as a link's
    query (default: the app's defaults)."""
    from app.lecture import STEPS

    out: dict = {"lecture_dwell_s": dwell, "lecture_clock": "the page's (performance.now), to the frame after the "
                                                            "step's heading and figure title are in the page"}
    runs = (("lecture_first_figure_s", None), ("lecture_first_figure_memory_s", dwell),
            ("lecture_first_figure_memory2_s", 0.0))
    for name, wait in runs:
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # Watched from the document's start (an init script), so that a step drawn before goto returns is timed too.
        page.add_init_script(f"window.__ppFirst = ({_DRAWN_JS})({json.dumps(_step_id(1))})")
        page.goto(url + "/?lecture=1" + (f"&{query}" if query else ""))
        out[name] = page.evaluate("() => window.__ppFirst") / 1000  # performance.now() counts from navigation
        lecture_step(page, 1, timeout_ms=120_000)
        if wait is not None:
            steps = []
            for k in range(1, len(STEPS)):
                time.sleep(wait)
                steps.append(page.evaluate(_NEXT_JS, _step_id(k + 1)) / 1000)
                lecture_step(page, k + 1, timeout_ms=30_000)  # no error element, and the figure is there
            tag = "_no_dwell" if name.endswith("memory2_s") else ""
            out.update({f"lecture_next_median{tag}_s": statistics.median(steps),
                        f"lecture_next_max{tag}_s": max(steps), f"lecture_next{tag}_s": steps})
        page.close()
    return out


def yardstick(browser, repeats: int = 3) -> list[float]:
    """Seconds a new browser session takes to draw bench/yardstick_page.py (one Plotly chart, nothing of the app's)
    on its own server, `repeats` times after one warm-up: this machine's speed today, for comparing days."""
    with streamlit_process(script=Path(__file__).with_name("yardstick_page.py")) as server:
        out = []
        for i in range(repeats + 1):
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            try:
                page = context.new_page()
                t = time.perf_counter()
                page.goto(server.url)
                chart_title(page, "yardstick chart", timeout_ms=60_000)
                if i:
                    out.append(time.perf_counter() - t)
            finally:
                context.close()
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--shots", help="folder for one screenshot per view (PNG)")
    ap.add_argument("--out", default="bench/results/app_latency.json")
    ap.add_argument("--no-lecture", action="store_true", help="leave out lecture mode's timings")
    ap.add_argument("--dwell", type=float, default=3.0, help="seconds on each lecture step before Next is pressed "
                                                             "(a lecturer speaks over each step; default 3)")
    ap.add_argument("--limit", type=int, default=3600, help="hard limit on the whole script, seconds (a lecture "
                                                             "prepared for the first time takes most of it)")
    ap.add_argument("--first-only", type=int, default=0, metavar="N",
                    help="measure only the yardstick and N new sessions' first result on a running server (after "
                         "one page): issue 14's condition, quickly (a couple of minutes)")
    args = ap.parse_args()
    signal.alarm(args.limit)  # bounded in time, whatever happens
    warm_cache()
    out: dict = {}
    with chromium() as browser:  # before the app's server starts: nothing of the app's runs meanwhile
        out["yardstick_s"] = yardstick(browser)  # this machine's speed today (bench/yardstick_page.py)
    if args.first_only:
        with streamlit_server() as url, browser_page(height=1900) as page:
            page.goto(url)
            chart_title(page, "residual importance", timeout_ms=180_000)  # the server has served it once
            out["first_result_new_session_s"] = [new_session_first_result(page.context.browser, url)
                                                 for _ in range(args.first_only)]
        out["command"] = f".venv/bin/python -m bench.app_latency --first-only {args.first_only}"
        _write(out, args.out)
        return
    with streamlit_server() as url, browser_page(height=1900) as page:
        t0 = time.perf_counter()
        page.goto(url)
        title = chart_title(page, "residual importance", timeout_ms=180_000)
        out["first_result_s"] = time.perf_counter() - t0
        start = int(title_text(title).split(",")[0].split()[1])
        switches = []
        for i in range(1, args.clicks + 1):
            t = time.perf_counter()
            page.get_by_role("button", name="▶").click()
            chart_title(page, f"Layer {start + i}, Attention", timeout_ms=30_000)
            switches.append(time.perf_counter() - t)
        out.update(layer_switch_median_s=statistics.median(switches), layer_switch_max_s=max(switches),
                   layer_switch_s=switches)
        out["first_result_new_session_s"] = new_session_first_result(page.context.browser, url)
        out.update(tab_timings(page.context.browser, url, page))
        if not args.no_lecture:  # the server is running and has served a page: the lecture's condition
            warm_lecture()  # after the first result, so that its analysis is not the lecture's stored one
            out.update(lecture_timings(page.context.browser, url, dwell=args.dwell))
        if args.shots:
            shots(page, Path(args.shots))
    out["command"] = ".venv/bin/python -m bench.app_latency"
    _write(out, args.out)


def _write(out: dict, path: str) -> None:
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def new_session_first_result(browser, url: str) -> float:
    """Seconds from opening the page in a NEW browser session on the running server (which has served the default
    batch once, so its result is on the server's disk) until the probe heat map is drawn: issue 14's condition."""
    context = browser.new_context(viewport={"width": 1500, "height": 1900})
    try:
        page = context.new_page()
        t = time.perf_counter()
        page.goto(url)
        chart_title(page, "residual importance", timeout_ms=180_000)
        return time.perf_counter() - t
    finally:
        context.close()


def tab_timings(browser, url: str, first_page) -> dict:
    """Pruned channels and Compare in a new session, once the first session (`first_page`) has computed them."""
    jaccard, compared = "keep-set with the oracle", "Perplexity against time"
    open_tab(first_page, "Pruned channels")
    chart_title(first_page, jaccard, timeout_ms=900_000)
    open_tab(first_page, "Compare methods")
    first_page.get_by_role("button", name="Compare all methods").click()
    chart_title(first_page, compared, timeout_ms=1_800_000)  # in the background: the page picks it up when done
    context = browser.new_context(viewport={"width": 1500, "height": 1900})
    try:
        page = context.new_page()
        page.goto(url)
        chart_title(page, "residual importance", timeout_ms=180_000)
        t = time.perf_counter()
        open_tab(page, "Pruned channels")
        chart_title(page, jaccard, timeout_ms=300_000)
        channels_s = time.perf_counter() - t
        open_tab(page, "Compare methods")
        page.get_by_role("button", name="Compare all methods").wait_for(timeout=60_000)
        t = time.perf_counter()
        page.get_by_role("button", name="Compare all methods").click()
        chart_title(page, compared, timeout_ms=600_000)
        compare_s = time.perf_counter() - t
    finally:
        context.close()
    return {"channels_tab_s": channels_s, "compare_again_s": compare_s}


def shots(page, folder: Path) -> None:
    """One PNG per view, taken from the running app."""
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "app_probe.png"), full_page=True)
    open_tab(page, "Pruned channels")
    chart_title(page, "Heads kept by", 30_000)
    page.screenshot(path=str(folder / "app_channels.png"), full_page=True)
    open_tab(page, "Outputs")
    page.get_by_role("button", name="Generate with both").click()
    page.get_by_text("Dense:", exact=False).first.wait_for(timeout=120_000)
    page.screenshot(path=str(folder / "app_outputs.png"), full_page=True)
    open_tab(page, "Latency")
    page.get_by_role("button", name="Measure latency").click()
    chart_title(page, "Per layer:", 180_000)
    page.screenshot(path=str(folder / "app_latency.png"), full_page=True)
    open_tab(page, "Compare methods")
    page.get_by_role("button", name="Compare all methods").click()
    chart_title(page, "Perplexity against time", 300_000)
    page.screenshot(path=str(folder / "app_compare.png"), full_page=True)


if __name__ == "__main__":
    main()
