"""PP+'s recovery (`ppcore.recovery`, docs/algorithm.md §10.5): the least-squares terms against a written-out
float64 reference, exact recovery when the pruned channels are linear in the regressors, the decision's placement
of M and b, the MLP core always kept, the fit's coverage and cache, and the settings it refuses."""
from __future__ import annotations

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, build_pruner, walk
from ppcore.blocks import ATTN, BLOCKS, MLP
from ppcore.fitting import fit_recovery
from ppcore.recovery import (RIDGE, BlockCov, complement, core_size, recover_key, recovery_terms, stored_recovery)
from tests.conftest import TINY_VOCAB as VOCAB

R = dict(compensate="off", error_score="off", allocation="uniform", recover="on", mlp_multiple=8)


def _reference(w, cov, mean, kept, regs):
    """M and b written out in float64: A = S_PR (S_RR + lam I)^-1, M = W_P A, b = W_P (mu_P - A mu_R)."""
    C = w.shape[1]
    pruned = [c for c in range(C) if c not in set(kept)]
    S = cov.double()
    s_rr = S[regs][:, regs]
    lam = RIDGE * s_rr.diagonal().mean()
    A = S[pruned][:, regs] @ torch.linalg.inv(s_rr + lam * torch.eye(len(regs), dtype=torch.float64))
    w_p = w.double()[:, pruned]
    return w_p @ A, w_p @ (mean.double()[pruned] - A @ mean.double()[regs])


def _stats(x):
    mean = x.mean(0)
    return (x - mean).T @ (x - mean) / x.shape[0], mean


def test_complement_is_the_other_channels_ascending():
    assert complement(torch.tensor([1, 4, 5]), 7).tolist() == [0, 2, 3, 6]
    assert complement(torch.arange(5), 5).tolist() == []


@pytest.mark.parametrize("channels,multiple,expected", [(1536, 64, 256), (2048, 64, 320), (160, 8, 24), (12, 1, 2),
                                                        (64, 64, 64)])
def test_core_size_is_a_sixth_rounded_to_the_multiple(channels, multiple, expected):
    assert core_size(channels, multiple) == expected


def test_recovery_terms_match_the_written_out_least_squares():
    g = torch.Generator().manual_seed(0)
    D, C, N = 5, 9, 200
    x = torch.randn(N, C, generator=g) @ torch.randn(C, C, generator=g) + torch.randn(C, generator=g)
    cov, mean = _stats(x)
    w = torch.randn(D, C, generator=g)
    kept = torch.tensor([0, 2, 3, 5, 8])
    # every channel a candidate (attention): the regressors are the kept channels, at their own positions
    st = BlockCov(torch.arange(C), cov, mean)
    m, b, flops = recovery_terms(w, st, kept, kept)
    m_ref, b_ref = _reference(w, cov, mean, kept.tolist(), kept.tolist())
    assert torch.allclose(m.double(), m_ref, atol=1e-4) and torch.allclose(b.double(), b_ref, atol=1e-4)
    r, p = 5, 4
    assert flops == r ** 3 // 3 + 2 * r * p * D + 2 * r * r * min(p, D) + 2 * D * (p + r)
    m2, _, _ = recovery_terms(w[:2], st, kept, kept)  # D = 2 < p = 4: the other order, the same M
    assert torch.allclose(m2.double(), m_ref[:2], atol=1e-4)
    # a core (MLP): candidates are columns of the covariance, the regressors a prefix of them
    core = torch.tensor([3, 0, 8])
    st = BlockCov(core, cov[:, core], mean)
    m, b, _ = recovery_terms(w, st, kept, torch.arange(2))
    m_ref, b_ref = _reference(w, cov, mean, kept.tolist(), [3, 0])
    assert torch.allclose(m.double(), m_ref, atol=1e-4) and torch.allclose(b.double(), b_ref, atol=1e-4)


