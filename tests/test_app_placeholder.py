"""The placeholder page loads the default model and shows its configuration, and a bad model
name gives a message, not a traceback."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


def test_placeholder_shows_default_config():
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    info = json.loads(at.json[0].value)
    assert info["layers"] == 30 and info["heads"] == 9 and info["kv_heads"] == 3


def test_placeholder_reports_bad_model():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.text_input[0].set_value("/nonexistent/model").run()
    assert not at.exception
    assert at.error and "not found" in at.error[0].value
