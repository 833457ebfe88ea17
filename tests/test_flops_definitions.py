"""Kind 9, FLOPs as the paper counts them (issue 9; the FLOPs names of docs/results.md): every report carries
flops_ratio and probe_flops_ratio (whole model, LM head included) and decoder_flops_ratio and
decoder_probe_flops_ratio (decoder layers only, the paper's definition). Here the four numbers of eval,
bench and speed equal values computed by hand from the layer shapes and the kept heads and channels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ppcore.experiment
from app.header import header_metrics
from ppcore import PruneConfig, Pruner, walk
from ppcore.bench import bench_setup
from ppcore.bench_report import aggregate, markdown
from ppcore.calibrate import calibrate
from ppcore.cli import main
from ppcore.evaluate import evaluate
from ppcore.experiment import EvalSetup
from ppcore.loading import LoadedModel
from ppcore.speed import measure, summary_markdown
from tests.conftest import tiny_llama, tiny_opt

FOUR = ("flops_ratio", "decoder_flops_ratio", "probe_flops_ratio", "decoder_probe_flops_ratio")


def opt_projected(seed: int = 0) -> LoadedModel:
    """An OPT whose word embeddings (32) are narrower than its hidden size (64): project_in/out and an LM
    head of width 32, as in opt-350m's layout (but pre-LN, which the walker needs)."""
    return tiny_opt(seed, proj_dim=32)


MODELS = {"llama-gqa": tiny_llama, "opt": tiny_opt, "opt-projected": opt_projected}


def shapes(lm: LoadedModel) -> dict:
    """The layer shapes, read from the HF config (not from ppcore's adapter)."""
    c = lm.model.config
    if c.model_type == "opt":
        width = c.word_embed_proj_dim
        proj = 2 * (2 * width * c.hidden_size) if width != c.hidden_size else 0  # project_in and project_out
        return dict(D=c.hidden_size, H=c.num_attention_heads, KV=c.num_attention_heads, C=c.ffn_dim, gated=False,
                    V=c.vocab_size, width=width, proj=proj)
    return dict(D=c.hidden_size, H=c.num_attention_heads, KV=c.num_key_value_heads, C=c.intermediate_size,
                gated=True, V=c.vocab_size, width=c.hidden_size, proj=0)


def attn(s: dict, B: int, L: int, h: int, kv: int, out: bool = True) -> int:
    d = s["D"] // s["H"]
    return (2 * B * L * s["D"] * d * (h + 2 * kv) + 2 * 2 * B * h * L * L * d
            + (2 * B * L * h * d * s["D"] if out else 0))


def mlp(s: dict, B: int, L: int, c: int, out: bool = True) -> int:
    return 2 * B * L * s["D"] * c * (2 if s["gated"] else 1) + (2 * B * L * c * s["D"] if out else 0)


def hand_counts(lm: LoadedModel, rec) -> dict[str, int]:
    """One batch record's counts as the engine keeps them: dense and pruned over the whole model (decoder
    layers plus the head), probe, and head (the LM head and any projections outside the layers)."""
    s = shapes(lm)
    B, L = np.asarray(rec.input_ids).shape
    group = s["H"] // s["KV"]
    dense = pruned = probe = 0
    for layer in rec.layers:
        a, m = layer.attn, layer.mlp
        dense += attn(s, B, L, s["H"], s["KV"]) + mlp(s, B, L, s["C"])
        # Grouped-query attention keeps every key/value head (static shapes, as the official code counts them);
        # multi-head attention keeps the kept heads' own.
        kv = len(a.kept) if group == 1 else s["KV"]
        pruned += attn(s, B, L, len(a.kept), kv) + mlp(s, B, L, len(m.kept))
        if a.probe_tokens:
            probe += attn(s, len(a.probe_samples), len(a.probe_tokens), s["H"], s["KV"], out=False)
        if m.probe_tokens:
            probe += mlp(s, len(m.probe_samples), len(m.probe_tokens), s["C"], out=False)
    head = B * L * (2 * s["V"] * s["width"] + s["proj"])
    return {"dense": dense + head, "pruned": pruned + head, "probe": probe, "head": head}


def hand_ratios(c: dict[str, int]) -> dict[str, float]:
    dec_dense, dec_pruned = c["dense"] - c["head"], c["pruned"] - c["head"]
    return {"flops_ratio": c["pruned"] / c["dense"], "decoder_flops_ratio": dec_pruned / dec_dense,
            "probe_flops_ratio": c["probe"] / c["dense"], "decoder_probe_flops_ratio": c["probe"] / dec_dense}


def _data(lm: LoadedModel):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (12, 24), generator=g), torch.randint(0, 128, (8, 24), generator=g)


