"""Integration: PP at 40 % on the official run's first batch, after the official calibration, reproduces its
per-batch loss (dense's is in tests/test_official_windows.py)."""
from __future__ import annotations

import json

from ppcore import PruneConfig
from ppcore.data import load_windows
from ppcore.evaluate import evaluate


def test_pp_first_official_batch_keeps_its_loss(default_lm, ref_dir):
    """PP at 40 % after the official calibration (100 windows, batches of 20) and the warm-up reproduces
    the official code's first per-batch loss to its four printed decimals: the walk's padding-invariant
    layout, window and finiteness checks leave unpadded full-attention batches exactly as they were."""
    from ppcore.calibrate import calibrate

    vocab = default_lm.adapter.dims.vocab
    windows = load_windows(ref_dir / "eval_windows.npy", vocab)[:20]
    calib = calibrate(default_lm, load_windows(ref_dir / "calib_windows.npy", vocab), 20, progress=False)
    official = json.loads((ref_dir / "results.json").read_text())["results"]
    pp = next(r for r in official if r["method"] == "pp" and r["ratio"] == 0.4)
    res = evaluate(default_lm, PruneConfig(method="pp", ratio=0.4), windows, 20, calib, progress=False)
    assert round(res.batch_loss[0], 4) == pp["batch_loss"][0]
