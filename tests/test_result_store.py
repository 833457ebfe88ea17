"""Finished results on disk (ppcore/result_store.py) and the app's use of them (app/stored.py): the same inputs give
the same key and any change another, entries survive a round trip, the bound holds by dropping the least recently
used, a damaged entry is recomputed, and the app shows an identical earlier run again (saying so) without writing
anything a demo visitor chose."""
from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from ppcore import PruneConfig
from ppcore.result_store import ResultStore, Stored, result_key


def test_key_depends_on_every_part_and_only_on_them():
    ids = torch.arange(12).view(3, 4)
    base = dict(model="m", device="cpu", ids=ids, mask=None, cfg=PruneConfig(method="pp", ratio=0.4).to_dict())
    k = result_key("analysis", **base)
    assert len(k) == 32 and k == result_key("analysis", **{**base, "ids": ids.clone()})  # content, not identity
    changed = [result_key("baselines", **base),
               result_key("analysis", **{**base, "ids": ids.flip(0)}),
               result_key("analysis", **{**base, "ids": ids.to(torch.int32)}),  # dtype counts
               result_key("analysis", **{**base, "mask": torch.ones(3, 4)}),
               result_key("analysis", **{**base, "cfg": PruneConfig(method="pp", ratio=0.2).to_dict()}),
               result_key("analysis", **{**base, "model": "m2"})]
    assert len({k, *changed}) == len(changed) + 1
    with pytest.raises(TypeError, match="plain data"):
        result_key("analysis", thing=object())


def test_round_trip_bound_and_least_recently_used(tmp_path):
    store = ResultStore(tmp_path, max_bytes=1 << 20)
    keys = [result_key("x", n=i) for i in range(4)]
    value = {"t": torch.randn(300), "text": "ä"}
    first = store.put(keys[0], value, 1.25)
    assert isinstance(first, Stored) and first.seconds == 1.25
    got = store.get(keys[0])
    assert got is not None and torch.equal(got.value["t"], value["t"]) and got.value["text"] == "ä"
    assert store.get(keys[1]) is None
    big = {"t": torch.randn(900)}
    store.put(keys[1], big, 1.0)
    small, large = (store._path(k).stat().st_size for k in keys[:2])
    # Room for the small entry and two big ones: a third big one sends out the least recently used.
    store.max_bytes = small + 2 * large + large // 2
    os.utime(store._path(keys[0]), (1, 1))  # keys[0] is now the oldest...
    os.utime(store._path(keys[1]), (2, 2))
    assert store.get(keys[0]) is not None  # ...until it is read
    store.put(keys[2], big, 1.0)
    store.put(keys[3], big, 1.0)
    assert store.used_bytes() <= store.max_bytes
    assert store.get(keys[1]) is None and store.get(keys[0]) is not None and store.get(keys[3]) is not None
    # Bigger than the whole bound: not kept, no error.
    assert store.put(result_key("x", n=9), {"t": torch.randn(50_000)}, 1.0) is None


def test_damaged_entry_is_dropped_and_bad_keys_refused(tmp_path):
    store = ResultStore(tmp_path, max_bytes=1 << 20)
    key = result_key("x", n=1)
    store.put(key, [1, 2, 3], 0.1)
    store._path(key).write_bytes(b"not a pickle")
    assert store.get(key) is None and not store._path(key).exists()
    with pytest.raises(ValueError, match="not a result key"):
        store.get("../../etc/passwd")
    with pytest.raises(ValueError):
        ResultStore(tmp_path, max_bytes=-1)


def test_app_store_switched_off_by_a_zero_bound(monkeypatch, tmp_path):
    from app import stored

    monkeypatch.setenv("PPCORE_RESULT_CACHE_MB", "0")
    assert stored.store() is None
    calls = []
    assert stored.remembered(result_key("x"), lambda: calls.append(1) or 5, True) == (5, None)
    assert stored.remembered(result_key("x"), lambda: calls.append(1) or 5, True) == (5, None) and len(calls) == 2


