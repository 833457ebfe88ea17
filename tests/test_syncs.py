"""No host-device synchronisation in the per-layer loop, for every method, and none per decoded token.

The walk's layers, PP's probe and decision, the static methods' reused slices and each decode step run
without reading a device tensor back to the host when records and timing are off: a GPU never waits on
the host mid-batch. Counted with tests/sync_count.py on the CPU; on a GPU (when present) with
`torch.cuda.set_sync_debug_mode("error")`.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from ppcore import PruneConfig, Pruner, build_pruner, walk
from ppcore.calibrate import calibrate
from ppcore.config import METHODS
from ppcore.generate import generate
from tests.conftest import tiny_gemma3, tiny_llama, tiny_opt
from tests.sync_count import patch_syncs
from tests.test_sliding_window import _model

# The modules (ppcore re-exports functions of the same names).
WALK = importlib.import_module("ppcore.walk")
GENERATE = importlib.import_module("ppcore.generate")

MODELS = {"llama-gqa": tiny_llama, "llama-mha": lambda: tiny_llama(kv_heads=6), "opt": tiny_opt,
          "mistral-window": lambda: _model("mistral", window=8), "gemma3": tiny_gemma3}


def _setup(name: str):
    lm = MODELS[name]()
    g = torch.Generator().manual_seed(3)
    calib = calibrate(lm, torch.randint(0, 128, (8, 24), generator=g), 4, cache=False, progress=False)
    ids = torch.randint(0, 128, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a padded row: masks, the probe's pads and the history's counts are exercised too
    return lm, calib, ids, mask


@pytest.mark.parametrize("name", list(MODELS))
def test_no_sync_in_the_layer_loop_for_any_method(monkeypatch, name):
    lm, calib, ids, mask = _setup(name)
    counter = patch_syncs(monkeypatch)
    monkeypatch.setattr(WALK, "run_layers", counter.region(WALK.run_layers))
    for method in METHODS:
        pruner = build_pruner(lm.adapter, PruneConfig(method=method, ratio=0.4, skip_layers=(0,)), calib)
        for batch, m in ((ids, None), (ids, mask), (ids, mask)):  # first and later batches, padded or not
            walk(lm.adapter, pruner, batch, m, level="none", timing=False)
            assert counter.calls == [], f"{method} synchronised in the layer loop: {counter.calls}"


@pytest.mark.parametrize("name", list(MODELS))
def test_no_sync_in_the_layer_loop_with_pp_plus_recovery(monkeypatch, name):
    """PP+'s recovery (a solve per block and batch, the MLP core forced in) keeps the rule on every family."""
    lm, calib, ids, mask = _setup(name)
    cfg = PruneConfig(method="pp-plus", ratio=0.4, skip_layers=(0,), recover="on", compensate="off")
    pruner = build_pruner(lm.adapter, cfg, calib)  # the fit's dense pass is outside the counted region
    counter = patch_syncs(monkeypatch)
    monkeypatch.setattr(WALK, "run_layers", counter.region(WALK.run_layers))
    for batch, m in ((ids, None), (ids, mask)):
        res = walk(lm.adapter, pruner, batch, m, level="none", timing=False)
        assert counter.calls == [], f"recovery synchronised in the layer loop: {counter.calls}"
        assert torch.isfinite(res.hidden).all()


ABLATED = [PruneConfig(method="pp", score="wanda-sp"), PruneConfig(method="pp", score="flap"),
           PruneConfig(method="fullbatch", score="flap"), PruneConfig(method="ppsp-calib", score="flap"),
           PruneConfig(method="pp", fusion="fixed", probe_weight=0.3),
           PruneConfig(method="pp", attn_ratio=0.2, mlp_ratio=0.6), PruneConfig(method="pp", mlp_ratio=0.0)]


def test_no_sync_in_the_layer_loop_under_the_ablation_settings(monkeypatch):
    """The ablation settings' code paths (docs/ablations.md) keep the rule too."""
    from dataclasses import replace

    lm, calib, ids, mask = _setup("llama-gqa")
    counter = patch_syncs(monkeypatch)
    monkeypatch.setattr(WALK, "run_layers", counter.region(WALK.run_layers))
    for cfg in ABLATED:
        pruner = build_pruner(lm.adapter, replace(cfg, skip_layers=(0,)), calib)
        for batch, m in ((ids, None), (ids, mask)):
            walk(lm.adapter, pruner, batch, m, level="none", timing=False)
            assert counter.calls == [], f"{cfg} synchronised in the layer loop: {counter.calls}"


def test_the_counter_sees_a_sync():
    """The test above can fail: a boolean index, a .item() and a bool() in the counted region are seen."""
    import _pytest.monkeypatch

    with _pytest.monkeypatch.MonkeyPatch.context() as mp:
        counter = patch_syncs(mp)
        t = torch.arange(5.0)
        with counter.counting():
            t[t > 2]
            t.sum().item()
            bool(t.any())
        assert counter.calls == ["__getitem__[bool]", "item", "__bool__"]


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window"])
def test_no_sync_per_decoded_token(monkeypatch, name):
    lm, calib, ids, _ = _setup(name)
    prompts = [ids[0, :9].tolist(), ids[1, :20].tolist(), ids[2].tolist()]
    counter = patch_syncs(monkeypatch)
    monkeypatch.setattr(GENERATE, "decode_one_token", counter.region(GENERATE.decode_one_token))
    for method in ("dense", "pp", "wanda-sp"):
        pruner = build_pruner(lm.adapter, PruneConfig(method=method, ratio=0.4, skip_layers=(0,)), calib)
        generate(lm.adapter, pruner, prompts, 12, level="none")
        assert counter.calls == [], f"{method} synchronised in a decode step: {counter.calls}"
    # Without an EOS nothing in the loop between steps asks the host either: the whole generation's
    # syncs do not grow with its length.
    totals = []
    for n in (4, 12):
        pruner = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), calib)
        with counter.counting():
            generate(lm.adapter, pruner, prompts, n, level="none")
        totals.append(len(counter.calls))
        counter.calls.clear()
    assert totals[0] == totals[1]


def _strict(fn):
    """`fn` under CUDA's sync debug mode "error": the first synchronising call inside raises."""
    def wrapper(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return wrapper


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(MODELS))
def test_no_sync_in_the_layer_loop_or_a_decode_step_on_a_gpu(monkeypatch, name):
    """On a real device: CUDA raises inside the layer loop or a decode step at the first synchronising call."""
    lm, calib, ids, mask = _setup(name)
    from ppcore.adapters import make_adapter

    dev = torch.device("cuda")
    lm.model.to(dev)
    ad = make_adapter(lm.model)
    monkeypatch.setattr(WALK, "run_layers", _strict(WALK.run_layers))
    monkeypatch.setattr(GENERATE, "decode_one_token", _strict(GENERATE.decode_one_token))
    for method in METHODS:
        pruner = build_pruner(ad, PruneConfig(method=method, ratio=0.4, skip_layers=(0,)), calib.to(dev))
        for m in (None, mask.to(dev)):
            walk(ad, pruner, ids.to(dev), m, level="none", timing=False)
        generate(ad, build_pruner(ad, PruneConfig(method=method, ratio=0.4, skip_layers=(0,)), calib.to(dev)),
                 [ids[0, :9].tolist(), ids[1].tolist()], 6, level="none")
