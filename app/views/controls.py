"""Controls and labels shared by the views."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from ppcore.record import BLOCK_NAMES


@dataclass(frozen=True)
class BlockText:
    """How the page names one block kind and its pruned units."""

    short: str  # "Attention"
    long: str  # "Attention heads"
    unit: str  # "head"


# Keyed by the record's block names, in the order the layer runs them.
BLOCK_TEXT: dict[str, BlockText] = dict(zip(BLOCK_NAMES, (BlockText("Attention", "Attention heads", "head"),
                                                          BlockText("MLP", "MLP channels", "channel"))))


def block_radio(where: DeltaGenerator, label: str, key: str, long: bool = False, horizontal: bool = False) -> str:
    """A radio over the two block kinds; returns the chosen block's record name ("attn" or "mlp")."""
    return where.radio(label, list(BLOCK_TEXT), horizontal=horizontal, key=key,
                       format_func=lambda b: BLOCK_TEXT[b].long if long else BLOCK_TEXT[b].short)


def count_and_button(label: str, high: int, default: int, key: str, button: str, button_key: str,
                     start: Callable[[int], None]) -> DeltaGenerator:
    """A number input (1 to `high`) and a button beneath it, in a narrow left column; pressing the button
    calls start(number). Returns the wide right column, for the result."""
    left, right = st.columns([1, 3])
    n = left.number_input(label, 1, high, default, key=key)
    if left.button(button, key=button_key):
        start(int(n))
    return right


def reused_line(note: str | None, button_key: str, again: Callable[[], None]) -> None:
    """Under a timed result this server's disk gave back (`note`: when it was computed, app/stored.py): say so, and
    offer a new measurement (`again`). Nothing when the result was measured in this session (`note` None)."""
    if note is None:
        return
    left, right = st.columns([3, 1])
    left.caption(f"These times were {note}: press **Measure again** for a new measurement on this machine now.")
    if right.button("Measure again", key=button_key):
        again()
