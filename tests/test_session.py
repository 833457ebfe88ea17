"""ppcore.session, the app's one door into the engine: its numbers are the engine's own, its results hold no
hidden state, and each on-request computation comes back typed. The real default model, a 2 x 16 batch."""
from __future__ import annotations

import math

import pytest
import torch

from ppcore import ConfigError, PruneConfig, Pruner, session, token_nll, walk
from ppcore import session_timing
from ppcore.analysis import logit_agreement, perplexity, top_k_next
from ppcore.config import CalibConfig

CALIB = CalibConfig(windows=4, seq_len=32, batch_size=2)


@pytest.fixture(scope="module")
def run(default_lm):
    lm = default_lm
    ids = session.corpus_windows(lm.tokenizer, "wiki-vital", 2, 16, 0)
    texts = [lm.tokenizer.batch_decode([[t] for t in row]) for row in ids.tolist()]
    batch = session.Batch(ids, None, "two windows", texts)
    calib = session.calibration(lm, CALIB, 0, cache=False)
    seen: list[tuple[float, str]] = []
    a = session.analyse(lm, calib, PruneConfig(ratio=0.4), batch, seed=0, settings={"source": "test"},
                        progress=lambda v, t: seen.append((v, t)))
    return lm, calib, a, seen


def test_analysis_is_the_engines_numbers(run):
    lm, calib, a, seen = run
    ad, ids = lm.adapter, a.batch.ids
    main = walk(ad, Pruner(ad, a.cfg, calib.stats), ids, level="summary")
    dense = walk(ad, Pruner(ad, PruneConfig(method="dense")), ids, level="summary")
    assert [x.attn.kept for x in a.main.layers] == [x.attn.kept for x in main.record.layers]
    assert torch.equal(a.nll_pruned, token_nll(ad, main.hidden, ids, None)[0].cpu())
    assert torch.equal(a.nll_dense, token_nll(ad, dense.hidden, ids, None)[0].cpu())
    kl, top1 = logit_agreement(ad, dense.hidden, main.hidden)
    assert torch.equal(a.kl, kl) and torch.equal(a.top1, top1)
    assert a.summary()["ppl_pruned"] == perplexity(a.nll_pruned, a.nll_mask)
    for b, pos in ((0, 0), (1, 7), (1, 15)):
        for top, hidden in ((a.top_dense, dense.hidden), (a.top_pruned, main.hidden)):
            want_ids, want_p = top_k_next(ad, hidden, b, pos, session.TOP_K)
            got = top.at(b, pos, session.TOP_K)
            assert [t for t, _ in got] == [lm.tokenizer.decode([i]) for i in want_ids]
            assert [p for _, p in got] == pytest.approx(want_p, rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError):
        a.top_dense.at(0, 0, session.TOP_K + 1)
    with pytest.raises(IndexError):
        a.top_dense.at(2, 0, 1)
    assert a.prompt == lm.tokenizer.decode(ids[0, :16].tolist())
    # Progress went forward to the walks' layers, and the protocol is the app's.
    assert seen[0] == (0.1, "pp at ratio 0.40") and any("30 of 30 layers" in t for _, t in seen)
    p = a.protocol
    assert p.front_end == "app" and p.settings == {"source": "test"} and p.seed == 0 and p.warmup is None
    assert p.config == a.cfg.to_dict() and p.data == {"source": "two windows", "shape": [2, 16]}
    assert {k: p.calibration[k] for k in ("dataset", "windows", "seq_len", "batch_size", "seed", "batches")} == {
        "dataset": "wiki-vital", "windows": 4, "seq_len": 32, "batch_size": 2, "seed": 0, "batches": 2}
    assert session.calibration_text(CALIB) == "4 windows of 32 tokens from wiki-vital, in 2 batches of 2"


