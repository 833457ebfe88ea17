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
    store = ResultStore(tmp_path, max_bytes=10_000)
    keys = [result_key("x", n=i) for i in range(4)]
    value = {"t": torch.randn(300), "text": "ä"}  # about 1.5 kB pickled
    first = store.put(keys[0], value, 1.25)
    assert isinstance(first, Stored) and first.seconds == 1.25
    got = store.get(keys[0])
    assert got is not None and torch.equal(got.value["t"], value["t"]) and got.value["text"] == "ä"
    assert store.get(keys[1]) is None
    # Fill past the bound: the least recently used entries go first, a read counts as a use.
    big = {"t": torch.randn(900)}  # about 3.7 kB
    store.put(keys[1], big, 1.0)
    os.utime(store._path(keys[0]), (1, 1))  # keys[0] is now the oldest...
    os.utime(store._path(keys[1]), (2, 2))
    assert store.get(keys[0]) is not None  # ...until it is read
    store.put(keys[2], big, 1.0)
    store.put(keys[3], big, 1.0)
    assert store.used_bytes() <= 10_000
    assert store.get(keys[1]) is None and store.get(keys[0]) is not None and store.get(keys[3]) is not None
    # Bigger than the whole bound: not kept, no error.
    assert store.put(result_key("x", n=9), {"t": torch.randn(5000)}, 1.0) is None


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
