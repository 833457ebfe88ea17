"""Loading never runs code from a checkpoint: no remote code, pickle weights as tensors only."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from ppcore import ModelLoadError, PPCoreError, UnsupportedModelError, load_model
from tests.conftest import copy_default_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


_tokenizer_into = copy_default_tokenizer


class _Payload:
    """Unpickling this runs `open(marker, 'w')`: what a malicious .bin would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_custom_code_checkpoint_is_refused(tmp_path):
    """A hub-style checkpoint that needs its own modelling code (auto_map) is refused before any of it runs."""
    folder = tmp_path / "custom"
    lm = tiny_llama()
    lm.model.config.auto_map = {"AutoConfig": "configuration_x.XConfig",
                                "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    lm.model.save_pretrained(folder)
    _tokenizer_into(folder)
    marker = tmp_path / "code_ran"
    for name in ("modeling_x.py", "configuration_x.py"):
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(UnsupportedModelError, match="never runs remote code"):
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_trust_remote_code_is_never_set(tmp_path, monkeypatch):
    """Every Hugging Face loader call passes trust_remote_code=False, and no source sets it True."""
    import transformers

    folder = tmp_path / "ok"
    tiny_llama().model.save_pretrained(folder)
    _tokenizer_into(folder)
    seen: list[tuple[str, object]] = []
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _orig=original, _name=cls.__name__, **kw):
            seen.append((_name, kw.get("trust_remote_code", "unset")))
            return _orig(klass, *args, **kw)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModelForCausalLM", "AutoTokenizer"}
    assert all(v is False for _, v in seen), seen
    sources = [p for d in ("ppcore", "app") for p in (ROOT / d).rglob("*.py")]
    assert sources
    for p in sources:
        assert not re.search(r"trust_remote_code\s*=\s*True", p.read_text()), p


def test_pickle_weights_load_only_weights_only(tmp_path):
    """A .bin checkpoint of plain tensors loads (and equals the model); one with a code payload is refused."""
    lm = tiny_llama()
    good = tmp_path / "bin-ok"
    lm.model.config.save_pretrained(good)
    torch.save(lm.model.state_dict(), good / "pytorch_model.bin")  # the legacy pickle format
    _tokenizer_into(good)
    loaded = load_model(str(good), device="cpu", cache_dir=tmp_path / "cache")
    ref = lm.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.model.state_dict().items())

    evil = tmp_path / "bin-evil"
    shutil.copytree(good, evil)
    marker = tmp_path / "pickle_ran"
    state = {k: v.clone() for k, v in ref.items()}
    state["payload"] = _Payload(marker)
    with open(evil / "pytorch_model.bin", "wb") as f:
        torch.save(state, f)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(evil), device="cpu", cache_dir=tmp_path / "cache")
    assert not marker.exists(), "unpickling ran the checkpoint's code"
    assert str(evil) in str(e.value) and "weights_only=True" in str(e.value)


def test_no_unsafe_deserialisation_in_the_sources():
    """Our own caches are safetensors / .npy without pickle; any torch.load must say weights_only=True, except the
    result store's, which must go through its restricted unpickler (tests/test_result_store.py plants code in it)."""
    for p in [p for d in ("ppcore", "app") for p in (ROOT / d).rglob("*.py")]:
        text = p.read_text()
        assert "pickle.load" not in text and "allow_pickle=True" not in text, p
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            restricted = p.name == "result_store.py" and "pickle_module=self._pickle" in call
            assert "weights_only=True" in call or restricted, (p, call)


def test_errors_are_ppcore_errors(tmp_path):
    """A folder with a config but no weights fails with one ppcore error naming the folder."""
    folder = tmp_path / "no-weights"
    tiny_llama().model.config.save_pretrained(folder)
    with pytest.raises(PPCoreError) as e:
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert str(folder) in str(e.value)
