"""PP+ (`pp-plus`, docs/algorithm.md "PP+"): every switch off is PP exactly; each formula against a written-out
reference on small tensors; the fitted allocation meets PP's decoder FLOPs and leaves skipped layers alone; the
combinations that mean nothing are refused."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, build_pruner, walk
from ppcore.allocation import allocate, curve, fit_key, options
from ppcore.blocks import ATTN, BLOCKS, MLP
from ppcore.calibrate import calibrate
from ppcore.compensation import (batch_mean_rest, bias_flops, centred_energy, column_sq, compensation_bias,
                                 error_scores)
from ppcore.flops import flops_ratios
from ppcore.walk import Capture
from tests.conftest import TINY_VOCAB as VOCAB

OFF = dict(compensate="off", error_score="off", allocation="uniform", recover="off")


def _batches(n=3, B=6, L=16):
    g = torch.Generator().manual_seed(2)
    out = [torch.randint(0, VOCAB, (B, L), generator=g) for _ in range(n)]
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, :4] = 0  # one left-padded row: the means' counts skip pads
    return [(ids, mask if i == 1 else None) for i, ids in enumerate(out)]


def _run(tiny_lm, tiny_calib, cfg, level="summary"):
    pruner = build_pruner(tiny_lm.adapter, cfg, tiny_calib if cfg.needs_calibration else None)
    return pruner, [walk(tiny_lm.adapter, pruner, ids, m, level=level, timing=False) for ids, m in _batches()]


# --- every switch off is PP --------------------------------------------------------------------------------------

def test_every_switch_off_is_pp_bit_for_bit(tiny_lm, tiny_calib):
    base = dict(ratio=0.5, skip_layers=(0,))
    _, pp = _run(tiny_lm, tiny_calib, PruneConfig(method="pp", **base))
    _, plus = _run(tiny_lm, tiny_calib, PruneConfig(method="pp-plus", **base, **OFF))
    for a, b in zip(pp, plus):
        assert torch.equal(a.hidden, b.hidden) and a.flops == b.flops
        assert [[getattr(x, blk.name).kept for blk in BLOCKS] for x in a.record.layers] == \
               [[getattr(x, blk.name).kept for blk in BLOCKS] for x in b.record.layers]


def test_auto_is_each_methods_own_default_and_as_method_resets_it():
    plus = PruneConfig(method="pp-plus")
    assert (plus.compensate, plus.error_score, plus.allocation, plus.recover) == ("off", "off", "sensitivity", "on")
    pp = PruneConfig()
    assert (pp.compensate, pp.error_score, pp.allocation, pp.recover) == ("off", "off", "uniform", "off")
    assert PruneConfig(method="pp").as_method("pp-plus", 0.2) == replace(plus, ratio=0.2)
    assert PruneConfig(method="pp-plus", compensate="on", recover="off").as_method("wanda-sp", 0.4).compensate == "off"
    assert PruneConfig(method="pp-plus").as_method("pp", 0.4).recover == "off"
    assert PruneConfig(method="dense", compensate="on").compensate == "off"  # dense ignores them, as the ablations
    assert PruneConfig.from_dict(plus.to_dict()) == plus


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="pp", compensate="on"), "compensate 'on' is a switch of method 'pp-plus'"),
    (dict(method="flap", allocation="sensitivity"), "allocation 'sensitivity' is a switch of method 'pp-plus'"),
    (dict(method="wanda-sp", error_score="on"), "error_score 'on' is a switch"),
    (dict(method="pp-plus", compensate="yes"), "compensate must be one of auto, on, off"),
    (dict(method="pp-plus", allocation="greedy"), "allocation must be one of auto, uniform, sensitivity"),
    (dict(method="pp-plus", mlp_ratio=0.3), "leave attn_ratio and mlp_ratio unset"),
])
def test_combinations_that_mean_nothing_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_without_calibration_or_its_windows_pp_plus_says_why(tiny_lm, tiny_calib):
    with pytest.raises(ConfigError, match="needs calibration statistics"):
        Pruner(tiny_lm.adapter, PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), use_history=False,
                                       **dict(OFF, compensate="on")))
    bare = replace(tiny_calib, source=None, fits={})
    with pytest.raises(ConfigError, match="do not carry them"):
        build_pruner(tiny_lm.adapter, PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,)), bare)


# --- the formulas ------------------------------------------------------------------------------------------------

def test_compensation_bias_and_its_flops_against_a_written_out_sum():
    g = torch.Generator().manual_seed(0)
    W, mean = torch.randn(5, 7, generator=g), torch.randn(7, generator=g)
    kept = torch.tensor([0, 2, 3])
    ref = torch.zeros(5)
    for c in range(7):
        if c not in (0, 2, 3):
            for i in range(5):
                ref[i] += W[i, c] * mean[c]
    torch.testing.assert_close(compensation_bias(W, mean, kept), ref)
    assert bias_flops(W, 4) == 2 * 5 * 4  # the product over the 4 pruned columns
    torch.testing.assert_close(compensation_bias(W, mean, torch.arange(7)), torch.zeros(5))


def test_error_scores_and_the_centred_energy_against_written_out_sums():
    g = torch.Generator().manual_seed(1)
    W, s, mean = torch.randn(3, 4, generator=g), torch.rand(4, generator=g) * 4, torch.randn(4, generator=g)
    col = column_sq(W)
    assert torch.allclose(col, torch.tensor([sum(float(W[i, c]) ** 2 for i in range(3)) for c in range(4)]))
    n = 3  # positions the energy was summed over
    centred = centred_energy(s, mean, n)
    assert torch.allclose(centred, torch.tensor([max(float(s[c]) - n * float(mean[c]) ** 2, 0.0) for c in range(4)]))
    channels = error_scores(centred, col, None)
    assert torch.allclose(channels, torch.tensor([float(centred[c]) * float(col[c]) for c in range(4)]))
    heads = error_scores(centred, col, 2)  # two heads of two channels: the sum within each
    assert torch.allclose(heads, torch.stack([channels[:2].sum(), channels[2:].sum()]))


def test_the_batch_mean_leaves_out_the_first_position_and_pads():
    z = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    mean, seen = batch_mean_rest(z, valid)
    rows = [z[0, 1], z[0, 2], z[0, 3], z[1, 1]]
    torch.testing.assert_close(mean, torch.stack(rows).mean(0))
    assert bool(seen)
    torch.testing.assert_close(batch_mean_rest(z, None)[0], z[:, 1:].reshape(-1, 3).mean(0))
    assert not bool(batch_mean_rest(z[:, :1], None)[1])


def test_the_compensation_is_the_calibration_mean_then_an_ema_on_kept_channels(tiny_lm, tiny_calib):
    cfg = PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **dict(OFF, compensate="on"))
    pruner = Pruner(tiny_lm.adapter, cfg, tiny_calib)
    (ids, _), (ids2, _) = _batches()[0], _batches()[2]
    cap = Capture()
    walk(tiny_lm.adapter, pruner, ids, level="none", timing=False, capture=cap, update_history=False)
    for layer in (1, 3):
        w = tiny_lm.adapter.layer(layer)
        for block in BLOCKS:
            d = cap.decisions[layer][block.name]
            kept = block.unit_channels(d.kept, tiny_lm.adapter.dims)
            ref = compensation_bias(block.final_weight(w), tiny_calib.get(layer, block.name).mean_rest, kept)
            torch.testing.assert_close(d.bias, ref)
    before = {k: v.clone() for k, v in pruner.method.means.items()}
    cap = Capture()
    walk(tiny_lm.adapter, pruner, ids2, level="none", timing=False, capture=cap)
    d = cap.decisions[2][MLP.name]
    pruned = torch.ones(tiny_lm.adapter.dims.intermediate, dtype=torch.bool)
    pruned[d.kept] = False
    after = pruner.method.means[(2, MLP.name)]
    assert torch.equal(after[pruned], before[(2, MLP.name)][pruned])  # pruned channels keep their mean
    assert not torch.equal(after[~pruned], before[(2, MLP.name)][~pruned])


def test_the_compensation_is_counted_in_the_pruned_flops(tiny_lm, tiny_calib):
    base = PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), **OFF)
    _, off = _run(tiny_lm, tiny_calib, base, level="summary")
    _, on = _run(tiny_lm, tiny_calib, replace(base, compensate="on"), level="summary")
    dims = tiny_lm.adapter.dims
    rec = on[0].record
    for layer in range(1, 4):
        for block in BLOCKS:
            b, b_off = getattr(rec.layers[layer], block.name), getattr(off[0].record.layers[layer], block.name)
            pruned = block.channels(dims) - block.unit_channels(torch.tensor(b.kept), dims).numel()
            assert b.flops["pruned"] == b_off.flops["pruned"] + 2 * dims.hidden * pruned  # the (D x |P|) product
            assert b.flops["pruned"] <= b.flops["dense"]


# --- allocation --------------------------------------------------------------------------------------------------

def test_curve_interpolates_from_zero_and_never_decreases():
    assert curve([2, 4], [0.1, 0.05], [0, 1, 2, 3, 4]) == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1])


def test_allocate_takes_the_cheapest_cost_per_flop_until_the_target():
    costs = {"a": [(0, 0.0, 0.0), (1, 1.0, 10.0), (2, 5.0, 20.0)],   # 0.1 per FLOP, then 0.4
             "b": [(0, 0.0, 0.0), (1, 0.3, 10.0), (2, 0.6, 20.0)]}   # 0.03 per FLOP, twice
    assert allocate(costs, 30.0) == {"a": 1, "b": 2}
    assert allocate(costs, 20.0) == {"a": 0, "b": 2}
    # A non-convex curve: the cheaper rate two steps ahead is taken at once.
    assert allocate({"c": [(0, 0.0, 0.0), (1, 1.0, 1.0), (2, 1.0, 10.0)],
                     "d": [(0, 0.0, 0.0), (1, 0.5, 5.0)]}, 6.0) == {"c": 2, "d": 0}
    with pytest.raises(ValueError, match="less than"):
        allocate(costs, 100.0)


def test_mlp_options_keep_a_multiple_and_heads_any_count():
    assert options(MLP, 160, 64, 100) == [0, 32, 96]
    assert options(ATTN, 6, 64, 4) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def fitted(tiny_lm, tiny_calib):
    cfg = PruneConfig(method="pp-plus", ratio=0.4, skip_layers=(0,), mlp_multiple=1,
                      **dict(OFF, allocation="sensitivity"))
    return cfg, _run(tiny_lm, tiny_calib, cfg, level="summary")


def test_the_allocation_meets_pps_flops_and_respects_skipped_layers(tiny_lm, tiny_calib, fitted):
    cfg, (pruner, res) = fitted
    _, pp = _run(tiny_lm, tiny_calib, replace(cfg, method="pp", allocation="auto"), level="none")
    ours, theirs = flops_ratios(res[0].flops), flops_ratios(pp[0].flops)
    assert abs(ours["decoder_flops_ratio"] - theirs["decoder_flops_ratio"]) <= 0.01
    assert ours["decoder_probe_flops_ratio"] <= theirs["decoder_probe_flops_ratio"]
    assert all(layer != 0 for layer, _ in pruner.kept_units)
    rec = res[0].record.layers[0]
    assert not rec.attn.pruned and not rec.mlp.pruned
    for (layer, name), kept in pruner.kept_units.items():
        assert len(getattr(res[0].record.layers[layer], name).kept) == kept
    fit = pruner.method.fitted
    assert fit["fitted_on"]["calibration"] == tiny_calib.meta["key"] and fit["fitted_on"]["windows"] == 4
    assert fit["kept"] == {f"{k[0]}.{k[1]}": v for k, v in sorted(pruner.kept_units.items())}


def test_the_fit_is_made_once_and_cached_on_disk(tiny_lm, tiny_calib, fitted, tmp_path, monkeypatch):
    cfg, _ = fitted
    key = fit_key(cfg, tiny_calib)
    assert key in tiny_calib.fits and key == fit_key(replace(cfg, ratio=0.2, compensate="on"), tiny_calib)
    import ppcore.allocation as allocation
    import ppcore.fitting as fitting

    windows = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(5))
    cached = calibrate(tiny_lm, windows, 4, cache_dir=tmp_path, progress=False)
    said = []
    build_pruner(tiny_lm.adapter, cfg, cached, progress=lambda f, t: said.append((f, t)))
    path = allocation.fit_path(fit_key(cfg, cached), tmp_path)
    assert json.loads(path.read_text())["key"] == fit_key(cfg, cached)
    # Progress after every walk: one dense, then one per pruned block and fitted count (3 layers x 2 blocks here).
    assert said[0][0] == 0.0 and said[-1][0] == 1.0 and len(said) == 1 + sum(
        len(c) for c, _ in json.loads(path.read_text())["curves"].values())
    assert all("allocation" in t for _, t in said) and [f for f, _ in said] == sorted(f for f, _ in said)

    def no_walk(*args, **kwargs):
        raise AssertionError("fitted again instead of reading the cached fit")

    monkeypatch.setattr(fitting, "walk", no_walk)
    again = calibrate(tiny_lm, windows, 4, cache_dir=tmp_path, progress=False)
    assert build_pruner(tiny_lm.adapter, cfg, again).kept_units == build_pruner(tiny_lm.adapter, cfg, cached).kept_units
    # A Pruner built directly reads the fit the disk holds, and says how to make one when there is none.
    assert Pruner(tiny_lm.adapter, cfg, calibrate(tiny_lm, windows, 4, cache_dir=tmp_path, progress=False)).kept_units
    fresh = calibrate(tiny_lm, windows, 4, cache=False, progress=False)
    with pytest.raises(ConfigError, match="build_pruner"):
        Pruner(tiny_lm.adapter, cfg, fresh)


def test_the_analysis_fits_first_and_says_so(tiny_lm, tiny_calib):
    """The app's analysis (ppcore.session.analyse) fits pp-plus's allocation before its timed walk, with progress over
    the first 80 % of its bar (the fit takes minutes, the walks seconds: a newcomer saw 0-10 % for minutes); the walk
    then reads the fit (a second analysis fits nothing, and its walks get the whole bar)."""
    import dataclasses

    from ppcore import session
    from ppcore.config import CalibConfig
    from tests.conftest import DecodeOnlyTokenizer

    tok_lm = dataclasses.replace(tiny_lm, tokenizer=DecodeOnlyTokenizer())
    fresh = calibrate(tiny_lm, torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(7)), 4,
                      cache=False, progress=False)
    cal = session.Calibration(fresh, CalibConfig(windows=8, seq_len=16, batch_size=4), 0, {})
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(8))
    batch = session.Batch(ids, None, "tiny", [[f"t{i}" for i in row] for row in ids.tolist()])
    cfg = PruneConfig(method="pp-plus", ratio=0.4, skip_layers=(0,), mlp_multiple=1)
    said: list = []
    a = session.analyse(tok_lm, cal, cfg, batch, progress=lambda f, t: said.append((f, t)))
    fitting = [(f, t) for f, t in said if "fitting" in t]
    walk = next(x for x in said if x[1].startswith("pp-plus at ratio"))
    assert fitting and all(f <= 0.8 for f, _ in fitting) and fitting[-1][0] == 0.8
    assert said.index(fitting[-1]) < said.index(walk) and walk[0] >= 0.8
    assert any("recovery" in t for _, t in fitting) and any("allocation" in t for _, t in fitting)
    assert [f for f, _ in fitting] == sorted(f for f, _ in fitting)  # one bar over both fits
    assert len(fresh.fits) == 2 and a.main.layers[1].attn is not None  # recovery's and the allocation's
    said.clear()
    session.analyse(tok_lm, cal, cfg, batch, progress=lambda f, t: said.append((f, t)))
    assert not any("fitting" in t for _, t in said)
    assert next(f for f, t in said if t.startswith("pp-plus at ratio")) == 0.1  # the walks' share as before
    # The Pruned channels tab draws the allocation against PP's uniform one, and says what it is.
    from app.result import Result
    from app.state import Settings
    from app.views import channels

    r = Result("k", Settings(), a)
    drawn = channels._with_uniform(r, channels.layer_table(r))
    assert set(drawn.block) == {"attn", "mlp", "attn, PP", "mlp, PP"} and len(drawn) == 4 * 4
    assert "PP+'s allocation** (sensitivity)" in channels._allocation_note(r)
    assert "PP+'s recovery" in channels._allocation_note(r)  # pp-plus recovers by default
    r_pp = Result("k", Settings(), session.analyse(tok_lm, cal, PruneConfig(ratio=0.4, skip_layers=(0,)), batch))
    assert channels._allocation_note(r_pp) == "" and set(channels._with_uniform(
        r_pp, channels.layer_table(r_pp)).block) == {"attn", "mlp"}


# --- the 'local' allocation ----------------------------------------------------------------------------------------

def test_an_exchange_restores_the_best_block_and_the_cheapest_pay_for_it():
    from ppcore.allocation import exchange

    removed = {(1, "attn"): 2, (1, "mlp"): 64, (2, "mlp"): 64}
    step = {(1, "attn"): 1, (1, "mlp"): 32, (2, "mlp"): 32}
    less = {(1, "attn"): (1.0, 10.0)}  # restoring a head saves 1.0 nat of KL and gives up 10 FLOPs
    more = {(1, "mlp"): (0.2, 5.0), (2, "mlp"): (0.3, 6.0)}  # 0.04 and 0.05 nat per FLOP: both must pay (5 < 10)
    out, moved = exchange(removed, step, more, less, surplus=0.0)
    assert out == {(1, "attn"): 1, (1, "mlp"): 96, (2, "mlp"): 96} and moved == 3
    assert removed[(1, "attn")] == 2  # the input is left as it was
    # Payers that would add more KL than the restore saves: nothing moves.
    assert exchange(removed, step, {(1, "mlp"): (0.6, 5.0), (2, "mlp"): (0.5, 6.0)}, less, 0.0) == (removed, 0)
    # A surplus already there pays on its own; FLOPs that cannot be paid back end the round.
    assert exchange(removed, step, more, less, surplus=10.0)[0] == {**removed, (1, "attn"): 1}
    assert exchange(removed, step, {(1, "mlp"): (0.01, 1.0)}, less, 0.0) == (removed, 0)


def test_the_local_allocation_meets_pps_flops_where_it_operates(tiny_lm, tiny_calib):
    cfg = PruneConfig(method="pp-plus", ratio=0.4, skip_layers=(0,), mlp_multiple=2, **dict(OFF, allocation="local"))
    pruner, res = _run(tiny_lm, tiny_calib, cfg, level="summary")
    _, pp = _run(tiny_lm, tiny_calib, replace(cfg, method="pp", **{k: "auto" for k in OFF}), level="none")
    ours, theirs = flops_ratios(res[0].flops), flops_ratios(pp[0].flops)
    assert ours["decoder_flops_ratio"] <= theirs["decoder_flops_ratio"] + 1e-9
    assert abs(ours["decoder_flops_ratio"] - theirs["decoder_flops_ratio"]) <= 0.01
    fit = pruner.method.fitted
    from ppcore.allocation import LOCAL_ROUNDS

    assert fit["allocation"] == "local" and len(fit["rounds"]) == LOCAL_ROUNDS + 1 and "moves" in fit["rounds"][0]
    assert fit["flops_saved_per_token"] >= fit["pp_flops_saved_per_token"]
    assert all(layer != 0 for layer, _ in pruner.kept_units)
    assert all(n % 2 == 0 for (_, b), n in pruner.kept_units.items() if b == "mlp")
    # The fit is made at the run's ratio and switches: another ratio is another fit.
    assert fit_key(cfg, tiny_calib) != fit_key(replace(cfg, ratio=0.2), tiny_calib)
    assert fit_key(cfg, tiny_calib) != fit_key(replace(cfg, compensate="on"), tiny_calib)


def test_the_uniform_line_drawn_beside_an_allocation_is_what_pp_keeps(tiny_lm, tiny_calib):
    """The Pruned channels tab draws PP+'s kept fractions against PP's uniform allocation: that line is exactly what
    PP's own run keeps, layer by layer, skipped layers whole."""
    from ppcore.analysis import kept_fractions, uniform_kept_fractions

    for cfg in (PruneConfig(method="pp", ratio=0.4, skip_layers=(0,), mlp_multiple=8),
                PruneConfig(method="pp", ratio=0.3, skip_layers=(0, 2), attn_ratio=0.4, mlp_ratio=0.2, mlp_multiple=1),
                PruneConfig(method="pp", ratio=0.4, skip_layers=(1,), prune_attn=False)):
        _, res = _run(tiny_lm, tiny_calib, cfg, level="summary")
        for b in ("attn", "mlp"):
            assert uniform_kept_fractions(res[0].record, cfg, b) == kept_fractions(res[0].record, b), (cfg, b)
