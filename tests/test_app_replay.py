"""Replay a saved run (issue 14 item 2): the record the Export tab writes, opened again without the model.

The engine (ppcore.replay through ppcore.session): export, save, load and replay give the same records and the same
per-token losses, KL and top-1 agreement, bit for bit (the export writes each float32 as the shortest decimal that
reads back as the same float32); an older or summary-level record replays what it holds and names what it lacks;
a bad file is one clear RecordError. The page (AppTest): a replayed export draws the same figures and tables as the
live run, the views that need the model say so, Run recomputes with the record's settings, and the open tab, layer
and block travel in the URL.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.state import ViewLink, limits, view_from_query
from app.views.export import record_json
from app.views.outputs import token_table
from app.views.replay import UPLOAD_KEY
from ppcore import PruneConfig, Pruner, RunRecord, session, walk
from ppcore.config import CalibConfig
from ppcore.protocol import Protocol
from tests.conftest import tiny_llama
from tests.test_app import charts, ok, start, tab, titles, vega_charts

CALIB = CalibConfig(windows=4, seq_len=32, batch_size=2)


# --- the engine: the real default model on a padded 3 x 16 batch ------------------------------------------------------

@pytest.fixture(scope="module")
def live(default_lm):
    lm = default_lm
    ids = session.corpus_windows(lm.tokenizer, "wiki-vital", 3, 16, 0)
    mask = torch.ones_like(ids)
    mask[1, 10:], mask[2, 5:] = 0, 0  # right-padded, as the app pads uneven samples
    ids[mask == 0] = 0
    texts = [lm.tokenizer.batch_decode([[t] for t in row[: int(m.sum())]]) + [""] * int((m == 0).sum())
             for row, m in zip(ids.tolist(), mask)]
    calib = session.calibration(lm, CALIB, 0, cache=False)
    a = session.analyse(lm, calib, PruneConfig(ratio=0.4), session.Batch(ids, mask, "three samples", texts),
                        seed=0, settings={"ratio": 0.4})
    # One baseline, as session.baselines walks it (the app's page test below runs them all).
    oracle = walk(lm.adapter, Pruner(lm.adapter, replace(a.cfg, method="fullbatch"), calib.stats), ids, mask,
                  level="summary").record
    return a, {"fullbatch": oracle}, calib


def test_export_save_load_and_replay_give_the_same_numbers(live, tmp_path):
    a, base, _ = live
    rec = session.export_record(a, base)
    path = tmp_path / "run.json"
    rec.save(path)
    raw = json.loads(path.read_text())
    assert raw["schema"] == 6 and raw["saved"].endswith("Z") and raw["protocol"]["model"]["layers"] == 30
    assert [b["method"] for b in raw["batches"]] == ["pp", "dense", "fullbatch"]
    assert raw["batches"][2]["token_loss"] is None  # the per-token numbers ride on the analysed and dense batches
    r = session.replay(RunRecord.load(path), "run.json")
    # The same records: every decision, score, energy and importance grid.
    assert r.main.layers == a.main.layers and r.dense.layers == a.dense.layers
    assert list(r.replayed.baselines) == list(base)
    assert all(r.replayed.baselines[m].layers == base[m].layers for m in base)
    # The same per-token numbers, exactly: losses and their mask everywhere, KL and top-1 at every real position.
    assert torch.equal(r.nll_pruned, a.nll_pruned) and torch.equal(r.nll_dense, a.nll_dense)
    assert torch.equal(r.nll_mask, a.nll_mask)
    real = a.batch.mask.bool()
    assert torch.equal(r.kl[real], a.kl[real]) and torch.equal(r.top1[real], a.top1[real])
    assert not r.kl[~real].any()  # pads hold no KL (null in the file)
    assert r.summary() == a.summary()
    # The same batch, settings and texts; no top-k (records hold none), nothing lacking.
    assert torch.equal(r.batch.ids, a.batch.ids) and torch.equal(r.batch.mask, a.batch.mask)
    assert r.batch.tokens == a.batch.tokens and r.batch.description == "three samples"
    assert r.cfg == a.cfg and r.ratio == a.ratio and r.info["kv_heads"] == a.info["kv_heads"]
    assert r.top_dense is None and r.replayed.lacks == () and r.replayed.saved == raw["saved"]
    # Bytes in, the same; and a replay exports the record it was read from.
    assert session.open_record(path.read_bytes()).main.layers == a.main.layers
    assert session.export_record(r).to_dict() == RunRecord.load(path).to_dict()


def test_token_labels_are_exported_where_they_differ_and_replayed(live):
    """Schema 6: a batch whose labels differ from its texts (a character split over tokens) exports them and a
    replay gives them back; without them (labels = texts, or a schema 5 file) the replay's labels are the texts."""
    a, base, _ = live
    assert session.export_record(a, base).batches[0].token_labels is None  # labels are the texts: not written
    labels = [list(row) for row in a.batch.tokens]
    labels[0][1] = " <bytes F0 9F 98>"
    batch = session.Batch(a.batch.ids, a.batch.mask, a.batch.description, a.batch.tokens, labels=labels)
    rec = session.export_record(replace(a, batch=batch), base)
    rows = token_table(SimpleNamespace(analysis=replace(a, batch=batch)))  # the per-token table shows labels
    assert rows[(rows["sample"] == 0) & (rows["position"] == 1)]["token"].item() == " <bytes F0 9F 98>"
    assert rec.batches[0].token_labels == labels and rec.batches[1].token_labels is None
    r = session.open_record(json.dumps(rec.to_dict()))
    assert r.batch.labels == labels and r.batch.tokens == a.batch.tokens
    d = rec.to_dict()
    d["schema"] = 5
    for b in d["batches"]:
        b.pop("token_labels")
    assert session.open_record(json.dumps(d)).batch.labels == a.batch.tokens
    d["batches"][0]["token_labels"] = labels[:1]
    with pytest.raises(session.RecordError, match="token_labels is not 3 rows of 16 texts"):
        session.open_record(json.dumps(d | {"schema": 6}))


