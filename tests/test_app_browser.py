"""End to end in a real browser: `streamlit run app/main.py`, headless Debian chromium via playwright,
the default batch, the probe heat map and the channel map drawn, no error element, a screenshot. (The lecture's
walk in the browser is in tests/test_app_lecture.py, on the lecture its fixture prepared.)"""
from __future__ import annotations

import pytest

from tests.browser_util import (ERROR_SELECTOR, VEGA_DRAWN, browser_page, chart_title, chromium_path, open_tab,
                                streamlit_server)

# The default batch (8 example prompts, 64 tokens); calibration sized like the AppTest tests so it is cached.
QUERY = "/?calib_windows=8&calib_seq_len=64"


def test_app_in_a_real_browser(tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (requirements-dev.txt)")
    if chromium_path() is None:
        pytest.skip("chromium not found at /usr/bin/chromium (make test installs it with apt-get)")
    with streamlit_server() as url, browser_page() as page:
        page.goto(url + QUERY)
        heat = chart_title(page, "residual importance", timeout_ms=240_000)  # the probe heat map (Vega-Lite)
        drawn = heat.locator(VEGA_DRAWN).first.bounding_box()
        assert drawn and drawn["width"] > 500 and drawn["height"] > 150, drawn
        open_tab(page, "Pruned channels")
        chart_title(page, "Heads kept by pp", timeout_ms=240_000)  # four baseline walks first
        chart_title(page, "MLP channels kept by pp", timeout_ms=60_000)
        assert page.locator(".js-plotly-plot .heatmaplayer").count() >= 1  # the keep maps (Plotly)
        assert page.locator(ERROR_SELECTOR).count() == 0
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

