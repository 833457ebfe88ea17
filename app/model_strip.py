"""The lecture's overview of the whole model as plain HTML: every decoder layer's attention and MLP block as one
cell, coloured by the share of heads or channels the batch kept, the embeddings before and the LM head after.

Not a Plotly figure on purpose: the overview sits above every layer step's own figure, and a page with one Plotly
chart fewer draws sooner in the browser (issue 14: a lecture's first figure in at most 3 s, every next step in at
most 1 s). Plain <div>s in a CSS grid, not SVG: `st.html` sanitises with DOMPurify's HTML profile, which drops
<svg> and everything in it. Hovering a cell names the layer, the block and its share (its `title`).
"""
from __future__ import annotations

import html
from typing import Optional

import numpy as np

from .charts import KEPT, PROBE, PRUNED

EMPTY = "#f0f0f0"  # the colour of 0 % kept; 100 % is KEPT, linear in between (as the old heatmap's scale)
TITLE_CLASS = "pp-strip-title"  # the browser tests find the figure by this class and its text
CELL_CLASS = "pp-strip-cell"  # one per block: the browser test counts them
BLOCKS = ("attention", "MLP")


def _blend(share: float) -> str:
    """The cell colour of a kept share in [0, 1]: EMPTY at 0, KEPT at 1, linear in RGB."""
    a = np.array([int(EMPTY[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    b = np.array([int(KEPT[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    r, g, bl = np.rint(a + (b - a) * min(max(share, 0.0), 1.0)).astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"


def model_strip_html(kept: np.ndarray, selected: Optional[int], title: str) -> str:
    """The overview as an HTML fragment for `st.html`: a title, then a grid of (2, layers) cells.

    `kept`: (2, layers) shares in [0, 1], rows attention and MLP, NaN for a block run whole (a skipped layer, drawn
    grey so that it does not read as "kept everything"); `selected`: the layer outlined, or None. Cells keep a
    minimum width (8 px), so a deep model's strip scrolls sideways instead of shrinking out of sight. Raises
    ValueError for a `kept` of another shape or a `selected` outside the layers.
    """
    z = np.asarray(kept, dtype=float)
    if z.ndim != 2 or z.shape[0] != 2 or z.shape[1] < 1:
        raise ValueError(f"kept must be (2, layers) shares (attention, MLP), got shape {z.shape}")
    layers = z.shape[1]
    if selected is not None and not 0 <= selected < layers:
        raise ValueError(f"selected layer {selected} is outside 0..{layers - 1}")
    every = 1 if layers <= 16 else 2 if layers <= 40 else 4  # layer numbers under the cells, as many as fit
    cells = []
    for row, name in enumerate(BLOCKS):
        cells.append(f'<div style="grid-row: {row + 1}; grid-column: 1; text-align: right; padding-right: 6px; '
                     f'align-self: center">{name}</div>')
        for i in range(layers):
            v = z[row, i]
            fill, what = (PRUNED, "run whole") if not np.isfinite(v) else (_blend(float(v)), f"{v:.0%} kept")
            label = f"layer {i}, {name}: {what}"
            cells.append(f'<div class="{CELL_CLASS}" title="{label}" aria-label="{label}" role="img" '
                         f'style="grid-row: {row + 1}; grid-column: {i + 2}; height: 32px; background: {fill}"></div>')
    for i in range(0, layers, every):
        cells.append(f'<div style="grid-row: 3; grid-column: {i + 2}; text-align: center; font-size: 0.75rem">'
                     f"{i}</div>")
    if selected is not None:  # one frame over both blocks of the layer, on top of its cells
        cells.append(f'<div title="layer {selected}" style="grid-row: 1 / span 2; grid-column: {selected + 2}; '
                     f'outline: 4px solid {PROBE}; outline-offset: 1px; z-index: 1; pointer-events: none"></div>')
    skipped = int(sum(not np.isfinite(z[:, i]).any() for i in range(layers)))
    axis = "decoder layer" + (f" (grey: run whole, {skipped} skipped)" if skipped else "")
    grid = (f'<div style="display: grid; grid-template-columns: max-content repeat({layers}, minmax(8px, 1fr)); '
            f'gap: 3px; flex: 1 1 auto; min-width: {60 + 11 * layers}px">{"".join(cells)}</div>')
    legend = (f'<div style="display: flex; gap: 4px; align-items: stretch; height: 67px; font-size: 0.75rem">'
              f'<div style="width: 14px; border: 1px solid #999; background: linear-gradient(to top, {EMPTY}, '
              f'{KEPT})"></div><div style="display: flex; flex-direction: column; justify-content: space-between">'
              "<span>100%</span><span style='white-space: nowrap'>0% kept</span></div></div>")
    return (f'<div class="pp-strip" style="font-size: 0.95rem">'
            f'<div class="{TITLE_CLASS}" style="font-size: 1.25rem; font-weight: 600; margin-bottom: 6px">'
            f"{html.escape(title)}</div>"
            '<div style="display: flex; align-items: flex-start; gap: 10px; overflow-x: auto">'
            '<div style="align-self: flex-start; margin-top: 24px; white-space: nowrap">embeddings →</div>'
            f'{grid}<div style="margin-top: 24px; white-space: nowrap">→ LM head</div>{legend}</div>'
            f'<div style="text-align: center; font-size: 0.85rem; color: #555">{html.escape(axis)}</div></div>')