def _strip_to_schema_3(d: dict) -> dict:
    d = copy.deepcopy(d)
    d["schema"] = 3
    d.pop("saved")
    for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab"):
        d["protocol"]["model"].pop(k)
    for b in d["batches"]:
        for k in ("token_texts", "token_loss", "token_kl", "token_top1", "token_labels"):
            b.pop(k)
    return d


def test_older_and_summary_records_replay_what_they_hold(live, default_lm):
    a, base, calib = live
    full = session.export_record(a, base).to_dict()
    old = session.open_record(json.dumps(_strip_to_schema_3(full)), "old.json")
    assert old.replayed.lacks == ("outputs", "texts")
    assert old.main.layers == a.main.layers and list(old.replayed.baselines) == list(base)
    assert old.nll_dense is old.kl is old.top1 is None
    s = old.summary()
    assert s["ppl_dense"] is s["kl"] is None and s["flops_ratio"] == a.summary()["flops_ratio"]
    assert old.batch.tokens[2][:5] == [f"⟨{t}⟩" for t in a.batch.ids[2, :5].tolist()]
    assert old.batch.tokens[2][5:] == [""] * 11
    assert old.info["kv_heads"] is None and old.replayed.saved is None
    # An `eval --record` file at level summary: one method's scored batches, a protocol of its own.
    lm = default_lm
    pruner = Pruner(lm.adapter, a.cfg, calib.stats)
    recs = [walk(lm.adapter, pruner, a.batch.ids[:2, :12], level="summary", phase=ph, index=i).record
            for i, ph in enumerate(("warmup", "scored"))]
    protocol = Protocol(front_end="eval", model={"name": "default", "model_type": "llama"},
                        data={"dataset": "wiki-vital", "seq_len": 12, "batch_size": 2}, config=a.cfg.to_dict())
    cli = session.open_record(json.dumps(RunRecord(protocol, recs).to_dict()), "eval.json")
    assert cli.main is not None and cli.main.phase == "scored" and cli.dense is None
    assert cli.replayed.lacks == ("outputs", "texts", "dense", "baselines", "importance", "energies")
    assert cli.batch.description == "2 windows of 12 tokens from wiki-vital" and cli.cfg == a.cfg
    assert len(cli.replayed.missing()) == 6 and all(isinstance(m, str) for m in cli.replayed.missing())


# --- bad files: one clear message each ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_record() -> dict:
    """A small, valid record: a tiny Llama's pp walk at level full, and dense's."""
    lm = tiny_llama()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    cfg = PruneConfig(ratio=0.5, skip_layers=(0,), use_history=False)  # no calibration: no history
    recs = [walk(lm.adapter, Pruner(lm.adapter, c), ids, level="full").record
            for c in (cfg, PruneConfig(method="dense"))]
    protocol = Protocol(front_end="app", model={"name": "tiny", "layers": 4}, data={"source": "random"},
                        config=cfg.to_dict())
    d = RunRecord(protocol, recs).to_dict()
    assert session.open_record(json.dumps(d)).replayed.lacks == ("outputs", "texts", "baselines")
    return d


