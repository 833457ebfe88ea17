"""Run an ablation in the Compare methods tab (issue 16: "the comparison view can run any named ablation on the current
batch"): `ppcore.session.ablation` on a tiny model (its numbers are the engine's own, one row per variant in the
grid's order, Jaccard with the oracle where measured), and the app's section through AppTest on the default model,
its table checked against the engine on the same batch."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from app import engine
from app.glossary import GLOSSARY
from app.state import calib_config
from app.result import Result
from app.views import ablation as view
from ppcore import ConfigError, PruneConfig, session
from ppcore.ablations import ABLATIONS, grid
from ppcore.calibrate import calibrate
from ppcore.config import CalibConfig
from tests.conftest import DecodeOnlyTokenizer, tiny_llama
from tests.test_app import finish, ok, start, tab, titles

VOCAB = 128


@pytest.fixture(scope="module")
def tiny():
    """A tiny Llama (4 layers, layer 0 skipped), its calibration, and a pp analysis at 0.4 of a 6 x 16 batch with
    two padded samples."""
    lm = dataclasses.replace(tiny_llama(layers=4), tokenizer=DecodeOnlyTokenizer())
    g = torch.Generator().manual_seed(1)
    stats = calibrate(lm, torch.randint(0, VOCAB, (8, 16), generator=g), 4, cache=False, progress=False)
    calib = session.Calibration(stats, CalibConfig(windows=8, seq_len=16, batch_size=4), 0, {})
    ids = torch.randint(0, VOCAB, (6, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[4, 9:] = 0
    batch = session.Batch(ids, mask, "tiny", [[f"t{i}" for i in row] for row in ids.tolist()])
    a = session.analyse(lm, calib, PruneConfig(ratio=0.4, skip_layers=(0,)), batch)
    return lm, calib, a


@pytest.fixture(scope="module")
def ablations(tiny):
    lm, calib, a = tiny
    seen: list[tuple[float, str]] = []
    out = {name: session.ablation(lm, calib, a, name, progress=lambda v, t: seen.append((v, t)))
           for name in ("history", "fusion")}
    return out, seen


def test_rows_are_the_grid_on_the_batch(tiny, ablations):
    lm, calib, a = tiny
    res, seen = ablations
    for name, r in res.items():
        assert r.name == name and r.question == ABLATIONS[name].question and r.ratio == 0.4
        assert [row.label for row in r.rows] == [label for label, _ in grid(name, [0.4], a.cfg)]
        assert r.rows[0].variant == "dense" and r.base == a.cfg.to_dict()
        # Dense is the analysis's own; PP's row is the analysis (pp at 0.4, every setting at its default).
        assert r.dense.ppl == a.summary()["ppl_dense"] and r.dense.decoder_flops_ratio == 1.0
        assert r.reference.variant.endswith("(PP)") and r.reference.ppl == a.summary()["ppl_pruned"]
        for row in r.rows:
            assert row.ppl_vs_pp == row.ppl - r.reference.ppl
            if row.method != "dense":
                assert 0 < row.decoder_flops_ratio < 1 and row.config["ratio"] == 0.4
                assert row.config["skip_layers"] == [0]  # the analysis's own settings carry over
    # "probe only (X 1)" fuses nothing of the history: exactly "probe only" (use_history off).
    fusion = {row.variant: row for row in res["fusion"].rows}
    history = {row.variant: row for row in res["history"].rows}
    assert fusion["probe only (X 1)"].ppl == history["probe only"].ppl
    # One batch, no warm-up: the frozen calibration history is the history PP decides this batch with.
    assert history["probe + frozen calibration (ema 1)"].ppl == history["probe + history (PP)"].ppl
    assert history["calibration only (ppsp-calib)"].decoder_probe_flops_ratio == 0.0
    # Progress: per run and per layer, forward to 1 in each ablation (history's, then fusion's).
    assert seen[-1] == (1.0, "done") and any("(2 of 5): 4 of 4 layers" in t for _, t in seen)
    end = seen.index((1.0, "done"))
    for part in (seen[:end + 1], seen[end + 1:]):
        fractions = [v for v, _ in part]
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0


def test_a_variants_perplexity_is_a_separate_analysis_of_its_config(tiny, ablations):
    lm, calib, a = tiny
    res, _ = ablations
    for r in res.values():
        for row in r.rows[1:]:
            cfg = PruneConfig(**{**row.config, "skip_layers": tuple(row.config["skip_layers"])})
            alone = session.analyse(lm, calib, cfg, a.batch)
            assert row.ppl == alone.summary()["ppl_pruned"], row.label
            assert row.decoder_flops_ratio == alone.summary()["decoder_flops_ratio"], row.label


def test_jaccard_with_the_oracle_where_measured(tiny, ablations):
    lm, calib, a = tiny
    res, _ = ablations
    history, fusion = res["history"], res["fusion"]
    assert history.jaccard and not fusion.jaccard
    oracle = session.baselines(lm, calib, a)["fullbatch"]
    for row in history.rows:
        if row.method in ("dense", "fullbatch"):
            assert row.jaccard_attn is row.jaccard_mlp is row.layer_jaccard_attn is None
            continue
        for block in ("attn", "mlp"):
            mean, per_layer = getattr(row, f"jaccard_{block}"), getattr(row, f"layer_jaccard_{block}")
            assert 0.0 <= mean <= 1.0 and per_layer.shape == (4,) and math.isnan(per_layer[0])  # layer 0 skipped
            assert ((per_layer[1:] >= 0) & (per_layer[1:] <= 1)).all()
            assert mean == pytest.approx(float(np.nanmean(per_layer)))
    # PP's keep-sets are the analysis's: its per-layer Jaccard is the app's Jaccard with the oracle (layer_table).
    pp = history.reference
    table = [t for t in session.layer_table(a.main, {"fullbatch": oracle}) if t["block"] == "attn"]
    assert [t["jaccard_fullbatch"] for t in table][1:] == pp.layer_jaccard_attn[1:].tolist()
    for row in fusion.rows:
        assert row.jaccard_attn is row.jaccard_mlp is row.layer_jaccard_attn is row.layer_jaccard_mlp is None
    # The view's figures from these results: the table's columns, the bars, the per-layer lines.
    shown = view.shown_table(history)
    assert list(shown.columns)[-2:] == ["Jaccard with the oracle, heads", "Jaccard with the oracle, MLP channels"]
    assert shown.iloc[0, -1] == "n/a" and "None" not in shown.to_string() and "nan" not in shown.to_string()
    assert "Jaccard with the oracle, heads" not in view.shown_table(fusion).columns
    bars = view.ppl_bars(history)
    assert list(bars.data[0].y) == [row.ppl for row in history.rows[1:]]
    assert bars.layout.shapes[0].y0 == history.dense.ppl  # dense, as a line
    lines = view.layer_jaccard(history)
    assert len(lines) == 4 * 2 * 4 and set(lines["variant"]) == {row.variant for row in history.rows[2:]}
    assert view.layer_jaccard(fusion).empty and view.jaccard_lines(lines, "history").data


def test_bad_ablations_fail_before_any_walk(tiny):
    lm, calib, a = tiny
    walked: list[str] = []
    with pytest.raises(ConfigError, match="unknown ablation 'nope'; choose from history, probe"):
        session.ablation(lm, calib, a, "nope", progress=lambda v, t: walked.append(t))
    # Layers 0-1 of 4 skipped: ratio 0.4 fits (r_eff 0.8), the MLP at 3r/2 does not.
    two_skipped = dataclasses.replace(a, cfg=dataclasses.replace(a.cfg, skip_layers=(0, 1)))
    with pytest.raises(ConfigError, match=r"ablation blocks, attention r/2, MLP 3r/2 @ 0.4: mlp_ratio 0.6 with 2 of 4"):
        session.ablation(lm, calib, two_skipped, "blocks", progress=lambda v, t: walked.append(t))
    with pytest.raises(ConfigError, match="calibration only .* needs calibration statistics"):
        session.ablation(lm, None, a, "history", progress=lambda v, t: walked.append(t))
    assert walked == []


def test_every_ablation_has_its_glossary_terms():
    assert set(view.TERMS) == set(ABLATIONS)
    for terms in view.TERMS.values():
        assert all(t in GLOSSARY for t in terms)
    for term in ("ablation", "Jaccard with the oracle", "fixed fusion", "block ratios"):
        assert len(GLOSSARY[term]) > 60
    assert view.carried_settings(PruneConfig()) == []
    assert view.carried_settings(PruneConfig(use_history=False, skip_layers=(1,))) == ["use_history=False"]


def test_the_compare_tab_runs_an_ablation_on_the_batch():
    at = start()
    ok(at)
    r = at.session_state["result"]
    at = tab(at, "Compare methods")
    ok(at)
    assert at.selectbox(key="abl_name").options == list(ABLATIONS)
    assert any("Press **Run the ablation**" in i.value for i in at.info)
    at.selectbox(key="abl_name").set_value("fusion").run()
    assert any(ABLATIONS["fusion"].question in c.value for c in at.caption)
    at.button(key="abl_go").click().run()
    finish(at)
    ok(at)
    shown = at.dataframe[-1].value
    assert at.session_state["result"] is r
    stored = r.ablations["fusion"]
    # The engine on the same batch, with the app's cached model and calibration.
    lm = engine.get_model(r.settings.model, r.settings.device, r.settings.dtype)
    calib = engine.get_calibration(lm, lm.fingerprint, str(lm.device), str(lm.dtype), calib_config(r.settings),
                                   r.settings.seed, True)
    want = session.ablation(lm, calib, r.analysis, "fusion")
    assert [row.ppl for row in stored.rows] == [row.ppl for row in want.rows]
    assert list(shown["variant"]) == [row.variant for row in want.rows]
    assert list(shown["perplexity"]) == [f"{row.ppl:.2f}" for row in want.rows]
    assert list(shown["ppl − PP"]) == [f"{row.ppl_vs_pp:+.2f}" for row in want.rows]
    assert any(t.startswith("Ablation 'fusion': perplexity per variant") for t in titles(at))
    # The result and the choice survive another tab and another ablation's choice, and go with the analysis.
    at = tab(tab(at, "Zero-shot"), "Compare methods")
    ok(at)
    assert at.selectbox(key="abl_name").value == "fusion"
    assert at.session_state["result"].ablations["fusion"] is stored and at.dataframe[-1].value.equals(shown)
    at.selectbox(key="abl_name").set_value("history").run()
    assert any("Press **Run the ablation** to run 'history'" in i.value for i in at.info)
    at.selectbox(key="abl_name").set_value("fusion").run()
    assert at.dataframe[-1].value.equals(shown)
    at.session_state["result"] = Result(r.key, r.settings, r.analysis)  # another analysis: a Run stores a new Result
    at.run()
    ok(at)
    assert any("Press **Run the ablation** to run 'fusion'" in i.value for i in at.info)
