"""Models spread by accelerate (`device_map`): some layers on the CPU, some offloaded to disk.

On this CPU-only machine every execution device is the CPU, so what is tested is the mechanics:
the walk materialises each offloaded layer with accelerate's hooks instead of reading meta tensors,
per-layer statistics follow their layer, and every method's decisions, losses and generated tokens
equal those of the same checkpoint loaded whole. Multi-GPU placement is not exercised here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ppcore import PruneConfig, Pruner, build_pruner, load_model, walk
from ppcore.calibrate import calibrate
from ppcore.generate import generate
from ppcore.cache import cache_root
from ppcore.loading import Placement, convert_gguf, find_default_gguf
from ppcore.walk import token_nll
from tests.conftest import tiny_llama, tiny_opt

METHODS = ("dense", "pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib")
# Explicit maps: layers 0 and 2 stay in memory, 1 and 3 (and the final norm) live on disk.
LLAMA_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
             "model.layers.1": "disk", "model.layers.2": "cpu", "model.layers.3": "disk",
             "model.norm": "disk", "lm_head": "cpu"}
OPT_MAP = {"model.decoder.embed_tokens": "cpu", "model.decoder.embed_positions": "disk",
           "model.decoder.final_layer_norm": "cpu", "model.decoder.layers.0": "disk",
           "model.decoder.layers.1": "cpu", "model.decoder.layers.2": "disk", "model.decoder.layers.3": "cpu",
           "lm_head": "cpu"}


def _checkpoint(folder: Path, lm) -> Path:
    """A loadable folder: the tiny model's weights and the default model's tokenizer files."""
    lm.model.save_pretrained(folder)
    tok_dir, _ = convert_gguf(find_default_gguf(cache_root()), cache_root())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, folder / name)
    return folder


CASES = {
    "llama-auto": (lambda: tiny_llama(), Placement("auto", max_memory={"cpu": "900KB"})),
    "llama-map": (lambda: tiny_llama(), Placement(LLAMA_MAP)),
    "qwen2-all-disk": (lambda: tiny_llama(bias=True), Placement({"": "disk"})),
    "opt-map": (lambda: tiny_opt(), Placement(OPT_MAP)),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(whole model, the same checkpoint dispatched with offload) for one case."""
    make, placement = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    folder = _checkpoint(root / "ckpt", make())
    whole = load_model(str(folder), device="cpu", cache_dir=root / "cache")
    placement = Placement(placement.device_map, placement.max_memory, str(root / "offload"))
    split = load_model(str(folder), cache_dir=root / "cache", placement=placement)
    return whole, split


def _batch(vocab: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (4, 24), generator=g)
    mask = torch.ones(4, 24, dtype=torch.long)
    mask[1, 19:] = 0
    mask[3, 9:] = 0
    return torch.randint(0, vocab, (8, 32), generator=g), ids, mask


def _kept(record):
    return [(lay.attn.kept, lay.mlp.kept, lay.attn.probe_tokens, lay.mlp.probe_samples) for lay in record.layers]


def test_offloaded_layers_hold_meta_tensors(pair):
    _, split = pair
    ad = split.adapter
    assert "disk" in split.model.hf_device_map.values()
    off = [i for i in range(ad.dims.num_layers) if ad.offloaded(i)]
    assert off, "no layer was offloaded: the test would prove nothing"
    assert ad.layer(off[0]).up_w.device.type == "meta"  # outside materialized(): nothing to read
    with ad.materialized(off[0]) as dev:
        assert ad.layer(off[0]).up_w.device == dev
    assert ad.layer(off[0]).up_w.device.type == "meta"  # and back to disk afterwards
    assert split.info()["device_map"]["disk"] >= 1