def _edit(d: dict, where: str, value) -> bytes:
    d = copy.deepcopy(d)
    *path, last = where.split(".")
    node = d
    for k in path:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is _DROP:
        node.pop(int(last) if isinstance(node, list) else last)
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return json.dumps(d).encode()


_DROP = object()
BAD = [
    ("not json", lambda d: b"this is not JSON", "not valid JSON"),
    ("a list", lambda d: b"[1, 2, 3]", "not a run record"),
    ("no batches key", lambda d: _edit(d, "batches", _DROP), "not a run record"),
    ("unknown schema", lambda d: _edit(d, "schema", 99), "schema 99 is not one this version reads"),
    ("no batch", lambda d: _edit(d, "batches", []), "holds no batch"),
    ("layer count", lambda d: _edit(d, "protocol.model.layers", 31),
     "says its model has 31 layers, but its batches hold 4"),
    ("a layer dropped", lambda d: _edit(d, "batches.1.layers.3", _DROP), "the batches are not from one model"),
    ("huge unit count", lambda d: _edit(d, "batches.0.layers.1.mlp.total", 10**9), "must be a whole number"),
    ("kept outside", lambda d: _edit(d, "batches.0.layers.1.attn.kept", [0, 6]), "index outside 0..5"),
    ("probe outside", lambda d: _edit(d, "batches.0.layers.1.attn.probe_samples", [7]), "index outside 0..1"),
    ("forced not kept", lambda d: _edit(d, "batches.0.layers.1.attn.forced", [0, 1, 2, 3, 4, 5]),
     "a forced unit that is not kept"),
    ("importance shape", lambda d: _edit(d, "batches.0.layers.1.attn.importance", [[1.0]]), "not 2 samples x 8"),
    ("energies", lambda d: _edit(d, "batches.0.layers.1.attn.energy_fused", [1.0] * 7), "different lengths"),
    ("ragged ids", lambda d: _edit(d, "batches.0.input_ids", [[1, 2], [3]]), "not a rectangular grid"),
    ("token loss", lambda d: _edit(d, "batches.0.token_loss", [[1.0]]), "token_loss is not 2 x 7"),
    ("unknown field", lambda d: _edit(d, "batches.0.layers.0.attn.secret", 1), "unknown fields secret"),
    ("skip past the end", lambda d: _edit(d, "protocol.config.skip_layers", [9]), "do not fit its own batches"),
    # dense's batch edited (a newcomer's try): it was silently dropped and the banner blamed the schema
    ("dense's tokens edited", lambda d: _edit(d, "batches.1.input_ids.0.0", (d["batches"][1]["input_ids"][0][0] + 1)
                                              % 128), "holds other tokens than the pp batch"),
    # a number past float32's range showed as "inf" in the probe view's sink note (a newcomer's try)
    ("importance past float32", lambda d: _edit(d, "batches.0.layers.1.attn.importance.0.0", 1e308),
     "importance holds 1e\\+308, beyond the float32 range"),
    # a token id past the model's vocabulary was accepted (a newcomer's try)
    ("token id past the vocabulary", lambda d: _edit(json.loads(_edit(d, "protocol.model.vocab", 128)),
                                                     "batches.0.input_ids.0.0", 128),
     "holds token id 128, but the record says its model's vocabulary has 128 tokens"),
]


@pytest.mark.parametrize("case,make,needle", BAD, ids=[c[0] for c in BAD])
def test_bad_files_give_one_clear_error(tiny_record, case, make, needle):
    with pytest.raises(session.RecordError, match=needle):
        session.open_record(make(tiny_record))


def test_sizes_are_bounded_before_parsing(tiny_record):
    data = json.dumps(tiny_record).encode()
    with pytest.raises(session.RecordError, match="MB, over the .* MB limit for run records"):
        session.read_record(data, session.RecordLimits(max_bytes=1024))
    with pytest.raises(session.RecordError, match="holds 2 batches, over the limit of 1"):
        session.read_record(data, session.RecordLimits(batches=1))
    with pytest.raises(session.RecordError, match="over the limit of 100 cells"):
        session.read_record(data, session.RecordLimits(cells=100))


# --- the page ---------------------------------------------------------------------------------------------------

VIEWS = ("Probe", "History", "Pruned channels", "Why this head")


