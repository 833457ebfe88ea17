"""The pure formulas of Probe Pruning and its baselines, each against a plain hand-written reference.

References are written out with explicit Python loops (docs/algorithm.md §2-4, §6, §8.1), never by calling
the torch expression the code uses. ppcore computes in float32, so comparisons use ~1e-6 relative
tolerances; references are float64.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppcore import ConfigError, PPCoreError, PruneConfig
from ppcore import scores as S
from ppcore.config import adjusted_ratio, heads_pruned, mlp_kept, mlp_kept_for_ratio
from ppcore.stats import History, StatsAccumulator

RTOL32 = 1e-6


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(actual, expected, rtol=RTOL32, atol=1e-9):
    """Element-wise |a - e| <= atol + rtol * |e| over nested lists / tensors (expected in float64)."""
    a = torch.as_tensor(actual, dtype=torch.float64)
    e = torch.as_tensor(expected, dtype=torch.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    bad = (a - e).abs() > atol + rtol * e.abs()
    assert not bool(bad.any()), f"max abs diff {float((a - e).abs().max())}\nactual={a}\nexpected={e}"


def _l2(values) -> float:
    return math.sqrt(sum(float(v) * float(v) for v in values))


# --- residual importance (docs/algorithm.md §2.2) -----------------------------------------------------------
def test_residual_importance_is_l2_over_hidden():
    r = torch.randn(3, 5, 7, generator=_gen(0), dtype=torch.float64)
    B, L, D = r.shape
    ref = [[_l2(r[b, t, d] for d in range(D)) for t in range(L)] for b in range(B)]
    N = S.residual_importance(r)
    assert N.shape == (B, L)
    _close(N, ref)


def test_residual_importance_pads_are_zero():
    r = torch.randn(3, 5, 7, generator=_gen(1), dtype=torch.float64) + 0.5
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    N = S.residual_importance(r, valid)
    for b in range(3):
        for t in range(5):
            if valid[b, t] == 0:
                assert float(N[b, t]) == 0.0
            else:
                expect = _l2(r[b, t, d] for d in range(7))
                assert expect > 0
                assert abs(float(N[b, t]) - expect) <= RTOL32 * expect


# --- probe selection (docs/algorithm.md §2.3) ----------------------------------------------------------------
def _ref_token_scores(N: torch.Tensor) -> list[float]:
    B, L = N.shape
    return [_l2(N[b, t] for b in range(B)) for t in range(L)]


def _ref_topk_sorted(scores: list[float], k: int) -> list[int]:
    """Indices of the k largest scores (assumed distinct), ascending."""
    ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
    return sorted(ranked[:k])


def _ref_select_tokens(N: torch.Tensor, frac: float) -> list[int]:
    L = N.shape[1]
    n_t = max(math.ceil(L * frac), 2)
    idx = _ref_topk_sorted(_ref_token_scores(N), n_t)
    if n_t <= 10:
        idx[0] = 0
    return idx


def _ref_select_samples(N: torch.Tensor, tokens: list[int], frac: float) -> list[int]:
    B = N.shape[0]
    n_b = max(math.ceil(B * frac), 1)
    scores = [_l2(N[b, t] for t in tokens) for b in range(B)]
    return _ref_topk_sorted(scores, n_b)


@pytest.mark.parametrize("B,L,frac", [(4, 30, 0.5), (3, 7, 0.5), (5, 40, 0.3), (2, 12, 0.25), (6, 3, 0.5)])
def test_select_tokens_matches_reference(B, L, frac):
    N = torch.rand(B, L, generator=_gen(B * 100 + L), dtype=torch.float64) + 0.1
    got = S.select_tokens(N, frac).tolist()
    assert got == _ref_select_tokens(N, frac)
    assert len(got) == max(math.ceil(L * frac), 2)
    assert got == sorted(got) and len(set(got)) == len(got)


def _token0_weakest(B: int, L: int, seed: int) -> torch.Tensor:
    N = torch.rand(B, L, generator=_gen(seed), dtype=torch.float64) + 1.0
    N[:, 0] = 0.01  # token 0 has by far the lowest score: never chosen on merit
    return N


def test_token_zero_forced_when_at_most_ten_tokens():
    N = _token0_weakest(3, 20, 5)  # n_t = ceil(20 * 0.5) = 10
    got = S.select_tokens(N, 0.5).tolist()
    merit = _ref_topk_sorted(_ref_token_scores(N), 10)
    assert 0 not in merit
    assert len(got) == 10
    assert got[0] == 0
    assert got[1:] == merit[1:]  # the lowest-index selected token is the one replaced


def test_token_zero_not_forced_above_ten_tokens():
    N = _token0_weakest(3, 22, 6)  # n_t = ceil(22 * 0.5) = 11 > 10
    got = S.select_tokens(N, 0.5).tolist()
    assert len(got) == 11
    assert 0 not in got
    assert got == _ref_topk_sorted(_ref_token_scores(N), 11)


def test_token_zero_already_selected_is_not_duplicated():
    N = torch.rand(2, 8, generator=_gen(7), dtype=torch.float64) + 1.0
    N[:, 0] = 10.0
    got = S.select_tokens(N, 0.5).tolist()
    assert got == _ref_topk_sorted(_ref_token_scores(N), 4)
    assert got[0] == 0 and len(set(got)) == 4


def test_select_samples_scores_only_selected_tokens():
    # Sample 0 is huge on token 0 (not selected), sample 1 is the strongest on the selected tokens.
    N = torch.tensor([
        [50.0, 0.1, 1.0, 1.0],
        [0.1, 0.1, 3.0, 3.0],
        [0.1, 0.1, 2.0, 2.0],
    ], dtype=torch.float64)
    tokens = torch.tensor([2, 3])
    all_tokens_choice = _ref_topk_sorted([_l2(N[b]) for b in range(3)], 1)
    assert all_tokens_choice == [0]  # the case is built so that scoring all tokens would differ
    got = S.select_samples(N, tokens, 0.05).tolist()
    assert got == [1]
    assert got == _ref_select_samples(N, [2, 3], 0.05)


@pytest.mark.parametrize("B,frac", [(20, 0.05), (21, 0.05), (1, 0.05), (10, 0.5), (7, 0.3), (5, 1.0)])
def test_select_samples_size_and_order(B, frac):
    L = 6
    N = torch.rand(B, L, generator=_gen(B), dtype=torch.float64) + 0.1
    tokens = torch.tensor([0, 2, 5])
    got = S.select_samples(N, tokens, frac).tolist()
    assert len(got) == max(math.ceil(B * frac), 1)
    assert got == sorted(got)
    assert got == _ref_select_samples(N, [0, 2, 5], frac)


def test_tokens_are_selected_before_samples():
    """Tokens are ranked over all samples, then samples over the chosen tokens (docs/algorithm.md §12.1).

    The batch is built so that the reverse order (samples first over all tokens, then tokens over
    the chosen sample) gives a different probe.
    """
    B, L = 4, 24  # n_t = 12 (no forcing), n_b = 1
    N = torch.full((B, L), 0.1, dtype=torch.float64)
    N[0, 12:] = 5.0  # the largest sample overall, strong on the late tokens
    for b, v in ((1, 4.0), (2, 4.1), (3, 4.2)):
        N[b, :12] = v  # together they make the early tokens the strongest
    tokens = S.select_tokens(N, 0.5)
    samples = S.select_samples(N, tokens, 0.05)
    assert tokens.tolist() == list(range(12))
    assert samples.tolist() == [3]
    ref_t = _ref_select_tokens(N, 0.5)
    assert (tokens.tolist(), samples.tolist()) == (ref_t, _ref_select_samples(N, ref_t, 0.05))
    # The reverse order would have probed sample 0 on tokens 12..23.
    rev_s = _ref_topk_sorted([_l2(N[b]) for b in range(B)], 1)
    rev_t = _ref_topk_sorted([float(N[rev_s[0], t]) for t in range(L)], 12)
    assert (rev_s, rev_t) == ([0], list(range(12, 24)))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 12), L=st.integers(2, 40), tf=st.floats(0.01, 1.0), sf=st.floats(0.01, 1.0),
       seed=st.integers(0, 10_000))
def test_selection_sizes_property(B, L, tf, sf, seed):
    N = torch.rand(B, L, generator=_gen(seed), dtype=torch.float64)
    t = S.select_tokens(N, tf)
    s = S.select_samples(N, t, sf)
    n_t, n_b = max(math.ceil(L * tf), 2), max(math.ceil(B * sf), 1)
    assert t.numel() == n_t and s.numel() == n_b
    assert t.tolist() == sorted(set(t.tolist())) and s.tolist() == sorted(set(s.tolist()))
    assert 0 <= min(t.tolist()) and max(t.tolist()) < L and max(s.tolist()) < B
    if n_t <= 10:
        assert t[0] == 0


# --- fusion (docs/algorithm.md §3.3) --------------------------------------------------------------------------
def test_probe_energy_mean_of_squares():
    z = torch.randn(3, 4, 5, generator=_gen(10), dtype=torch.float64)
    nb, nt, C = z.shape
    ref = [[sum(float(z[b, t, c]) ** 2 for b in range(nb)) / nb for c in range(C)] for t in range(nt)]
    _close(S.probe_energy(z), ref)


def test_probe_energy_excludes_pads_per_position():
    z = torch.randn(3, 4, 5, generator=_gen(11), dtype=torch.float64) * 2
    valid = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]])
    P = S.probe_energy(z, valid)
    for t in range(4):
        count = sum(int(valid[b, t]) for b in range(3))
        for c in range(5):
            tot = sum(float(z[b, t, c]) ** 2 for b in range(3) if valid[b, t])
            expect = tot / count if count else 0.0
            assert abs(float(P[t, c]) - expect) <= 1e-9 + RTOL32 * expect, (t, c)
    # position 1 has two real samples: the divisor is 2, not 3
    assert abs(float(P[1, 0]) - (float(z[0, 1, 0]) ** 2 + float(z[2, 1, 0]) ** 2) / 2) < 1e-5


def test_fuse_elementwise():
    P = torch.rand(4, 6, generator=_gen(12), dtype=torch.float64) * 3
    G = torch.rand(4, 6, generator=_gen(13), dtype=torch.float64) * 3
    P[0, 0], G[0, 0] = 0.0, 0.0
    P[1, 1] = 0.0
    G[2, 2] = 0.0
    G[3, 3] = 1000.0
    F = S.fuse(P, G)
    eps = 1e-6
    for t in range(4):
        for c in range(6):
            p, g = float(P[t, c]), float(G[t, c])
            expect = g * (1 - p / (p + g + eps)) + p * p / (p + g + eps)
            assert abs(float(F[t, c]) - expect) <= 1e-12 + 1e-12 * abs(expect)
    assert float(F[0, 0]) == 0.0
    assert abs(float(F[1, 1]) - float(G[1, 1])) < 1e-12  # no probe energy: the history stands
    assert abs(float(F[2, 2]) - float(P[2, 2])) < 1e-5  # no history: (almost) the probe


# --- PPsp, Wanda-sp, FLAP metrics (docs/algorithm.md §4, §4.1) --------------------------------------------------
def _weights(Dout=5, C=12, seed=20):
    return torch.randn(Dout, C, generator=_gen(seed), dtype=torch.float64)


def test_column_pow4():
    W = _weights()
    ref = [sum(float(W[i, c]) ** 4 for i in range(W.shape[0])) for c in range(W.shape[1])]
    _close(S.column_pow4(W), ref)


def test_ppsp_channels_loop_and_official_form():
    W = _weights()
    s = torch.rand(W.shape[1], generator=_gen(21), dtype=torch.float64) * 4
    got = S.ppsp_channels(s.float(), S.column_pow4(W))
    Dout, C = W.shape
    ref = [float(s[c]) * math.sqrt(sum(float(W[i, c]) ** 4 for i in range(Dout))) for c in range(C)]
    _close(got, ref, rtol=2e-6)
    official = torch.linalg.vector_norm(s[None, :] * W ** 2, ord=2, dim=0)  # cal_mlp_prune_metric
    _close(got, official, rtol=2e-6)


def test_ppsp_heads_loop_and_official_form():
    H, d, Dout = 3, 4, 5
    W = _weights(Dout, H * d, 22)
    s = torch.rand(H * d, generator=_gen(23), dtype=torch.float64) * 4
    got = S.ppsp_heads(s.float(), S.column_pow4(W), d)
    assert got.shape == (H,)
    ref = []
    for h in range(H):
        acc = 0.0
        for i in range(Dout):
            for c in range(h * d, (h + 1) * d):
                acc += (float(s[c]) * float(W[i, c]) ** 2) ** 2
        ref.append(math.sqrt(acc))
    _close(got, ref, rtol=2e-6)
    official = torch.linalg.vector_norm((s[None, :] * W ** 2).reshape(Dout, H, d), ord=2, dim=(0, 2))
    _close(got, official, rtol=2e-6)


def test_wanda_sp_channels_and_head_sums():
    H, d, Dout, T = 3, 4, 5, 6
    W = _weights(Dout, H * d, 24)
    Hist = torch.rand(T, H * d, generator=_gen(25), dtype=torch.float64)
    got = S.wanda_sp_channels(W, Hist.sum(0))
    ref = []
    for c in range(H * d):
        l1 = sum(abs(float(W[i, c])) for i in range(Dout))
        ref.append(l1 * math.sqrt(sum(float(Hist[t, c]) for t in range(T))))
    _close(got, ref, rtol=2e-6)
    heads = S.head_sums(got, d)
    ref_h = [sum(ref[h * d:(h + 1) * d]) for h in range(H)]
    _close(heads, ref_h, rtol=2e-6)


def test_flap_channels_wifv():
    W = _weights(5, 8, 26)
    fluc = torch.rand(8, generator=_gen(27), dtype=torch.float64)
    ref = [float(fluc[c]) * sum(float(W[i, c]) ** 2 for i in range(5)) for c in range(8)]
    _close(S.flap_channels(W, fluc), ref, rtol=2e-6)


# --- FLAP head weight and global allocation (docs/algorithm.md §8.1b) ------------------------------------------
def test_flap_head_weight_smollm2_gqa():
    assert abs(S.flap_head_weight(512, 576, 9, gqa=True) - 80.59) <= 0.01


def test_flap_head_weight_mha_k4():
    L, D, H = 1024, 4096, 32
    d = D / H
    expect = (L * D * d * 4 + 2 * L * L * d) / (3 * L * D)
    assert expect == pytest.approx(192.0)
    assert S.flap_head_weight(L, D, H, gqa=False) == pytest.approx(expect, rel=1e-12)
    L, D, H = 100, 576, 9  # csr length, SmolLM2 dims, MHA branch
    d = D / H
    assert S.flap_head_weight(L, D, H, gqa=False) == pytest.approx((L * D * d * 4 + 2 * L * L * d) / (3 * L * D))
    assert S.flap_head_weight(L, D, H, gqa=False) != pytest.approx(S.flap_head_weight(L, D, H, gqa=True))
    # Heads wider than D / H (Gemma-3-270M: 4 heads of 256 at D = 640): the real width counts.
    assert S.flap_head_weight(512, 640, 4, gqa=True, head_dim=256) == pytest.approx(
        (512 * 640 * 256 * 2 + 2 * 512 * 512 * 256) / (3 * 512 * 640))


def _ref_zscore64(row: list[float]) -> list[float]:
    n = len(row)
    mu = sum(row) / n
    sd = math.sqrt(sum((v - mu) ** 2 for v in row) / (n - 1))  # unbiased, as torch.std
    return [(v - mu) / sd for v in row]


def _ref_flap_ratios(attn, mlp, head_dim, head_weight, r_eff):
    """Spec 8.1(b), literally: float64 first pass, float32 per-module second pass."""
    units: list[tuple[float, float]] = []  # (score, weight)
    for m in attn:
        z = _ref_zscore64([float(v) for v in m.double()])
        for h in range(len(z) // head_dim):
            units.append((sum(z[h * head_dim:(h + 1) * head_dim]) / head_dim, head_weight))
    for m in mlp:
        for v in _ref_zscore64([float(v) for v in m.double()]):
            units.append((v, 1.0))
    order = sorted(range(len(units)), key=lambda i: units[i][0])
    cum, acc = [], 0.0
    for i in order:
        acc += units[i][1]
        cum.append(acc)
    target = r_eff * cum[-1]
    index = next(k for k, c in enumerate(cum) if c > target)  # searchsorted(right=True)
    threshold = torch.tensor(units[order[index]][0], dtype=torch.float64).float()

    def module_ratio(m, per_head):
        x = m.float()
        z = (x - x.mean()) / x.std()  # float32, unbiased
        if per_head:
            vals = [z[h * head_dim:(h + 1) * head_dim].mean() for h in range(x.numel() // head_dim)]
        else:
            vals = list(z)
        return sum(1 for v in vals if bool(v <= threshold)) / len(vals)

    return [module_ratio(m, True) for m in attn], [module_ratio(m, False) for m in mlp], index, cum


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("r_eff", [0.22, 0.44, 0.67])
def test_flap_ratios_match_reference(seed, r_eff):
    layers, H, d, inter = 3, 4, 8, 40
    g = _gen(seed)
    attn = [torch.randn(H * d, generator=g).exp() * (1 + i) for i in range(layers)]
    mlp = [torch.randn(inter, generator=g).exp() * (2 + i) for i in range(layers)]
    hw = S.flap_head_weight(16, H * d, H, gqa=False)
    a_r, m_r = S.flap_ratios(attn, mlp, d, hw, r_eff)
    ra, rm, index, cum = _ref_flap_ratios(attn, mlp, d, hw, r_eff)
    assert a_r == ra
    assert m_r == rm
    # The allocation removes the units up to the threshold: just over r_eff of the weighted total.
    # The threshold unit itself may drop out, because the second pass recomputes it in float32 and
    # compares with the float64 threshold cast to float32 (docs/algorithm.md §8.1b: "float edge cases").
    removed = sum(r * H * hw for r in a_r) + sum(r * inter for r in m_r)
    assert removed == pytest.approx(cum[index], rel=1e-9) or removed == pytest.approx(cum[index - 1], rel=1e-9)
    assert r_eff * cum[-1] - max(hw, 1.0) - 1e-9 < removed <= r_eff * cum[-1] + max(hw, 1.0) + 1e-9


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_flap_ratios_target_hit_exactly(seed):
    """Integer weights: r_eff * total lands exactly on a cumulative sum, where right=True matters."""
    g = _gen(seed)
    mlp = [torch.randn(40, generator=g).exp() for _ in range(3)]  # total weight 120, target 60
    attn = [torch.randn(32, generator=g).exp() for _ in range(3)]  # 4 heads of dim 8, weight 2 each
    _, m_r = S.flap_ratios([], mlp, 8, 2.0, 0.5)
    _, rm, index, cum = _ref_flap_ratios([], mlp, 8, 2.0, 0.5)
    assert cum[index - 1] == 60.0 and index == 60
    assert m_r == rm
    a_r, m_r = S.flap_ratios(attn, mlp, 8, 2.0, 0.5)  # total 144, target 72
    ra, rm, _, _ = _ref_flap_ratios(attn, mlp, 8, 2.0, 0.5)
    assert (a_r, m_r) == (ra, rm)


def test_flap_ratios_mlp_only_and_attn_only():
    g = _gen(9)
    mlp = [torch.randn(40, generator=g).exp() for _ in range(3)]
    attn = [torch.randn(32, generator=g).exp() for _ in range(3)]
    a_r, m_r = S.flap_ratios([], mlp, 8, 5.0, 0.4)
    ra, rm, _, _ = _ref_flap_ratios([], mlp, 8, 5.0, 0.4)
    assert a_r == [] and m_r == rm
    assert any(0 < r < 1 for r in m_r)
    a_r, m_r = S.flap_ratios(attn, [], 8, 5.0, 0.4)
    ra, rm, _, _ = _ref_flap_ratios(attn, [], 8, 5.0, 0.4)
    assert m_r == [] and a_r == ra


# --- ratio adjustment and keep counts (docs/algorithm.md §6, §4.2, §12.9) -----------------------------------------
@pytest.mark.parametrize(
    "layers,heads,channels,ratio,r_eff,n_heads_pruned,kept",
    [
        (32, 32, 11008, 0.4, 0.44, 14, 6208),  # LLaMA-2-7B
        (32, 32, 11008, 0.2, 0.22, 7, 8640),
        (30, 9, 1536, 0.2, 0.22, 1, 1216),  # SmolLM2-135M
        (30, 9, 1536, 0.4, 0.44, 3, 896),
        (40, 40, 13824, 0.4, 0.43, 17, 7936),  # LLaMA-2-13B
        (40, 40, 13824, 0.2, 0.22, 8, 10816),
        (40, 40, 20480, 0.4, 0.43, 17, 11712),  # OPT-13B
    ],
)
def test_adjusted_ratio_and_keep_counts(layers, heads, channels, ratio, r_eff, n_heads_pruned, kept):
    r = adjusted_ratio(ratio, layers, 3)
    assert r == r_eff
    assert heads_pruned(r, heads) == n_heads_pruned
    assert mlp_kept_for_ratio(r, channels, 64) == kept
    assert kept % 64 == 0


def test_mlp_multiple_one_means_no_rounding():
    assert mlp_kept_for_ratio(0.44, 11008, 1) == 11008 - 4843  # int(0.44 * 11008) = 4843 pruned
    assert mlp_kept_for_ratio(0.44, 1536, 1) == 1536 - 675
    assert mlp_kept(4843, 11008, 1) == 6165
    assert mlp_kept(4843, 11008, 64) == 6208


def test_adjusted_ratio_without_skips_is_unchanged():
    assert adjusted_ratio(0.37, 32, 0) == 0.37
    assert adjusted_ratio(0.4, 32, 0) == 0.4


def test_adjusted_ratio_with_every_layer_skipped():
    # Dense, or block ratios of 0, on a 3-layer model whose default skip list (0-2) covers every layer: no layer uses
    # the per-layer ratio, so there is nothing to divide.
    assert adjusted_ratio(0.0, 3, 3) == 0.0
    assert adjusted_ratio(0.4, 3, 3) == 0.4


@settings(max_examples=50, deadline=None)
@given(r1=st.floats(0.0, 0.95), r2=st.floats(0.0, 0.95), layers=st.integers(4, 48),
       heads=st.integers(1, 64), channels=st.integers(1, 20000), multiple=st.sampled_from([1, 8, 64]))
def test_keep_counts_monotone_in_ratio(r1, r2, layers, heads, channels, multiple):
    lo, hi = sorted((r1, r2))
    e_lo, e_hi = adjusted_ratio(lo, layers, 3), adjusted_ratio(hi, layers, 3)
    assert e_lo <= e_hi
    assert heads_pruned(e_lo, heads) <= heads_pruned(e_hi, heads)
    k_lo = mlp_kept_for_ratio(e_lo, channels, multiple)
    k_hi = mlp_kept_for_ratio(e_hi, channels, multiple)
    assert k_lo >= k_hi
    exact = channels - min(int(e_hi * channels), channels)
    assert exact <= k_hi <= channels
    assert k_hi == channels or k_hi % multiple == 0
    assert k_hi - exact < multiple


def test_keep_top_heads_drops_lowest():
    sc = torch.tensor([0.5, 3.0, 0.1, 2.0, 0.7, 1.5])
    assert S.keep_top_heads(sc, 2).tolist() == [1, 3, 4, 5]  # 0.1 (head 2) and 0.5 (head 0) dropped
    assert S.keep_top_heads(sc, 0).tolist() == [0, 1, 2, 3, 4, 5]
    assert S.keep_top_heads(sc, 6).tolist() == []
    g = _gen(30)
    sc = torch.randn(17, generator=g)
    for k in (0, 3, 9, 17):
        ranked = sorted(range(17), key=lambda i: float(sc[i]))
        assert S.keep_top_heads(sc, k).tolist() == sorted(ranked[k:])


def test_keep_top_channels_keeps_highest():
    sc = torch.tensor([0.5, 3.0, 0.1, 2.0, 0.7, 1.5])
    assert S.keep_top_channels(sc, 3).tolist() == [1, 3, 5]
    assert S.keep_top_channels(sc, 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert S.keep_top_channels(sc, 0).tolist() == []
    sc = torch.randn(50, generator=_gen(31))
    for k in (1, 13, 49):
        ranked = sorted(range(50), key=lambda i: float(sc[i]), reverse=True)
        assert S.keep_top_channels(sc, k).tolist() == sorted(ranked[:k])


# --- PP history EMA (docs/algorithm.md §3.4, §12.5) ----------------------------------------------------------------
def _history(H0: torch.Tensor, key=(1, "mlp")) -> History:
    h = History(None, torch.device("cpu"))
    h.states[key] = H0.clone()
    return h


def test_history_ema_only_kept_channels():
    Lmax, C, B, L, m = 6, 5, 3, 4, 0.9
    H0 = torch.rand(Lmax, C, generator=_gen(40)) + 0.5
    kept = torch.tensor([0, 2, 3])
    z = torch.randn(B, L, kept.numel(), generator=_gen(41))
    h = _history(H0)
    h.ema(1, "mlp", z, kept, None, m)
    H1 = h.states[(1, "mlp")]
    for t in range(Lmax):
        for c in range(C):
            old = float(H0[t, c])
            if t < L and c in kept.tolist():
                j = kept.tolist().index(c)
                batch = sum(float(z[b, t, j]) ** 2 for b in range(B)) / B
                expect = m * old + (1 - m) * batch
                assert abs(float(H1[t, c]) - expect) <= 1e-6 * (1 + abs(expect)), (t, c)
            else:
                assert float(H1[t, c]) == old, (t, c)  # pruned channel or unseen row: frozen, no decay


def test_history_ema_all_channels_when_kept_is_none():
    Lmax, C, B, L, m = 5, 4, 2, 5, 0.99
    H0 = torch.rand(Lmax, C, generator=_gen(42))
    z = torch.randn(B, L, C, generator=_gen(43)) * 3
    h = _history(H0)
    h.ema(1, "mlp", z, None, None, m)
    ref = [[m * float(H0[t, c]) + (1 - m) * sum(float(z[b, t, c]) ** 2 for b in range(B)) / B
            for c in range(C)] for t in range(L)]
    _close(h.states[(1, "mlp")], ref, rtol=2e-6)


def test_history_ema_with_padding():
    Lmax, C, B, L, m = 6, 4, 3, 5, 0.8
    H0 = torch.rand(Lmax, C, generator=_gen(44)) + 0.2
    kept = torch.tensor([1, 3])
    z = torch.randn(B, L, 2, generator=_gen(45)) * 2
    valid = torch.tensor([[1, 1, 1, 0, 0],
                          [1, 1, 0, 0, 0],
                          [1, 1, 1, 1, 0]], dtype=torch.float32)  # position 4: no real token
    h = _history(H0)
    h.ema(1, "mlp", z, kept, valid, m)
    H1 = h.states[(1, "mlp")]
    for t in range(Lmax):
        count = sum(int(valid[b, t]) for b in range(B)) if t < L else 0
        for c in range(C):
            old = float(H0[t, c])
            if count and c in (1, 3):
                j = (1, 3).index(c)
                batch = sum(float(z[b, t, j]) ** 2 for b in range(B) if valid[b, t]) / count
                expect = m * old + (1 - m) * batch
                assert abs(float(H1[t, c]) - expect) <= 1e-6 * (1 + abs(expect)), (t, c)
            else:
                assert float(H1[t, c]) == old, (t, c)


def test_history_rows_at_original_positions():
    H0 = torch.arange(12, dtype=torch.float32).view(4, 3)
    h = _history(H0, (0, "attn"))
    G = h.rows(0, "attn", torch.tensor([0, 2, 7]))
    assert G.tolist() == [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0], [0.0, 0.0, 0.0]]  # position 7 never seen
    assert h.rows(0, "attn", torch.tensor([1, 3])).sum(0).tolist() == [12.0, 14.0, 16.0]


# --- calibration statistics (docs/algorithm.md §3.2, §8.1a) ---------------------------------------------------------
def _ref_fluc(batches: list[torch.Tensor]) -> list[float]:
    """Spec 8.1(a) literally, per position: b and f are (L x C) buffers, n a count; returns sum_t f."""
    _, L, C = batches[0].shape
    b = [[0.0] * C for _ in range(L)]
    f = [[0.0] * C for _ in range(L)]
    n = 0
    for x in batches:
        B = x.shape[0]
        b_old = [row[:] for row in b]
        for t in range(L):
            for c in range(C):
                mean_b = sum(float(x[k, t, c]) for k in range(B)) / B
                b[t][c] = b[t][c] * n / (n + B) + mean_b / (n + B)
        if n > 0:
            bbar = [sum(b[t][c] for t in range(L)) / L for c in range(C)]
            bbar_old = [sum(b_old[t][c] for t in range(L)) / L for c in range(C)]
            for t in range(L):
                for c in range(C):
                    dev = sum((float(x[k, t, c]) - bbar[c]) * (float(x[k, t, c]) - bbar_old[c]) for k in range(B))
                    f[t][c] = f[t][c] * (n - 1) / (n + B - 1) + dev / (n + B)
        n += B
    return [sum(f[t][c] for t in range(L)) for c in range(C)]


def test_stats_accumulator_moments_and_fluc():
    B, L, C = 4, 5, 3
    g = _gen(50)
    batches = [torch.randn(B, L, C, generator=g) * 1.5 + 0.7 for _ in range(3)]
    acc = StatsAccumulator()
    for x in batches:
        acc.update(2, "mlp", x)
    st_ = acc.blocks[(2, "mlp")]
    allx = torch.cat(batches)  # (12, L, C)
    n = allx.shape[0]
    assert st_.n == n
    sq_ref = [[sum(float(allx[k, t, c]) ** 2 for k in range(n)) / n for c in range(C)] for t in range(L)]
    _close(st_.sq, sq_ref, rtol=2e-6)
    mean_ref = [sum(float(allx[k, t, c]) for k in range(n) for t in range(L)) / (n * L) for c in range(C)]
    _close(st_.mean, mean_ref, rtol=2e-6, atol=1e-7)
    _close(st_.baseline, [v / B for v in mean_ref], rtol=2e-6, atol=1e-7)
    _close(st_.fluc, _ref_fluc(batches), rtol=1e-5, atol=1e-6)


def test_stats_first_batch_leaves_fluc_alone():
    acc = StatsAccumulator()
    x = torch.randn(4, 5, 3, generator=_gen(51)) + 1.0
    acc.update(0, "attn", x)
    st_ = acc.blocks[(0, "attn")]
    assert torch.equal(st_.fluc, torch.zeros(3))
    assert st_.n == 4
    ref = [sum(float(x[k, t, c]) for k in range(4) for t in range(5)) / 20 / 4 for c in range(3)]
    _close(st_.baseline, ref, rtol=2e-6, atol=1e-7)


def test_stats_unequal_batch_sizes_fluc():
    g = _gen(52)
    batches = [torch.randn(b, 4, 2, generator=g) + 0.3 for b in (3, 5, 2, 4)]
    acc = StatsAccumulator()
    for x in batches:
        acc.update(0, "attn", x)
    _close(acc.blocks[(0, "attn")].fluc, _ref_fluc(batches), rtol=1e-5, atol=1e-6)


def test_stats_reject_other_window_length():
    acc = StatsAccumulator()
    acc.update(0, "mlp", torch.zeros(2, 5, 3))
    with pytest.raises(ValueError):
        acc.update(0, "mlp", torch.zeros(2, 6, 3))


# --- PruneConfig validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(method="magnitude"),
    dict(ratio=-0.1),
    dict(ratio=1.0),
    dict(ratio=1.5),
    dict(token_frac=0.0),
    dict(token_frac=1.01),
    dict(sample_frac=0.0),
    dict(ema=1.01),
    dict(mlp_multiple=0),
    dict(method="pp", prune_attn=False, prune_mlp=False),
    dict(method="flap", prune_attn=False, prune_mlp=False),
])
def test_prune_config_rejects(kwargs):
    with pytest.raises(ConfigError):
        PruneConfig(**kwargs)


def test_config_error_is_a_ppcore_error():
    with pytest.raises(PPCoreError):
        PruneConfig(method="nope")
    assert issubclass(ConfigError, PPCoreError)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(ratio=0.0),
    dict(ratio=0.99),
    dict(token_frac=1.0),
    dict(sample_frac=1.0),
    dict(ema=0.0),
    dict(ema=1.0),
    dict(mlp_multiple=1),
    dict(method="dense", prune_attn=False, prune_mlp=False),
    dict(prune_attn=False),
])
def test_prune_config_accepts(kwargs):
    PruneConfig(**kwargs)


def test_check_layers():
    cfg = PruneConfig(skip_layers=(0, 1, 4))
    with pytest.raises(ConfigError) as e:
        cfg.check_layers(4)
    assert "4" in str(e.value)
    cfg.check_layers(6)  # 3 of 6 skipped: 0.8 per pruned layer
    with pytest.raises(ConfigError):
        PruneConfig(skip_layers=(3,)).check_layers(3)
    PruneConfig(skip_layers=(2,)).check_layers(3)
    # Skipping so many layers that the others would have to lose everything is refused, not clamped.
    with pytest.raises(ConfigError, match="use at most 0.39 for ratio"):
        cfg.check_layers(5)
    PruneConfig(ratio=0.39, skip_layers=(0, 1, 4)).check_layers(5)
    for n, k in ((7, 1), (30, 3), (5, 3), (4, 3)):  # the suggested ratio is really accepted
        with pytest.raises(ConfigError) as e:
            PruneConfig(ratio=0.99, skip_layers=tuple(range(k))).check_layers(n)
        usable = float(str(e.value).split("at most ")[1].split()[0])
        PruneConfig(ratio=usable, skip_layers=tuple(range(k))).check_layers(n)
        with pytest.raises(ConfigError):
            PruneConfig(ratio=usable + 0.01, skip_layers=tuple(range(k))).check_layers(n)
