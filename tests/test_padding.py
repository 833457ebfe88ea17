"""Pad positions never enter the probe, the history, the scores or the losses."""
from __future__ import annotations

import torch

from ppcore import PruneConfig, Pruner, walk
from ppcore.calibrate import calibrate
from ppcore.walk import token_nll
from tests.conftest import tiny_llama, tiny_opt


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (4, 24), generator=g)
    mask = torch.ones(4, 24, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 6:] = 0
    mask[3, 20:] = 0
    return ids, mask


def _with_other_pads(ids, mask, seed: int):
    other = torch.randint(0, 128, ids.shape, generator=torch.Generator().manual_seed(seed))
    return torch.where(mask.bool(), ids, other)


def _run(lm, cfg, calib, ids, mask):
    pruner = Pruner(lm.adapter, cfg, calib)
    res = walk(lm.adapter, pruner, ids, mask, level="full")
    res2 = walk(lm.adapter, pruner, ids, mask, level="full")  # a second batch reads the updated history
    nll, m = token_nll(lm.adapter, res2.hidden, ids, res2.valid)
    return pruner, res.record, res2.record, nll, m


def _decisions(rec):
    return [(l.attn.kept, l.attn.probe_tokens, l.attn.probe_samples, l.attn.scores,
             l.mlp.kept, l.mlp.probe_tokens, l.mlp.probe_samples, l.mlp.scores) for l in rec.layers]


def test_pad_content_changes_nothing():
    for lm in (tiny_llama(), tiny_opt()):
        calib = calibrate(lm, torch.randint(0, 128, (8, 24), generator=torch.Generator().manual_seed(9)), 4,
                          cache=False, progress=False)
        ids, mask = _batch()
        cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), sample_frac=0.5, mlp_multiple=8)
        p1, r1a, r1b, nll1, m1 = _run(lm, cfg, calib, ids, mask)
        p2, r2a, r2b, nll2, m2 = _run(lm, cfg, calib, _with_other_pads(ids, mask, 1), mask)
        assert _decisions(r1a) == _decisions(r2a) and _decisions(r1b) == _decisions(r2b)
        assert torch.allclose(nll1 * m1, nll2 * m2, atol=1e-5)
        for key, state in p1.history.states.items():
            assert torch.allclose(state, p2.history.states[key], atol=1e-6), key
        # The residual-importance grid is zero at pads, so pads are never picked by importance.
        grid = torch.tensor(r1a.layers[1].attn.importance)
        assert bool((grid[~mask.bool()] == 0).all())


def test_fullbatch_scores_ignore_pads():
    lm = tiny_llama()
    ids, mask = _batch(3)
    cfg = PruneConfig(method="fullbatch", ratio=0.5, skip_layers=(0,), mlp_multiple=8)
    a = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, mask, level="summary").record
    b = walk(lm.adapter, Pruner(lm.adapter, cfg), _with_other_pads(ids, mask, 4), mask, level="summary").record
    assert _decisions(a) == _decisions(b)


def test_extra_padding_keeps_dense_losses():
    for lm in (tiny_llama(), tiny_opt()):
        ids, mask = _batch(5)
        cfg = PruneConfig(method="dense")
        res = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, mask)
        nll, m = token_nll(lm.adapter, res.hidden, ids, res.valid)
        ids2 = torch.cat([ids, torch.randint(0, 128, (4, 7))], 1)
        mask2 = torch.cat([mask, torch.zeros(4, 7, dtype=torch.long)], 1)
        res2 = walk(lm.adapter, Pruner(lm.adapter, cfg), ids2, mask2)
        nll2, m2 = token_nll(lm.adapter, res2.hidden, ids2, res2.valid)
        assert torch.equal(m2[:, :23], m) and m2[:, 23:].sum() == 0
        assert torch.allclose(nll2[:, :23], nll, atol=1e-5)
