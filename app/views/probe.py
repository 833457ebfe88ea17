"""Probe view: residual importance over samples x tokens for one layer and block, probe picks marked."""
from __future__ import annotations

import numpy as np
import streamlit as st

from ppcore import session

from .. import probe_charts
from ..glossary import explain
from ..result import Result
from ..viewlink import show_place
from .controls import BLOCK_TEXT, block_radio
from .replay import lacking


NOTHING_PRUNED = ("Nothing was pruned in this run ({why}): no probe ran, no history was fused and nothing was "
                  "scored. {fix}")


def nothing_pruned_text(why: str) -> str:
    """The message for a run that pruned nothing, with what to change in the sidebar for `nothing_pruned`'s reason."""
    fix = ("Choose pp (or another pruning method) in the sidebar and press **Run**." if why == "method dense" else
           "Set the ratio above 0 in the sidebar and press **Run**." if why == "ratio 0" else
           "Skip fewer layers, or switch pruning of attention or MLP back on, in the sidebar, and press **Run**.")
    return NOTHING_PRUNED.format(why=why, fix=fix)


def nothing_pruned(r: Result) -> str:
    """Why no block of the analysed run was decided ('' when some was): dense, ratio 0, or every layer skipped."""
    a = r.analysis
    if any(layer.attn.pruned or layer.mlp.pruned for layer in a.main.layers):
        return ""
    return ("method dense" if a.cfg.method == "dense" else "ratio 0" if a.cfg.ratio == 0
            else "every pruned layer skipped or both blocks switched off")


def first_pruned_layer(r: Result) -> int:
    return next((i for i, layer in enumerate(r.analysis.main.layers) if layer.attn.pruned or layer.mlp.pruned), 0)


def _step(delta: int, n: int) -> None:
    st.session_state["probe_layer"] = int(np.clip(st.session_state.get("probe_layer", 0) + delta, 0, n - 1))


def render(r: Result) -> None:
    st.caption("**Stage 1: the probe.** Residual importance is the length of each token's residual-stream vector "
               "as it enters the block. PP ranks positions by their importance over the whole batch (the top "
               "panel of the token chart), keeps the largest as probe tokens (red ticks above the map), then the "
               "samples loudest at those tokens (named in red on the left), runs only that probe through the block "
               "with all weights, and scores heads and channels from it.",
               help=explain("residual importance", "probe", "probe tokens", "probe samples"))
    first = r.analysis.main.layers[first_pruned_layer(r)]
    why_not = nothing_pruned(r)
    if why_not:
        st.info(nothing_pruned_text(why_not) + " The map shows residual importance only.")
    elif not first.attn.probe_tokens and not first.mlp.probe_tokens:
        st.info(f"Method '{r.analysis.cfg.method}' uses no probe: the map shows residual importance only. "
                "Choose pp or fullbatch to see probe picks.")
    _panel(r)


