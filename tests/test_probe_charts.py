"""The probe view's Vega-Lite charts (app/probe_charts.py): each cell, bar and probe mark is the record's, blank
cells are left out rather than drawn as zero, token text goes in as typed (Vega draws text, not markup), and a
whole-chart height goes to Streamlit, not into the spec."""
from __future__ import annotations

import numpy as np
import pytest

from app import probe_charts
from app.probe_charts import importance_heatmap, pick_by_layer, token_bars

GRID = np.array([[5.0, 1.0, 2.0, 0.0],  # sample 0: three tokens and a pad
                 [4.0, 3.0, 8.0, 6.0]])
TOKENS = [["<s>", "<b>bold", "\n", ""], ["a", "b", "c", "d"]]


def _cells(spec):
    return spec["datasets"]["cells"].to_dict("records")


def test_the_heat_map_holds_every_shown_cell_and_the_probe():
    spec = importance_heatmap(GRID, TOKENS, probe_tokens=[0, 2], probe_samples=[1], title="Layer 3: t", hidden=[2])
    cells = {(c["sample"], c["position"]): c for c in _cells(spec)}
    assert set(cells) == {(0, 0), (0, 1), (1, 0), (1, 1), (1, 3)}  # position 2 hidden, the pad (0) blank
    assert cells[(1, 3)]["importance"] == 6.0 and cells[(1, 3)]["shown"] == 6.0
    assert cells[(0, 1)]["token"] == "<b>bold"  # as typed: Vega shows text, never markup
    # probe marks only where a cell is drawn: position 2 is a hidden sink column
    assert spec["datasets"]["probe"].to_dict("records") == [{"sample": 1, "position": 0}]
    assert spec["datasets"]["ticks"]["position"].tolist() == [0]
    on_pad = importance_heatmap(GRID, TOKENS, probe_tokens=[1, 3], probe_samples=[0], title="t")
    assert on_pad["datasets"]["probe"].to_dict("records") == [{"sample": 0, "position": 1}]  # (0, 3) is a pad
    assert on_pad["datasets"]["ticks"]["position"].tolist() == [1, 3]
    assert spec["title"] == spec["description"] == "Layer 3: t"  # browser tests find the chart by its name
    axis = spec["layer"][0]["encoding"]["y"]["axis"]
    assert "[1]" in axis["labelExpr"] and "probe ▸" in axis["labelExpr"]
    assert spec["layer"][0]["encoding"]["color"]["title"] == "‖h‖"


def test_the_log_scale_colours_by_log10_and_keeps_the_raw_value():
    spec = importance_heatmap(GRID, TOKENS, [0], [0], "t", log=True)
    for c in _cells(spec):
        assert c["shown"] == pytest.approx(np.log10(c["importance"]))
    assert spec["layer"][0]["encoding"]["color"]["title"] == "log10 ‖h‖"
    assert len(_cells(spec)) == 7  # only the pad is blank
    assert [c["probe"] for c in _cells(spec)].count(True) == 1  # sample 0, position 0: in the tooltip


def test_newlines_and_blank_tokens_are_visible():
    spec = importance_heatmap(GRID, TOKENS, [], [], "t")
    assert len(spec["layer"]) == 2  # no probe cells to outline
    tokens = {(c["sample"], c["position"]): c["token"] for c in _cells(spec)}
    assert tokens[(0, 2)] == "'\\n'"  # a blank token quoted, its newline shown
    bars = token_bars([1.0, 2.0, 3.0], [" ", "x\ny", "z"], [1], "t", "importance")
    assert bars["datasets"]["bars"]["label"].tolist() == ["0:' '", "1:x\\ny", "2:z"]


