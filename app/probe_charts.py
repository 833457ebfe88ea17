"""The probe view's charts as Vega-Lite specs (`st.vega_lite_chart`), not Plotly figures.

Why not Plotly here: the probe view is what a new session opens on, and the browser's main thread, not the server,
decides how soon it appears. Streamlit's Plotly module (4.7 MB of JavaScript) is evaluated before a first Plotly
chart can be drawn; its Vega-Lite module is a fraction of that. Measured on 2026-12-02 (`bench.app_latency
--first-only 5`, three runs each): a new session's first result 2.51-2.56 s (medians) with these charts against
3.26-3.32 s with the same charts in Plotly (docs/results.md, "Seventh look"). The other views, opened later, keep
Plotly.

Each builder returns a spec dict whose tables are pandas DataFrames under `datasets` (Streamlit sends them as
Arrow); `description` repeats the title, so a browser test finds a drawn chart by its accessible name whichever
renderer Streamlit picks (SVG, or canvas for large grids).
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from .charts import PROBE, visible

Spec = dict[str, Any]
GREY = "#7f7f7f"
AXIS_WIDTH = 80  # pixels for the y axis of every Probe-tab panel (heat map, bars, pick map): their columns line up


def _spec(title: str, **body: Any) -> Spec:
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title, "description": title,
            "config": {"font": "sans-serif", "axis": {"labelFontSize": 13, "titleFontSize": 14},
                       "title": {"fontSize": 16, "anchor": "start"}}, **body}


def _in(values: Sequence[int], field: str = "datum.value") -> str:
    """A Vega expression: whether `field` is one of `values` (integers only: nothing user-typed enters it)."""
    return f"indexof({json.dumps([int(v) for v in values])}, {field}) >= 0"


def importance_heatmap(grid: Sequence[Sequence[float]], tokens: list[list[str]], probe_tokens: list[int],
                       probe_samples: list[int], title: str, log: bool = False, hidden: Sequence[int] = ()) -> Spec:
    """Residual importance, samples (rows) x token positions (columns), Viridis; a red tick above each probe token
    column, a red outline on each probe cell (both only where a cell is drawn), probe sample rows named in red
    ("probe ▸ b"). `log`: colour by log10 (deep layers' sink tokens reach ~100x the rest); `hidden`: token positions
    left blank (attention sinks), so that the colour scale spreads over the others. Pads (importance 0) are blank.
    The tooltip gives sample, position, token, importance and whether the cell is in the probe."""
    z = np.asarray(grid, dtype=float)
    B, L = z.shape
    shown = z.copy()
    shown[:, list(hidden)] = np.nan
    shown[shown <= 0] = np.nan  # pads: they would stretch the scale
    if log:
        shown = np.log10(shown)
    b, t = np.meshgrid(np.arange(B), np.arange(L), indexing="ij")
    cells = pd.DataFrame({"sample": b.ravel(), "position": t.ravel(), "importance": z.ravel(),
                          "shown": shown.ravel(),
                          "token": [visible(tokens[i][j]) if j < len(tokens[i]) else "" for i, j in
                                    zip(b.ravel(), t.ravel())]})
    cells["probe"] = cells["sample"].isin(probe_samples) & cells["position"].isin(probe_tokens)
    cells = cells[np.isfinite(cells["shown"])].reset_index(drop=True)
    # Probe marks where a cell is drawn: not on a pad of a probe sample, not over a left-out sink column.
    probe = cells.loc[cells["probe"], ["sample", "position"]].reset_index(drop=True)
    ticks = pd.DataFrame({"position": [t for t in probe_tokens if t not in set(hidden)]})
    step = 24 if B <= 16 else 16 if B <= 32 else 8
    x = {"field": "position", "type": "ordinal", "title": "token position", "scale": {"domain": list(range(L))},
         "axis": {"labelOverlap": True, "labelAngle": 0}}
    y = {"field": "sample", "type": "ordinal", "title": "sample", "scale": {"domain": list(range(B))},
         "axis": {"labelOverlap": B > 32, "labelFontSize": 12, "minExtent": AXIS_WIDTH, "maxExtent": AXIS_WIDTH,
                  "labelLimit": AXIS_WIDTH - 8,
                  "labelExpr": f"{_in(probe_samples)} ? 'probe ▸ ' + datum.label : datum.label",
                  "labelColor": {"condition": {"test": _in(probe_samples), "value": PROBE}, "value": "black"},
                  "labelFontWeight": {"condition": {"test": _in(probe_samples), "value": "bold"},
                                      "value": "normal"}}}
    layers: list[Spec] = [
        {"data": {"name": "cells"}, "mark": {"type": "rect"},
         "encoding": {"x": x, "y": y,
                      "color": {"field": "shown", "type": "quantitative", "scale": {"scheme": "viridis"},
                                "title": "log10 ‖h‖" if log else "‖h‖",
                                # above the map, not beside it: the plot then spans the width the panels
                                # below it span, position under position
                                "legend": {"orient": "top", "direction": "horizontal", "gradientLength": 200,
                                           "titleOrient": "left"}},
                      "tooltip": [{"field": "sample"}, {"field": "position"}, {"field": "token"},
                                  {"field": "importance", "format": ".4g"},
                                  {"field": "probe", "title": "in the probe"}]}},
        {"data": {"name": "ticks"}, "mark": {"type": "rect", "color": PROBE, "y": -9, "y2": -3},
         "encoding": {"x": x}},
    ]
    if len(probe):
        layers.append({"data": {"name": "probe"}, "mark": {"type": "rect", "filled": False, "stroke": PROBE,
                                                           "strokeWidth": 2},
                       "encoding": {"x": x, "y": y}})
    return _spec(title, height={"step": step}, width="container",
                 datasets={"cells": cells, "ticks": ticks, "probe": probe}, layer=layers)


def cells_drawn(heatmap: Spec) -> int:
    """How many cells an `importance_heatmap` colours (0: every one is a pad or a left-out sink)."""
    return len(heatmap["datasets"]["cells"])


def token_bars(values: Sequence[float], tokens: list[str], probe_tokens: list[int], title: str, what: str,
               hidden: Sequence[int] = (), labels: bool = True, span: Optional[int] = None) -> Spec:
    """One bar per position 0..len(values)-1 (`hidden` ones left empty), probe tokens in red: `values` is what the
    bars show, named `what` on the axis ("importance": one sample's own, cut at its length; "batch-wide score": the
    L2 norm of every sample's importance at that position, which picks the probe tokens, over the whole batch). `span`:
    the positions the axis covers (default: the bars'), labelled 'position:token' from `tokens` (one sample's;
    'position:' past its end); `labels`: the labels shown (off for a panel drawn right above another with them).
    Two panels with the same `span`, `tokens` and `hidden` line up: same positions, same fixed y-axis width. Every
    label is shown up to 96 positions; beyond that Vega leaves out those that would overlap (the tooltip names
    each bar)."""
    span = len(values) if span is None else span
    gone, probe = set(hidden), set(probe_tokens)

    def label(i: int) -> str:  # a pad ("") or a position past the sample's tokens: the position only
        return f"{i}:{visible(tokens[i])}" if i < len(tokens) and tokens[i] != "" else f"{i}:"

    axis = list(range(span))  # a hidden position stays an empty column, as in the heat map: the panels line up
    drawn = [i for i in axis if i < len(values) and i not in gone]
    bars = pd.DataFrame({"position": drawn, "label": [label(i) for i in drawn],
                         "value": [float(values[i]) for i in drawn], "probe": [i in probe for i in drawn]})
    x = {"field": "label", "type": "ordinal", "title": None, "scale": {"domain": [label(i) for i in axis]},
         # labelLimit: a rotated label reaches at most half its length left of its bar, within the fixed axis width
         "axis": {"labelAngle": -60, "labelLimit": 2 * AXIS_WIDTH - 20, "labelOverlap": len(axis) > 96,
                  "labelFontSize": 12 if len(axis) <= 64 else 10} if labels else {"labels": False, "ticks": False}}
    return _spec(title, height=300 if labels else 190, width="container",
                 datasets={"bars": bars}, data={"name": "bars"}, mark={"type": "bar"},
                 encoding={"x": x,
                           "y": {"field": "value", "type": "quantitative", "title": what,
                                 "axis": {"minExtent": AXIS_WIDTH, "maxExtent": AXIS_WIDTH}},
                           "color": {"condition": {"test": "datum.probe", "value": PROBE}, "value": GREY},
                           "tooltip": [{"field": "label", "title": "token"},
                                       {"field": "value", "title": what, "format": ".4g"}]})


def pick_by_layer(m: np.ndarray, title: str) -> Spec:
    """Layers (rows) x token positions (columns): red where the probe picked that position in that layer."""
    m = np.asarray(m)
    n_layers, L = m.shape
    li, t = np.meshgrid(np.arange(n_layers), np.arange(L), indexing="ij")
    cells = pd.DataFrame({"layer": li.ravel(), "position": t.ravel(), "picked": m.ravel().astype(int)})
    return _spec(title, height={"step": max(8, min(24, 240 // max(n_layers, 1)))}, width="container",
                 datasets={"cells": cells},
                 data={"name": "cells"}, mark={"type": "rect"},
                 encoding={"x": {"field": "position", "type": "ordinal", "title": "token position",
                                 "scale": {"domain": list(range(L))}, "axis": {"labelOverlap": True, "labelAngle": 0}},
                           "y": {"field": "layer", "type": "ordinal", "title": "layer",
                                 "axis": {"labelOverlap": True, "minExtent": AXIS_WIDTH, "maxExtent": AXIS_WIDTH}},
                           "color": {"field": "picked", "type": "nominal", "legend": None,
                                     "scale": {"domain": [0, 1], "range": ["#f0f0f0", PROBE]}},
                           "tooltip": [{"field": "layer"}, {"field": "position"},
                                       {"field": "picked", "title": "picked (1 = yes)"}]})


def draw(spec: Spec, key: str) -> None:
    """Draw `spec` across the page. A whole-chart height in pixels (an int `height`) is given to Streamlit, not
    left in the spec: there Streamlit fits the plot into it and cuts the title; a per-row height
    ({"step": px}) stays in the spec."""
    height = spec.get("height")
    if isinstance(height, int):
        spec = {k: v for k, v in spec.items() if k != "height"}
        st.vega_lite_chart(spec, width="stretch", height=height, key=key)
    else:
        st.vega_lite_chart(spec, width="stretch", key=key)
