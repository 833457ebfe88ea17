"""The open tab, layer and block in the page's address (`?tab=history&layer=5&block=mlp`), beside the settings.

Read once when a session opens (`read_once`; parsing and its warnings: app/state.py `view_from_query`), applied when
a result exists (`apply`: the layer's range is checked against the result's model), and written as they change:
the tab by the page (`show_tab`), the layer and block by each view that has them (`show_place`, from inside its
fragment, so a slider move updates the address too). Each view keeps its layer and block in its own session keys
(LAYER_VIEWS), as before; this module only seeds them and reports them.
"""
from __future__ import annotations

from typing import Optional

import streamlit as st

from .result import Result
from .state import VIEW_PARAMS, ViewLink, view_from_query

# The views with a layer slider and a block choice: their session keys (the Pruned channels view's are its score
# chart's).
LAYER_VIEWS = {"Probe": ("probe_layer", "probe_block"), "History": ("hist_layer", "hist_block"),
               "Pruned channels": ("score_layer", "score_block"), "Why this head": ("why_layer", "why_block")}
PENDING, PROBLEMS, READ = "_view_link", "_view_problems", "_view_link_read"


def read_once() -> None:
    """Once per session, before anything rewrites the address: the view the link asks for, kept until a result
    exists, and its one-line warnings."""
    if st.session_state.get(READ):
        return
    link, problems = view_from_query(st.query_params.to_dict())
    st.session_state[PENDING], st.session_state[PROBLEMS], st.session_state[READ] = link, problems, True


def problems_once() -> list[str]:
    """The link's warnings about tab, layer and block, once."""
    return st.session_state.pop(PROBLEMS, None) or []


def apply(r: Result) -> list[str]:
    """Before the tabs are drawn: every view's layer kept inside this result's layers (a replay or another model
    can have fewer), and the link's view, once, when it asked for one. Returns the warnings to show (a layer out
    of range)."""
    n = len(r.analysis.main.layers)
    for key, _ in LAYER_VIEWS.values():
        v = st.session_state.get(key)
        if isinstance(v, int) and not 0 <= v < n:
            st.session_state[key] = min(max(v, 0), n - 1)
    link: Optional[ViewLink] = st.session_state.pop(PENDING, None)
    if link is None:
        return []
    if link.tab is not None:
        st.session_state["view"] = link.tab
    keys = LAYER_VIEWS.get(link.tab or str(st.session_state.get("view") or "Probe"))
    out = []
    if keys is not None:
        if link.layer is not None:
            if link.layer < n:
                st.session_state[keys[0]] = link.layer
            else:
                out.append(f"URL parameter layer={link.layer} is out of range: this model has {n} layers (0 to "
                           f"{n - 1}); using the view's first pruned layer")
        if link.block is not None:
            st.session_state[keys[1]] = link.block
    return out


def _write(want: dict[str, str], drop: tuple[str, ...]) -> None:
    q = st.query_params
    for k, v in want.items():
        if q.get(k) != v:
            q[k] = v
    for k in drop:
        if k in q:
            del q[k]


def show_tab(label: str) -> None:
    """The open tab into the address; a tab without a layer drops layer and block (a view with one writes them)."""
    _write(ViewLink(label).to_query(), () if label in LAYER_VIEWS else tuple(p for p in VIEW_PARAMS if p != "tab"))


def show_place(label: str, layer: int, block: str) -> None:
    """The layer and block the view `label` shows, into the address (from inside the view's fragment)."""
    _write(ViewLink(label, int(layer), block).to_query(), ())
