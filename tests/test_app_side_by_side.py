"""The Side by side tab (issue 14 item 3: "Two configurations on the same batch ... kept-set differences per layer and
per-token loss differences"; "AppTests ... for side by side"). The view's configurations and tables on a tiny model
(pure functions, no streamlit), then the tab through AppTest on the default model: a preset runs, the figures shown
are `ppcore.session.side_by_side`'s, a second preset keeps the first, and a replay says the tab needs the model."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from app.glossary import GLOSSARY
from app.state import ViewLink, view_from_query
from app.views import TABS
from app.views import side_by_side as view
from app.views.export import record_json
from app.views.replay import UPLOAD_KEY
from ppcore import PruneConfig, session
from ppcore.calibrate import calibrate
from ppcore.config import CalibConfig
from tests.conftest import DecodeOnlyTokenizer, tiny_llama
from tests.test_app import charts, ok, start, tab, titles

VOCAB = 128


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama (4 layers, layer 0 skipped), its calibration, a pp analysis at 0.4 of a 5 x 12 batch with a
    padded sample, and its comparison with PP without history."""
    lm = dataclasses.replace(tiny_llama(layers=4), tokenizer=DecodeOnlyTokenizer())
    g = torch.Generator().manual_seed(2)
    stats = calibrate(lm, torch.randint(0, VOCAB, (8, 12), generator=g), 4, cache=False, progress=False)
    calib = session.Calibration(stats, CalibConfig(windows=8, seq_len=12, batch_size=4), 0, {})
    ids = torch.randint(0, VOCAB, (5, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[3, 8:] = 0
    tokens = [[f"t{i}" for i in row] for row in ids.tolist()]
    batch = session.Batch(ids, mask, "tiny", tokens)
    a = session.analyse(lm, calib, PruneConfig(ratio=0.4, skip_layers=(0,)), batch)
    cfg_a = view.config_a(a)
    res = session.side_by_side(lm, calib, batch, cfg_a, view.config_b(cfg_a, "FLAP at the same ratio"))
    return a, res


def test_the_presets_build_b_from_a():
    a = PruneConfig(ratio=0.4, skip_layers=(0, 1), mlp_multiple=1)
    b = {p: view.config_b(a, p, 0.3) for p in view.PRESETS}
    assert b["PP without history"] == dataclasses.replace(a, use_history=False)
    assert b["FLAP at the same ratio"] == a.as_method("flap", 0.4)
    assert b["Wanda-sp at the same ratio"] == a.as_method("wanda-sp", 0.4)
    assert b["the full-batch oracle"] == a.as_method("fullbatch", 0.4)
    assert b[view.OTHER_RATIO] == dataclasses.replace(a, ratio=0.3)
    for cfg in b.values():  # A's other settings carry over
        assert cfg.skip_layers == (0, 1) and cfg.mlp_multiple == 1
    # A fixed fusion mixes the probe with the history: PP without its history fuses nothing, its other ablation
    # settings stay; a baseline drops what its method does not take.
    fixed = PruneConfig(ratio=0.4, fusion="fixed", probe_weight=0.8, score="wanda-sp", attn_ratio=0.2)
    nohist = view.config_b(fixed, "PP without history")
    assert (nohist.use_history, nohist.fusion, nohist.probe_weight) == (False, "importance", 0.5)
    assert (nohist.score, nohist.attn_ratio) == ("wanda-sp", 0.2)
    flap = view.config_b(fixed, "FLAP at the same ratio")
    assert (flap.score, flap.fusion, flap.attn_ratio) == ("ppsp", "importance", None)
    # Another ratio is rounded (a bounded set of stored results), and labelled with it.
    assert view.config_b(a, view.OTHER_RATIO, 0.30000001).ratio == 0.3
    assert view.entry(view.OTHER_RATIO, 0.3) == "another ratio (0.30)" and view.entry("PP without history") == \
        "PP without history"
    assert view.default_other_ratio(0.4) == 0.2 and view.default_other_ratio(0.2) == 0.4
    with pytest.raises(ValueError, match="needs a ratio"):
        view.config_b(a, view.OTHER_RATIO)
    with pytest.raises(ValueError, match="unknown preset"):
        view.config_b(a, "nope")
    assert view.describe(b["PP without history"]) == "pp without history at ratio 0.40"
    assert view.describe(b["the full-batch oracle"].to_dict()) == "fullbatch (the oracle) at ratio 0.40"
    assert set(view.TERMS) == set(view.PRESETS)
    assert all(t in GLOSSARY for terms in view.TERMS.values() for t in terms)


def test_a_link_names_the_tab():
    assert view_from_query({"tab": "sidebyside"}) == (ViewLink("Side by side"), [])
    assert view_from_query({"tab": "Side by side"}) == (ViewLink("Side by side"), [])
    assert ViewLink("Side by side").to_query() == {"tab": "sidebyside"}
    # The tabs around it keep their short names.
    assert [ViewLink(t).to_query()["tab"] for t in ("Compare methods", "Zero-shot", "Export")] == [
        "compare", "zeroshot", "export"]


def test_a_dense_analysis_compares_pp_at_its_ratio(tiny):
    a, _ = tiny
    dense = dataclasses.replace(a, cfg=PruneConfig(method="dense", skip_layers=(0,)), ratio=0.3)
    assert view.config_a(dense) == dataclasses.replace(a.cfg, ratio=0.3)
    assert view.config_a(a) is a.cfg


def test_the_tables_are_the_comparisons(tiny):
    a, res = tiny
    df = view.layer_table(res)
    assert len(df) == 2 * 4 and list(df["block"]) == ["Attention"] * 4 + ["MLP"] * 4
    for (_, row), d in zip(df.iterrows(), res.layers):
        assert row["only A keeps"] == d.only_a and row["only B keeps"] == d.only_b and row["kept by both"] == d.both
        if d.pruned_a or d.pruned_b:
            assert row["Jaccard"] == d.jaccard
        else:
            assert math.isnan(row["Jaccard"]) and row["pruned by"] == "neither"
    assert df.loc[0, "pruned by"] == "neither" and df.loc[1, "pruned by"] == "both"  # layer 0 skipped by both
    shown = view.shown_layer_table(res)
    assert shown.loc[0, "Jaccard"] == "n/a" and "nan" not in shown.to_string() and "None" not in shown.to_string()
    assert list(shown["Jaccard"][1:4]) == [f"{d.jaccard:.3f}" for d in res.layers[1:4]]
    assert view.short_list([]) == "none" and view.short_list([1, 4, 7]) == "3 (1, 4, 7)"
    assert view.short_list(list(range(40))) == "40 (0, 1, 2, 3, 4, 5, 6, 7, …)"
    # Per-token: every scored position once, B − A the engine's loss_diff; the extremes sorted and signed.
    tok = view.token_losses(res, a.batch.tokens)
    assert len(tok) == int(res.mask.sum())
    diff = res.loss_diff.numpy()
    assert np.allclose(tok["B − A (nats)"], diff[tok["sample"], tok["position"] - 1])
    assert list(tok["token"][:2]) == a.batch.tokens[0][1:3]  # position t + 1: the predicted token
    worst, best = view.extremes(res, a.batch.tokens, n=3)
    assert len(worst) <= 3 and (worst["B − A (nats)"] > 0).all() and worst["B − A (nats)"].is_monotonic_decreasing
    assert (best["B − A (nats)"] < 0).all() and best["B − A (nats)"].is_monotonic_increasing
    assert worst.iloc[0]["B − A (nats)"] == pytest.approx(float(diff.max()))
    m = {x.label: x for x in view.metrics(res)}
    assert m["Perplexity, A"].value == f"{res.ppl_a:.2f}"
    assert m["Perplexity, B"].delta == f"{res.ppl_b - res.ppl_a:+.2f}"
    assert m["FLOPs / dense (decoder layers), B"].value == f"{res.flops_b['decoder_flops_ratio']:.3f}"
    # A change that rounds to nothing draws no arrow.
    assert view._change(1.0, 1.0004, "+.3f") is None and view._change(None, 1.0, "+.3f") is None
    assert view._change(1.0, 1.25, "+.2f") == "+0.25"


def test_the_figures_draw_the_comparison(tiny):
    a, res = tiny
    fig = view.charts.pair_jaccard(res.jaccard_by_layer("attn"), res.jaccard_by_layer("mlp"), "t")
    assert [d.name for d in fig.data] == ["heads", "MLP channels"]
    assert fig.data[0].y[0] is None and list(fig.data[1].y[1:]) == list(res.jaccard_by_layer("mlp")[1:])
    heat = view.charts.loss_diff_heatmap(res.loss_diff.numpy(), res.mask.numpy(), a.batch.tokens, "t",
                                         res.nll_a.numpy(), res.nll_b.numpy()).data[0]
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (5, 11) and np.isnan(z[3, 7:]).all()  # the padded sample's pad targets are blank
    assert heat.zmid == 0 and heat.zmax == -heat.zmin == pytest.approx(float(np.nanmax(np.abs(z))))
    assert heat.customdata[0][0][0] == a.batch.tokens[0][1]


# --- the page -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page():
    """The default small analysis with the Side by side tab open."""
    at = start()
    ok(at)
    at = tab(at, "Side by side")
    ok(at)
    return at


def _layers(at) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "only A keeps" in d.value.columns)


def test_the_tab_runs_a_preset_and_keeps_it(page, monkeypatch):
    at = page
    r = at.session_state["result"]
    assert "Side by side" in TABS and TABS.index("Side by side") == TABS.index("Compare methods") + 1
    assert at.radio(key="sbs_preset").options == list(view.PRESETS)
    assert at.number_input(key="sbs_ratio").value == view.default_other_ratio(r.analysis.ratio)
    assert any("Press **Run side by side**" in i.value for i in at.info)
    at.button(key="sbs_go").click().run()
    ok(at)
    assert at.session_state["result"] is r and at.session_state["view"] == "Side by side"
    first = r.side_by_side["PP without history"]
    assert first.cfg_a == r.analysis.cfg.to_dict() and first.cfg_b["use_history"] is False
    # The engine on the same batch gives the same comparison (deterministic on the CPU).
    want = session.side_by_side(*_model_and_calib(r), r.analysis.batch, r.analysis.cfg,
                                dataclasses.replace(r.analysis.cfg, use_history=False))
    assert (first.ppl_a, first.ppl_b) == (want.ppl_a, want.ppl_b) and first.layers == want.layers
    # The header line, the table and the figures are the comparison's numbers.
    shown = {m.label: m.value for m in at.metric}
    assert shown["Perplexity, A"] == f"{first.ppl_a:.2f}" and shown["Perplexity, B"] == f"{first.ppl_b:.2f}"
    assert shown["FLOPs / dense (decoder layers), A"] == f"{first.flops_a['decoder_flops_ratio']:.3f}"
    assert shown["FLOPs / dense (decoder layers), B"] == f"{first.flops_b['decoder_flops_ratio']:.3f}"
    table = _layers(at)
    assert len(table) == 2 * 30
    assert list(table["Jaccard"]) == ["n/a" if not (d.pruned_a or d.pruned_b) else f"{d.jaccard:.3f}"
                                      for d in first.layers]
    assert list(table["kept by both"]) == [str(d.both) for d in first.layers]
    t = titles(at)
    assert "Keep-set Jaccard of A and B per layer" in t and "Per-token loss, B minus A (nats)" in t
    jac = next(c for c in charts(at) if c["layout"]["title"]["text"].startswith("Keep-set Jaccard"))
    assert jac["data"][0]["y"][:3] == [None] * 3  # the skipped layers: gaps
    assert jac["data"][0]["y"][3:] == pytest.approx(list(first.jaccard_by_layer("attn")[3:]))
    assert any("B predicts that token worse than A" in c.value for c in at.caption)
    worst = next(d.value for d in at.dataframe if "B − A (nats)" in d.value.columns)
    assert worst["B − A (nats)"][0] == f"{float(first.loss_diff.max()):+.3f}"

    # A second preset runs beside the first; choosing the first again redraws it without a run.
    at.radio(key="sbs_preset").set_value("FLAP at the same ratio").run()
    assert any("Press **Run side by side** to run A and B (FLAP at the same ratio)" in i.value for i in at.info)
    at.button(key="sbs_go").click().run()
    ok(at)
    second = r.side_by_side["FLAP at the same ratio"]
    assert second.cfg_b["method"] == "flap" and r.side_by_side["PP without history"] is first
    assert {m.label: m.value for m in at.metric}["Perplexity, B"] == f"{second.ppl_b:.2f}"
    at.radio(key="sbs_preset").set_value("PP without history").run()
    ok(at)
    assert r.side_by_side["PP without history"] is first and _layers(at).equals(table)
    # Back from another tab: the preset chosen and its comparison are still there.
    at = tab(tab(at, "Export"), "Side by side")
    ok(at)
    assert at.radio(key="sbs_preset").value == "PP without history" and _layers(at).equals(table)
    # Another ratio: its own entry; B the same as A is refused.
    at.radio(key="sbs_preset").set_value(view.OTHER_RATIO).run()
    at.number_input(key="sbs_ratio").set_value(r.analysis.ratio).run()
    ok(at)
    assert at.button(key="sbs_go").disabled and any("B would be A itself" in i.value for i in at.info)
    # A B that cannot run (0.95 with 3 of 30 layers skipped) is refused before anything runs, with the ratio to use.
    at.number_input(key="sbs_ratio").set_value(0.95).run()
    assert at.button(key="sbs_go").disabled and any("use at most 0.89" in w.value for w in at.warning)
    # A computation that fails: its message shows on the page, not inside the collapsed status box (a newcomer saw
    # only "failed (the message is below)" with nothing below).
    from ppcore.errors import DataError

    def fails(*args, **kwargs):
        raise DataError("the batch went wrong on purpose")

    at.number_input(key="sbs_ratio").set_value(0.6).run()
    monkeypatch.setattr(session, "side_by_side", fails)
    at.button(key="sbs_go").click().run()
    outside = _errors_outside_status(at.main)
    assert any("went wrong on purpose" in e for e in outside), outside
    assert not any("stopped before it finished" in i.value for i in at.info)  # a failure is no stop


def test_a_run_stopped_by_leaving_the_view_says_so_once(page, monkeypatch):
    """A newcomer pressed Run side by side, opened another view and came back to "Press Run side by side", as if never
    pressed: Streamlit had stopped the page's run mid-computation. The stopped computation leaves one note."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    def stopped(*args, **kwargs):  # what Streamlit raises at the computation's next progress update
        raise StopException()

    at = page
    at.radio(key="sbs_preset").set_value(view.OTHER_RATIO).run()
    at.number_input(key="sbs_ratio").set_value(0.3).run()
    monkeypatch.setattr(session, "side_by_side", stopped)
    at.button(key="sbs_go").click().run()
    at = tab(at, "Export")
    said = [i.value for i in at.info if "stopped before it finished" in i.value]
    assert len(said) == 1 and said[0].startswith("Running A and B side by side") and "0.3" in said[0]
    at = tab(at, "Side by side")
    assert not any("stopped before it finished" in i.value for i in at.info)  # said once


def _errors_outside_status(node, inside: bool = False) -> list[str]:
    """The texts of the st.error elements under `node` that no st.status box holds."""
    out = []
    if getattr(node, "type", None) == "error" and not inside:
        out.append(node.value)
    inside = inside or getattr(node, "type", None) == "status"
    children = getattr(node, "children", None)
    for child in (children.values() if isinstance(children, dict) else []):
        out += _errors_outside_status(child, inside)
    return out


def _model_and_calib(r):
    from app import engine
    from app.state import calib_config

    lm = engine.get_model(r.settings.model, r.settings.device, r.settings.dtype)
    calib = engine.get_calibration(lm, lm.fingerprint, str(lm.device), str(lm.dtype), calib_config(r.settings),
                                   r.settings.seed, True)
    return lm, calib


def test_a_replay_says_the_tab_needs_the_model(page):
    data = record_json(page.session_state["result"]).encode()
    at = start(source="upload")  # a link to an upload waits for its file: no run
    up = next(u for u in at.get("file_uploader") if u.key == UPLOAD_KEY)
    up.set_value(("run.json", data, "application/json")).run()
    ok(at)
    assert at.session_state["result"].replayed is not None
    tab(at, "Side by side")
    ok(at)
    assert any(i.value.startswith("Running two configurations side by side") and "needs the model" in i.value
               for i in at.info)
    assert not charts(at) and not [b for b in at.button if b.key == "sbs_go"]
