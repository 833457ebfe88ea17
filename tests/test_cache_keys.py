"""Kind 5 of issue 9, caches that can collide: every cache key changes when what it caches changes.

One test per collision that issue 9 found: (a) random models of different depth, (b) fine-tunes of one
base (same file names and sizes), (c) tokenizers that differ beyond their first 64 entries or in
normalisation, (d) GGUF conversions by other code or library versions, (e) hub ids at other commits.
Each shows two things that differ getting different keys, and the same thing getting the same key
twice, so caching still works. Everything runs offline in temporary caches.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ppcore.cache as cache
import ppcore.data as data
import ppcore.loading as loading
from ppcore import load_model
from ppcore.cache import calib_key
from tests.test_checkpoint_mismatch import tiny_checkpoint

WINDOWS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every load here is offline


@pytest.fixture
def reads(monkeypatch):
    """Paths whose bytes were hashed (sha256_file), to tell a memo hit from a re-read."""
    seen: list[Path] = []
    original = cache.sha256_file

    def counting(path, *a, **k):
        seen.append(Path(path))
        return original(path, *a, **k)

    monkeypatch.setattr(cache, "sha256_file", counting)
    return seen


# --- (a) ---------------------------------------------------------------------------------------------
def test_cache_keys_random_models_of_different_depth_differ(tmp_path, monkeypatch):
    monkeypatch.setitem(loading.RANDOM_SHAPES, "tiny", dict(
        hidden_size=96, intermediate_size=160, num_attention_heads=6, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=128, max_position_embeddings=64))
    one, two = (load_model(f"random:tiny:{n}", device="cpu", cache_dir=tmp_path) for n in (1, 2))
    again = load_model("random:tiny:1", device="cpu", cache_dir=tmp_path)
    assert one.fingerprint != two.fingerprint
    assert calib_key(one, WINDOWS, 2) != calib_key(two, WINDOWS, 2)
    assert one.fingerprint == again.fingerprint and calib_key(one, WINDOWS, 2) == calib_key(again, WINDOWS, 2)
    assert all(torch.equal(a, b) for a, b in zip(one.model.parameters(), again.model.parameters()))
    # the config is keyed whole, not only the depth
    monkeypatch.setitem(loading.RANDOM_SHAPES["tiny"], "intermediate_size", 192)
    wider = load_model("random:tiny:1", device="cpu", cache_dir=tmp_path)
    assert wider.fingerprint != one.fingerprint
    # and so is the torch version, whose random number generator drew the weights
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert cache.random_fingerprint("random:tiny:1", one.model.config, torch.device("cpu")) != one.fingerprint


# --- (b) ---------------------------------------------------------------------------------------------
def _fine_tune(base: Path, folder: Path, delta: float) -> None:
    """`folder`: the checkpoint of `base` with one tensor nudged by `delta` (same names, same sizes)."""
    folder.mkdir()
    for p in base.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"] += delta
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_cache_keys_fine_tunes_of_one_base_differ(tmp_path, reads):
    base = tmp_path / "base"
    tiny_checkpoint(base)
    a, b = tmp_path / "ft-a", tmp_path / "ft-b"
    _fine_tune(base, a, 0.01)
    _fine_tune(base, b, 0.02)
    sizes = lambda f: sorted((p.name, p.stat().st_size) for p in f.iterdir())  # noqa: E731
    assert sizes(a) == sizes(b)  # the collision of issue 9: the same names and sizes
    root = tmp_path / "cache"
    # memo_min_bytes=0 puts every file through the remembered-hash path a multi-GB checkpoint takes
    fa = cache.fingerprint_folder(a, root, memo_min_bytes=0)
    fb = cache.fingerprint_folder(b, root, memo_min_bytes=0)
    assert fa != fb
    reads.clear()
    assert cache.fingerprint_folder(a, root, memo_min_bytes=0) == fa
    assert reads == []  # the second time, nothing was re-read: the digests came from cache_root()/hashes
    assert len(list((root / "hashes").glob("*.json"))) == 2 * len(list(a.glob("*.json"))) + 2
    # an in-place rewrite (same size, other content) is noticed through its stat, and hashed again
    weights = a / "model.safetensors"
    st = weights.stat()
    _rewrite = load_file(str(weights))
    _rewrite["model.layers.1.mlp.down_proj.weight"] += 0.01
    save_file(_rewrite, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert weights.stat().st_size == st.st_size
    assert cache.fingerprint_folder(a, root, memo_min_bytes=0) not in (fa, fb)
    # the loader keys calibration on the same content hash
    lm_a = load_model(str(a), device="cpu", cache_dir=root)
    lm_b = load_model(str(b), device="cpu", cache_dir=root)
    assert lm_a.fingerprint != lm_b.fingerprint
    assert calib_key(lm_a, WINDOWS, 2) != calib_key(lm_b, WINDOWS, 2)


# --- (c) ---------------------------------------------------------------------------------------------
def _word_tokenizer(swap_tail: bool = False, lowercase: bool = False):
    """A word-level fast tokenizer; `swap_tail` swaps the ids of its two last words (in sorted order, so
    the first 64 sorted entries and the length are unchanged); `lowercase` adds a normaliser."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i:03d}" for i in range(100)] + ["zz1", "zz2", "<unk>"]
    vocab = {w: i for i, w in enumerate(words)}
    if swap_tail:
        vocab["zz1"], vocab["zz2"] = vocab["zz2"], vocab["zz1"]
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_cache_keys_tokenizers_that_differ_beyond_the_first_entries_differ(tmp_path, monkeypatch):
    text = "w001 zz1 ZZ2 w002 zz2"
    plain, swapped, lower = _word_tokenizer(), _word_tokenizer(swap_tail=True), _word_tokenizer(lowercase=True)
    assert sorted(plain.get_vocab().items())[:64] == sorted(swapped.get_vocab().items())[:64]
    assert len(plain) == len(swapped) == len(lower)
    want = {name: tok(text, add_special_tokens=False)["input_ids"]
            for name, tok in (("plain", plain), ("swapped", swapped), ("lower", lower))}
    assert want == {"plain": [1, 100, 102, 2, 101], "swapped": [1, 101, 102, 2, 100], "lower": [1, 100, 101, 2, 101]}
    # all three through one cache: each gets its own ids, not the first one's
    got = {name: data.tokenize_text(tok, text, tmp_path).tolist()
           for name, tok in (("plain", plain), ("swapped", swapped), ("lower", lower))}
    assert got == want
    keys = {cache.tokens_key(t, text) for t in (plain, swapped, lower)}
    assert len(keys) == 3
    # the same tokenizer twice (and an identical one loaded afresh) hits the same entry
    assert cache.tokens_key(plain, text) == cache.tokens_key(_word_tokenizer(), text)
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 3
    assert data.tokenize_text(_word_tokenizer(), text, tmp_path).tolist() == want["plain"]
    assert len(list((tmp_path / "tokens").glob("*.npy"))) == 3
    # the tokenizer hash is computed once per object, without touching the tokenizer
    calls: list = []
    original = cache._tokenizer_fingerprint
    monkeypatch.setattr(cache, "_tokenizer_fingerprint", lambda t: calls.append(t) or original(t))
    fresh = _word_tokenizer()
    attrs = dict(vars(fresh))
    first, second = cache.tokenizer_hash(fresh), cache.tokenizer_hash(fresh)
    assert first == second == cache.tokenizer_hash(plain) and len(calls) == 1
    assert vars(fresh).keys() == attrs.keys()
    # another transformers or tokenizers version may split text differently: another key
    monkeypatch.setattr(cache, "package_version", lambda name: "999.0")
    assert cache.tokenizer_hash(_word_tokenizer()) != first