def test_pruned_channels_linear_in_the_regressors_are_recovered():
    g = torch.Generator().manual_seed(1)
    D, N = 6, 500
    base = torch.randn(N, 4, generator=g) * torch.tensor([3.0, 1.0, 2.0, 0.5])
    x = torch.cat([base, base @ torch.randn(4, 3, generator=g) + 1.5], 1)  # channels 4-6 linear in 0-3
    cov, mean = _stats(x)
    w = torch.randn(D, 7, generator=g)
    kept = torch.arange(4)
    m, b, _ = recovery_terms(w, BlockCov(torch.arange(7), cov, mean), kept, kept)
    full = x @ w.T
    recovered = x[:, :4] @ (w[:, :4] + m).T + b
    plain = x[:, :4] @ w[:, :4].T
    assert (recovered - full).norm() < 0.01 * (plain - full).norm()


@pytest.fixture(scope="module")
def fit(tiny_lm, tiny_calib):
    return fit_recovery(tiny_lm.adapter, PruneConfig(method="pp-plus", **R), tiny_calib)


def test_the_fit_covers_every_block_with_attention_whole_and_an_mlp_core(tiny_lm, fit):
    dims = tiny_lm.adapter.dims
    assert set(fit) == {b.key(i) for i in range(dims.num_layers) for b in BLOCKS}
    for layer in range(dims.num_layers):
        a, m = fit[ATTN.key(layer)], fit[MLP.key(layer)]
        assert a.cols.tolist() == list(range(ATTN.channels(dims))) and a.cov.shape == (96, 96)
        assert m.cols.shape == (24,) and m.cov.shape == (160, 24) and len(set(m.cols.tolist())) == 24
        assert torch.allclose(a.cov, a.cov.T, atol=1e-5)


def test_the_decision_adds_m_to_the_regressor_columns_and_b_to_the_output(tiny_lm, tiny_calib, fit):
    ad = tiny_lm.adapter
    pruner = build_pruner(ad, PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **R), tiny_calib)
    w = ad.layer(2)
    st = fit[MLP.key(2)]
    core = st.cols[:24]
    kept = torch.cat([core, torch.tensor([c for c in range(160) if c not in set(core.tolist())][:40])]).sort().values
    d = pruner.method.decision(2, MLP, w, kept)
    W = w.down_w.detach()
    full_cov = torch.zeros(160, 160)
    full_cov[:, core] = st.cov
    full_cov[core] = st.cov.T  # the core's rows, enough for S_RR and S_PR
    m_ref, b_ref = _reference(W, full_cov, st.mean, kept.tolist(), core.tolist())
    expect = W[:, kept].double().clone()
    expect[:, [kept.tolist().index(c) for c in core.tolist()]] += m_ref
    assert torch.allclose(d.slice.down_w.double(), expect, atol=1e-4)
    assert torch.allclose(d.bias.double(), b_ref, atol=1e-4) and d.extra_flops > 0
    assert torch.equal(w.down_w, W)  # the model's weight is not written
    heads = torch.tensor([0, 2, 5])
    d = pruner.method.decision(2, ATTN, w, heads)
    ch = torch.cat([torch.arange(h * 16, h * 16 + 16) for h in heads.tolist()])
    sa = fit[ATTN.key(2)]
    m_ref, b_ref = _reference(w.o_w.detach(), sa.cov, sa.mean, ch.tolist(), ch.tolist())
    assert torch.allclose(d.slice.o_w.double(), w.o_w.detach()[:, ch].double() + m_ref, atol=1e-4)
    assert torch.allclose(d.bias.double(), b_ref, atol=1e-4)


def test_the_mlp_core_is_always_kept_and_the_run_counts_the_solve(tiny_lm, tiny_calib, fit):
    ad = tiny_lm.adapter
    g = torch.Generator().manual_seed(3)
    cfg = PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **R)
    plus = build_pruner(ad, cfg, tiny_calib)
    pp = Pruner(ad, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), mlp_multiple=8), tiny_calib)
    for _ in range(2):
        ids = torch.randint(0, VOCAB, (4, 16), generator=g)
        a = walk(ad, plus, ids, level="summary", timing=False)
        b = walk(ad, pp, ids, level="summary", timing=False)
        assert torch.isfinite(a.hidden).all() and not torch.equal(a.hidden, b.hidden)
        for layer in range(1, ad.dims.num_layers):
            kept = set(a.record.layers[layer].mlp.kept)
            assert set(fit[MLP.key(layer)].cols.tolist()) <= kept
            assert len(kept) == len(b.record.layers[layer].mlp.kept)
        assert a.flops["pruned"] > b.flops["pruned"]  # the same keep counts, plus the solves
    rec = plus.method.fitted["recovery"]
    assert rec["mlp_core"] == 24 and rec["fitted_on"]["calibration"] == tiny_calib.meta["key"]
    assert rec["fitted_on"]["windows"] == 8 and rec["fitted_on"]["tokens"] == 16


