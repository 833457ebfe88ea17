"""Shared fixtures: tiny random models built from configs (no downloads) and the real default."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from ppcore.adapters import make_adapter
from ppcore.loading import LoadedModel

# The app keeps finished results on the server's disk (ppcore/result_store.py) and shows them again for an identical
# run: tests that run the same settings twice and expect a computation (a Stop mid-run, a progress bar) would see
# the stored one instead. The store is off for the suite, here and in every server a test starts; the tests of the
# store switch it on for themselves (tests/test_result_store.py).
os.environ["PPCORE_RESULT_CACHE_MB"] = "0"

# `make test` runs two pytest-xdist workers on a 2-core machine: each worker's own matrix products take one core, so
# that the two do not fight over both (servers and subprocesses a test starts keep torch's default).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# The files that take longest, longest first (seconds of test time on 2 quiet cores, `--durations=0`, 2026-12-01).
# `--dist loadfile` hands files to the two workers in collection order, so these go first and the short files fill
# in at the end; in alphabetical order a 3-minute file came last and one worker idled for minutes.
LONGEST_FIRST = ("test_zeroshot.py", "test_official_windows_pp.py", "test_app_lecture.py", "test_app_load.py",
                 "test_app.py", "test_gemma3.py", "test_app_hardening.py", "test_app_why.py", "test_gpu_script.py",
                 "test_app_browser.py", "test_zeroshot_grid.py", "test_app_replay.py", "test_official_windows.py",
                 "test_result_store.py", "test_bench.py", "test_cli.py", "test_background.py")


def pytest_collection_modifyitems(session, config, items):
    """Longest files first (a stable sort: the order inside a file, and of the other files, is kept)."""
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "official_cpu_run"


def _finish(model: torch.nn.Module, name: str) -> LoadedModel:
    model.eval()
    return LoadedModel(model, None, make_adapter(model), name, name, name, torch.device("cpu"), torch.float32)


def tiny_llama(seed: int = 0, bias: bool = False, kv_heads: int = 2, layers: int = 4) -> LoadedModel:
    """Llama with grouped-query attention (6 query heads over 2 kv heads); `bias` gives Qwen2-style q/k/v biases."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=layers,
                  num_attention_heads=6, num_key_value_heads=kv_heads, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=False)
    if bias:
        cfg = Qwen2Config(**common, use_sliding_window=False)
        model = Qwen2ForCausalLM(cfg)
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    # Larger-than-init weights so that activations (and pruning decisions) are not all alike.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
            elif name.endswith(".bias"):
                p.normal_(0, 0.05)
    return _finish(model, "tiny-qwen2" if bias else "tiny-llama")


def tiny_gemma3(seed: int = 0, layers: int = 4, window: int = 8, kv_heads: int = 1) -> LoadedModel:
    """Gemma 3 text model: 4 query heads over `kv_heads` key/value heads (1, as in Gemma-3-270M), head_dim 16,
    local layers with a `window`-token sliding window and a global layer every third, two rotary bases,
    q/k norms and a norm after each block, all norm gains random (HF initialises them to zero)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    types = ["full_attention" if (i + 1) % 3 == 0 else "sliding_attention" for i in range(layers)]
    cfg = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, query_pre_attn_scalar=24,
                           sliding_window=window, layer_types=types, max_position_embeddings=256, rms_norm_eps=1e-6,
                           tie_word_embeddings=True, pad_token_id=0,
                           rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08 if p.dim() == 2 else 0.3)
    return _finish(model, "tiny-gemma3")


def tiny_opt(seed: int = 0, pre_ln: bool = True, layers: int = 4, proj_dim: int = 64) -> LoadedModel:
    """OPT with hidden 64; `proj_dim` != 64 gives it project_in / project_out around the decoder."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=192, num_hidden_layers=layers, num_attention_heads=4,
                    max_position_embeddings=256, word_embed_proj_dim=proj_dim, do_layer_norm_before=pre_ln,
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, enable_bias=True)
    model = OPTForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return _finish(model, "tiny-opt" if proj_dim == 64 else "tiny-opt-projected")


def copy_default_tokenizer(folder: Path) -> None:
    """Put the default model's tokenizer (vocabulary 49152) into a checkpoint folder, so load_model reads it."""
    from ppcore.cache import cache_root
    from ppcore.loading import convert_gguf, find_default_gguf

    tok_dir, _ = convert_gguf(find_default_gguf(cache_root()), cache_root())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, folder / name)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection or name lookup fails the test: loading must work offline."""
    attempts: list = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"network disabled in tests (tried {address!r})")

    def refuse_lookup(host, *a, **k):
        attempts.append(host)
        raise socket.gaierror(f"network disabled in tests (looked up {host!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    yield
    assert attempts == [], f"a test tried to reach the network: {attempts}"


TINY_VOCAB = 128  # tiny_llama's vocabulary


@pytest.fixture(scope="session")
def tiny_lm() -> LoadedModel:
    """A 4-layer tiny Llama shared by the formula tests of the ablations and PP+ (no test writes it)."""
    return tiny_llama(layers=4)


@pytest.fixture(scope="session")
def tiny_calib(tiny_lm):
    """`tiny_lm`'s calibration on 8 random 16-token windows (not cached on disk)."""
    from ppcore.calibrate import calibrate

    windows = torch.randint(0, TINY_VOCAB, (8, 16), generator=torch.Generator().manual_seed(1))
    return calibrate(tiny_lm, windows, 4, cache=False, progress=False)


@pytest.fixture(scope="session")
def default_lm():
    """The real embedded default model (converted once into the ppcore cache)."""
    from ppcore import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    if not REF.is_dir():
        pytest.skip(f"official reference run not found at {REF}")
    return REF


@pytest.fixture
def demo_mode(monkeypatch):
    """The app in demo mode (PP_DEMO=1) for one test; error details restored after (the demo hides them
    process-wide)."""
    import streamlit as st

    from app.state import demo

    shown = st.get_option("client.showErrorDetails")
    monkeypatch.setenv("PP_DEMO", "1")
    assert demo()
    yield
    st.set_option("client.showErrorDetails", shown)


@pytest.fixture
def local_mode(monkeypatch):
    """The app in local mode for one test (skipped when PP_DEMO=1 was set when the app was imported)."""
    from app.state import demo

    monkeypatch.delenv("PP_DEMO", raising=False)
    if demo():
        pytest.skip("PP_DEMO=1 was set when the app was imported: demo mode cannot be switched off")


class DecodeOnlyTokenizer:
    """Just enough of a tokenizer for `session.analyse` on a tiny model (it decodes top-k and the prompt)."""

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(f"t{i}" for i in ids)
