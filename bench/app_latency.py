"""How fast the app answers in a real browser (headless Debian chromium via playwright).

1. First result: seconds from opening the page (fresh server, default settings) until the probe heat
   map is drawn, with a warm disk cache (model converted, calibration cached; this script warms both).
2. Layer switch: seconds from clicking "next layer" in the probe view until the new layer's heat map
   is drawn (median and max of several clicks).
With --shots DIR it also saves a screenshot of each view (the README's pictures).

    .venv/bin/python -m bench.app_latency [--shots assets] [--out bench/results/app_latency.json]
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import time
from pathlib import Path

from app.state import Settings, calib_config
from tests.browser_util import browser_page, chart_title, open_tab, streamlit_server


def warm_cache() -> None:
    """The measured condition is a warm cache: convert the model and calibrate with the app's defaults."""
    from ppcore import session

    s = Settings()
    session.calibration(session.open_model(s.model, s.device, s.dtype), calib_config(s), s.seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--shots", help="folder for one screenshot per view (PNG)")
    ap.add_argument("--out", default="bench/results/app_latency.json")
    ap.add_argument("--limit", type=int, default=600, help="hard limit on the whole script, seconds")
    args = ap.parse_args()
    signal.alarm(args.limit)  # bounded in time, whatever happens
    warm_cache()
    out: dict = {}
    with streamlit_server() as url, browser_page(height=1900) as page:
        t0 = time.perf_counter()
        page.goto(url)
        title = chart_title(page, "residual importance", timeout_ms=180_000)
        out["first_result_s"] = time.perf_counter() - t0
        start = int(title.text_content().split(",")[0].split()[1])
        switches = []
        for i in range(1, args.clicks + 1):
            t = time.perf_counter()
            page.get_by_role("button", name="▶").click()
            chart_title(page, f"Layer {start + i}, Attention", timeout_ms=30_000)
            switches.append(time.perf_counter() - t)
        out.update(layer_switch_median_s=statistics.median(switches), layer_switch_max_s=max(switches),
                   layer_switch_s=switches)
        if args.shots:
            shots(page, Path(args.shots))
    out["command"] = ".venv/bin/python -m bench.app_latency"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


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