def test_on_request_computations_are_typed(run, monkeypatch):
    lm, calib, a, _ = run
    base = session.baselines(lm, calib, a)
    assert list(base) == list(session.BASELINES)  # pp is the analysed method: not repeated
    assert base["fullbatch"].method == "fullbatch" and base["fullbatch"].ratio == a.ratio
    rec = a.run_record(base)
    assert [b.method for b in rec.batches] == ["pp", "dense", *session.BASELINES]
    rows = session.layer_table(a.main, base)
    assert len(rows) == 60 and rows[3]["jaccard_fullbatch"] is not None and rows[0]["jaccard_flap"] is None

    stab = session.stability(lm, calib, a, "wiki-vital", 0, 1)
    assert stab.batches == 2 and stab.attn.shape == stab.mlp.shape == (1, 30) and 0 <= stab.mean("mlp") <= 1
    assert math.isnan(stab.attn[0, 0])  # layer 0 is skipped
    # The history each batch was decided with, per head: batch 1 decides with the calibration state, summed over
    # the batch's 16 positions and each head's 64 channels; skipped layers read as NaN.
    sq = calib.stats.get(5, "attn").sq[:16]
    want = sq.sum(0).view(9, 64).sum(1).numpy()
    assert stab.history["attn"].shape == (2, 30, 9) and stab.history["mlp"].shape == (2, 30, 1536)
    assert stab.history["attn"][0, 5] == pytest.approx(want, rel=1e-5)
    assert math.isnan(stab.history["attn"][0, 0, 0]) and math.isnan(stab.history_changed["mlp"][0, 0])
    # After batch 1 the EMA moved the kept heads' history only.
    moved = stab.history["attn"][1, 5] != stab.history["attn"][0, 5]
    assert set(moved.nonzero()[0].tolist()) <= set(a.main.layers[5].attn.kept)
    assert (stab.history_changed["mlp"][:, 3:] >= 0).all()

    gen = session.generation(lm, calib, a.cfg, "The capital of France is", 3)
    assert gen.prompt == "The capital of France is" and 1 <= gen.dense.tokens <= 3 and gen.pruned.text

    lat = session.latency(lm, calib, a, 1)
    assert [t.method for t in lat.runs] == ["dense", "pp"] and lat.batch == (2, 16) and lat.repeats == 1
    assert len(lat.blocks) == 60 and lat.runs[0].time_vs_dense == 1.0

    rows = session.comparison(lm, calib, a, [0.4], 1)
    assert [r.timing.method for r in rows] == ["pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib", "dense"]
    pp, dense = rows[0].row(), rows[-1].row()
    assert pp["ppl"] == pytest.approx(a.summary()["ppl_pruned"], rel=1e-6) and dense["prr"] is None
    assert list(pp) == ["method", "ratio", "ppl", "ppl_increase", "seconds", "time_vs_dense", "flops_ratio",
                        "decoder_flops_ratio", "probe_flops_ratio", "decoder_probe_flops_ratio", "prr"]

    # A sweep's every ratio is checked before anything runs (a newcomer's 0.2, 1.5 failed after minutes of 0.2).
    calls = []
    monkeypatch.setattr(session_timing, "measure", lambda *a, **k: calls.append(1))
    for bad, said in ((1.5, "must lie in"), (0.95, "use at most")):
        with pytest.raises(ConfigError, match=said):
            session.comparison(lm, calib, a, [0.2, bad], 1)
    assert calls == []
    assert [len(c) for c in session.comparison_configs(a, [0.2, 0.6], 30)] == [5, 5]


def test_dense_analysis_compares_dense_with_itself(run):
    lm, calib, a, _ = run
    d = session.analyse(lm, None, PruneConfig(method="dense"), a.batch, ratio=0.4)
    assert d.main is d.dense and d.cfg.ratio == 0.0 and d.ratio == 0.4 and d.protocol.calibration is None
    assert float(d.kl.max()) == 0.0 and float(d.top1.min()) == 1.0
    assert d.run_record().batches == [d.main]
    assert list(session.baselines(lm, calib, d)) == ["pp", *session.BASELINES]  # pp joins when not analysed
