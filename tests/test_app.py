"""The Streamlit app through streamlit.testing.v1.AppTest: every view on the default model with a small
batch, and bad input (one clear message, no exception, and the next valid run works)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.batch import read_upload, split_text, upload_texts
from app.inputs import OTHER_MODEL
from app.views import TABS
from app.state import ALIASES, FIELDS, Settings, calib_config, from_query, parse_skip, prune_config
from ppcore import ConfigError, DataError, PruneConfig, RunRecord
from ppcore.config import INTERACTIVE_CALIB, CalibConfig, settings_of
from ppcore.session import TOP_K

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
# Small and fast on 2 CPU cores: 4 example prompts cut to 48 tokens, 8 calibration windows of 64.
SMALL = dict(batch_size="4", seq_len="48", calib_windows="8", calib_seq_len="64")


def start(small: dict[str, str] = SMALL, **params: str) -> AppTest:
    """The app opened on a link holding `small` (the batch and calibration sizes) and `params`, run once."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({**small, **params})
    return at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def finish(at: AppTest) -> AppTest:
    """Wait for the server's background computations (app/background.py: the comparison, an ablation, zero-shot)
    and run the page again, which keeps their results."""
    from app.engine import get_jobs

    assert get_jobs().wait(900), "a background computation did not finish in 15 minutes"
    return at.run()


