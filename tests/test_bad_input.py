"""Bad input, tried systematically (issue 5, engine side).

Every property here is "a valid input gives a correct answer, an invalid one raises a ppcore error
(a PPCoreError subclass) whose message names the bad value", never a bare torch/Python error and
never a hang. Hypothesis draws the inputs where the input space is a space (ratios, fractions, skip
lists, batch shapes, padding patterns, methods); the rest are listed cases. Models are the tiny
random ones of conftest (4 layers, context 256), so the whole file runs in well under a minute.

Padding: the engine supports right and left padding (positions count from each row's first real
token); both are drawn.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppcore import (METHODS, ConfigError, DataError, ModelLoadError, PPCoreError, PruneConfig, Pruner, build_pruner,
                    load_model, token_nll, walk)
from ppcore.analysis import perplexity
from ppcore.calibrate import calibrate
from ppcore.data import corpus_text, load_windows, sample_windows
from ppcore.evaluate import evaluate
from ppcore.integrity import check_finite
from ppcore.scores import probe_sample_count, probe_token_count
from ppcore.layout import prepare_batch
from tests.conftest import tiny_llama, tiny_opt

VOCAB, CONTEXT, LAYERS = 128, 256, 4  # all three tiny models
MODEL_NAMES = ("llama", "qwen2", "opt")
PRUNING = tuple(m for m in METHODS if m != "dense")
# BAD_INPUT_EXAMPLES=300 for a deeper search (about 10x the time); the default keeps the file ~1 min.
EXAMPLES = int(os.environ.get("BAD_INPUT_EXAMPLES", "25"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(max_examples=max(60, EXAMPLES), deadline=None)


@functools.cache
def model(name: str):
    return {"llama": tiny_llama, "qwen2": lambda: tiny_llama(bias=True), "opt": tiny_opt}[name]()


@functools.cache
def calib(name: str):
    # Two calibration batches, so FLAP's fluctuation statistics are not all zero.
    windows = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(9))
    return calibrate(model(name), windows, 4, cache=False, progress=False)


def pruner(name: str, cfg: PruneConfig) -> Pruner:
    return build_pruner(model(name).adapter, cfg, calib(name) if cfg.needs_calibration else None)


def make_mask(lengths: list[int], L: int, side: str) -> torch.Tensor:
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, L - n:] = 1
        else:
            mask[b, :n] = 1
    return mask


@st.composite
def batches(draw, max_len: int = 40, padded: bool = False, edge: tuple[int, ...] = (CONTEXT - 1, CONTEXT)):
    """(ids, mask or None, side, lengths): B in 1..4, L in 1..max_len or at the context's edge."""
    B = draw(st.integers(1, 4))
    L = draw(st.one_of(st.integers(2 if padded else 1, max_len), st.sampled_from(edge)))
    side = draw(st.sampled_from(["right", "left"] if padded else ["right", "left", "none"]))
    if side == "none":
        lengths = [L] * B
    else:
        lengths = draw(st.lists(st.integers(1, L), min_size=B, max_size=B))
        if padded and min(lengths) == L:
            lengths[draw(st.integers(0, B - 1))] = draw(st.integers(1, L - 1))
    seed = draw(st.integers(0, 2**31 - 1))
    ids = torch.randint(0, VOCAB, (B, L), generator=torch.Generator().manual_seed(seed))
    mask = None if side == "none" else make_mask(lengths, L, side)
    return ids, mask, side, lengths


@st.composite
def configs(draw, methods=METHODS):
    method = draw(st.sampled_from(methods))
    skip = draw(st.lists(st.integers(0, LAYERS - 1), max_size=LAYERS - 1, unique=True))
    attn, mlp = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    # Ratios the skip list can meet: the pruned layers' share (N / (N - skipped) x ratio) stays below 1.
    ratio = draw(st.floats(0, 0.9 * (LAYERS - len(skip)) / LAYERS))
    return PruneConfig(method=method, ratio=ratio, token_frac=draw(st.floats(0.01, 1)),
                       sample_frac=draw(st.floats(0.01, 1)), skip_layers=tuple(skip), prune_attn=attn,
                       prune_mlp=mlp, ema=draw(st.floats(0, 1)), mlp_multiple=draw(st.sampled_from([1, 8, 64])),
                       use_history=draw(st.booleans()), flap_bias=draw(st.sampled_from(["official", "mean", "none"])))