CFGS = {
    "pp": PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), mlp_multiple=8, sample_frac=0.5),
    "wanda-sp": PruneConfig(method="wanda-sp", ratio=0.5, skip_layers=(0,), mlp_multiple=8),
    "fullbatch": PruneConfig(method="fullbatch", ratio=0.3, skip_layers=(), mlp_multiple=1),
}


@pytest.mark.parametrize("method", list(CFGS))
@pytest.mark.parametrize("model", list(MODELS))
def test_flops_definitions_eval_equals_hand_counts(model, method):
    lm = MODELS[model]()
    win, cwin = _data(lm)
    calib = calibrate(lm, cwin, 4, cache=False, progress=False)
    res = evaluate(lm, CFGS[method], win, 4, calib, level="summary", progress=False)
    scored = [r for r in res.records if r.phase == "scored"]
    assert len(scored) == 3
    counts = [hand_counts(lm, r) for r in scored]
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    assert res.flops == total  # exact integers, summed by key over the scored batches (the head included)
    want = hand_ratios(total)
    for name in FOUR:
        assert getattr(res, name) == pytest.approx(want[name], rel=1e-12), name
    assert total["probe"] > 0 if method != "wanda-sp" else total["probe"] == 0
    assert res.decoder_flops_ratio < res.flops_ratio < 1  # the unpruned head pulls the whole-model ratio up
    if method != "wanda-sp":
        assert res.decoder_probe_flops_ratio > res.probe_flops_ratio > 0
    line = res.line()
    for name in FOUR:
        assert f"{name}={getattr(res, name):.4f}" in line


def test_flops_definitions_projected_opt_counts_project_in_and_out():
    """The head of an OPT with word_embed_proj_dim 32 < hidden 64: its LM head at width 32 plus project_in
    (32 -> 64) and project_out (64 -> 32), per token 2*128*32 + 2*(2*32*64)."""
    lm = opt_projected()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    res = walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), ids, level="summary")
    assert res.flops["head"] == 2 * 8 * (2 * 128 * 32 + 2 * 2 * 32 * 64)
    assert res.record.flops == res.flops == hand_counts(lm, res.record)


def _setup(lm: LoadedModel) -> EvalSetup:
    win, cwin = _data(lm)
    setup = EvalSetup(lm, win, cwin, 4, {"model": lm.name}, progress=False)
    setup._calib = calibrate(lm, cwin, 4, cache=False, progress=False)
    return setup


@pytest.mark.parametrize("model", ["llama-gqa", "opt-projected"])
def test_flops_definitions_bench_rows_and_table(model):
    lm = MODELS[model]()
    setup = _setup(lm)
    cfgs = [PruneConfig(method="dense"), CFGS["pp"], CFGS["wanda-sp"]]
    rows = bench_setup(setup, cfgs, repeats=1, seed=0, progress=False)
    for cfg, row in zip(cfgs, rows):
        alone = evaluate(lm, cfg, setup.windows, 4, setup._calib, level="summary", progress=False)
        total = {k: sum(hand_counts(lm, r)[k] for r in alone.records if r.phase == "scored")
                 for k in ("dense", "pruned", "probe", "head")}
        assert row["flops"] == total
        want = hand_ratios(total)
        for name in FOUR:
            assert row[name] == pytest.approx(want[name], rel=1e-12), (cfg.method, name)
    table = markdown(rows)
    assert "FLOPs / dense (model) | FLOPs / dense (decoder)" in table
    pp = rows[1]
    assert (f"| {pp['flops_ratio']:.3f} | {pp['decoder_flops_ratio']:.3f} | {pp['probe_flops_ratio']:.2%} | "
            f"{pp['decoder_probe_flops_ratio']:.2%} |") in table
    assert f"{pp['decoder_flops_ratio']:.3f}" != f"{pp['flops_ratio']:.3f}"  # the table shows two numbers
    agg = {a["method"]: a for a in aggregate(rows)}
    assert agg["pp"]["decoder_flops_ratio"] == pytest.approx(pp["decoder_flops_ratio"])


def test_flops_definitions_bench_table_of_old_rows_shows_a_dash():
    rows = [{"method": "dense", "ratio": 0.0, "seed": 0, "ppl": 10.0, "seconds": 2.0, "flops_ratio": 1.0,
             "probe_flops_ratio": 0.0},
            {"method": "pp", "ratio": 0.4, "seed": 0, "ppl": 12.0, "seconds": 1.5, "flops_ratio": 0.7,
             "probe_flops_ratio": 0.01}]  # written before the decoder figures existed
    assert "| 0.700 | - | 1.00% | - |" in markdown(rows)