def test_demo_writes_only_the_default_settings(monkeypatch):
    from app import stored
    from app.state import Settings

    monkeypatch.setenv("PP_DEMO", "1")
    assert stored.writable(Settings()) and not stored.writable(Settings(), "some-upload")
    assert not stored.writable(Settings(), on_request=True)  # a visitor's prompt, ratios, task: never written
    assert not stored.writable(replace(Settings(), ratio=0.3))
    monkeypatch.setenv("PP_DEMO", "0")
    assert stored.writable(replace(Settings(), ratio=0.3))


@pytest.fixture
def app_store(monkeypatch, tmp_path):
    """The app's store in a fresh folder (the suite runs with the store off, tests/conftest.py)."""
    from app import stored

    store = ResultStore(tmp_path / "results", max_bytes=256 << 20)
    monkeypatch.setattr(stored, "store", lambda: store)
    return store


def _status_labels(at) -> list[str]:
    """The labels of the page's st.status boxes."""
    out, todo = [], [at.main]
    while todo:
        node = todo.pop()
        if getattr(node, "type", None) == "status":
            out.append(node.label)
        children = getattr(node, "children", None)
        todo.extend(children.values() if isinstance(children, dict) else [])
    return out


def test_app_shows_an_identical_run_again_and_says_so(app_store):
    from tests.test_app import ok, start, tab

    at = start()
    ok(at)
    first = at.session_state["result"]
    assert not any(label.startswith("Shown again") for label in _status_labels(at))
    assert len(app_store.entries()) == 1  # the analysis
    again = start()  # a new session, the same settings and batch
    ok(again)
    second = again.session_state["result"]
    assert any(label.startswith("Shown again") and "kept on this server" in label for label in _status_labels(again))
    assert second.summary() == first.summary() and torch.equal(second.analysis.kl, first.analysis.kl)
    # A timed measurement comes back with when it was made, and can be measured again.
    tab(again, "Latency")
    again.button(key="lat_go").click().run()
    ok(again)
    assert again.session_state["result"].reused["latency"] is None
    later = start()
    tab(later, "Latency")
    later.button(key="lat_go").click().run()
    ok(later)
    r = later.session_state["result"]
    assert r.reused["latency"] and "kept on this server" in r.reused["latency"]
    assert r.latency.runs[0].seconds == again.session_state["result"].latency.runs[0].seconds
    later.button(key="lat_again").click().run()
    ok(later)
    assert later.session_state["result"].reused["latency"] is None


def test_demo_visitor_settings_are_not_written(app_store, monkeypatch):
    from tests.test_app import ok, start

    monkeypatch.setenv("PP_DEMO", "1")
    at = start()  # the small test settings are not the demo's defaults
    ok(at)
    assert app_store.entries() == []


def test_every_kind_of_result_comes_back_from_disk(tmp_path):
    """What the app stores (an analysis, baselines, a comparison with its timings, latency, an ablation, side by
    side) is rebuilt through the store's restricted unpickler from the allowed globals alone, equal to what was
    saved."""
    import dataclasses

    from ppcore import session
    from ppcore.calibrate import calibrate
    from ppcore.config import CalibConfig
    from tests.conftest import DecodeOnlyTokenizer, tiny_llama

    lm = dataclasses.replace(tiny_llama(layers=4), tokenizer=DecodeOnlyTokenizer())
    g = torch.Generator().manual_seed(0)
    stats = calibrate(lm, torch.randint(0, 128, (8, 12), generator=g), 4, cache=False, progress=False)
    calib = session.Calibration(stats, CalibConfig(windows=8, seq_len=12, batch_size=4), 0, {"seed": 0})
    ids = torch.randint(0, 128, (3, 12), generator=g)
    batch = session.Batch(ids, None, "tiny", [[f"t{i}" for i in row] for row in ids.tolist()])
    a = session.analyse(lm, calib, PruneConfig(ratio=0.4, skip_layers=(0,)), batch)
    values = {"analysis": a, "baselines": session.baselines(lm, calib, a),
              "comparison": session.comparison(lm, calib, a, [0.4], 1), "latency": session.latency(lm, calib, a, 1),
              "ablation": session.ablation(lm, calib, a, "fusion"),
              "side_by_side": session.side_by_side(lm, calib, batch, a.cfg, a.cfg.as_method("flap", 0.4))}
    store = ResultStore(tmp_path, max_bytes=256 << 20)
    for kind, value in values.items():
        key = session.result_key_of(kind, lm, calib, a)
        assert store.put(key, value, 1.0) is not None, kind
        back = store.get(key)
        assert back is not None, f"{kind} did not come back"
        assert type(back.value) is type(value), kind
    back = store.get(session.result_key_of("analysis", lm, calib, a)).value
    assert back.summary() == a.summary() and torch.equal(back.top_pruned.ids, a.top_pruned.ids)
    assert back.protocol.to_dict() == a.protocol.to_dict()
    rows = store.get(session.result_key_of("comparison", lm, calib, a)).value
    assert [r.row() for r in rows] == [r.row() for r in values["comparison"]]