def real_nll(lm, res, ids):
    nll, m = token_nll(lm.adapter, res.hidden, ids, res.valid)
    return nll, m


def decisions(rec):
    return [(b.pruned, b.kept, b.probe_tokens, b.probe_samples) for lay in rec.layers for b in (lay.attn, lay.mlp)]


def scores(rec):
    return [b.scores for lay in rec.layers for b in (lay.attn, lay.mlp)]


def assert_ppcore_error(excinfo, *needles: str):
    assert isinstance(excinfo.value, PPCoreError), type(excinfo.value)
    msg = str(excinfo.value)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


# --- configuration ------------------------------------------------------------------------------
ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30), st.just(10**400),
    st.text(max_size=6), st.none(), st.booleans(), st.just(complex(0.1, 0)), st.lists(st.floats(0, 1), max_size=2),
    st.sampled_from(["0.3", "abc", np.float64(0.25), np.float32(1.5), np.int64(0)]),
)
FRACTIONS = {"ratio": (True, False), "token_frac": (False, True), "sample_frac": (False, True), "ema": (True, True)}


@QUICK
@given(field=st.sampled_from(sorted(FRACTIONS)), value=ANY_VALUE)
def test_fraction_fields(field, value):
    low_in, high_in = FRACTIONS[field]
    number = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    v = float(value) if number and not (isinstance(value, int) and abs(value) > 10**300) else math.nan
    valid = number and (v >= 0 if low_in else v > 0) and (v <= 1 if high_in else v < 1)
    if valid:
        cfg = PruneConfig(method="pp", **{field: value})
        assert type(getattr(cfg, field)) is float and getattr(cfg, field) == v
    else:
        with pytest.raises(ConfigError) as e:
            PruneConfig(method="pp", **{field: value})
        assert_ppcore_error(e, field, repr(value))


SKIP_ITEM = st.one_of(st.integers(-3, LAYERS + 3), st.integers(10**12, 10**13), st.just(2**70))