def _page(at: AppTest) -> dict:
    """What each record-only view draws: its figures, its tables, the header's metrics; and the export's tables."""
    out = {}
    for view in VIEWS + ("Outputs",):
        tab(at, view)
        ok(at)
        out[view] = {"charts": charts(at) + vega_charts(at), "tables": [d.value.to_dict() for d in at.dataframe],
                     "metrics": [(m.label, m.value) for m in at.metric]}
    out["Outputs"]["charts"] = [c for c in out["Outputs"]["charts"]
                                if "loss difference" in c["layout"]["title"]["text"]]
    out["Outputs"]["tables"] = []  # the live run's top-k tables: a replay holds no top-k
    out["Outputs"]["tokens"] = [m.value for m in at.markdown if "rgba(" in m.value]
    return out


@pytest.fixture(scope="module")
def saved():
    """The default small analysis, its baselines run (Pruned channels opens them), what its views draw, and the bytes
    of its "Run record (JSON)" download."""
    at = start()
    ok(at)
    page = _page(at)
    r = at.session_state["result"]
    assert r.baselines is not None
    return page, record_json(r).encode(), r


def _open(at: AppTest, data: bytes, name: str = "run.json") -> AppTest:
    up = next(u for u in at.get("file_uploader") if u.key == UPLOAD_KEY)
    return up.set_value((name, data, "application/json")).run()


def test_replay_draws_what_the_live_run_drew(saved):
    page, data, live = saved
    at = start(source="upload")  # a link to an upload waits for its file: no run, no model
    assert "result" not in at.session_state
    _open(at, data)
    ok(at)
    r = at.session_state["result"]
    assert r.replayed is not None and r.replayed.lacks == () and list(r.baselines) == list(live.baselines)
    banner = next(i.value for i in at.info if i.value.startswith("Replay of a saved run (from run.json)"))
    assert "**pp** at ratio 0.40" in banner and "press **Run** to recompute" in banner
    # The sidebar holds the record's settings (the small batch and calibration), and the URL says them.
    assert at.number_input(key="s_batch_size").value == 4 and at.number_input(key="s_calib_windows").value == 8
    assert r.settings == live.settings and at.query_params["batch_size"] == "4"
    replayed = _page(at)
    assert all(page[v]["charts"] for v in VIEWS + ("Outputs",)) and page["Why this head"]["tables"]
    for view in VIEWS + ("Outputs",):
        assert replayed[view] == page[view], view
    assert token_table(r).equals(token_table(live))
    # Views that need the model say so, and draw nothing.
    for view, needle in (("Latency", "Timing dense"), ("Compare methods", "Comparing every method"),
                         ("Zero-shot", "Zero-shot accuracy")):
        tab(at, view)
        ok(at)
        assert any(i.value.startswith(needle) and "needs the model" in i.value for i in at.info), view
        assert not charts(at) and not at.button(key="run").disabled
    tab(at, "Outputs")
    assert sum("needs the model" in i.value for i in at.info) == 2  # top-k and generation
    tab(at, "Export")
    assert {b.label for b in at.get("download_button")} >= {"Run record (JSON)", "tokens table (CSV)"}
    assert json.loads(record_json(r)) == json.loads(data)  # a replay exports the record it read
    # Run recomputes live with the record's settings.
    at.button(key="run").click().run()
    ok(at)
    again = at.session_state["result"]
    assert again.replayed is None and again.settings == live.settings
    assert [(x.attn.kept, x.mlp.kept) for x in again.analysis.main.layers] == [
        (x.attn.kept, x.mlp.kept) for x in live.analysis.main.layers]  # the same decisions (times differ)


def test_bad_files_in_the_page_leave_it_usable(saved):
    _, data, _ = saved
    at = start(source="upload", tab="why", layer="99", block="mlp")
    _open(at, b"{not json", "broken.json")
    assert not at.exception and len(at.error) == 1 and "not valid JSON" in at.error[0].value
    assert "result" not in at.session_state
    raw = json.loads(data)
    raw["schema"] = 7
    _open(at, json.dumps(raw).encode(), "future.json")
    assert len(at.error) == 1 and "schema 7 is not one this version reads" in at.error[0].value
    # A good file opens; the link's layer is out of this model's range: one warning, the view's own default.
    _open(at, data)
    ok(at)
    assert at.session_state["view"] == "Why this head" and at.session_state["why_block"] == "mlp"
    assert [w.value for w in at.warning if w.value.startswith("URL")] == [
        "URL parameter layer=99 is out of range: this model has 30 layers (0 to 29); using the view's first pruned "
        "layer"]
    assert at.session_state["why_layer"] == 3 and at.query_params["layer"] == "3"