class _Planted:
    """What an attacker would plant: unpickling it calls a function of their choice."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if it were ever called


def test_a_planted_entry_cannot_run_code(tmp_path):
    store = ResultStore(tmp_path / "results", max_bytes=1 << 20)
    key = result_key("planted")
    marker = tmp_path / "ran"
    torch.save(_Planted(marker), store._path(key))
    assert store.get(key) is None and not marker.exists() and not store._path(key).exists()
    # A real entry naming a ppcore function (not a class) is refused too.
    from ppcore.result_store import _allowed

    assert _allowed("ppcore.loading.load_model") is None and _allowed("builtins.eval") is None
    assert _allowed("numpy.load") is None and _allowed("ppcore.config.PruneConfig") is PruneConfig


def test_leftovers_outside_the_bound_are_removed(tmp_path):
    """An older format's files and a write a killed process left are not entries: they are removed when a store
    opens the folder, so they never hold disk outside the bound; a fresh temporary file (a write going on) stays."""
    root = tmp_path / "results"
    root.mkdir()
    old, stale, fresh = root / f"{'a' * 32}.pkl", root / ".x.pt.1.2.tmp", root / ".y.pt.3.4.tmp"
    for p in (old, stale, fresh):
        p.write_bytes(b"x" * 100)
    os.utime(stale, (1, 1))
    ResultStore(root, max_bytes=1 << 20)
    assert not old.exists() and not stale.exists() and fresh.exists()


def test_an_analysis_of_pasted_text_comes_back_through_the_apps_store(tmp_path, monkeypatch):
    """The app's batch of pasted text (app.batch.TextBatch, with what it left out) is a class outside ppcore: the app's
    store names it, so an analysis holding one is read back, not dropped at every read; a store told of no such
    class drops the entry (and recomputes), as it drops anything it was not told of."""
    import numpy as np

    from app import stored
    from app.batch import LeftOut, TextBatch

    ids = torch.arange(12).reshape(2, 6)
    batch = TextBatch(ids, None, "your pasted text", [["a"] * 6, ["b"] * 6],
                      LeftOut(used=2, more=1, more_is_floor=False, cut=0, cut_tokens=0, batch_size=2, seq_len=6,
                              where="your pasted text"))
    value = {"batch": batch, "array": np.arange(3, dtype=np.float32), "bytes": b"\x00\xff", "set": {1, 2}}
    monkeypatch.setenv("PPCORE_CACHE", str(tmp_path))
    monkeypatch.setenv("PPCORE_RESULT_CACHE_MB", "64")
    store = stored._store.__wrapped__(str(tmp_path), "64")
    key = result_key("pasted")
    store.put(key, value, 1.0)
    back = store.get(key).value
    assert type(back["batch"]) is TextBatch and torch.equal(back["batch"].ids, ids)
    assert back["batch"].left_out == batch.left_out and back["batch"].tokens == batch.tokens
    assert np.array_equal(back["array"], value["array"]) and back["bytes"] == value["bytes"] and back["set"] == {1, 2}
    bare = ResultStore(store.root, max_bytes=64 << 20)
    assert bare.get(key) is None and not store._path(key).exists()