@QUICK
@given(skip=st.lists(SKIP_ITEM, max_size=8))
def test_skip_lists(skip):
    uniq = sorted(set(skip))
    if any(i < 0 for i in uniq):
        with pytest.raises(ConfigError) as e:
            PruneConfig(method="pp", ratio=0.3, skip_layers=skip, use_history=False)
        assert_ppcore_error(e, "skip_layers", str(min(uniq)))
        return
    cfg = PruneConfig(method="pp", ratio=0.3, skip_layers=skip, use_history=False)
    assert cfg.skip_layers == tuple(uniq)  # duplicates collapse, order does not matter
    bad = [i for i in uniq if i >= LAYERS]
    model("llama")  # built outside the measurement
    tracemalloc.start()
    try:
        if bad or len(uniq) == LAYERS:
            with pytest.raises(ConfigError) as e:
                pruner("llama", cfg)
            assert_ppcore_error(e, *([str(bad[0]), f"{LAYERS} layers"] if bad else [f"all {LAYERS} layers"]))
        else:
            p = pruner("llama", cfg)
            assert [p.prunes_block(i, "attn") for i in range(LAYERS)] == [i not in uniq for i in range(LAYERS)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # a huge index (10**12) allocates nothing in proportion to it


@pytest.mark.parametrize("skip", ["012", None, 5, (1.5,), ("a",), (None,), (True,), (float("nan"),), (float("inf"),),
                                  range(10**12)])
def test_skip_lists_of_the_wrong_kind(skip):
    with pytest.raises(ConfigError) as e:
        PruneConfig(method="pp", skip_layers=skip)
    assert_ppcore_error(e, "skip_layers")


def test_skip_lists_of_whole_numbers_are_accepted():
    assert PruneConfig(skip_layers=(2.0, np.int64(1), 1)).skip_layers == (1, 2)


@pytest.mark.parametrize("field,value", [
    ("method", "magnitude"), ("method", None), ("method", ["pp"]), ("method", "PP"),
    ("flap_bias", "bogus"), ("flap_bias", None), ("flap_bias", 1),
    ("mlp_multiple", 0), ("mlp_multiple", -64), ("mlp_multiple", True), ("mlp_multiple", 2.5), ("mlp_multiple", "8"),
    ("mlp_multiple", None),
    ("prune_attn", "no"), ("prune_mlp", None), ("use_history", 1), ("use_history", "yes"),
])
def test_other_fields(field, value):
    with pytest.raises(ConfigError) as e:
        PruneConfig(**{field: value})
    assert_ppcore_error(e, repr(value) if field != "method" else "method")
    assert field in str(e.value) or field == "method"


def test_other_fields_valid_edges():
    assert PruneConfig(mlp_multiple=np.int64(8)).mlp_multiple == 8
    assert PruneConfig(prune_attn=np.bool_(False)).prune_attn is False
    with pytest.raises(ConfigError) as e:
        PruneConfig(method="pp", prune_attn=False, prune_mlp=False)
    assert_ppcore_error(e, "prune_attn", "prune_mlp")


# --- batches: invalid ---------------------------------------------------------------------------
DENSE = PruneConfig(method="dense")


@pytest.mark.parametrize("ids,needle", [
    (torch.zeros(0, 8, dtype=torch.long), "(0, 8)"),
    (torch.zeros(3, 0, dtype=torch.long), "(3, 0)"),
    (torch.zeros(0, 0, dtype=torch.long), "(0, 0)"),
    (torch.zeros(8, dtype=torch.long), "(8,)"),
    (torch.zeros(2, 3, 4, dtype=torch.long), "(2, 3, 4)"),
    (torch.tensor(5), "()"),
    ([], "(0,)"),
    (np.zeros((2, 0), dtype=np.int64), "(2, 0)"),
])
def test_empty_or_misshapen_batches(ids, needle):
    with pytest.raises(DataError) as e:
        walk(model("llama").adapter, pruner("llama", DENSE), ids)
    assert_ppcore_error(e, needle)


@FAST
@given(bad=st.one_of(st.integers(-10**6, -1), st.integers(VOCAB, 10**9)), pos=st.integers(0, 11),
       name=st.sampled_from(MODEL_NAMES))
def test_token_ids_outside_the_vocabulary(bad, pos, name):
    ids = torch.randint(0, VOCAB, (3, 4))
    ids.view(-1)[pos] = bad
    with pytest.raises(DataError) as e:
        walk(model(name).adapter, pruner(name, DENSE), ids)
    assert_ppcore_error(e, f"[0, {VOCAB})")


@FAST
@given(L=st.integers(CONTEXT + 1, CONTEXT + 200), B=st.integers(1, 3), name=st.sampled_from(MODEL_NAMES))
def test_longer_than_the_context(L, B, name):
    with pytest.raises(DataError) as e:
        walk(model(name).adapter, pruner(name, DENSE), torch.zeros(B, L, dtype=torch.long))
    assert_ppcore_error(e, str(L), f"context of {CONTEXT}")


def test_longer_than_the_context_in_calibrate_and_evaluate():
    lm = model("llama")
    long = torch.zeros(2, CONTEXT + 1, dtype=torch.long)
    with pytest.raises(DataError) as e:
        calibrate(lm, long, 2, cache=False, progress=False)
    assert_ppcore_error(e, f"context of {CONTEXT}")
    with pytest.raises(DataError) as e:
        evaluate(lm, DENSE, long, 2, progress=False)
    assert_ppcore_error(e, f"context of {CONTEXT}")


@pytest.mark.parametrize("mask,needle", [
    (torch.ones(2, 5), "(2, 5)"),  # ids are (2, 6)
    (torch.ones(6), "(6,)"),
    (torch.ones(1, 2, 6), "(1, 2, 6)"),
    (torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]), "row of zeros"),
    (torch.zeros(2, 6), "row of zeros"),
])
def test_attention_mask_wrong_shape_or_empty_rows(mask, needle):
    ids = torch.randint(0, VOCAB, (2, 6))
    with pytest.raises(DataError) as e:
        walk(model("llama").adapter, pruner("llama", DENSE), ids, mask)
    assert_ppcore_error(e, needle)


