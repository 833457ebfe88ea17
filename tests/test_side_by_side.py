"""Two configurations on one batch (ppcore.session_pair, issue 14 item 3): the numbers are each run's own, the
keep-set differences are what the records say, and bad pairs fail before any walk. A tiny Llama."""
from __future__ import annotations

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, token_nll, walk
from ppcore.calibrate import calibrate
from ppcore.config import CalibConfig
from ppcore.record import BLOCK_NAMES
from ppcore.session import Batch, Calibration
from ppcore.session_pair import layer_diffs, side_by_side
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def tiny():
    lm = tiny_llama(layers=4)
    g = torch.Generator().manual_seed(3)
    stats = calibrate(lm, torch.randint(0, 128, (8, 16), generator=g), 4, cache=False, progress=False)
    ids = torch.randint(0, 128, (4, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return lm, Calibration(stats, CalibConfig(windows=8, seq_len=16, batch_size=4), 0, {}), Batch(ids, mask, "t", [])


def test_each_side_is_its_own_run(tiny):
    lm, calib, batch = tiny
    a, b = PruneConfig(ratio=0.5, skip_layers=(0,)), PruneConfig(ratio=0.5, skip_layers=(0,), use_history=False)
    got = side_by_side(lm, calib, batch, a, b)
    for cfg, rec, nll in ((a, got.record_a, got.nll_a), (b, got.record_b, got.nll_b)):
        res = walk(lm.adapter, Pruner(lm.adapter, cfg, calib.stats if cfg.needs_calibration else None), batch.ids,
                   batch.mask, level="summary")
        assert [x.mlp.kept for x in rec.layers] == [x.mlp.kept for x in res.record.layers]
        assert torch.equal(nll, token_nll(lm.adapter, res.hidden, batch.ids, res.valid)[0])
    assert torch.equal(got.loss_diff, (got.nll_b - got.nll_a) * got.mask)
    assert got.mask[1, 11:].sum() == 0  # the padded sample's pad targets are out
    assert got.cfg_b["use_history"] is False and 0 < got.flops_a["decoder_flops_ratio"] < 1


def test_the_keep_set_differences_are_the_records(tiny):
    lm, calib, batch = tiny
    got = side_by_side(lm, calib, batch, PruneConfig(ratio=0.5, skip_layers=(0,)),
                       PruneConfig(method="flap", ratio=0.5, skip_layers=(0,)))
    assert [(d.block, d.layer) for d in got.layers] == [(b, i) for b in BLOCK_NAMES for i in range(4)]
    for d in got.layers:
        ka = set(getattr(got.record_a.layers[d.layer], d.block).kept)
        kb = set(getattr(got.record_b.layers[d.layer], d.block).kept)
        assert set(d.only_a) == ka - kb and set(d.only_b) == kb - ka and d.both == len(ka & kb)
        assert d.jaccard == pytest.approx(len(ka & kb) / len(ka | kb))
    first = got.layers[0]
    assert not first.pruned_a and not first.pruned_b and first.jaccard == 1.0  # layer 0 is skipped by both
    assert all(x != x for x in got.jaccard_by_layer("attn")[:1])  # NaN where neither pruned


def test_a_config_against_itself_differs_nowhere(tiny):
    lm, calib, batch = tiny
    cfg = PruneConfig(ratio=0.5, skip_layers=(0,))
    got = side_by_side(lm, calib, batch, cfg, cfg)
    assert all(not d.only_a and not d.only_b and d.jaccard == 1.0 for d in got.layers)
    assert torch.equal(got.loss_diff, torch.zeros_like(got.loss_diff)) and got.ppl_a == got.ppl_b


def test_bad_pairs_fail_before_any_walk(tiny):
    lm, calib, batch = tiny
    seen: list[str] = []
    with pytest.raises(ConfigError, match="configuration B: skip_layers"):
        side_by_side(lm, calib, batch, PruneConfig(ratio=0.4, skip_layers=(0,)),
                     PruneConfig(ratio=0.4, skip_layers=(7,)), progress=lambda v, t: seen.append(t))
    with pytest.raises(ConfigError, match=r"configuration A \(wanda-sp\) needs calibration"):
        side_by_side(lm, None, batch, PruneConfig(method="wanda-sp", skip_layers=(0,)), PruneConfig(method="dense"),
                     progress=lambda v, t: seen.append(t))
    assert seen == []
    other = tiny_llama(layers=2)
    rec = walk(other.adapter, Pruner(other.adapter, PruneConfig(method="dense")), batch.ids, level="summary").record
    mine = walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), batch.ids, level="summary").record
    with pytest.raises(ConfigError, match="2 and 4 layers"):
        layer_diffs(rec, mine)