def charts(at: AppTest) -> list[dict]:
    """The Plotly figures on the page, as their JSON."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def vega_charts(at: AppTest) -> list[dict]:
    """The Vega-Lite charts on the page (the probe view's: app/probe_charts.py), as their specs with the tables
    Streamlit sent beside them put back under `datasets` (lists of records)."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    out = []
    for c in at.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        spec["datasets"] = {d.name: convert_arrow_bytes_to_pandas_df(d.data.data).to_dict("records")
                            for d in c.proto.datasets}
        out.append(spec)
    return out


def vega_chart(at: AppTest, prefix: str) -> dict:
    """The Vega-Lite chart whose title starts with `prefix`."""
    return next(c for c in vega_charts(at) if c.get("title", "").startswith(prefix))


def titles(at: AppTest) -> list[str]:
    """Every chart's title, Plotly's then Vega-Lite's."""
    return ([(c.get("layout", {}).get("title") or {}).get("text", "") for c in charts(at)]
            + [c.get("title", "") for c in vega_charts(at)])


def test_every_view_on_the_default_model():
    at = start()
    ok(at)
    result = at.session_state["result"]
    a = result.analysis
    assert a.batch.ids.shape == (4, 48) and a.info["layers"] == 30
    # The header: FLOPs over the whole model and over the decoder layers only (the paper's count).
    header = {m.label: m.value for m in at.metric}
    summary = result.summary()
    assert header["FLOPs / dense (whole model)"] == f"{summary['flops_ratio']:.3f}"
    assert header["FLOPs / dense (decoder layers)"] == f"{summary['decoder_flops_ratio']:.3f}"
    assert summary["decoder_flops_ratio"] < summary["flops_ratio"] < 1
    assert header["Probe FLOPs / dense (decoder layers)"] == f"{summary['decoder_probe_flops_ratio']:.2%}"
    assert a.protocol["calibration"]["batch_size"] == 20 and a.protocol.front_end == "app"
    assert a.protocol.settings["calib_windows"] == 8 and a.protocol.settings["skip_layers"] == "0-2"
    # 8 windows in batches of 20 are one calibration batch: the page says FLAP prunes nothing with it.
    assert any("FLAP prunes nothing here" in w.value for w in at.warning)
    t = titles(at)
    # Probe view: the heat map with the probe drawn, and the pick across layers.
    assert any(s.startswith("Layer 3, Attention: residual importance") for s in t)
    heat = vega_chart(at, "Layer 3")
    rec = a.main.layers[3].attn
    assert {(c["sample"], c["position"]) for c in heat["datasets"]["probe"]} == {
        (b, t) for b in rec.probe_samples for t in rec.probe_tokens}
    assert sorted(c["position"] for c in heat["datasets"]["ticks"]) == sorted(rec.probe_tokens)
    assert any("token pick moves" in s for s in t)

    # Changing the layer redraws from the stored record: the same result object, no new run.
    at.slider(key="probe_layer").set_value(10).run()
    ok(at)
    assert at.session_state["result"] is result
    assert any(s.startswith("Layer 10, Attention") for s in titles(at))
    at.button(key="probe_next").click().run()
    assert at.session_state["probe_layer"] == 11 and at.session_state["result"] is result

    # Channel map, kept fractions, agreement, scores, stability.
    tab(at, "Pruned channels")
    ok(at)
    t = titles(at)
    for needle in ("Heads kept by pp", "MLP channels kept by pp", "Kept fraction per layer", "Jaccard of pp",
                   "scores, kept vs pruned"):
        assert any(needle in s for s in t), needle
    at.number_input(key="stab_n").set_value(1)
    at.button(key="stab_go").click().run()
    ok(at)
    assert result.stability.attn.shape == (1, 30) and result.stability.batches == 2
    assert any("between consecutive batches" in s for s in titles(at))

    # Outputs: metrics, the coloured per-token loss, top-k, generation.
    tab(at, "Outputs")
    labels = {m.label for m in at.metric}
    assert {"Perplexity, dense", "Perplexity, pp", "Top-1 agreement"} <= labels
    assert any("rgba(214,39,40" in m.value for m in at.markdown)
    assert len(at.dataframe) == 2  # top-k of dense and of pp
    assert at.text_area(key="gen_prompt").value == a.prompt and a.prompt
    at.number_input(key="gen_tokens").set_value(4)
    at.button(key="gen_go").click().run()
    ok(at)
    assert result.generation.dense.tokens >= 1 and result.generation.prompt == a.prompt
    assert at.session_state["view"] == "Outputs"  # a button press keeps the view open
    earlier = "continuation below is of an earlier prompt"
    assert not any(earlier in c.value for c in at.caption)
    at.text_area(key="gen_prompt").set_value("Another prompt").run()  # typed, not generated yet (or it failed)
    assert any(earlier in c.value for c in at.caption) and result.generation.prompt == a.prompt

    # Latency.
    tab(at, "Latency")
    at.number_input(key="lat_reps").set_value(1)
    at.button(key="lat_go").click().run()
    ok(at)
    lat = result.latency
    assert [r.method for r in lat.runs] == ["dense", "pp"] and lat.runs[1].flops["flops_ratio"] < 1
    assert {(b.layer, b.block) for b in lat.blocks} == {(i, b) for i in range(30) for b in ("attn", "mlp")}
    assert any(s.startswith("Per layer: pp vs dense") for s in titles(at))
    assert any("Measured on a CPU" in w.value for w in at.warning)

    # Method comparison.
    tab(at, "Compare methods")
    at.number_input(key="cmp_reps").set_value(1)
    at.button(key="cmp_go").click().run()
    ok(at)
    finish(at)
    ok(at)
    rows = [r.row() for r in result.comparison]
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib"}
    assert all(r["decoder_flops_ratio"] <= r["flops_ratio"] for r in rows)
    assert next(r for r in rows if r["method"] == "dense")["ppl"] == pytest.approx(summary["ppl_dense"])
    assert any("Perplexity against time" in s for s in titles(at))

    # Export: the run record round-trips through the engine's loader.
    tab(at, "Export")
    ok(at)
    assert {b.label for b in at.get("download_button")} >= {"Run record (JSON)", "layers table (CSV)",
                                                             "tokens table (CSV)", "latency table (CSV)",
                                                             "latency summary table (CSV)",
                                                             "methods table (CSV)"}
    # Each file is made when its button is clicked (the record is several MB), not on every rerun of the tab.
    assert all(b.proto.deferred_file_id and not b.proto.url for b in at.get("download_button"))
    rec = RunRecord.from_dict(json.loads(json.dumps(result.run_record().to_dict())))
    assert rec.batches[0].method == "pp" and len(rec.batches[0].layers) == 30
    assert [b.method for b in rec.batches] == ["pp", "dense", "fullbatch", "wanda-sp", "flap", "ppsp-calib"]
    assert rec.protocol["front_end"] == "app" and rec.protocol["config"] == prune_config(result.settings).to_dict()

    # The result holds no hidden state: no tensor whose last dimension is the model's width.
    width = a.info["hidden"]
    assert all(t.shape[-1] != width for t in _tensors(result)), [tuple(t.shape) for t in _tensors(result)]
    # Top-k was computed at analysis time, for every position, from the same LM head as KL and top-1.
    assert a.top_dense.ids.shape == (4, 48, TOP_K) and a.top_pruned.probs.shape == (4, 48, TOP_K)
    assert (a.top_dense.ids[..., 0] == a.top_pruned.ids[..., 0]).float().mean() == pytest.approx(
        float(a.top1.mean()), abs=1e-6)
    # The sidebar shows every engine setting, with the setting's help text and the result's value.
    for f in FIELDS:
        if f.group != "page":
            kind = f.setting.kind
            get = (at.checkbox if kind is bool else at.selectbox if f.setting.choices
                   else at.number_input if kind in (int, float) else at.text_input)
            w = get(key=f"s_{f.name}")
            assert w.help.startswith(f.setting.help) and w.value == getattr(result.settings, f.name), f.name


def _tensors(obj, seen=None) -> list:
    """Every tensor reachable from a result (dataclass fields, dicts, lists, tuples)."""
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name), seen)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, seen)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v, seen)]
    return []