def test_token_bars_leave_out_pads_and_hidden_positions_and_mark_the_probe():
    # sample 0 cut at its length (3 tokens), on an axis spanning the batch's 4 positions
    spec = token_bars(GRID[0][:3], TOKENS[0], probe_tokens=[1, 3], title="Sample 0", what="importance", hidden=[2],
                      span=4)
    bars = spec["datasets"]["bars"].to_dict("records")
    assert [(b["position"], b["value"], b["probe"]) for b in bars] == [(0, 5.0, False), (1, 1.0, True)]
    # the hidden position an empty column (as in the heat map), past its end: no token
    assert spec["encoding"]["x"]["scale"]["domain"] == ["0:<s>", "1:<b>bold", "2:'\\n'", "3:"]
    assert spec["encoding"]["y"]["title"] == "importance"
    # the batch-wide panel above it: every position of the batch, probe token 3 included
    above = token_bars([9.0, 8.0, 7.0, 6.0], TOKENS[0], [1, 3], "batch", "batch-wide score", hidden=[2],
                       labels=False, span=4)
    assert [(b["position"], b["probe"]) for b in above["datasets"]["bars"].to_dict("records")] == [
        (0, False), (1, True), (3, True)]
    assert above["encoding"]["x"]["axis"]["labels"] is False
    # same positions and y-axis width: the two panels line up
    assert above["encoding"]["x"]["scale"] == spec["encoding"]["x"]["scale"]
    assert above["encoding"]["y"]["axis"] == spec["encoding"]["y"]["axis"]


def test_pick_by_layer_is_the_matrix():
    m = np.array([[1, 0, 0], [0, 1, 1]])
    cells = _cells(pick_by_layer(m, "t"))
    assert {(c["layer"], c["position"]) for c in cells if c["picked"]} == {(0, 0), (1, 1), (1, 2)}
    assert len(cells) == 6


def test_draw_gives_a_whole_chart_height_to_streamlit(monkeypatch):
    calls = []
    monkeypatch.setattr(probe_charts.st, "vega_lite_chart", lambda spec, **kw: calls.append((spec, kw)))
    probe_charts.draw(token_bars([1.0], ["a"], [], "t", "importance"), "k1")
    probe_charts.draw(importance_heatmap(GRID, TOKENS, [], [], "t"), "k2")
    (bars, kw1), (heat, kw2) = calls
    assert "height" not in bars and kw1 == {"width": "stretch", "height": 300, "key": "k1"}
    assert heat["height"] == {"step": 24} and kw2 == {"width": "stretch", "key": "k2"}


def test_a_short_model_still_gets_rows_tall_enough_to_see():
    assert pick_by_layer(np.zeros((4, 3)), "t")["height"] == {"step": 24}
    assert pick_by_layer(np.zeros((30, 3)), "t")["height"] == {"step": 8}
    cells = importance_heatmap(GRID, TOKENS, [0], [0], "t")["datasets"]["cells"]
    assert list(cells.index) == list(range(len(cells)))  # no stray index column sent to the browser


def test_cells_drawn_counts_what_the_heat_map_colours():
    assert probe_charts.cells_drawn(importance_heatmap(GRID, TOKENS, [0], [0], "t", hidden=[2])) == 5
    assert probe_charts.cells_drawn(importance_heatmap(np.zeros((2, 4)), TOKENS, [0], [0], "t")) == 0


def test_the_panels_line_up_position_under_position():
    """Heat map, bars and pick map: the same y-axis width, the heat map's legend above it (not beside it, which would
    narrow its plot), and the same token positions across, so that a column in one is the same column in the others."""
    heat = importance_heatmap(GRID, TOKENS, [0], [1], "t")
    bars = token_bars([5.0, 1.0, 2.0, 6.0], TOKENS[1], [0], "b", "score")
    picks = pick_by_layer(np.eye(3, 4), "p")
    ys = [heat["layer"][0]["encoding"]["y"]["axis"], bars["encoding"]["y"]["axis"], picks["encoding"]["y"]["axis"]]
    assert all(y["minExtent"] == y["maxExtent"] == probe_charts.AXIS_WIDTH for y in ys)
    assert heat["layer"][0]["encoding"]["color"]["legend"]["orient"] == "top"
    assert heat["layer"][0]["encoding"]["x"]["scale"]["domain"] == picks["encoding"]["x"]["scale"]["domain"] == [
        0, 1, 2, 3]
    assert len(bars["encoding"]["x"]["scale"]["domain"]) == 4