def test_attention_mask_of_bools_and_ones():
    """Correct answers: a bool mask equals the 0/1 mask; an all-ones mask equals no mask."""
    lm = model("llama")
    ids = torch.randint(0, VOCAB, (2, 6))
    m = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    a = walk(lm.adapter, pruner("llama", DENSE), ids, m).hidden
    b = walk(lm.adapter, pruner("llama", DENSE), ids, m.bool()).hidden
    assert torch.equal(a, b)
    c = walk(lm.adapter, pruner("llama", DENSE), ids, torch.ones(2, 6)).hidden
    d = walk(lm.adapter, pruner("llama", DENSE), ids).hidden
    assert torch.equal(c, d)


# What prepare_batch must refuse rather than silently truncate or misread.
_ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])


@pytest.mark.parametrize("ids,mask,needle", [
    (_ids.float() + 0.5, None, "float32"),  # silently truncated to 3, 4, ... today
    (_ids.float(), None, "float32"),
    (_ids > 5, None, "bool"),  # silently read as ids 0 and 1
    ([[1, 2], [3]], None, "input_ids"),  # ragged: a bare ValueError from torch today
    ("hello", None, "input_ids"),  # a bare TypeError today
    (_ids, torch.full((2, 4), 2), "2"),  # read as all real today
    (_ids, torch.tensor([[1, 1, 0.5, 0], [1, 1, 1, 1]]), "0.5"),  # a half-real position today
    (_ids, torch.tensor([[1, 1, -1, 0], [1, 1, 1, 1]]), "-1"),
    (_ids, torch.tensor([[1, 1, float("nan"), 0], [1, 1, 1, 1]]), "nan"),  # "row of zeros" today
    (_ids, [[1, 1], [1]], "attention_mask"),  # ragged: a bare ValueError today
    (torch.tensor([[3, 4, 500, 6]]), None, "500"),  # the message names the range, not the id
], ids=["float-ids", "float-whole-ids", "bool-ids", "ragged-ids", "text-ids", "mask-2", "mask-half",
        "mask-negative", "mask-nan", "ragged-mask", "names-bad-id"])
def test_prepare_batch_refuses_with_a_clear_message(ids, mask, needle):
    with pytest.raises(DataError) as e:
        prepare_batch(model("llama").adapter, ids, mask)
    assert needle in str(e.value)


# --- batches: valid, any shape and padding, every method ---------------------------------------
@FAST
@given(name=st.sampled_from(MODEL_NAMES), cfg=configs(), batch=batches())
def test_any_valid_batch_gives_a_correct_answer(name, cfg, batch):
    ids, mask, side, lengths = batch
    lm = model(name)
    B, L = ids.shape
    p = pruner(name, cfg)
    res = walk(lm.adapter, p, ids, mask, level="summary")
    nll, m = real_nll(lm, res, ids)
    valid = torch.ones(B, L) if mask is None else mask.float()
    assert nll.shape == m.shape == (B, L - 1)
    assert torch.equal(m, valid[:, 1:] * valid[:, :-1])
    assert bool(torch.isfinite(nll).all()) and bool((nll[m == 0] == 0).all())
    assert bool(torch.isfinite(res.hidden[valid.bool()]).all())
    rec = res.record
    # The record holds the batch as the walk ran it: each row's real tokens first, pad-only columns dropped.
    Lw = max(lengths)
    walk_ids = [[t for t, v in zip(row, vrow) if v] for row, vrow in zip(ids.tolist(), valid.bool().tolist())]
    assert len(rec.layers) == LAYERS and [r[:n] for r, n in zip(rec.input_ids, lengths)] == walk_ids
    assert all(len(r) == Lw for r in rec.input_ids)
    dims = lm.adapter.dims
    for i, layer in enumerate(rec.layers):
        for block, b in (("attn", layer.attn), ("mlp", layer.mlp)):
            total = dims.num_heads if block == "attn" else dims.intermediate
            assert b.total == total and b.kept == sorted(set(b.kept)) and set(b.kept) <= set(range(total))
            assert b.pruned == p.prunes_block(i, block)
            if not b.pruned:
                assert b.kept == list(range(total)) and b.probe_tokens == []
                continue
            if cfg.method != "flap":
                want = p.kept_units.get((i, block)) or (total - p.n_heads_pruned if block == "attn" else p.n_mlp_kept)
                assert len(b.kept) == want
            assert b.scores is not None and len(b.scores) == total and all(math.isfinite(s) for s in b.scores)
            if cfg.method == "fullbatch":
                assert b.probe_tokens == list(range(Lw)) and b.probe_samples == list(range(B))
            elif cfg.method in ("pp", "pp-plus"):  # the probing methods
                # The token count follows the real length, never the padded one, and every probe
                # position holds a real token of some sample (the forced position 0 of every one).
                n_t = probe_token_count(Lw, cfg.token_frac)
                assert b.probe_tokens == sorted(set(b.probe_tokens)) and len(b.probe_tokens) == n_t
                assert b.probe_samples == sorted(set(b.probe_samples))
                assert len(b.probe_samples) == probe_sample_count(B, cfg.sample_frac)
                assert set(b.probe_tokens) <= set(range(Lw)) and set(b.probe_samples) <= set(range(B))
                if n_t <= 10:
                    assert b.probe_tokens[0] == 0
            else:
                assert b.probe_tokens == []
    assert res.flops["pruned"] <= res.flops["dense"]