def tab(at: AppTest, label: str) -> AppTest:
    """Open the view with this tab label (the tabs are tracked in session_state['view'] and only the open one
    runs)."""
    assert label in TABS, label
    at.session_state["view"] = label
    return at.run()


def _run(at: AppTest) -> AppTest:
    return at.button(key="run").click().run()


def test_bad_inputs_show_one_message_and_recover(tmp_path):
    at = start(ratio="1.5")  # out of range, from a shared URL
    assert not at.exception
    assert len(at.error) == 1 and "Ratio must lie in [0, 1)" in at.error[0].value
    at.selectbox(key="s_model_choice").set_value(OTHER_MODEL).run()
    at.text_input(key="s_model").set_value("/nonexistent/model")
    at.number_input(key="s_ratio").set_value(0.4)
    _run(at)
    assert not at.exception and len(at.error) == 1 and "not found" in at.error[0].value
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    at.text_input(key="s_model").set_value(str(bert))
    _run(at)
    assert not at.exception and len(at.error) == 1 and "not supported" in at.error[0].value
    at.selectbox(key="s_model_choice").set_value("default")
    at.number_input(key="s_batch_size").set_value(500)
    _run(at)
    assert not at.exception and len(at.error) == 1 and "Batch size 500 is out of range" in at.error[0].value
    at.number_input(key="s_batch_size").set_value(4)
    at.radio(key="s_source").set_value("paste").run()
    at.text_area(key="s_text").set_value("  \n\n ")
    _run(at)
    assert not at.exception and len(at.error) == 1 and "The batch is empty" in at.error[0].value
    # The next valid run works: two pasted samples of uneven length (padded on the right).
    at.text_area(key="s_text").set_value("The cat sat on the mat.\n"
                                         "A much longer second sample about the weather today.")
    _run(at)
    ok(at)
    r = at.session_state["result"]
    assert r.analysis.batch.ids.shape[0] == 2 and r.analysis.batch.mask is not None
    assert any(s.startswith("Layer 3, Attention") for s in titles(at))
    # A failed Run after it: the page keeps the result and says why it is not these settings' (it no longer asks to
    # press Run, which was just pressed).
    at.text_area(key="s_text").set_value(" ")
    _run(at)
    assert len(at.error) == 1 and at.session_state["result"] is r
    assert [i.value for i in at.info if "earlier settings" in i.value] and not [
        i.value for i in at.info if "press **Run** to apply them" in i.value]
    # Once the input changes, the failure's message (about input no longer there) goes; the page says what to do.
    at.text_area(key="s_text").set_value("Another text now.").run()
    assert not at.error and [i.value for i in at.info if "press **Run** to apply them" in i.value]
    at.radio(key="s_source").set_value("upload").run()  # no file yet: it says to upload one, not just to press Run
    assert not at.error and [i.value for i in at.info if "upload a file in the sidebar" in i.value]


def test_unreadable_upload_is_reported():
    at = start(source="upload", model="/nonexistent/first")  # no model work needed for upload errors
    assert not at.exception
    assert at.selectbox(key="s_model_choice").value == OTHER_MODEL
    assert at.text_input(key="s_model").value == "/nonexistent/first"
    at.selectbox(key="s_model_choice").set_value("default")
    _run(at)
    assert len(at.error) == 1 and "No file uploaded" in at.error[0].value
    at.get("file_uploader")[0].upload("bad.jsonl", b'{"text": "fine"}\n{not json', "application/json")
    _run(at)
    assert not at.exception and len(at.error) == 1 and "line 2: not valid JSON" in at.error[0].value
    at.get("file_uploader")[0].set_value(("bytes.csv", b"\xff\xfe\x00binary", "text/csv"))
    _run(at)
    assert not at.exception and len(at.error) == 1 and "not UTF-8" in at.error[0].value


