"""Screenshots of the views that explain PP's decisions, taken from the running app in headless chromium: the probe
view (stage 1), the history view (stage 2, with a stability run), and the why-panel on a pruned head. The docs'
pictures (docs/app.md) come from this script.

    .venv/bin/python -m bench.screenshots [--out assets] [--model default] [--limit 900]
"""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from bench.app_latency import warm_cache
from tests.browser_util import ERROR_SELECTOR, browser_page, chart_title, open_tab, streamlit_server

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets", help="folder for the PNGs")
    ap.add_argument("--model", default="default", help="an embedded model name (default, gemma3-270m)")
    ap.add_argument("--limit", type=int, default=900, help="hard limit on the whole script, seconds")
    args = ap.parse_args()
    signal.alarm(args.limit)
    warm_cache()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "app_" if args.model == "default" else f"app_{args.model}_"
    query = "" if args.model == "default" else f"/?model={args.model}"
    with streamlit_server() as url, browser_page(height=3000) as page:
        page.goto(url + query)
        for p in take(page, folder, prefix):
            print(p)


if __name__ == "__main__":
    main()
