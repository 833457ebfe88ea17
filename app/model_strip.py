"""The lecture's overview of the whole model as plain HTML and SVG: every decoder layer's attention and MLP block as
one cell, coloured by the share of heads or channels the batch kept, the embeddings before and the LM head after.

Not a Plotly figure on purpose: the overview sits above every layer step's own figure, and a page with one Plotly
chart fewer draws sooner in the browser (issue 14: a lecture's first figure in at most 3 s, every next step in at
most 1 s). Hovering a cell names the layer, the block and its share (an SVG <title>).
"""
from __future__ import annotations

import html
from typing import Optional

import numpy as np

from .charts import KEPT, PROBE, PRUNED

EMPTY = "#f0f0f0"  # the colour of 0 % kept; 100 % is KEPT, linear in between (as the old heatmap's scale)
CELL_W, CELL_H, GAP = 30, 34, 3  # SVG units; the drawing scales to the page's width
LABEL_W, HEAD_W, LEGEND_W, AXIS_H = 130, 95, 110, 52
TITLE_CLASS = "pp-strip-title"  # the browser tests find the figure by this class and its text


def _blend(share: float) -> str:
    """The cell colour of a kept share in [0, 1]: EMPTY at 0, KEPT at 1, linear in RGB."""
    a = np.array([int(EMPTY[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    b = np.array([int(KEPT[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    r, g, bl = np.rint(a + (b - a) * min(max(share, 0.0), 1.0)).astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"


def model_strip_html(kept: np.ndarray, selected: Optional[int], title: str) -> str:
    """The overview as an HTML fragment (a title and one SVG) for `st.html`.

    `kept`: (2, layers) shares in [0, 1], rows attention and MLP, NaN for a block run whole (a skipped layer, drawn
    grey so that it does not read as "kept everything"); `selected`: the layer outlined, or None. Raises ValueError
    for a `kept` of another shape or a `selected` outside the layers.
    """
    z = np.asarray(kept, dtype=float)
    if z.ndim != 2 or z.shape[0] != 2 or z.shape[1] < 1:
        raise ValueError(f"kept must be (2, layers) shares (attention, MLP), got shape {z.shape}")
    layers = z.shape[1]
    if selected is not None and not 0 <= selected < layers:
        raise ValueError(f"selected layer {selected} is outside 0..{layers - 1}")
    x0 = LABEL_W + HEAD_W
    width = x0 + layers * CELL_W + HEAD_W + LEGEND_W
    height = 2 * CELL_H + AXIS_H + 16
    top = 8
    parts = [f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{html.escape(title)}" '
             'style="font-family: sans-serif; font-size: 15px; max-height: 260px">']
    mid = top + CELL_H
    parts.append(f'<text x="{LABEL_W - 8}" y="{mid + 5}" text-anchor="end" font-size="16">embeddings →</text>')
    for row, name in enumerate(("attention", "MLP")):
        y = top + row * CELL_H + CELL_H / 2 + 5
        parts.append(f'<text x="{x0 - 8}" y="{y}" text-anchor="end">{name}</text>')
    skipped = 0
    step = 1 if layers <= 32 else 4
    for i in range(layers):
        x = x0 + i * CELL_W
        whole = not np.isfinite(z[:, i]).any()
        skipped += whole
        for row, name in enumerate(("attention", "MLP")):
            v = z[row, i]
            fill, what = (PRUNED, "run whole") if not np.isfinite(v) else (_blend(float(v)), f"{v:.0%} kept")
            parts.append(f'<rect x="{x + GAP / 2}" y="{top + row * CELL_H + GAP / 2}" width="{CELL_W - GAP}" '
                         f'height="{CELL_H - GAP}" fill="{fill}"><title>layer {i}, {name}: {what}</title></rect>')
        if i % step == 0:
            parts.append(f'<text x="{x + CELL_W / 2}" y="{top + 2 * CELL_H + 18}" text-anchor="middle" '
                         f'font-size="13">{i}</text>')
    if selected is not None:
        parts.append(f'<rect x="{x0 + selected * CELL_W}" y="{top - 4}" width="{CELL_W}" height="{2 * CELL_H + 8}" '
                     f'fill="none" stroke="{PROBE}" stroke-width="4"><title>layer {selected}</title></rect>')
    end = x0 + layers * CELL_W
    parts.append(f'<text x="{end + 8}" y="{mid + 5}" font-size="16">→ LM head</text>')
    axis = "decoder layer" + (f" (grey: run whole, {skipped} skipped)" if skipped else "")
    parts.append(f'<text x="{x0 + layers * CELL_W / 2}" y="{top + 2 * CELL_H + 42}" text-anchor="middle">'
                 f'{html.escape(axis)}</text>')
    lx = end + HEAD_W  # the legend: a vertical colour bar from 0 % (bottom) to 100 % kept (top)
    parts.append(f'<defs><linearGradient id="pp-kept" x1="0" y1="1" x2="0" y2="0"><stop offset="0" '
                 f'stop-color="{EMPTY}"/><stop offset="1" stop-color="{KEPT}"/></linearGradient></defs>'
                 f'<rect x="{lx}" y="{top}" width="16" height="{2 * CELL_H}" fill="url(#pp-kept)" stroke="#999"/>'
                 f'<text x="{lx + 22}" y="{top + 12}" font-size="13">100%</text>'
                 f'<text x="{lx + 22}" y="{top + 2 * CELL_H}" font-size="13">0% kept</text>')
    parts.append("</svg>")
    head = f'<div class="{TITLE_CLASS}" style="font-size: 1.25rem; font-weight: 600">{html.escape(title)}</div>'
    return f'<div class="pp-strip">{head}{"".join(parts)}</div>'
