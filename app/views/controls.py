"""Controls shared by the views. Streamlit only; no engine import."""
from __future__ import annotations

from typing import Callable

import streamlit as st
from streamlit.delta_generator import DeltaGenerator


def count_and_button(label: str, high: int, default: int, key: str, button: str, button_key: str,
                     start: Callable[[int], None]) -> DeltaGenerator:
    """A number input (1 to `high`) and a button beneath it, in a narrow left column; pressing the button
    calls start(number). Returns the wide right column, for the result."""
    left, right = st.columns([1, 3])
    n = left.number_input(label, 1, high, default, key=key)
    if left.button(button, key=button_key):
        start(int(n))
    return right