def test_the_record_names_the_core_and_why_leaves_it_out_of_the_cut_off(tiny_lm, tiny_calib, fit):
    from app.views.unit_why import headline
    from ppcore.why import unit_why

    ad = tiny_lm.adapter
    plus = build_pruner(ad, PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **R), tiny_calib)
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(9))
    walk(ad, plus, ids, level="full", timing=False)  # the history has moved: its first batch is the warm-up
    rec = walk(ad, plus, ids, level="full", timing=False).record
    for layer in range(1, ad.dims.num_layers):
        mlp, attn = rec.layers[layer].mlp, rec.layers[layer].attn
        assert mlp.forced == sorted(fit[MLP.key(layer)].cols.tolist()) and set(mlp.forced) <= set(mlp.kept)
        assert attn.forced is None  # attention keeps PP's rule: every kept head regresses
        assert set(mlp.forced) <= set(mlp.kept_probe_only)  # the counterfactual keeps the core too
        free = set(mlp.kept) - set(mlp.forced)
        w = unit_why(rec, {}, layer, "mlp", mlp.forced[0])
        assert w.forced and w.kept and w.cutoff == pytest.approx(min(mlp.scores[k] for k in free))
        assert "whatever its score" in headline(w, "channel")
        pruned = next(u for u in range(mlp.total) if u not in set(mlp.kept))
        assert mlp.scores[pruned] <= unit_why(rec, {}, layer, "mlp", pruned).cutoff  # PP's rule, for the rest


def test_the_fit_is_cached_on_disk_and_a_bare_pruner_names_build_pruner(tiny_lm, tmp_path):
    from ppcore.calibrate import calibrate

    windows = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    calib = calibrate(tiny_lm, windows, 4, cache_dir=tmp_path, progress=False)
    cfg = PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **R)
    with pytest.raises(ConfigError, match="build_pruner"):
        Pruner(tiny_lm.adapter, cfg, calib)
    fit_recovery(tiny_lm.adapter, cfg, calib)
    files = list((tmp_path / "recover").glob("*.safetensors"))
    assert [f.stem for f in files] == [recover_key(cfg, calib)]
    again = calibrate(tiny_lm, windows, 4, cache_dir=tmp_path, progress=False)  # a fresh copy: no fits in memory
    assert not again.fits
    got = stored_recovery(cfg, again)
    assert got is not None and torch.equal(got[MLP.key(1)].cov, calib.fits[recover_key(cfg, calib)][MLP.key(1)].cov)


def test_a_sensitivity_fit_is_keyed_by_recovery(tiny_calib):
    from ppcore.allocation import fit_key

    on = PruneConfig(method="pp-plus", allocation="sensitivity", **{k: v for k, v in R.items() if k != "allocation"})
    assert fit_key(on, tiny_calib) != fit_key(PruneConfig(method="pp-plus", allocation="sensitivity",
                                                          recover="off", mlp_multiple=8), tiny_calib)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="pp-plus", recover="on", compensate="on"), "compensate"),
    (dict(method="pp", recover="on"), "pp-plus"),
])
def test_recover_with_the_mean_compensation_or_outside_pp_plus_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_a_block_recovers_only_where_pruning_saves_more_than_twice_the_solve(tiny_lm, tiny_calib, fit):
    """On a one-token batch every solve would cost more than pruning saves: nothing recovers, the run costs no more
    than dense, and the core is not forced; on a 4 x 16 batch both blocks recover."""
    ad = tiny_lm.adapter
    plus = build_pruner(ad, PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **R), tiny_calib)
    one = walk(ad, plus, torch.tensor([[5]]), level="summary", timing=False)
    assert one.flops["pruned"] <= one.flops["dense"]
    assert all(layer.mlp.forced is None for layer in one.record.layers)
    many = walk(ad, plus, torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(4)),
                level="summary", timing=False)
    assert all(layer.mlp.forced for layer in many.record.layers[1:])
    assert plus.method.recovers(1, ATTN) and plus.method.recovers(1, MLP)
