"""ppcore.analysis against hand computations, on tiny random models (no downloads)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppcore import PruneConfig, Pruner, walk
from ppcore.analysis import (prr, jaccard, keep_jaccard, kept_fractions, kept_matrix,
                             logit_agreement, masked_mean, perplexity, probe_token_matrix, stability, top_k_next)
from tests.conftest import tiny_llama


def test_jaccard_by_hand():
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert jaccard([], []) == 1.0
    assert jaccard([0], [1]) == 0.0


@pytest.fixture(scope="module")
def runs():
    lm = tiny_llama(layers=4)
    ids = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))
    out = {}
    for m in ("dense", "fullbatch"):
        p = Pruner(lm.adapter, PruneConfig(method=m, ratio=0.4, skip_layers=(0,), mlp_multiple=1))
        out[m] = walk(lm.adapter, p, ids, level="full")
    return lm, ids, out


def test_keep_sets_and_matrices(runs):
    lm, ids, out = runs
    dense, fb = out["dense"].record, out["fullbatch"].record
    jac = keep_jaccard(dense, fb, "attn")
    assert jac[0] is None  # skipped by both
    for layer in range(1, 4):
        kept = fb.layers[layer].attn.kept
        assert jac[layer] == pytest.approx(len(kept) / 6)
    m = kept_matrix(fb, "mlp")
    assert m.shape == (4, 160) and m[0].all()
    assert kept_fractions(fb, "mlp")[1] == pytest.approx(m[1].mean())
    pt = probe_token_matrix(fb, "attn", 12)
    assert pt[0].sum() == 0 and pt[1].sum() == len(fb.layers[1].attn.probe_tokens)


def test_stability_same_batch_is_one(runs):
    lm, ids, _ = runs
    p = Pruner(lm.adapter, PruneConfig(method="fullbatch", ratio=0.4, skip_layers=(0,), mlp_multiple=1))
    recs = [walk(lm.adapter, p, ids, level="summary").record for _ in range(3)]
    s = stability(recs, "mlp")
    assert s.shape == (2, 4) and np.isnan(s[:, 0]).all() and np.allclose(s[:, 1:], 1.0)
    with pytest.raises(ValueError):
        stability(recs[:1], "mlp")


def test_logit_agreement_by_hand(runs):
    lm, ids, out = runs
    hd, hp = out["dense"].hidden, out["fullbatch"].hidden
    kl, top1 = logit_agreement(lm.adapter, hd, hp, chunk=3)
    with torch.inference_mode():  # the walk's hidden states are inference tensors
        lp_d = F.log_softmax(lm.adapter.lm_head(hd).float(), -1)
        lp_p = F.log_softmax(lm.adapter.lm_head(hp).float(), -1)
    ref = F.kl_div(lp_p, lp_d, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, ref, atol=1e-5)
    assert torch.equal(top1, (lp_d.argmax(-1) == lp_p.argmax(-1)).float())
    kl0, top10 = logit_agreement(lm.adapter, hd, hd)
    assert kl0.abs().max() < 1e-5 and top10.min() == 1


def test_top_k_and_perplexity(runs):
    lm, ids, out = runs
    h = out["dense"].hidden
    toks, probs = top_k_next(lm.adapter, h, 1, 5, k=3)
    with torch.inference_mode():
        full = F.softmax(lm.adapter.lm_head(h[1, 5]).float(), -1)
    assert toks == full.topk(3).indices.tolist() and probs == pytest.approx(full.topk(3).values.tolist(), rel=1e-5)
    with pytest.raises(IndexError):
        top_k_next(lm.adapter, h, 9, 0)
    nll = torch.tensor([[1.0, 3.0], [2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_mean(nll, mask) == pytest.approx(2.0)
    assert perplexity(nll, mask) == pytest.approx(math.exp(2.0))


def test_prr():
    assert prr(12.0, 10.0, 0.5, 1.0) == pytest.approx(4.0)
    assert prr(12.0, 10.0, 1.2, 1.0) is None
    # One batch's timings: a 2 % saving is noise, not a PRR of 100 (a newcomer saw 9742.62 beside "saved no time").
    assert prr(12.0, 10.0, 0.98, 1.0) == pytest.approx(100.0) and prr(12.0, 10.0, 0.98, 1.0, min_saved=0.03) is None
    assert prr(12.0, 10.0, 0.5, 1.0, min_saved=0.03) == pytest.approx(4.0)
