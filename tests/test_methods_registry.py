"""The method registry is the one source of method names, and adding a method is one class and one line."""
from __future__ import annotations

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, walk
from ppcore.blocks import ATTN, BLOCKS, MLP, as_block
from ppcore.config import METHODS, STATIC_METHODS
from ppcore.methods import METHOD_CLASSES, Decision, Method
from ppcore.record import BLOCK_NAMES
from tests.conftest import tiny_llama


def test_config_names_come_from_the_registry():
    assert METHODS == tuple(METHOD_CLASSES) == ("dense", "pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib",
                                                "pp-plus")
    assert STATIC_METHODS == {"wanda-sp", "flap", "ppsp-calib"}
    for name, cls in METHOD_CLASSES.items():
        assert PruneConfig(method=name, ratio=0.3).is_static == cls.static == (name in STATIC_METHODS)
    assert PruneConfig(method="pp", use_history=True).needs_calibration
    assert not PruneConfig(method="pp", use_history=False).needs_calibration
    assert not PruneConfig(method="fullbatch").needs_calibration
    assert not PruneConfig(method="flap", ratio=0.0).needs_calibration  # ratio 0 prunes nothing
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of dense, pp"):
        PruneConfig(method="nope")


def test_blocks_are_named_as_in_records():
    assert tuple(b.name for b in BLOCKS) == BLOCK_NAMES and BLOCKS == (ATTN, MLP)
    assert as_block("attn") is ATTN and as_block(MLP) is MLP
    with pytest.raises(ValueError, match="unknown block"):
        as_block("ffn")


class FirstUnits(Method):
    """A throwaway method: keep the first `keep_fraction` of every pruned block's units, no scores."""

    keep_fraction = 0.5

    def decide(self, ctx, layer, block, w, resid, x) -> Decision:
        n = block.units(self.run.dims)
        kept = torch.arange(max(1, int(n * self.keep_fraction)), device=x.device)
        return self.decision(layer, block, w, kept)


@pytest.fixture
def registered():
    """Register FirstUnits for one test; the registry is restored afterwards, whatever happens."""
    before = dict(METHOD_CLASSES)
    METHOD_CLASSES["first-units"] = FirstUnits
    try:
        yield "first-units"
    finally:
        METHOD_CLASSES.clear()
        METHOD_CLASSES.update(before)


def test_a_registered_method_runs_a_walk(registered):
    lm = tiny_llama()
    dims = lm.adapter.dims
    cfg = PruneConfig(method=registered, ratio=0.5, skip_layers=(0,))
    assert not cfg.is_static and not cfg.needs_calibration
    pruner = Pruner(lm.adapter, cfg)
    assert isinstance(pruner.method, FirstUnits) and pruner.history is None
    ids = torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(0))
    res = walk(lm.adapter, pruner, ids, level="summary")
    for i, layer in enumerate(res.record.layers):
        for block in BLOCKS:
            rec = getattr(layer, block.name)
            n = block.units(dims)
            assert rec.pruned == (i > 0)
            assert rec.kept == (list(range(n // 2)) if i > 0 else list(range(n)))
    assert res.flops["pruned"] < res.flops["dense"]
    assert torch.isfinite(res.hidden).all()


def test_the_registry_is_restored(registered):
    assert registered in METHOD_CLASSES


def test_the_registry_was_restored():
    assert "first-units" not in METHOD_CLASSES
    with pytest.raises(ConfigError):
        PruneConfig(method="first-units")
