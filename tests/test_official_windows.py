"""Integration: dense on the official run's first batch reproduces its per-batch loss. (PP's is in
tests/test_official_windows_pp.py: a file of its own, so that the two, each minutes of CPU, can run on two
pytest workers at once.)"""
from __future__ import annotations

import json

from ppcore import PruneConfig
from ppcore.data import load_windows
from ppcore.evaluate import evaluate


def test_dense_first_official_batch(default_lm, ref_dir):
    windows = load_windows(ref_dir / "eval_windows.npy", default_lm.adapter.dims.vocab)[:20]
    official = json.loads((ref_dir / "results.json").read_text())["results"]
    dense = next(r for r in official if r["method"] == "dense")
    res = evaluate(default_lm, PruneConfig(method="dense"), windows, 20, warmup=False, progress=False)
    assert abs(res.batch_loss[0] - dense["batch_loss"][0]) <= 1e-3
    assert res.tokens == 20 * 511