# --- (d) ---------------------------------------------------------------------------------------------
def _fake_gguf(path: Path, fill: int) -> Path:
    path.write_bytes(bytes([fill]) * (cache.MEMO_MIN_BYTES + 10))
    return path


def test_cache_keys_gguf_conversions_by_other_code_or_libraries_differ(tmp_path, monkeypatch, reads):
    root = tmp_path / "cache"
    gguf = _fake_gguf(tmp_path / "m.gguf", 1)
    convert = loading._convert  # the conversion the loader keys its cache entries on
    folder, fp = cache.gguf_cache_entry(gguf, root, convert)
    reads.clear()
    assert cache.gguf_cache_entry(gguf, root, convert) == (folder, fp)
    assert reads == []  # the GGUF's hash is remembered, not recomputed on every load
    (tmp_path / "other").mkdir()
    other = _fake_gguf(tmp_path / "other" / "m.gguf", 2)
    assert cache.gguf_cache_entry(other, root, convert)[1] != fp  # same name and size, other content
    changed = {}
    versions = dict(cache._library_versions())
    for lib in ("transformers", "gguf", "torch"):
        with monkeypatch.context() as m:
            m.setattr(cache, "_library_versions",
                      lambda lib=lib: tuple({**versions, lib: versions[lib] + ".post1"}.items()))
            changed[lib] = cache.gguf_cache_entry(gguf, root, convert)
    with monkeypatch.context() as m:
        m.setattr(cache, "CONVERSION_VERSION", cache.CONVERSION_VERSION + 1)
        changed["version"] = cache.gguf_cache_entry(gguf, root, convert)

    def _convert(gguf, out):  # another conversion function (its source differs)
        raise AssertionError("not called")

    changed["code"] = cache.gguf_cache_entry(gguf, root, _convert)
    assert cache.gguf_cache_entry(gguf, root, convert) == (folder, fp)
    for what, (f, p) in changed.items():
        assert f != folder and p != fp, what
    assert len({f for f, _ in changed.values()}) == len(changed)