def test_every_method_equals_the_whole_model(pair):
    whole, split = pair
    vocab = whole.adapter.dims.vocab
    calib_ids, ids, mask = _batch(vocab)
    c_whole = calibrate(whole, calib_ids, 4, cache=False, progress=False)
    c_split = calibrate(split, calib_ids, 4, cache=False, progress=False)
    for key, st in c_whole.blocks.items():
        assert torch.equal(st.sq, c_split.blocks[key].sq.cpu()), key
    for method in METHODS:
        cfg = PruneConfig(method=method, ratio=0.4, skip_layers=(0,))
        p_whole, p_split = build_pruner(whole.adapter, cfg, c_whole), build_pruner(split.adapter, cfg, c_split)
        for _ in range(2):  # the second batch runs on PP's updated history and on cached static slices
            a = walk(whole.adapter, p_whole, ids, mask, level="summary")
            b = walk(split.adapter, p_split, ids, mask, level="summary")
            assert _kept(a.record) == _kept(b.record), method
            assert torch.equal(a.hidden, b.hidden.to(a.hidden.device)), method
            nll_a, m = token_nll(whole.adapter, a.hidden, ids, a.valid)
            nll_b, _ = token_nll(split.adapter, b.hidden, ids, b.valid)
            assert torch.equal(nll_a, nll_b.cpu()) and m.sum() > 0, method
            assert a.flops == b.flops


@pytest.mark.parametrize("method", ["pp", "flap"])
def test_generation_equals_the_whole_model(pair, method):
    whole, split = pair
    calib_ids, _, _ = _batch(whole.adapter.dims.vocab)
    cfg = PruneConfig(method=method, ratio=0.4, skip_layers=(0,))
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    out = []
    for lm in (whole, split):
        calib = calibrate(lm, calib_ids, 4, cache=False, progress=False)
        out.append(generate(lm.adapter, build_pruner(lm.adapter, cfg, calib), prompts, 6).tokens)
    assert out[0] == out[1]


def test_walks_leave_the_dispatched_model_as_loaded(pair):
    _, split = pair
    before = {n: (p.device.type, p.detach().clone() if p.device.type != "meta" else None)
              for n, p in split.model.named_parameters()}
    calib_ids, ids, mask = _batch(split.adapter.dims.vocab)
    calib = calibrate(split, calib_ids, 4, cache=False, progress=False)
    pruner = Pruner(split.adapter, PruneConfig(method="pp", skip_layers=(0,)), calib)
    walk(split.adapter, pruner, ids, mask, level="none")
    for n, p in split.model.named_parameters():
        dev, value = before[n]
        assert p.device.type == dev, n  # offloaded weights went back to disk
        if value is not None:
            assert torch.equal(p, value), n


def test_unknown_device_map_is_a_clear_error(tmp_path):
    from ppcore import ModelLoadError

    folder = _checkpoint(tmp_path / "ckpt", tiny_llama())
    with pytest.raises(ModelLoadError, match="device map 'everywhere' is not known"):
        load_model(str(folder), cache_dir=tmp_path / "cache", placement=Placement("everywhere"))
    with pytest.raises(ModelLoadError, match="DEVICE=SIZE"):
        Placement.parse_max_memory("0:70GiB")
    assert Placement.parse_max_memory("0=70GiB, cpu=1GiB") == {0: "70GiB", "cpu": "1GiB"}


def test_threads_share_a_model_with_offloaded_head_and_layers(tmp_path):
    """Sessions walking one offloaded model at once: accelerate's hooks swap tensors in and out, so the
    adapter runs offloaded modules one thread at a time; every thread gets the sequential answer."""
    import threading

    folder = _checkpoint(tmp_path / "ckpt", tiny_llama())
    placement = Placement({**LLAMA_MAP, "lm_head": "disk", "model.embed_tokens": "disk"}, None, str(tmp_path / "off"))
    lm = load_model(str(folder), cache_dir=tmp_path / "cache", placement=placement)
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 128, (2, 16), generator=g) for _ in range(4)]
    cfg = PruneConfig(method="pp", ratio=0.4, skip_layers=(0,), use_history=False)

    def run(ids):
        res = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="none")
        for _ in range(20):  # the offloaded final norm and LM head, many times: where unguarded hooks collide
            lm.adapter.head(lm.adapter.final(res.hidden))
        return token_nll(lm.adapter, res.hidden, ids, res.valid)[0]

    expected = [run(ids) for ids in batches]
    got: list = [None] * len(batches)
    errors: list[BaseException] = []

    def worker(k):
        try:
            for _ in range(3):
                got[k] = run(batches[k])
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
