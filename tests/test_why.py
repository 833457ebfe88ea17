"""Stage 2 in the run record (schema 3) and `ppcore.why`: every number the history view and the why-panel draw,
checked against written-out formulas on a tiny Llama and a tiny Gemma 3 with a calibration-initialised history."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ppcore import PruneConfig, Pruner, RunRecord, walk
from ppcore.calibrate import calibrate
from ppcore.protocol import Protocol
from ppcore.record import SCHEMA_VERSION, BatchRecord
from ppcore.why import history_changes, history_effect, kept_sets, ranks, stage2, unit_why
from tests.conftest import tiny_gemma3, tiny_llama

B, L = 4, 16
FAMILIES = {"llama": tiny_llama, "gemma3": tiny_gemma3}


def _records(make) -> dict[str, BatchRecord]:
    lm = make()
    vocab = lm.adapter.dims.vocab
    calib_ids = torch.randint(0, vocab, (8, L), generator=torch.Generator().manual_seed(1))
    calib = calibrate(lm, calib_ids, 4, cache=False, progress=False)
    ids = torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(3))
    out = {}
    for m in ("pp", "fullbatch", "wanda-sp", "flap"):
        cfg = PruneConfig(method=m, ratio=0.5, skip_layers=(0,))
        res = walk(lm.adapter, Pruner(lm.adapter, cfg, calib if cfg.needs_calibration else None), ids,
                   level="full" if m in ("pp", "fullbatch") else "summary")
        out[m] = res.record
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def records(request) -> dict[str, BatchRecord]:
    return _records(FAMILIES[request.param])


def test_stage2_fields_match_their_formulas(records):
    pp = records["pp"]
    for layer in pp.layers[1:]:
        for name in ("attn", "mlp"):
            b = getattr(layer, name)
            P, G = np.array(b.energy_probe), np.array(b.energy_history)
            assert b.fusion_weight is not None and b.weight_factor is not None and b.kept_probe_only is not None
            a = np.array(b.fusion_weight)
            assert ((a >= 0) & (a <= 1)).all()
            # Each position's fused value is a convex mix of its P and G, so the sums obey F <= P + G.
            F = np.array(b.energy_fused)
            assert (F <= (P + G) * (1 + 1e-5)).all() and (F >= 0).all()
            # PPsp from the recorded factors equals the recorded score (6-digit rounding).
            d = len(F) // b.total
            contrib = (F * np.array(b.weight_factor)).reshape(b.total, d)
            rebuilt = np.sqrt((contrib ** 2).sum(1))
            assert np.allclose(rebuilt, b.scores, rtol=1e-4)
            # Probe alone: the same number of units, chosen by the top PPsp of P (ties: the higher index stays).
            alone = np.sqrt(((P * np.array(b.weight_factor)).reshape(b.total, d) ** 2).sum(1))
            top = sorted(sorted(range(b.total), key=lambda u: (alone[u], u))[b.total - len(b.kept):])
            assert len(b.kept_probe_only) == len(b.kept)
            assert b.kept_probe_only == top


def test_fusion_weight_per_position_average():
    """fusion_weight is the mean over probe positions of P / (P + G + 1e-6), written out on a hand-made Energies."""
    from ppcore.methods import Energies

    P = torch.tensor([[1.0, 0.0, 3.0], [2.0, 4.0, 0.0]])
    G = torch.tensor([[1.0, 2.0, 1.0], [6.0, 4.0, 0.0]])
    e = Energies(P, G, torch.zeros(3))
    want = [(1 / (2 + 1e-6) + 2 / (8 + 1e-6)) / 2, (0 + 4 / (8 + 1e-6)) / 2, (3 / (4 + 1e-6) + 0) / 2]
    assert e.fusion_weight.tolist() == pytest.approx(want, rel=1e-6)
    assert Energies(P, None, torch.zeros(3)).fusion_weight is None


def test_no_history_no_stage2_history_fields():
    lm = tiny_llama()
    ids = torch.randint(0, 128, (B, L), generator=torch.Generator().manual_seed(3))
    cfg = PruneConfig(method="pp", ratio=0.5, use_history=False, skip_layers=(0,))
    rec = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="full").record
    b = rec.layers[1].attn
    assert b.energy_history is None and b.fusion_weight is None and b.kept_probe_only is None
    assert b.weight_factor is not None  # PPsp's static factor is there with or without history
    assert history_effect(b) is None and history_changes(rec, "attn") == [None] * len(rec.layers)


def test_unit_why_explains_every_head_and_its_rank(records):
    pp = records["pp"]
    others = {m: r for m, r in records.items() if m != "pp"}
    layer = 2
    b = pp.layers[layer].attn
    for h in range(b.total):
        w = unit_why(pp, others, layer, "attn", h)
        assert w.kept == (h in b.kept)
        assert w.score == b.scores[h]
        # Rank: 1 + the heads ahead of it: kept before pruned, then a higher score, then (a tie) a higher index.
        ahead = [j for j, s in enumerate(b.scores)
                 if ((j in b.kept), s, j) > ((h in b.kept), b.scores[h], h)]
        assert w.rank == 1 + len(ahead)
        assert w.cutoff == min(b.scores[k] for k in b.kept)
        assert (w.rank <= w.n_kept) == w.kept
        assert w.score_from_factors == pytest.approx(w.score, rel=1e-4)
        assert len(w.channels) == len(b.energy_fused) // b.total
        assert w.probe_only_kept == (h in b.kept_probe_only)
        assert [v.method for v in w.others] == list(others)
        for v in w.others:
            o = others[v.method].layers[layer].attn
            assert v.kept == (h in o.kept) and v.decided
            if o.scores is not None:
                assert v.score == o.scores[h]


def test_unit_why_for_an_mlp_channel_is_a_product(records):
    pp = records["pp"]
    b = pp.layers[1].mlp
    c = b.kept[0]
    w = unit_why(pp, {}, 1, "mlp", c)
    assert w.channels == [c]
    assert w.score == pytest.approx(b.energy_fused[c] * b.weight_factor[c], rel=1e-4)


def test_unit_why_refusals(records):
    pp = records["pp"]
    with pytest.raises(ValueError, match="not pruned"):
        unit_why(pp, {}, 0, "attn", 0)  # a skipped layer
    with pytest.raises(ValueError, match="outside"):
        unit_why(pp, {}, 1, "attn", 99)
    with pytest.raises(ValueError, match="outside the record"):
        unit_why(pp, {}, 99, "attn", 0)
    with pytest.raises(ValueError, match="block must be"):
        unit_why(pp, {}, 1, "ffn", 0)


def test_kept_sets_and_history_effect(records):
    pp = records["pp"]
    sets = kept_sets(records, 2, "attn")
    assert sets["pp"] == pp.layers[2].attn.kept and set(sets) == set(records)
    e = history_effect(pp.layers[2].mlp)
    fused, alone = set(pp.layers[2].mlp.kept), set(pp.layers[2].mlp.kept_probe_only)
    assert e.gained == sorted(fused - alone) and e.lost == sorted(alone - fused)
    assert e.changed == len(fused ^ alone) == 2 * len(e.lost)  # each swap turns two decisions around
    changes = history_changes(pp, "mlp")
    assert changes[0] is None and all(isinstance(c, int) for c in changes[1:])


def test_stage2_per_head_sums(records):
    b = records["pp"].layers[1].attn
    s = stage2(b)
    d = len(b.energy_probe) // b.total
    assert s.energy_probe.tolist() == pytest.approx([sum(b.energy_probe[h * d:(h + 1) * d]) for h in range(b.total)])
    assert s.fusion_weight.tolist() == pytest.approx([np.mean(b.fusion_weight[h * d:(h + 1) * d])
                                                      for h in range(b.total)])
    with pytest.raises(ValueError, match="no stage-2"):
        stage2(records["wanda-sp"].layers[1].attn)


def test_ranks_break_ties_as_the_keep_sort_does():
    """Among equal scores the keep-sort drops the lower index first, so the higher index ranks first."""
    from ppcore.scores import keep_top_channels

    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [2, 4, 1, 3]
    scores = [0.0, 0.0, 0.0, 1.0]  # ReLU models (OPT) score dead channels 0
    kept = keep_top_channels(torch.tensor(scores), 2).tolist()
    assert kept == [2, 3]
    r = ranks(scores, kept)
    assert [(int(r[u]) <= len(kept)) == (u in kept) for u in range(4)] == [True] * 4
    # A record's 6-digit rounding can tie units the decision told apart: kept ones still rank first.
    assert ranks([1.0, 1.0], kept=[0]).tolist() == [1, 2]


def test_a_zero_score_tied_with_a_zero_cut_off_is_not_above_it():
    from app.views.unit_why import headline
    from ppcore.record import BlockRecord, LayerRecord

    blk = BlockRecord(pruned=True, total=4, kept=[2, 3], scores=[0.0, 0.0, 0.0, 1.0])
    rec = BatchRecord("pp", 0.5, "single", 0, [[0]], None, [LayerRecord(blk, blk)])
    w = unit_why(rec, {}, 0, "mlp", 0)
    assert not w.kept and w.cutoff == 0.0 and w.margin == 1.0 and w.rank == 4
    text = headline(w, "channel")
    assert "**pruned**" in text and "tied with the cut-off" in text and "above" not in text


def test_schema_3_round_trip_and_older_records_load(records, tmp_path):
    run = RunRecord(Protocol(front_end="eval", model={"name": "tiny"}, data={"seq_len": L}), [records["pp"]])
    path = tmp_path / "r.json"
    run.save(path)
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA_VERSION == 6  # schemas 4 (replay), 5 and 6 read schema 3 records the same
    loaded = RunRecord.load(path).batches[0]
    assert loaded.layers[1].attn.kept_probe_only == records["pp"].layers[1].attn.kept_probe_only
    # A schema-2 record (no stage-2 fields beyond the energies) loads; its new fields read as None.
    for lay in raw["batches"][0]["layers"]:
        for b in ("attn", "mlp"):
            for k in ("fusion_weight", "weight_factor", "kept_probe_only"):
                lay[b].pop(k)
    raw["schema"] = 2
    path.write_text(json.dumps(raw))
    old = RunRecord.load(path).batches[0]
    assert old.layers[1].attn.kept_probe_only is None and old.layers[1].attn.weight_factor is None
    w = unit_why(old, {}, 1, "attn", 0)
    assert w.weight_factor is None and w.score_from_factors is None and w.probe_only_kept is None
    assert math.isfinite(w.score)


def test_token_scores_pick_the_probe_tokens(records):
    """The batch-wide score the page shows is the one select_tokens ranks: its top positions are the probe's."""
    from ppcore.why import sink_positions, token_scores

    b = records["pp"].layers[2].attn
    s = token_scores(b.importance)
    assert s.tolist() == pytest.approx([math.sqrt(sum(row[t] ** 2 for row in b.importance)) for t in range(L)])
    top = sorted(np.argsort(-s, kind="stable")[:len(b.probe_tokens)].tolist())
    top[0] = 0  # token 0 forced when <= 10 probe tokens
    assert set(b.probe_tokens) == set(top)
    assert sink_positions([100.0, 1.0, 1.2, 0.9, 1.1]) == [0]
    assert sink_positions([1.0, 1.0]) == [] and sink_positions([]) == []