@st.fragment
def _panel(r: Result) -> None:
    """A fragment: changing the layer, block or sample redraws this panel only, from the stored record."""
    a = r.analysis
    n = len(a.main.layers)
    if "probe_layer" not in st.session_state:
        st.session_state["probe_layer"] = first_pruned_layer(r)
    st.session_state["probe_layer"] = min(st.session_state["probe_layer"], n - 1)
    c0, c1, c2, c3 = st.columns([1, 6, 1, 3])
    c0.button("◀", key="probe_prev", on_click=_step, args=(-1, n), help="previous layer")
    c1.slider("Layer", 0, n - 1, key="probe_layer")
    c2.button("▶", key="probe_next", on_click=_step, args=(1, n), help="next layer")
    block = block_radio(c3, "Block", "probe_block", horizontal=True)
    layer = st.session_state["probe_layer"]
    show_place("Probe", layer, block)
    rec = getattr(a.main.layers[layer], block)
    m1, m2, m3 = st.columns(3)
    m1.metric("Probe tokens", len(rec.probe_tokens), help=explain("probe tokens"))
    m2.metric("Probe samples", len(rec.probe_samples), help=explain("probe samples"))
    unit = BLOCK_TEXT[block].unit + "s"
    m3.metric(f"Kept {unit}", f"{len(rec.kept)} / {rec.total}",
              help=explain("kept heads") + ("" if rec.pruned else "\n\nThis block is not pruned."))
    if rec.importance is None:
        st.info(lacking("residual-importance grid (it was saved at level summary)") if r.replayed else
                "No importance grid in this record.")
        return
    tokens = a.batch.labels  # each token as it reads alone (a part of a character as its bytes)
    scores = session.token_scores(rec.importance)
    sinks = session.sink_positions(scores)
    o1, o2 = st.columns(2)
    log = o1.toggle("Log colour scale", key="probe_log", help=explain("attention sink"))
    hide = o2.toggle("Leave out attention-sink tokens", key="probe_hide_sinks", disabled=not sinks,
                     help=explain("attention sink") + f"\n\nHere: positions over {session.SINK_FACTOR:g}x the median "
                                                     "batch-wide score.")
    hidden = sinks if hide else []
    if sinks:
        top = ", ".join(f"{t} ({_tok(tokens, t)!s}: {scores[t]:,.0f})" for t in sinks[:6])
        st.caption(f"Attention sinks at this layer (batch-wide score over {session.SINK_FACTOR:g}x the median "
                   f"{float(np.median(scores)):,.0f}): {top}" + (". Left out of the charts below." if hide else
                                                                 ". They dominate a linear colour scale."))
    title = f"Layer {layer}, {BLOCK_TEXT[block].short}: residual importance ({a.cfg.method})"
    heatmap = probe_charts.importance_heatmap(rec.importance, tokens, rec.probe_tokens, rec.probe_samples, title,
                                              log=log, hidden=hidden)
    if probe_charts.cells_drawn(heatmap):
        probe_charts.draw(heatmap, "probe_heatmap")
    else:  # an empty chart would look like a rendering failure
        st.info(f"{title}: no cell to colour; every one is a pad (importance 0)"
                + (" or a left-out attention sink: turn off *Leave out attention-sink tokens*." if hidden else "."))
    default = rec.probe_samples[0] if rec.probe_samples else 0
    b = st.selectbox("Sample shown with its tokens", list(range(len(tokens))), index=default, key="probe_sample",
                     format_func=lambda i: f"{i}" + (" (probe)" if i in rec.probe_samples else ""))
    span = len(scores)  # both panels over the whole batch's positions, so that they line up
    probe_charts.draw(probe_charts.token_bars(scores, tokens[b], rec.probe_tokens,
                                              "Batch-wide token score: picks the probe tokens (red)",
                                              "batch-wide score", hidden=hidden, labels=False, span=span),
                      "probe_batch_scores")
    probe_charts.draw(probe_charts.token_bars(rec.importance[b][: a.batch.lengths[b]], tokens[b], rec.probe_tokens,
                                              f"Sample {b}: importance per token (red: probe tokens)", "importance",
                                              hidden=hidden, span=span), "probe_strip")
    st.caption("Why is a red bar not always this sample's tallest? The probe tokens are chosen once for the whole "
               "batch, by the top panel's batch-wide score (every sample's importance at that position combined), "
               "not by any one sample's bars. One exception: when the probe holds 10 tokens or fewer, position 0 "
               "is always one of them.")
    probe_charts.draw(probe_charts.pick_by_layer(session.probe_token_matrix(a.main, block, a.batch.ids.shape[1]),
                                                 f"How the probe's token pick moves across layers "
                                                 f"({BLOCK_TEXT[block].short})"), "probe_moves")


def _tok(tokens: list[list[str]], t: int) -> str:
    """The text at position t of the first sample that has one (for captions)."""
    text = next((row[t] for row in tokens if t < len(row) and row[t] != ""), "")
    return repr(text)
