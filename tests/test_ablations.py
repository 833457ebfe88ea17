"""The ablation settings of PruneConfig (docs/ablations.md): each one's formula or behaviour on a tiny model, and
that every setting at its default changes nothing (the official windows' parity tests check the same on the
real model)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, walk
from ppcore.blocks import ATTN, BLOCKS
from ppcore.config import settings_of
from ppcore.ratios import adjusted_ratio, heads_pruned, mlp_kept_for_ratio
from ppcore.scores import flap_channels, fuse_fixed, wanda_sp_channels
from tests.conftest import TINY_VOCAB as VOCAB
from tests.conftest import tiny_llama


def _batches(n=3, B=6, L=16):
    g = torch.Generator().manual_seed(2)
    return [torch.randint(0, VOCAB, (B, L), generator=g) for _ in range(n)]


def _run(tiny_lm, tiny_calib, cfg, batches=None, level="full"):
    """Every batch through one Pruner (PP's history carries): the records and the final hidden states."""
    pruner = Pruner(tiny_lm.adapter, cfg, tiny_calib if cfg.needs_calibration else None)
    out = []
    for ids in batches or _batches():
        out.append(walk(tiny_lm.adapter, pruner, ids, level=level, timing=False))
    return out


def _kept(results):
    return [[(getattr(layer, b.name).kept) for layer in r.record.layers for b in BLOCKS] for r in results]


def _same(a, b):
    assert _kept(a) == _kept(b)
    for x, y in zip(a, b):
        assert torch.equal(x.hidden, y.hidden)


# --- defaults ------------------------------------------------------------------------------------------------

def test_every_ablation_setting_at_its_default_is_todays_config(tiny_lm, tiny_calib):
    """The defaults spelt out give the same keep-sets and bit-identical outputs as the config without them."""
    base = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,))
    spelt = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), score="ppsp", fusion="importance",
                        probe_weight=0.5, attn_ratio=None, mlp_ratio=None)
    assert base == spelt
    same_ratio = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), attn_ratio=0.5, mlp_ratio=0.5)
    _same(_run(tiny_lm, tiny_calib, base), _run(tiny_lm, tiny_calib, same_ratio))
    names = [s.name for s in settings_of(PruneConfig)]
    assert names[-5:] == ["score", "fusion", "probe_weight", "attn_ratio", "mlp_ratio"]


# --- history and probe composition -----------------------------------------------------------------------------

def test_a_whole_batch_probe_without_history_is_fullbatch(tiny_lm, tiny_calib):
    whole = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), token_frac=1.0, sample_frac=1.0, use_history=False)
    oracle = PruneConfig(method="fullbatch", ratio=0.5, skip_layers=(0,))
    a, b = _run(tiny_lm, tiny_calib, whole), _run(tiny_lm, tiny_calib, oracle)
    assert _kept(a) == _kept(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.hidden, y.hidden, rtol=0, atol=1e-6)


def test_fixed_fusion_at_weight_one_is_the_probe_alone(tiny_lm, tiny_calib):
    fixed = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), fusion="fixed", probe_weight=1.0)
    alone = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), use_history=False)
    _same(_run(tiny_lm, tiny_calib, fixed), _run(tiny_lm, tiny_calib, alone))


def test_fixed_fusion_is_the_written_out_blend_and_the_record_says_its_weight(tiny_lm, tiny_calib):
    P, G = torch.rand(5, 7), torch.rand(5, 7)
    torch.testing.assert_close(fuse_fixed(P, G, 0.3), 0.3 * P + 0.7 * G)
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), fusion="fixed", probe_weight=0.3)
    res = _run(tiny_lm, tiny_calib, cfg)
    rec = res[-1].record.layers[1].mlp
    assert rec.fusion_weight == pytest.approx([0.3] * len(rec.fusion_weight))
    # The fused energy the score used is the blend of what the record shows for probe and history.
    torch.testing.assert_close(torch.tensor(rec.energy_fused),
                               0.3 * torch.tensor(rec.energy_probe) + 0.7 * torch.tensor(rec.energy_history),
                               rtol=1e-3, atol=1e-5)


def test_a_frozen_history_is_calibration_fused_with_every_probe(tiny_lm, tiny_calib):
    """ema 1 keeps the calibration history as it was: each batch fuses its probe with the calibration energies,
    whatever came before, so a batch decides the same alone as after others."""
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), ema=1.0)
    batches = _batches()
    after = _run(tiny_lm, tiny_calib, cfg, batches)[-1]
    alone = _run(tiny_lm, tiny_calib, cfg, batches[-1:])[0]
    assert _kept([after]) == _kept([alone])