def test_an_older_record_replays_what_it_holds(saved):
    _, data, live = saved
    at = start(source="upload")
    _open(at, json.dumps(_strip_to_schema_3(json.loads(data))).encode(), "old.json")
    ok(at)
    banner = next(i.value for i in at.info if i.value.startswith("Replay of a saved run (from old.json)"))
    assert "This record holds no:" in banner and "per-token losses" in banner and "token texts" in banner
    assert [m.label for m in at.metric][:1] == ["FLOPs / dense (whole model)"]  # no perplexity without losses
    assert any("holds no per-token losses" in c.value for c in at.caption)
    assert any(t.startswith("Layer 3, Attention: residual importance") for t in titles(at))  # the Probe view draws
    assert at.session_state["result"].analysis.batch.tokens[0][0].startswith("⟨")
    tab(at, "Outputs")
    ok(at)
    assert any("holds no per-token losses" in i.value for i in at.info)
    tab(at, "Export")
    ok(at)
    assert "tokens table (CSV)" not in {b.label for b in at.get("download_button")}


def test_demo_mode_replays_an_upload_but_reads_no_path(saved, demo_mode):
    _, data, _ = saved
    at = start(source="upload")
    assert not [t for t in at.text_input if t.key == "replay_path"]  # no server path in the demo
    assert any(u.key == UPLOAD_KEY for u in at.get("file_uploader"))
    _open(at, b" " * (limits().record_bytes + 1), "huge.json")
    assert len(at.error) == 1 and "over the 16 MB limit for run records" in at.error[0].value
    _open(at, data)
    ok(at)
    assert at.session_state["result"].replayed is not None


def test_a_server_path_opens_outside_the_demo(saved, tmp_path, local_mode):
    _, data, _ = saved
    path = tmp_path / "run.json"
    path.write_bytes(data)
    at = start(source="upload")
    at.text_input(key="replay_path").set_value(str(tmp_path / "missing.json"))
    at.button(key="replay_open").click().run()
    assert len(at.error) == 1 and "no file at" in at.error[0].value
    at.text_input(key="replay_path").set_value(str(path))
    at.button(key="replay_open").click().run()
    ok(at)
    assert at.session_state["result"].replayed.name == "run.json"


# --- the URL: tab, layer and block ------------------------------------------------------------------------------------

def test_a_link_opens_a_tab_at_a_layer_and_block():
    at = start(tab="History", layer="5", block="mlp")
    ok(at)
    assert at.session_state["view"] == "History"
    assert at.session_state["hist_layer"] == 5 and at.session_state["hist_block"] == "mlp"
    assert "Layer 5, MLP channels: probe, history and fused energy" in titles(at)
    assert not [w for w in at.warning if "Session State API" in w.value]  # seeded, not given a default value
    q = at.query_params
    assert (q["tab"], q["layer"], q["block"]) == ("history", "5", "mlp")
    # Moving the slider and switching tabs write the place back.
    at.slider(key="hist_layer").set_value(7).run()
    assert at.query_params["layer"] == "7"
    tab(at, "Outputs")
    assert at.query_params["tab"] == "outputs" and "layer" not in at.query_params and "block" not in at.query_params


def test_bad_view_values_warn_and_are_ignored():
    link, problems = view_from_query({"tab": "nope", "layer": "-1", "block": "both"})
    assert link == ViewLink() and len(problems) == 3
    assert view_from_query({"tab": "why-this-head", "layer": "4", "block": "MLP"}) == (
        ViewLink("Why this head", 4, "mlp"), [])
    assert ViewLink("Pruned channels", 2, "attn").to_query() == {"tab": "channels", "layer": "2", "block": "attn"}
    at = start(source="upload", tab="nope", layer="x", block="both")  # no run: the warnings come first
    assert not at.exception and not at.error
    shown = [w.value for w in at.warning]
    assert len(shown) == 3 and shown[0].startswith("URL parameter tab='nope' is not one of probe, history")


def test_a_grid_with_no_cell_to_colour_says_so(saved):
    """A record whose importance grid is all pads (0) gets one note naming why, not an empty chart."""
    _, data, _ = saved
    raw = json.loads(data)
    grid = raw["batches"][0]["layers"][3]["attn"]["importance"]
    at = start(source="upload")
    _open(at, _edit(raw, "batches.0.layers.3.attn.importance", [[0.0] * len(row) for row in grid]))
    ok(at)
    assert not any(t.startswith("Layer 3, Attention: residual importance") for t in titles(at))
    assert any("no cell to colour; every one is a pad" in i.value for i in at.info)