def test_cache_keys_default_conversion_is_keyed_by_conversion():
    """The real default model converts into a folder named by its content and the conversion key."""
    root = cache.cache_root()
    gguf = loading.find_default_gguf(root)
    folder, fp = loading.convert_gguf(gguf, root)
    key = cache.conversion_key(loading._convert)
    assert folder.name.endswith(f"-c{key}") and fp.endswith(f"-c{key}")
    meta = json.loads((folder / "ppcore.json").read_text())
    assert meta["conversion_key"] == key
    assert meta["sha256_16"] == cache.sha256_file(gguf)[:16] == fp.split("-")[0]


# --- (e) ---------------------------------------------------------------------------------------------
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding org/tiny at two commits, refs/main at A, used offline."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-hub"
    repo = cache / "models--org--tiny"
    models = {}
    for commit, seed in ((COMMIT_A, 0), (COMMIT_B, 1)):
        models[commit] = tiny_checkpoint(repo / "snapshots" / commit, seed=seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT_A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return repo, models


def _head_equal(lm, model) -> bool:
    return torch.equal(lm.model.lm_head.weight, model.lm_head.weight)


def test_cache_keys_hub_revisions_differ(hub, tmp_path, monkeypatch):
    repo, models = hub
    root = tmp_path / "cache"
    at_a = load_model("org/tiny", device="cpu", cache_dir=root)
    assert at_a.fingerprint == f"hub:org/tiny@{COMMIT_A}" and _head_equal(at_a, models[COMMIT_A])
    assert load_model("org/tiny", device="cpu", cache_dir=root).fingerprint == at_a.fingerprint
    (repo / "refs" / "main").write_text(COMMIT_B)  # main moved on: another model under the same id
    at_b = load_model("org/tiny", device="cpu", cache_dir=root)
    assert at_b.fingerprint == f"hub:org/tiny@{COMMIT_B}" and _head_equal(at_b, models[COMMIT_B])
    assert calib_key(at_a, WINDOWS, 2) != calib_key(at_b, WINDOWS, 2)
    # no commit known: the snapshot that was read is hashed by content instead
    monkeypatch.setattr(loading, "resolve_hub_commit", lambda spec: None)
    unpinned_b = load_model("org/tiny", device="cpu", cache_dir=root)
    (repo / "refs" / "main").write_text(COMMIT_A)
    unpinned_a = load_model("org/tiny", device="cpu", cache_dir=root)
    assert unpinned_a.fingerprint.startswith("hub:org/tiny@content-")
    assert unpinned_a.fingerprint != unpinned_b.fingerprint
    assert unpinned_a.fingerprint == load_model("org/tiny", device="cpu", cache_dir=root).fingerprint
    assert unpinned_a.fingerprint == (
        f"hub:org/tiny@content-{cache.fingerprint_folder(repo / 'snapshots' / COMMIT_A, root)}")
    assert _head_equal(unpinned_a, models[COMMIT_A]) and _head_equal(unpinned_b, models[COMMIT_B])



# --- (f) ---------------------------------------------------------------------------------------------
def test_cache_keys_calibration_covers_the_engine_it_runs_through():
    """The calibration key hashes every module the pass runs through, the adapters' family files included,
    so an edit to any of them (or to a module split off them later) never reuses old statistics."""
    import pkgutil

    import ppcore.adapters as adapters

    names = {m.__name__ for m in cache._engine_modules()}
    families = {f"ppcore.adapters.{info.name}" for info in pkgutil.iter_modules(adapters.__path__)}
    assert {"ppcore.adapters.base", "ppcore.adapters.llama", "ppcore.adapters.opt"} <= families <= names
    assert {"ppcore.calibrate", "ppcore.walk", "ppcore.walk_context", "ppcore.blocks", "ppcore.stats"} <= names
    assert "ppcore.cli" not in names and "ppcore" not in names  # entry points are not engine code
