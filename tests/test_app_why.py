"""The views that explain PP's decisions, through AppTest on both real models: stage 2 (History), the why-panel
(Why this head), readable importance (log scale, sinks left out, the batch-wide token score) and the glossary."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.glossary import GLOSSARY, explain
from app.views.unit_why import SCORE_NAMES, headline, picked, verdict_table
from ppcore import why
from tests.test_app import charts, ok, start, tab, titles, vega_chart
from tests.test_gemma3 import needs_gemma

MODELS = ["default", pytest.param("gemma3-270m", marks=needs_gemma)]


def arr(v) -> np.ndarray:
    """A figure's data array: a list, or Plotly's typed-array form {"dtype", "bdata", "shape"}."""
    if isinstance(v, dict) and "bdata" in v:
        out = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return out.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else out
    return np.asarray(v, dtype=float)


def unit_box(at: AppTest, block: str):
    """The why-panel's unit-number box (its key names the block and the clicks so far)."""
    return next(n for n in at.number_input if n.key.startswith(f"why_unit_box_{block}_"))


def _chart(at: AppTest, prefix: str) -> dict:
    return next(c for c in charts(at) if (c["layout"].get("title") or {}).get("text", "").startswith(prefix))


@pytest.fixture(scope="module", params=MODELS)
def app(request) -> AppTest:
    at = start(model=request.param)
    ok(at)
    return at


def test_history_view_draws_stage_2(app):
    at = tab(app, "History")
    ok(at)
    r = at.session_state["result"]
    layer = at.session_state["hist_layer"]
    rec = r.analysis.main.layers[layer].attn
    effect = why.history_effect(rec)
    assert effect is not None
    heads = {m.label: m.value for m in at.metric}
    assert heads["Head decisions the history changed"] == f"{effect.changed} of {rec.total}"
    assert effect.changed == len(effect.gained) + len(effect.lost)
    fig = _chart(at, f"Layer {layer}, Attention heads: probe, history and fused energy")
    names = [d.get("name") for d in fig["data"]]
    assert {"probe (P)", "history (G)", "fused (scored by PPsp)", "fusion weight"} <= set(names)
    fused = next(d for d in fig["data"] if d.get("name") == "fused (scored by PPsp)")
    assert np.allclose(arr(fused["y"]), why.stage2(rec).energy_fused)
    assert any("Decisions the history turned around, per layer" in t for t in titles(at))
    # The MLP: one dot per channel, coloured by what the history did.
    at.radio(key="hist_block").set_value("mlp").run()
    ok(at)
    mlp = at.session_state["result"].analysis.main.layers[layer].mlp
    fig = _chart(at, f"Layer {layer}, MLP channels: probe, history and fused energy")
    dots = sum(len(arr(d["x"])) for d in fig["data"] if d.get("mode") == "markers")
    assert dots == mlp.total
    # How the history moves: consecutive batches through one pruner.
    at.number_input(key="hist_stab_n").set_value(1)
    at.button(key="hist_stab_go").click().run()
    ok(at)
    stab = at.session_state["result"].stability
    assert stab.history["mlp"].shape == (2, len(r.analysis.main.layers), mlp.total)
    # Batch 1 decides with the calibration history; after it the EMA has moved the kept channels only.
    moved = stab.history["mlp"][1, layer] != stab.history["mlp"][0, layer]
    assert moved.any() and not moved[[c for c in range(mlp.total) if c not in set(mlp.kept)]].any()
    assert any("history at each batch against the first" in t for t in titles(at))


def test_why_panel_explains_a_head_and_compares_methods(app):
    at = tab(app, "Why this head")
    ok(at)
    r = at.session_state["result"]
    assert set(r.baselines) == {"fullbatch", "wanda-sp", "flap", "ppsp-calib"}
    layer = at.session_state["why_layer"]
    rec = r.analysis.main.layers[layer].attn
    pruned = next(h for h in range(rec.total) if h not in rec.kept)
    unit_box(at, "attn").set_value(pruned).run()
    ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert f"Head {pruned} of layer {layer} was **pruned** by pp" in text
    assert "PPsp of a head" in text
    table = at.dataframe[0].value
    assert list(table["method"]) == ["pp (this run)", "fullbatch (the oracle)", "wanda-sp", "flap", "ppsp-calib"]
    oracle = r.baselines["fullbatch"].layers[layer].attn
    assert table["decision"][1] == ("kept" if pruned in oracle.kept else "pruned")
    assert any(t.startswith(f"Head {pruned}: each channel's term") for t in titles(at))
    grid = _chart(at, f"Layer {layer}: heads kept by each method")
    assert grid["data"][0]["y"] == ["pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib"]
    assert arr(grid["data"][0]["z"])[0].tolist() == [1 if h in rec.kept else 0 for h in range(rec.total)]
    # A channel by number; a skipped layer says nothing was scored.
    at.radio(key="why_block").set_value("mlp").run()
    assert unit_box(at, "mlp").value == min(pruned, 1535)  # a fresh box for the block, showing the unit explained
    unit_box(at, "mlp").set_value(5).run()
    assert at.session_state["why_unit"] == 5
    ok(at)
    assert any("**PPsp = fused energy x weight factor**" in m.value for m in at.markdown)
    at.slider(key="why_layer").set_value(0).run()
    ok(at)
    assert any("nothing was scored here" in i.value for i in at.info)