@FAST
@given(name=st.sampled_from(MODEL_NAMES), cfg=configs(PRUNING), batch=batches(padded=True, edge=(64, 100)),
       other=st.integers(0, 2**31 - 1))
def test_pad_contents_change_nothing(name, cfg, batch, other):
    """Pad ids replaced by random ids: same decisions, scores, history and real-token losses."""
    ids, mask, side, lengths = batch
    lm = model(name)
    noise = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(other))
    ids2 = torch.where(mask.bool(), ids, noise)
    out = []
    for x in (ids, ids2):
        p = pruner(name, cfg)
        r1 = walk(lm.adapter, p, x, mask, level="summary")
        r2 = walk(lm.adapter, p, x, mask, level="summary")  # reads the history the first batch updated
        nll, m = real_nll(lm, r2, x)
        out.append((p, r1.record, r2.record, nll * m))
    (p1, a1, b1, n1), (p2, a2, b2, n2) = out
    assert decisions(a1) == decisions(a2) and decisions(b1) == decisions(b2)
    for s1, s2 in zip(scores(a1) + scores(b1), scores(a2) + scores(b2)):
        assert (s1 is None) == (s2 is None)
        if s1 is not None:
            assert np.allclose(s1, s2, rtol=1e-5, atol=1e-7)
    assert torch.allclose(n1, n2, atol=1e-5)
    if p1.history is not None:
        for key, state in p1.history.states.items():
            assert torch.allclose(state, p2.history.states[key], rtol=1e-5, atol=1e-7), key


def _pad_more(ids, mask, side, k, seed):
    extra_ids = torch.randint(0, VOCAB, (ids.shape[0], k), generator=torch.Generator().manual_seed(seed))
    extra_mask = torch.zeros(ids.shape[0], k, dtype=mask.dtype)
    if side == "left":
        return torch.cat([extra_ids, ids], 1), torch.cat([extra_mask, mask], 1)
    return torch.cat([ids, extra_ids], 1), torch.cat([mask, extra_mask], 1)


@FAST
@given(name=st.sampled_from(MODEL_NAMES), batch=batches(max_len=30, edge=(CONTEXT - 10, CONTEXT - 9)),
       k=st.integers(1, 9), seed=st.integers(0, 999))
def test_more_padding_keeps_dense_losses(name, batch, k, seed):
    """Extra pad columns on the padded side change no real token's dense loss (up to the context)."""
    ids, mask, side, lengths = batch
    lm = model(name)
    if mask is None:
        mask, side = torch.ones_like(ids), "right"
    res = walk(lm.adapter, pruner(name, DENSE), ids, mask)
    nll, m = real_nll(lm, res, ids)
    ids2, mask2 = _pad_more(ids, mask, side, k, seed)
    res2 = walk(lm.adapter, pruner(name, DENSE), ids2, mask2)
    nll2, m2 = real_nll(lm, res2, ids2)
    cut = slice(k, None) if side == "left" else slice(0, ids.shape[1] - 1)
    assert torch.equal(m2[:, cut], m) and m2.sum() == m.sum()
    assert torch.allclose(nll2[:, cut] * m, nll * m, atol=1e-5)