@pytest.mark.parametrize("model", ["llama-gqa", "opt-projected"])
def test_flops_definitions_speed_runs_and_table(model):
    lm = MODELS[model]()
    setup = _setup(lm)
    cfg = CFGS["wanda-sp"]  # static: the same kept sets in every run, so one walk's record gives the shapes
    res = measure(lm, [cfg], setup.windows[:4], setup._calib, repeats=1, hf=False)
    for c, run in zip([PruneConfig(method="dense"), cfg], res["runs"]):
        rec = walk(lm.adapter, Pruner(lm.adapter, c, setup._calib), setup.windows[:4], level="summary").record
        want = hand_ratios(hand_counts(lm, rec))
        for name in FOUR:
            assert run[name] == pytest.approx(want[name], rel=1e-12), (c.method, name)
    r = res["runs"][1]
    assert f"| {r['flops_ratio']:.3f} | {r['decoder_flops_ratio']:.3f} |" in summary_markdown(res)


def test_flops_definitions_eval_json_has_all_four(tmp_path, monkeypatch, capsys):
    lm = tiny_llama()
    win, cwin = _data(lm)
    np.save(tmp_path / "eval.npy", win.numpy())
    np.save(tmp_path / "calib.npy", cwin.numpy())
    monkeypatch.setattr(ppcore.experiment, "load_model", lambda *a, **k: tiny_llama())
    assert main(["eval", "--method", "pp", "--ratio", "0.5", "--skip-layers", "0", "--mlp-multiple", "8",
                 "--sample-frac", "0.5", "--batch-size", "4", "--calib-batch-size", "4",
                 "--windows-file", str(tmp_path / "eval.npy"), "--calib-windows-file", str(tmp_path / "calib.npy"),
                 "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "out.json"),
                 "--record", str(tmp_path / "rec.json"), "--quiet"]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    calib = calibrate(lm, cwin, 4, cache=False, progress=False)
    alone = evaluate(lm, CFGS["pp"], win, 4, calib, level="summary", progress=False)
    total = {k: sum(hand_counts(lm, r)[k] for r in alone.records if r.phase == "scored")
             for k in ("dense", "pruned", "probe", "head")}
    want = hand_ratios(total)
    printed = capsys.readouterr().out
    for name in FOUR:
        assert out[name] == pytest.approx(want[name], rel=1e-12), name
        assert f" {name}={out[name]:.4f}" in printed, name
    assert out["flops"] == total
    # The run record's batches carry the head's count, so the four figures can be recomputed from it.
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert all(set(b["flops"]) == {"dense", "pruned", "probe", "head"} for b in rec["batches"])


def test_flops_definitions_app_header_shows_both_and_old_records_say_na():
    lm = tiny_llama()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    rec = walk(lm.adapter, Pruner(lm.adapter, CFGS["fullbatch"]), ids, level="summary").record
    from ppcore.flops import flops_ratios

    want = hand_ratios(hand_counts(lm, rec))
    summary = {"ppl_dense": 10.0, "ppl_pruned": 11.0, "kl": 0.1, "top1": 0.9, **flops_ratios(rec.flops)}
    shown = {m.label: m.value for m in header_metrics(summary, "fullbatch")}
    assert shown["FLOPs / dense (whole model)"] == f"{want['flops_ratio']:.3f}"
    assert shown["FLOPs / dense (decoder layers)"] == f"{want['decoder_flops_ratio']:.3f}"
    assert shown["Probe FLOPs / dense (whole model)"] == f"{want['probe_flops_ratio']:.2%}"
    assert shown["Probe FLOPs / dense (decoder layers)"] == f"{want['decoder_probe_flops_ratio']:.2%}"
    old = {k: v for k, v in rec.flops.items() if k != "head"}
    shown = {m.label: m.value for m in header_metrics({**summary, **flops_ratios(old)}, "fullbatch")}
    assert shown["FLOPs / dense (decoder layers)"] == "n/a" and shown["Probe FLOPs / dense (decoder layers)"] == "n/a"


def test_flops_definitions_compare_table_shows_both():
    """bench/compare.py's one-seed table is bench's now (`python -m ppcore bench --seeds 0`)."""
    rows = [{"method": "dense", "ratio": 0.0, "seed": 0, "ppl": 10.0, "flops_ratio": 1.0, "decoder_flops_ratio": 1.0,
             "probe_flops_ratio": 0.0, "decoder_probe_flops_ratio": 0.0, "seconds": 2.0},
            {"method": "pp", "ratio": 0.4, "seed": 0, "ppl": 12.0, "flops_ratio": 0.728, "decoder_flops_ratio": 0.657,
             "probe_flops_ratio": 0.0116, "decoder_probe_flops_ratio": 0.0143, "seconds": 1.5}]
    assert "| pp | 40% | - / - | 12.00 | 1.5 | 0.750 | 0.728 | 0.657 | 1.16% | 1.43% | 8.00 |" in markdown(rows)