def test_tokens_only_and_samples_only_probes_have_the_sizes_they_say(tiny_lm, tiny_calib):
    tokens_only = _run(tiny_lm, tiny_calib, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), sample_frac=1.0))[0]
    samples_only = _run(tiny_lm, tiny_calib, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), token_frac=1.0))[0]
    rec = tokens_only.record.layers[1].attn
    assert len(rec.probe_samples) == 6 and len(rec.probe_tokens) == 8
    rec = samples_only.record.layers[1].attn
    assert len(rec.probe_samples) == 1 and rec.probe_tokens == list(range(16))


# --- the score -------------------------------------------------------------------------------------------------

def test_ppsp_calib_with_wanda_sps_score_is_wanda_sp(tiny_lm, tiny_calib):
    a = _run(tiny_lm, tiny_calib, PruneConfig(method="ppsp-calib", ratio=0.5, skip_layers=(0,), score="wanda-sp"))
    b = _run(tiny_lm, tiny_calib, PruneConfig(method="wanda-sp", ratio=0.5, skip_layers=(0,)))
    _same(a, b)


@torch.inference_mode()
def test_calibration_flap_score_is_flaps_metric_at_the_uniform_ratio(tiny_lm, tiny_calib):
    """FLAP's metric from calibration, kept at every layer's r_eff (no global allocation, no bias)."""
    cfg = PruneConfig(method="ppsp-calib", ratio=0.5, skip_layers=(0,), score="flap")
    rec = _run(tiny_lm, tiny_calib, cfg)[0].record
    dims = tiny_lm.adapter.dims
    w = tiny_lm.adapter.layer(2)
    for block in BLOCKS:
        st = tiny_calib.get(2, block.name)
        ch = flap_channels(block.final_weight(w), st.fluc)
        expect = ch.view(-1, dims.head_dim).sum(1) if block is ATTN else ch
        got = getattr(rec.layers[2], block.name)
        torch.testing.assert_close(torch.tensor(got.scores), expect.float(), rtol=1e-4, atol=1e-6)
    r_eff = adjusted_ratio(0.5, dims.num_layers, 1)
    assert len(rec.layers[2].attn.kept) == dims.num_heads - heads_pruned(r_eff, dims.num_heads)
    assert len(rec.layers[2].mlp.kept) == mlp_kept_for_ratio(r_eff, dims.intermediate, 64)


@pytest.mark.parametrize("score, channels", [("wanda-sp", wanda_sp_channels), ("flap", flap_channels)])
@torch.inference_mode()
def test_the_probes_other_scores_are_their_formulas_on_the_fused_energy(tiny_lm, tiny_calib, score, channels):
    """Wanda-sp's and FLAP's metrics on the fused energy (FLAP's official fluctuation is close to a running mean of
    z^2, docs/algorithm.md §8.1a: the fused energy stands in for it, so the history counts as it does for PPsp)."""
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), score=score)
    rec = _run(tiny_lm, tiny_calib, cfg)[-1].record.layers[2]
    w = tiny_lm.adapter.layer(2)
    for block in BLOCKS:
        r = getattr(rec, block.name)
        ch = channels(block.final_weight(w), torch.tensor(r.energy_fused))
        expect = ch.view(-1, tiny_lm.adapter.dims.head_dim).sum(1) if block is ATTN else ch
        torch.testing.assert_close(torch.tensor(r.scores), expect, rtol=1e-3, atol=1e-5)
        assert r.weight_factor is None and r.kept_probe_only is None  # PPsp's counterfactual would mislead


def test_the_history_counts_for_the_probes_flap_score(tiny_lm, tiny_calib):
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), score="flap")
    alone = _run(tiny_lm, tiny_calib, replace(cfg, use_history=False))
    assert _kept(alone) != _kept(_run(tiny_lm, tiny_calib, cfg))


# --- per-block ratios ------------------------------------------------------------------------------------------

def test_block_ratios_set_each_blocks_keep_count(tiny_lm, tiny_calib):
    dims = tiny_lm.adapter.dims
    cfg = PruneConfig(method="pp", ratio=0.4, skip_layers=(0,), attn_ratio=0.0, mlp_ratio=0.6)
    rec = _run(tiny_lm, tiny_calib, cfg)[0].record.layers[2]
    assert rec.attn.kept == list(range(dims.num_heads))
    r_mlp = adjusted_ratio(0.6, dims.num_layers, 1)
    assert len(rec.mlp.kept) == mlp_kept_for_ratio(r_mlp, dims.intermediate, 64)
    assert cfg.block_ratio("attn") == 0.0 and cfg.block_ratio("mlp") == 0.6
    assert PruneConfig(ratio=0.0, attn_ratio=0.3).prunes and not PruneConfig(ratio=0.0, mlp_ratio=0.3,
                                                                              prune_mlp=False).prunes