@FAST
@given(name=st.sampled_from(MODEL_NAMES), batch=batches(max_len=30, padded=True))
def test_each_row_alone_matches_the_padded_batch(name, batch):
    """Padding a sample into a batch of other lengths changes none of its real tokens' dense losses."""
    ids, mask, side, lengths = batch
    lm = model(name)
    res = walk(lm.adapter, pruner(name, DENSE), ids, mask)
    nll, m = real_nll(lm, res, ids)
    for b, n in enumerate(lengths):
        row = ids[b, mask[b].bool()][None]
        alone = walk(lm.adapter, pruner(name, DENSE), row)
        nll_b, _ = real_nll(lm, alone, row)
        in_batch = nll[b][m[b].bool()]
        assert in_batch.shape == nll_b[0].shape
        assert torch.allclose(in_batch, nll_b[0], atol=1e-5)


# --- very short sequences and single samples, every method --------------------------------------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("B,L", [(1, 1), (1, 2), (3, 1), (3, 2), (1, 3)])
def test_one_or_two_tokens_every_method(method, B, L):
    for name in MODEL_NAMES:
        lm = model(name)
        cfg = PruneConfig(method=method, ratio=0.5, skip_layers=(0,), mlp_multiple=8, sample_frac=0.5)
        ids = torch.randint(0, VOCAB, (B, L), generator=torch.Generator().manual_seed(B * 10 + L))
        p = pruner(name, cfg)
        for _ in range(2):  # the second batch reads PP's updated history
            res = walk(lm.adapter, p, ids, level="full")
            assert bool(torch.isfinite(res.hidden).all())
        nll, m = real_nll(lm, res, ids)
        assert nll.shape == (B, L - 1) and bool(torch.isfinite(nll).all())
        for layer in res.record.layers[1:]:
            if method == "pp":
                assert len(layer.attn.probe_tokens) == min(L, 2) and layer.attn.probe_tokens[0] == 0
        if L >= 2:
            ev = evaluate(lm, cfg, ids, B, calib(name) if cfg.needs_calibration else None, progress=False)
            assert math.isfinite(ev.ppl) and ev.tokens == B * (L - 1)
        else:
            with pytest.raises(DataError) as e:  # 0/0 loss: refused, not a silent NaN perplexity
                evaluate(lm, cfg, ids, B, calib(name) if cfg.needs_calibration else None, progress=False)
            assert_ppcore_error(e, "at least 2 tokens")
            assert m.numel() == 0 and math.isnan(perplexity(nll, m))  # documented: NaN when nothing is scored


@pytest.mark.parametrize("batch_size,windows,needle", [
    (0, torch.zeros(4, 8, dtype=torch.long), "0"),
    (-1, torch.zeros(4, 8, dtype=torch.long), "-1"),
    (2.5, torch.zeros(4, 8, dtype=torch.long), "2.5"),
    (True, torch.zeros(4, 8, dtype=torch.long), "True"),
    (5, torch.zeros(4, 8, dtype=torch.long), "(4, 8)"),
    (2, torch.zeros(8, dtype=torch.long), "(8,)"),
    (2, [[1, 2], [3, 4]], "list"),
])
def test_evaluate_refuses_bad_batches(batch_size, windows, needle):
    with pytest.raises(DataError) as e:
        evaluate(model("llama"), DENSE, windows, batch_size, progress=False)
    assert_ppcore_error(e, needle)


def test_calibration_from_another_model_is_refused():
    """Statistics of a different model (other widths, fewer or more layers): ConfigError, not an index error."""
    cfg = PruneConfig(method="wanda-sp", ratio=0.5, skip_layers=(0,), mlp_multiple=8)
    with pytest.raises(ConfigError) as e:
        Pruner(model("opt").adapter, cfg, calib("llama"))
    assert_ppcore_error(e, "different model", "recalibrate")
    short = calibrate(tiny_llama(layers=2), torch.randint(0, VOCAB, (4, 8)), 4, cache=False, progress=False)
    for method in ("pp", "flap", "ppsp-calib"):
        with pytest.raises(ConfigError) as e:
            build_pruner(model("llama").adapter, PruneConfig(method=method, ratio=0.5, skip_layers=(0,)), short)
        assert_ppcore_error(e, "layer 2")
    deep = calibrate(tiny_llama(layers=6), torch.randint(0, VOCAB, (4, 8)), 4, cache=False, progress=False)
    with pytest.raises(ConfigError) as e:
        Pruner(model("llama").adapter, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,)), deep)
    assert_ppcore_error(e, "cover 6 layers", "recalibrate")
    # History shorter than the batch is fine (positions never seen read as 0): a correct answer.
    p = Pruner(model("llama").adapter, PruneConfig(method="pp", ratio=0.5, skip_layers=(0,)), calib("llama"))
    res = walk(model("llama").adapter, p, torch.randint(0, VOCAB, (2, 40)))
    assert bool(torch.isfinite(res.hidden).all())