def test_batch_parsing():
    assert split_text("a\n\n b \n", "line") == ["a", "b"]
    assert split_text("one\ntwo\n\nthree", "paragraph") == ["one two", "three"]
    cols, rows = read_upload("t.csv", b"id,body\n1,hello there\n2,second row\n")
    assert cols == ["body", "id"] and len(rows) == 2  # the likeliest text column first: the picker's default
    assert read_upload("t.csv", b"id,TEXT,note\n1,a,a much longer note\n")[0][0] == "TEXT"  # a 'text' column wins
    assert upload_texts("t.csv", b"id,body\n1,hello there\n", "", "line") == ["hello there"]  # no column given
    assert upload_texts("t.csv", b"id,body\n1,hello there\n2,second row\n", "body", "line") == ["hello there",
                                                                                               "second row"]
    assert upload_texts("t.jsonl", b'{"q": "x", "n": 1}\n{"q": "y"}\n', "", "line") == ["x", "y"]
    assert upload_texts("t.txt", b"p one\n\np two\n", "", "paragraph") == ["p one", "p two"]
    with pytest.raises(DataError, match="unsupported file type"):
        read_upload("t.pdf", b"%PDF")


def test_settings_round_trip_through_the_url(monkeypatch):
    s, problems = from_query({"ratio": "0.3", "prune_attn": "0", "batch_size": "x"})
    assert s.ratio == 0.3 and s.prune_attn is False and s.batch_size == 8 and len(problems) == 1
    assert from_query(s.to_query())[0] == s and Settings().to_query() == {}
    assert parse_skip("0-2, 5") == (0, 1, 2, 5) and parse_skip("") == ()
    with pytest.raises(ConfigError):
        parse_skip("a-b")
    import app.state as state

    monkeypatch.setattr(state, "DEMO", True)
    locked = Settings(model="org/big", batch_size=64, seq_len=900).locked()
    assert locked.model == "default" and locked.batch_size == 8 and locked.seq_len == 128


def test_settings_derive_from_the_engine_configs():
    """Every PruneConfig and CalibConfig setting is an app setting of the same name (calib_ before the
    calibration ones), with the engine's default (the calibration's: the interactive preset) and parser."""
    names = {f.name for f in FIELDS}
    assert {x.name for x in settings_of(PruneConfig)} <= names
    assert {"calib_" + x.name for x in settings_of(CalibConfig)} <= names
    assert prune_config(Settings()) == PruneConfig() and calib_config(Settings()) == INTERACTIVE_CALIB
    # The settings the app could not set before reach the engine.
    s, problems = from_query({"mlp_multiple": "1", "use_history": "0", "flap_bias": "mean",
                              "calib_dataset": "wikitext2", "calib_batch_size": "4"})
    assert problems == [] and prune_config(s) == PruneConfig(mlp_multiple=1, use_history=False, flap_bias="mean")
    assert calib_config(s) == CalibConfig(dataset="wikitext2", windows=INTERACTIVE_CALIB.windows,
                                          seq_len=INTERACTIVE_CALIB.seq_len, batch_size=4)
    assert from_query(s.to_query())[0] == s
    assert s.to_query() == {"mlp_multiple": "1", "use_history": "0", "flap_bias": "mean",
                            "calib_dataset": "wikitext2", "calib_batch_size": "4"}
    # Links shared with the old parameter names still work; the engine's name wins over an old one.
    old, problems = from_query({"skip": "0,1", "attn": "0", "mlp": "1", "calib": "8", "calib_len": "64"})
    new, _ = from_query({"skip_layers": "0,1", "prune_attn": "0", "prune_mlp": "1", "calib_windows": "8",
                         "calib_seq_len": "64"})
    assert problems == [] and old == new and set(ALIASES.values()) <= names
    assert from_query({"skip": "5", "skip_layers": "4"})[0].skip_layers == "4"
    s, problems = from_query({"flap_bias": "magic", "mlp_multiple": "x"})
    assert problems == ["URL parameter flap_bias='magic' is not one of official, mean, none; using 'official'",
                        "URL parameter mlp_multiple='x' is not a valid int; using 64"]


def test_device_map_loads_through_accelerate_with_the_same_numbers():
    """Device 'map' loads the model through accelerate's device_map="auto" and gives the numbers of the
    plain CPU load. The default model fits in this machine's memory, so accelerate keeps it whole;
    the offloaded mechanics are tested in test_dispatch.py."""
    plain = start(device="cpu")
    mapped = start(device="map")
    ok(plain)
    ok(mapped)
    a, b = plain.session_state["result"], mapped.session_state["result"]
    assert b.settings.device == "map" and b.analysis.info["device"] == "cpu"
    assert b.summary() == a.summary()
    assert [x.attn.kept for x in b.analysis.main.layers] == [x.attn.kept for x in a.analysis.main.layers]
