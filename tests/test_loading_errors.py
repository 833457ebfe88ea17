"""load_model's failures: each one a PPCoreError subclass whose message names what was asked for.

No test touches the network: every socket connection attempt is refused and recorded, and each test
asserts that none happened. Every load uses a temporary cache so nothing reaches the user cache.
"""
from __future__ import annotations

import os

import pytest

from ppcore import ModelLoadError, PPCoreError, UnsupportedModelError, load_model
from ppcore.adapters import SUPPORTED, make_adapter
from tests.conftest import tiny_opt


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every load here is offline


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _load_error(spec, cache, **kw) -> PPCoreError:
    with pytest.raises(PPCoreError) as e:
        load_model(spec, cache_dir=cache, **kw)
    return e.value


def _tiny_opt_folder(path, pre_ln: bool):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    word_embed_proj_dim=16, max_position_embeddings=64, do_layer_norm_before=pre_ln)
    OPTForCausalLM(cfg).save_pretrained(path)
    return path


def _tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)


@pytest.mark.parametrize("spec", ["/nonexistent/model", "./no_such_dir/"])
def test_missing_path(spec, cache):
    err = _load_error(spec, cache)
    assert isinstance(err, ModelLoadError)
    assert spec in str(err)


def test_not_a_model_id_fails_without_network(cache):
    err = _load_error("not a model!", cache)
    assert isinstance(err, ModelLoadError)
    assert "not a model!" in str(err)
    assert "not found" in str(err)  # refused up front, not handed to the hub client


def test_missing_gguf(cache):
    spec = "/nonexistent/dir/model.Q4_1.gguf"
    err = _load_error(spec, cache)
    assert isinstance(err, ModelLoadError)
    assert spec in str(err)


def test_corrupt_gguf(tmp_path, cache):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(os.urandom(8192))
    err = _load_error(str(bad), cache)
    assert isinstance(err, ModelLoadError)
    assert "x.gguf" in str(err)
    # a failed conversion leaves no cached model behind
    models = cache / "models"
    assert not models.exists() or not any(models.iterdir())


def test_unsupported_architecture_lists_supported(tmp_path, cache):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64).save_pretrained(folder)
    err = _load_error(str(folder), cache)
    assert isinstance(err, UnsupportedModelError)
    msg = str(err)
    assert str(folder) in msg
    assert "gpt2" in msg
    for mt in ("llama", "mistral", "qwen2", "opt"):
        assert mt in msg
    assert set(SUPPORTED) == {"llama", "mistral", "qwen2", "opt", "gemma3_text"}


@pytest.mark.parametrize("auto_map", [
    {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
    {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
])
def test_custom_code_is_refused(tmp_path, cache, auto_map):
    from transformers import LlamaForCausalLM

    folder = tmp_path / "ckpt"
    cfg = _tiny_llama_config()
    cfg.auto_map = auto_map
    LlamaForCausalLM(cfg).save_pretrained(folder)  # a complete checkpoint apart from the custom code
    marker = tmp_path / "custom_code_ran"
    sentinel = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "modeling_custom.py").write_text(sentinel)
    (folder / "configuration_custom.py").write_text(sentinel)
    err = _load_error(str(folder), cache)
    assert not marker.exists(), "the checkpoint's own code was executed"
    msg = str(err)
    assert str(folder) in msg
    assert "auto_map" in msg or "remote code" in msg


def test_post_ln_opt_refused(tmp_path, cache):
    folder = _tiny_opt_folder(tmp_path / "opt-post", pre_ln=False)
    err = _load_error(str(folder), cache, device="cpu")
    assert isinstance(err, UnsupportedModelError)
    assert "post-LN" in str(err)


def test_post_ln_opt_error_names_the_folder(tmp_path, cache):
    folder = _tiny_opt_folder(tmp_path / "opt-post", pre_ln=False)
    err = _load_error(str(folder), cache, device="cpu")
    assert str(folder) in str(err)


def test_pre_ln_opt_folder_loads(tmp_path, cache):
    """Control for the post-LN case: the same folder with pre-LN loads."""
    folder = _tiny_opt_folder(tmp_path / "opt-pre", pre_ln=True)
    lm = load_model(str(folder), device="cpu", cache_dir=cache)
    assert lm.adapter.family == "opt"
    assert lm.info()["layers"] == 1


def test_bad_device(cache):
    err = _load_error("/nonexistent/model", cache, device="tpu")
    assert isinstance(err, ModelLoadError)
    assert "tpu" in str(err)


def test_bad_dtype(cache):
    err = _load_error("/nonexistent/model", cache, device="cpu", dtype="int8")
    assert isinstance(err, ModelLoadError)
    assert "int8" in str(err)


def test_make_adapter_refuses_post_ln_opt():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                    word_embed_proj_dim=16, max_position_embeddings=64, do_layer_norm_before=False)
    with pytest.raises(UnsupportedModelError) as e:
        make_adapter(OPTForCausalLM(cfg))
    assert "post-LN" in str(e.value)
    with pytest.raises(UnsupportedModelError):
        tiny_opt(pre_ln=False)
    assert tiny_opt(pre_ln=True).adapter.family == "opt"  # control


def test_check_supported_is_the_one_decision_and_names_the_reason():
    """Config-level refusals come from ppcore.adapters.check_supported, before any weight is read."""
    from transformers import GPT2Config

    from ppcore.adapters import LlamaAdapter, check_supported

    assert check_supported(_tiny_llama_config()) is LlamaAdapter
    with pytest.raises(UnsupportedModelError) as e:
        check_supported(GPT2Config(n_layer=1), "my-gpt2")
    assert str(e.value).startswith("my-gpt2: architecture 'gpt2' is not supported; supported model types: "
                                   "llama, mistral, qwen2, opt, gemma3_text (")
    rope = _tiny_llama_config()
    rope.rope_parameters = {"rope_type": "made-up", "rope_theta": 10000.0}
    with pytest.raises(UnsupportedModelError, match="rope type 'made-up' is not supported"):
        check_supported(rope, "m")
    act = _tiny_llama_config()
    act.hidden_act = "softsign"
    with pytest.raises(UnsupportedModelError, match="^m: activation 'softsign' is not supported; supported: silu"):
        check_supported(act, "m")
    heads = _tiny_llama_config()
    heads.num_key_value_heads = 3
    with pytest.raises(UnsupportedModelError, match="2 query heads over 3 key/value heads"):
        check_supported(heads)