# --- corpora and window files -------------------------------------------------------------------
@pytest.mark.parametrize("case", ["binary", "latin-1", "empty", "whitespace", "missing", "folder", "wrong-suffix"])
def test_bad_corpus_files(tmp_path, case):
    path = tmp_path / ("corpus.pdf" if case == "wrong-suffix" else "corpus.txt")
    if case == "binary":
        path.write_bytes(bytes(range(256)) * 16)
    elif case == "latin-1":
        path.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "whitespace":
        path.write_text("\n \t\n")
    elif case == "folder":
        path.mkdir()
    elif case == "wrong-suffix":
        path.write_text("some text")
    with pytest.raises(DataError) as e:
        corpus_text(str(path), "eval")
    assert_ppcore_error(e, path.name)


def _npy(path: Path, case: str) -> None:
    arrays = {"float": np.zeros((2, 3)), "1-D": np.zeros(3, np.int64), "no-windows": np.zeros((0, 3), np.int64),
              "negative": -np.ones((2, 3), np.int64), "beyond-vocab": np.full((2, 3), 10**6),
              "uint64-huge": np.full((2, 3), 2**63, np.uint64), "bool": np.ones((2, 3), bool),
              "one-token": np.zeros((2, 1), np.int64), "object": np.array([[1, "a"]], dtype=object)}
    if case in arrays:
        np.save(path, arrays[case], allow_pickle=True)  # the loader itself never unpickles
    elif case == "truncated":
        np.save(path, np.zeros((50, 50), np.int64))
        _cut(path, lambda n: n // 2)
    elif case == "text":
        path.write_text("not an array")
    elif case == "zero-bytes":
        path.write_bytes(b"")


@pytest.mark.parametrize("case", ["float", "1-D", "no-windows", "negative", "beyond-vocab", "uint64-huge", "bool",
                                  "one-token", "object", "truncated", "text", "zero-bytes", "missing"])
def test_bad_window_files(tmp_path, case):
    path = tmp_path / "windows.npy"
    _npy(path, case)
    with pytest.raises(DataError) as e:
        load_windows(path, VOCAB)
    assert_ppcore_error(e, "windows.npy")


@pytest.mark.parametrize("ids,count,seq_len,needle", [
    (torch.arange(100), 0, 8, "at least 1"), (torch.arange(100), -1, 8, "-1"), (torch.arange(100), 2.5, 8, "2.5"),
    (torch.arange(100), 3, 1, "at least 2"), (torch.arange(100), 3, 2.5, "2.5"), (torch.arange(100), 3, 101, "100"),
    (torch.arange(0), 3, 8, "0 tokens"), (torch.arange(100).view(10, 10), 2, 5, "(10, 10)"),
])
def test_bad_window_sampling(ids, count, seq_len, needle):
    with pytest.raises(DataError) as e:
        sample_windows(ids, count, seq_len, 0)
    assert_ppcore_error(e, needle)


# --- checkpoints: NaN weights, truncated and fake files -----------------------------------------
def _tiny_checkpoint(folder: Path, poison: dict[str, float] | None = None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, value in (poison or {}).items():
            params[name].view(-1)[:3] = value
    m.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w1").save_pretrained(folder)
    return folder


def _no_partial_models(cache: Path) -> None:
    models = cache / "models"
    assert not models.exists() or not any(models.iterdir()), list(models.iterdir())


def test_clean_checkpoint_loads(tmp_path):
    """Control for the cases below: the same folder, unpoisoned and whole, loads and runs."""
    lm = load_model(str(_tiny_checkpoint(tmp_path / "ok")), device="cpu", cache_dir=tmp_path / "cache")
    res = walk(lm.adapter, Pruner(lm.adapter, DENSE), torch.randint(0, 64, (2, 5)))
    assert bool(torch.isfinite(res.hidden).all())


@pytest.mark.parametrize("tensor", ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight",
                                    "model.layers.1.input_layernorm.weight", "lm_head.weight"])
@pytest.mark.parametrize("value,word", [(math.nan, "3 NaN values"), (math.inf, "3 infinite values"),
                                        (-math.inf, "3 infinite values")])
def test_nan_or_inf_weights_are_refused(tmp_path, tensor, value, word):
    folder = _tiny_checkpoint(tmp_path / "ckpt", {tensor: value})
    with pytest.raises(ModelLoadError) as e:
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert_ppcore_error(e, str(folder), f"{tensor} holds {word}", "corrupt")


def test_check_finite_chunks_and_skips_meta(monkeypatch):
    import ppcore.integrity as integrity
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    with torch.device("meta"):
        check_finite(LlamaForCausalLM(cfg), "meta")  # offloaded / unmaterialised weights: nothing to read
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight.view(-1)[[0, 100, 511]] = torch.tensor([math.nan, math.inf, math.nan])
    monkeypatch.setattr(integrity, "CHUNK", 7)
    with pytest.raises(ModelLoadError) as e:
        check_finite(m, "x")
    assert_ppcore_error(e, "model.layers.0.mlp.down_proj.weight holds 2 NaN and 1 infinite values")


def _cut(path: Path, keep) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


@pytest.mark.parametrize("how", ["half", "header-only", "minus-one-byte", "zero-bytes", "text", "random"])
def test_truncated_or_fake_safetensors(tmp_path, how):
    folder = _tiny_checkpoint(tmp_path / "ckpt")
    st_file = folder / "model.safetensors"
    if how == "half":
        _cut(st_file, lambda n: n // 2)
    elif how == "header-only":
        _cut(st_file, lambda n: 8 + int.from_bytes(st_file.read_bytes()[:8], "little"))
    elif how == "minus-one-byte":
        _cut(st_file, lambda n: n - 1)
    elif how == "zero-bytes":
        st_file.write_bytes(b"")
    elif how == "text":
        st_file.write_text("this is not a checkpoint\n" * 20)
    else:
        st_file.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError) as e:
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert_ppcore_error(e, str(folder), "could not load the weights")


def test_a_safetensors_file_instead_of_a_folder(tmp_path):
    folder = _tiny_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ModelLoadError) as e:
        load_model(str(folder / "model.safetensors"), device="cpu", cache_dir=tmp_path / "cache")
    assert_ppcore_error(e, "is a file", "config.json")