def test_probe_view_reads_deep_layers(app):
    at = tab(app, "Probe")
    layers = at.session_state["result"].analysis.main.layers
    deep = [i for i, lay in enumerate(layers) if why.sink_positions(why.token_scores(lay.attn.importance))]
    assert deep and deep[-1] >= len(layers) // 2, "the deeper layers of both real models hold an attention sink"
    n = deep[-1] + 2  # the chart titles below name layer n - 2
    at.slider(key="probe_layer").set_value(n - 2).run()
    ok(at)
    rec = layers[n - 2].attn
    sinks = why.sink_positions(why.token_scores(rec.importance))
    assert any("Attention sinks at this layer" in c.value for c in at.caption)
    at.toggle(key="probe_log").set_value(True)
    at.toggle(key="probe_hide_sinks").set_value(True).run()
    ok(at)
    heat = vega_chart(at, f"Layer {n - 2}, Attention: residual importance")
    cells = heat["datasets"]["cells"]
    assert cells and not {c["position"] for c in cells} & set(sinks)  # the sinks' columns are left blank
    shown = next(c for c in cells if c["importance"] > 0)
    assert shown["shown"] == pytest.approx(np.log10(shown["importance"]))
    colour = heat["layer"][0]["encoding"]["color"]
    assert colour["title"] == "log10 ‖h‖"
    assert json.dumps(list(rec.probe_samples)) in heat["layer"][0]["encoding"]["y"]["axis"]["labelExpr"]
    batch = vega_chart(at, "Batch-wide token score")  # the score that picks the probe tokens, above the sample's
    sample = vega_chart(at, "Sample")
    assert batch["encoding"]["x"]["scale"] == sample["encoding"]["x"]["scale"]  # the same positions: lined up
    assert {c["position"] for c in batch["datasets"]["bars"] if c["probe"]} == set(rec.probe_tokens) - set(sinks)
    drawn = {c["position"] for c in sample["datasets"]["bars"]}
    assert {c["position"] for c in sample["datasets"]["bars"] if c["probe"]} == set(rec.probe_tokens) & drawn
    assert not drawn & set(sinks)


def test_glossary_covers_the_terms_the_pages_use():
    for term in ("residual importance", "probe", "EMA", "fusion", "PPsp", "Jaccard", "KL", "FLOPs", "PRR", "ppsp-calib",
                 "Wanda-sp", "FLAP", "oracle"):
        assert term in GLOSSARY and len(GLOSSARY[term]) > 60
    assert explain("KL").startswith("**KL**")
    with pytest.raises(KeyError):
        explain("no such term")


def test_views_when_nothing_was_pruned():
    """Ratio 0: the probe, history and why views say nothing was pruned, and the why view runs no baselines."""
    at = start(ratio="0")
    ok(at)
    for view in ("Probe", "History", "Why this head"):
        at = tab(at, view)
        ok(at)
        assert any("Nothing was pruned in this run (ratio 0)" in i.value for i in at.info), view
    assert at.session_state["result"].baselines is None
    # A run that pruned nothing shows no perplexity change (it showed a red up arrow beside "+0.00").
    change = next(m for m in at.metric if m.label == "Perplexity, pp")
    assert change.value == next(m for m in at.metric if m.label == "Perplexity, dense").value
    assert change.proto.delta == ""


def test_chart_clicks_pick_a_unit():
    head_click = {"selection": {"points": [{"x": 12, "y": 3, "curve_number": 0}]}}  # x = layer, y = head
    assert picked(head_click, "attn") == (12, 3)
    assert picked({"selection": {"points": [{"x": 700.0, "y": 0.2}]}}, "mlp") == (None, 700)
    assert picked({"selection": {"points": []}}, "attn") is None and picked(None, "mlp") is None


def test_headline_and_table_in_plain_words():
    w = why.UnitWhy("pp", 12, "attn", 3, 9, False, 0.5, 8, 6, 1.0, [0], None, None, None, None, None, None,
                    [why.Verdict("fullbatch", True, True, 2, 2.0), why.Verdict("flap", True, False, None, None)])
    text = headline(w, "head")
    assert "Head 3 of layer 12 was **pruned** by pp" in text and "ranks 8th of 9" in text
    assert "0.50x the cut-off" in text
    t = verdict_table(w)
    assert t["decision"].tolist() == ["pruned", "kept", "not pruned here"] and "None" not in t.to_string()


@pytest.mark.parametrize("method", ["wanda-sp", "fullbatch"])
def test_views_for_methods_without_a_history(method):
    """A static method has no stage 2 and no PPsp factors; the oracle has energies but no history: both say so."""
    at = start(method=method)
    ok(at)
    at = tab(at, "History")
    ok(at)
    info = " ".join(i.value for i in at.info)
    if method == "wanda-sp":
        assert "has no stage 2" in info
    else:
        assert "fuses no history" in info
        assert any("probe, history and fused energy" in t for t in titles(at))
    at = tab(at, "Why this head")
    ok(at)
    assert any(f"by {method}: its {SCORE_NAMES[method]} " in m.value for m in at.markdown)
    if method == "wanda-sp":
        assert any("decides once, from calibration statistics" in i.value for i in at.info)
    methods = at.dataframe[0].value["method"].tolist()
    assert methods[0] == f"{method} (this run)" and "pp" in methods
