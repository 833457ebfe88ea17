"""FLAP on a calibration that ran in one batch: a warning that says so, never a silent no-op.

FLAP's fluctuation statistic follows the official update, which leaves it untouched on the first
calibration batch (docs/algorithm.md §8.1a); with one batch it is zero everywhere and FLAP would keep
every head and channel while reporting a pruning ratio.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from ppcore import PruneConfig, Pruner, walk
from ppcore.calibrate import calibrate

from tests.conftest import tiny_llama

CFG = PruneConfig(method="flap", ratio=0.4, skip_layers=(0,), mlp_multiple=1)


def _calib(batch_size: int):
    lm = tiny_llama()
    windows = torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(3))
    return lm, calibrate(lm, windows, batch_size, cache=False, progress=False)


def test_flap_warns_about_a_calibration_of_one_batch():
    lm, calib = _calib(8)
    with pytest.warns(UserWarning, match="at least two calibration batches.*8 windows in one batch"):
        res = walk(lm.adapter, Pruner(lm.adapter, CFG, calib), torch.randint(0, 128, (2, 16)))
    assert res.flops["pruned"] == res.flops["dense"]  # what the warning says: nothing was pruned


def test_flap_prunes_after_two_calibration_batches():
    lm, calib = _calib(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = walk(lm.adapter, Pruner(lm.adapter, CFG, calib), torch.randint(0, 128, (2, 16)), level="summary")
    assert res.flops["pruned"] < res.flops["dense"]
    assert any(len(layer.mlp.kept) < layer.mlp.total for layer in res.record.layers)


def test_other_methods_run_on_a_calibration_of_one_batch():
    lm, calib = _calib(8)
    for method in ("wanda-sp", "ppsp-calib", "pp"):
        walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method=method, ratio=0.4, skip_layers=(0,)), calib),
             torch.randint(0, 128, (2, 16)))