def _default_gguf() -> Path | None:
    from ppcore.loading import DEFAULT_GGUF, DEFAULT_PACKAGE

    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # never fetch it from here: no network in tests
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    return path if path.is_file() else None


@pytest.mark.parametrize("how", ["zero-bytes", "magic-only", "100-bytes", "first-1MB", "half", "text", "safetensors"])
def test_truncated_or_fake_gguf(tmp_path, how):
    src = _default_gguf()
    bad = tmp_path / "model.gguf"
    if how in ("magic-only", "100-bytes", "first-1MB", "half"):
        if src is None:
            pytest.skip("the default model's GGUF wheel is not installed")
        size = {"magic-only": 4, "100-bytes": 100, "first-1MB": 1 << 20, "half": src.stat().st_size // 2}[how]
        with open(src, "rb") as f:
            bad.write_bytes(f.read(size))
    elif how == "zero-bytes":
        bad.write_bytes(b"")
    elif how == "text":
        bad.write_text("GGUF? no, just text\n" * 50)
    else:
        _tiny_checkpoint(tmp_path / "ckpt")
        shutil.copy(tmp_path / "ckpt" / "model.safetensors", bad)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as e:
        load_model(str(bad), device="cpu", cache_dir=cache)
    assert_ppcore_error(e, "model.gguf", "is it complete?")
    _no_partial_models(cache)
