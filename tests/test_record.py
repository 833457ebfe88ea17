"""The run record of a PP walk on a tiny Llama: its content, and its JSON round trip."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from ppcore import PruneConfig, Pruner, RunRecord, walk
from ppcore.protocol import Protocol
from ppcore.record import BatchRecord
from tests.conftest import tiny_llama

B, L = 4, 16
HEADS, HEAD_DIM, HIDDEN, INTER, LAYERS = 6, 16, 96, 160, 4
# r_eff = round(4 / 3 * 0.5, 2) = 0.67; heads pruned int(0.67 * 6) = 4 -> 2 kept;
# MLP pruned int(0.67 * 160) = 107 -> 53 kept, rounded up to a multiple of 64 -> 64 kept.
ATTN_KEPT, MLP_KEPT = 2, 64
N_T = max(math.ceil(L * 0.5), 2)  # 8 probe tokens (<= 10: token 0 forced)
N_B = max(math.ceil(B * 0.05), 1)  # 1 probe sample


@pytest.fixture(scope="module")
def batch_record() -> BatchRecord:
    lm = tiny_llama()
    cfg = PruneConfig(method="pp", ratio=0.5, use_history=False, skip_layers=(0,))
    pruner = Pruner(lm.adapter, cfg)
    ids = torch.randint(0, 128, (B, L), generator=torch.Generator().manual_seed(3))
    res = walk(lm.adapter, pruner, ids, level="full")
    assert res.record is not None
    assert res.record.input_ids == ids.tolist()
    return res.record


def _l2(values) -> float:
    return math.sqrt(sum(float(v) ** 2 for v in values))


def _ref_probe(importance: list[list[float]]) -> tuple[list[int], list[int]]:
    """Tokens ranked over all samples, then samples over the chosen tokens (docs/algorithm.md §2.3)."""
    Bn, Ln = len(importance), len(importance[0])
    tok = [_l2(importance[b][t] for b in range(Bn)) for t in range(Ln)]
    tokens = sorted(sorted(range(Ln), key=lambda t: tok[t], reverse=True)[:N_T])
    tokens[0] = 0
    smp = [_l2(importance[b][t] for t in tokens) for b in range(Bn)]
    samples = sorted(sorted(range(Bn), key=lambda b: smp[b], reverse=True)[:N_B])
    return tokens, samples


def test_batch_fields(batch_record):
    r = batch_record
    assert r.method == "pp" and r.ratio == 0.5
    assert r.attention_mask is None
    assert len(r.layers) == LAYERS
    assert 0 < r.flops["pruned"] < r.flops["dense"]
    assert r.flops["probe"] > 0
    block_dense = sum(getattr(lay, b).flops["dense"] for lay in r.layers for b in ("attn", "mlp"))
    block_pruned = sum(getattr(lay, b).flops["pruned"] for lay in r.layers for b in ("attn", "mlp"))
    head = 2 * B * L * HIDDEN * 128  # the LM head, never pruned
    assert r.flops["dense"] == block_dense + head
    assert r.flops["pruned"] == block_pruned + head


def test_skipped_layer_keeps_everything(batch_record):
    layer = batch_record.layers[0]
    for name, total in (("attn", HEADS), ("mlp", INTER)):
        blk = getattr(layer, name)
        assert blk.pruned is False
        assert blk.total == total
        assert blk.kept == list(range(total))
        assert blk.probe_tokens == [] and blk.probe_samples == []
        assert blk.flops["pruned"] == blk.flops["dense"]
        assert blk.flops["probe"] == 0


@pytest.mark.parametrize("i", [1, 2, 3])
def test_pruned_layer_blocks(batch_record, i):
    layer = batch_record.layers[i]
    for name, total, n_kept in (("attn", HEADS, ATTN_KEPT), ("mlp", INTER, MLP_KEPT)):
        blk = getattr(layer, name)
        assert blk.pruned is True
        assert blk.total == total
        assert len(blk.kept) == n_kept
        assert blk.kept == sorted(set(blk.kept)) and 0 <= blk.kept[0] and blk.kept[-1] < total
        assert len(blk.probe_tokens) == N_T and blk.probe_tokens == sorted(set(blk.probe_tokens))
        assert blk.probe_tokens[0] == 0
        assert len(blk.probe_samples) == N_B
        assert all(0 <= s < B for s in blk.probe_samples)
        # importance grid: residual norm over every sample x token
        assert len(blk.importance) == B and all(len(row) == L for row in blk.importance)
        assert all(v > 0 for row in blk.importance for v in row)
        # scores: one per head / channel; the kept ones are the top-scored
        assert blk.scores is not None and len(blk.scores) == total
        kept_min = min(blk.scores[k] for k in blk.kept)
        dropped = [blk.scores[k] for k in range(total) if k not in set(blk.kept)]
        assert kept_min >= max(dropped)
        # energies: per input channel of o_proj / down_proj; no history here
        channels = HEADS * HEAD_DIM if name == "attn" else INTER
        assert len(blk.energy_probe) == channels and len(blk.energy_fused) == channels
        assert blk.energy_history is None
        assert blk.energy_fused == blk.energy_probe
        assert 0 < blk.flops["pruned"] < blk.flops["dense"]
        assert blk.flops["probe"] > 0
        assert {"probe_s", "decide_s", "full_s"} <= set(blk.times)


@pytest.mark.parametrize("i", [1, 2, 3])
def test_probe_follows_importance_grid(batch_record, i):
    """The recorded probe is the one the recorded residual importance selects."""
    for name in ("attn", "mlp"):
        blk = getattr(batch_record.layers[i], name)
        assert (blk.probe_tokens, blk.probe_samples) == _ref_probe(blk.importance)


def test_attn_and_mlp_rank_different_residuals(batch_record):
    # The MLP ranks the post-attention residual, so its grid differs from the attention's.
    layer = batch_record.layers[2]
    assert layer.attn.importance != layer.mlp.importance


def test_run_record_round_trip(batch_record, tmp_path):
    protocol = Protocol(front_end="eval", model={"name": "tiny-llama"}, data={"seq_len": L},
                        config=PruneConfig(method="pp", ratio=0.5, skip_layers=(0,)).to_dict())
    scored = dataclasses.replace(batch_record, loss=4.8125, tokens=B * (L - 1), phase="scored", index=2)
    run = RunRecord(protocol, [scored])
    path = tmp_path / "run.json"
    run.save(path)
    loaded = RunRecord.load(path)
    assert loaded.to_dict() == run.to_dict()
    lb = loaded.batches[0]
    assert (lb.loss, lb.tokens, lb.phase, lb.index) == (4.8125, B * (L - 1), "scored", 2)
    assert loaded.batches[0].layers[1].mlp.kept == batch_record.layers[1].mlp.kept
    assert loaded.batches[0].layers[1].attn.kept_fraction == pytest.approx(ATTN_KEPT / HEADS)

    raw = json.loads(path.read_text())
    assert {"protocol", "batches"} <= set(raw)
    assert raw["protocol"] == protocol.to_dict() and loaded.protocol == protocol
    assert isinstance(loaded.protocol, Protocol) and raw["protocol"]["config"]["skip_layers"] == [0]
    assert len(raw["batches"]) == 1
    b = raw["batches"][0]
    assert {"input_ids", "layers"} <= set(b)
    assert len(b["layers"]) == LAYERS
    for layer in b["layers"]:
        assert {"attn", "mlp"} <= set(layer)
        for name in ("attn", "mlp"):
            blk = layer[name]
            assert {"probe_tokens", "probe_samples", "kept", "scores", "times"} <= set(blk)
    assert b["layers"][1]["attn"]["kept"] == batch_record.layers[1].attn.kept
    assert b["layers"][0]["mlp"]["probe_tokens"] == []


def test_run_record_with_an_older_free_form_protocol_loads(batch_record, tmp_path):
    """Records written before Protocol existed hold a free-form dict: it loads, every key kept."""
    old = {"model": "tiny-llama", "method": "pp", "ratio": 0.5, "skip_layers": [0], "seq_len": L}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"schema": 2, "protocol": old, "batches": [batch_record.to_dict()]}))
    loaded = RunRecord.load(path)
    assert isinstance(loaded.protocol, Protocol)
    assert {k: loaded.protocol[k] for k in old} == old  # mapping-style reads, as on the dict
    assert loaded.protocol.get("method") == "pp" and loaded.protocol.front_end == "unknown"
    assert RunRecord(old, loaded.batches).protocol == loaded.protocol  # a dict given directly converts the same
