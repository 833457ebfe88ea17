"""Screenshots of the views that explain PP's decisions, taken from the running app in headless chromium: the probe
view (stage 1), the history view (stage 2, with a stability run), and the why-panel on a pruned head; and every step
of lecture mode (lecture-<n>.png, after preparing the lecture as `python -m app.lecture_prepare` does). The docs'
pictures (docs/app.md) come from this script.

    .venv/bin/python -m bench.screenshots [--out assets] [--model default] [--only views|lecture] [--limit 900]
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from bench.app_latency import warm_cache, warm_lecture
from tests.browser_util import (ERROR_SELECTOR, browser_page, chart_title, lecture_next, lecture_step, open_tab,
                                streamlit_server)

TIMEOUT_MS = 300_000


def take(page, folder: Path, prefix: str) -> list[Path]:
    """Probe, History (after a stability run) and Why-this-head (a pruned head) as PNGs of the whole viewport
    (Streamlit scrolls inside the page, so the viewport is made tall instead)."""
    out = []

    def shot(name: str) -> None:
        if page.locator(ERROR_SELECTOR).count():
            raise RuntimeError(f"the page shows an error before {name}: "
                               + page.locator(ERROR_SELECTOR).first.inner_text()[:300])
        path = folder / f"{prefix}{name}.png"
        page.screenshot(path=str(path), full_page=True)
        out.append(path)

    chart_title(page, "residual importance", TIMEOUT_MS)
    shot("probe")
    open_tab(page, "History")
    chart_title(page, "probe, history and fused energy", TIMEOUT_MS)
    page.get_by_role("button", name="Run consecutive batches").click()
    chart_title(page, "history at each batch against the first", TIMEOUT_MS)
    shot("history")
    open_tab(page, "Why this head")  # opens on the first pruned head of the first pruned layer
    chart_title(page, "click one to explain", TIMEOUT_MS)  # waits for the baselines too
    chart_title(page, "heads kept by each method", TIMEOUT_MS)
    shot("why")
    return out


def take_lecture(page, url: str, folder: Path, query: str = "") -> list[Path]:
    """Every lecture step as lecture-<n>.png, in a projector-shaped viewport (the lecture already prepared)."""
    from app.lecture import STEPS

    out = []
    page.goto(url + "/?lecture=1" + (f"&{query}" if query else ""))
    lecture_step(page, 1, TIMEOUT_MS)
    for k in range(1, len(STEPS) + 1):
        page.wait_for_timeout(500)  # Plotly's transitions settle
        path = folder / f"lecture-{k}.png"
        page.screenshot(path=str(path), full_page=True)
        out.append(path)
        if k < len(STEPS):
            lecture_next(page, k, TIMEOUT_MS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets", help="folder for the PNGs")
    ap.add_argument("--model", default="default", help="an embedded model name (default, gemma3-270m)")
    ap.add_argument("--only", choices=("views", "lecture"), help="only the views' or only the lecture's pictures")
    ap.add_argument("--lecture-query", default="", help="the lecture's settings as a link's query (default: the "
                                                         "app's defaults), e.g. 'batch_size=4&seq_len=48'")
    ap.add_argument("--limit", type=int, default=900, help="hard limit on the whole script, seconds (the lecture's "
                                                            "first preparation adds its own time: run "
                                                            "`python -m app.lecture_prepare` first)")
    args = ap.parse_args()
    signal.alarm(args.limit)
    warm_cache()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "app_" if args.model == "default" else f"app_{args.model}_"
    query = "" if args.model == "default" else f"model={args.model}"
    if args.only != "lecture":
        with streamlit_server() as url, browser_page(height=3000) as page:
            page.goto(url + (f"/?{query}" if query else ""))
            for p in take(page, folder, prefix):
                print(p)
    if args.only != "views" and args.model == "default":
        warm_lecture(args.lecture_query)
        with streamlit_server() as url, browser_page(width=1600, height=1000) as page:
            for p in take_lecture(page, url, folder, args.lecture_query):
                print(p)


if __name__ == "__main__":
    main()
