"""The load test, small: three sessions at once against one `streamlit run` server (real browser pages,
separate browser contexts), each with its own batch, method and ratio, then one round of repeated runs
(ratio changed in the sidebar, Run pressed). Every page's numbers equal the same run done alone, and no
page or server log shows an error. The full version (8 sessions, 100 runs, the memory bound) is
bench/load_test.py; its figures are in the README."""
from __future__ import annotations

import pytest

from tests.browser_util import chromium_path


def test_three_sessions_at_once_match_their_runs_alone(tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (requirements-dev.txt)")
    if chromium_path() is None:
        pytest.skip("chromium not found at /usr/bin/chromium (make test installs it with apt-get)")
    from bench.load_test import run_load_test, summary_lines

    # Generous deadline: the machine may be busy; the test checks results, never speed.
    rep = run_load_test(sessions=3, repeats=3, timeout=900, at_once=3, bound_mb=None, say=lambda m: None,
                        log_dir=tmp_path)
    print("\n".join(summary_lines(rep)))
    assert rep["problems"] == [], "\n".join(rep["problems"])
    assert rep["verdict"] == "pass"
    assert [d["ok"] for d in rep["concurrent"]] == [True] * 3
    assert len(rep["runs"]) == 3 and all(r["ok"] for r in rep["runs"])
    assert len({d["method"] for d in rep["concurrent"]}) == 3  # sessions really differ