@pytest.mark.parametrize("kwargs, message", [
    ({"score": "magic"}, "score must be one of ppsp, wanda-sp, flap"),
    ({"method": "wanda-sp", "score": "flap"}, "scores with its own metric"),
    ({"fusion": "average"}, "fusion must be one of importance, fixed"),
    ({"probe_weight": 1.5}, "probe_weight must lie in"),
    ({"attn_ratio": 1.0}, "attn_ratio must lie in"),
    ({"mlp_ratio": -0.1}, "mlp_ratio must lie in"),
    ({"method": "flap", "attn_ratio": 0.2}, "FLAP allocates its own ratio"),
])
def test_bad_ablation_settings_are_refused_with_the_settings_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_block_ratios_are_checked_against_the_model(tiny_lm):
    with pytest.raises(ConfigError, match="mlp_ratio 0.9 with 1 of 4 layers skipped"):
        PruneConfig(method="pp", ratio=0.2, skip_layers=(0,), mlp_ratio=0.9).check_layers(4)
    # The share each pruned layer would lose, as a percentage (0.99 x 30 / 27 = 110 %), and what to use instead.
    with pytest.raises(ConfigError, match=r"ratio 0.99 with 3 of 30 layers skipped would remove 110% of the units "
                                          r"of each of the other 27 layers, more than they have: use at most 0.89"):
        PruneConfig(method="pp", ratio=0.99).check_layers(30)


def test_block_ratios_round_trip_through_their_text():
    s = {x.name: x for x in settings_of(PruneConfig)}
    assert s["attn_ratio"].parse("") is None and s["attn_ratio"].parse("0.25") == 0.25
    assert s["mlp_ratio"].text(None) == "" and s["mlp_ratio"].text(0.3) == "0.3"
    with pytest.raises(ConfigError, match="expected a number"):
        s["attn_ratio"].parse("half")
    assert PruneConfig.from_dict(PruneConfig(attn_ratio=0.2).to_dict()).attn_ratio == 0.2
    assert math.isclose(PruneConfig(method="dense", attn_ratio=0.2).ratio, 0.0)
    assert PruneConfig(method="dense", attn_ratio=0.2).attn_ratio is None


def test_a_block_at_ratio_zero_is_switched_off(tiny_lm, tiny_calib):
    """mlp_ratio 0 is attention-only pruning: the MLP is never probed, decided or counted, as with prune_mlp off."""
    zero = _run(tiny_lm, tiny_calib, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), mlp_ratio=0.0))
    off = _run(tiny_lm, tiny_calib, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), prune_mlp=False))
    _same(zero, off)
    assert [r.flops for r in zero] == [r.flops for r in off]
    assert not any(layer.mlp.pruned for layer in zero[0].record.layers)
    assert not PruneConfig(ratio=0.4, attn_ratio=0.0, mlp_ratio=0.0).prunes


def test_everything_skipped_is_refused_only_when_something_would_be_pruned():
    PruneConfig(method="pp", ratio=0.0, skip_layers=(0, 1)).check_layers(2)  # prunes nothing: fine
    with pytest.raises(ConfigError, match="all 2 layers are skipped"):
        PruneConfig(method="pp", ratio=0.0, attn_ratio=0.3, skip_layers=(0, 1)).check_layers(2)


def test_a_baseline_beside_an_ablated_pp_keeps_its_own_settings():
    pp = PruneConfig(method="pp", score="flap", fusion="fixed", probe_weight=0.2, attn_ratio=0.3)
    assert pp.as_method("wanda-sp", 0.4) == PruneConfig(method="wanda-sp", ratio=0.4, attn_ratio=0.3)
    assert pp.as_method("fullbatch", 0.2) == PruneConfig(method="fullbatch", ratio=0.2, score="flap", attn_ratio=0.3)
    assert pp.as_method("flap", 0.4) == PruneConfig(method="flap", ratio=0.4)
    assert pp.as_method("pp", 0.2) == replace(pp, ratio=0.2)
    assert PruneConfig(method="dense", score="flap", fusion="fixed", probe_weight=0.2) == PruneConfig(method="dense")


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "fullbatch", "fusion": "fixed"}, "applies to method pp with use_history on"),
    ({"method": "pp", "use_history": False, "fusion": "fixed"}, "applies to method pp with use_history on"),
    ({"method": "pp", "probe_weight": 0.3}, "probe_weight is the weight of fixed fusion"),
])
def test_fusion_settings_where_nothing_is_fused_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_a_model_no_deeper_than_the_skip_list_runs_dense_and_zero_block_ratios():
    """Three layers, the default skip list (0-2) covers them all: dense, and PP with both block ratios at 0, run
    whole (they prune nothing, so there is no per-layer ratio to compute) and equal each other."""
    small = tiny_llama(layers=3)
    ids = _batches(1)[0]
    dense = walk(small.adapter, Pruner(small.adapter, PruneConfig(method="dense", ratio=0.0)), ids, level="none",
                 timing=False)
    off = PruneConfig(ratio=0.4, attn_ratio=0.0, mlp_ratio=0.0, use_history=False)
    pp = walk(small.adapter, Pruner(small.adapter, off), ids, level="none", timing=False)
    assert torch.equal(dense.hidden, pp.hidden)
