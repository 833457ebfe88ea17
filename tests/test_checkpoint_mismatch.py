"""Kind 3 of issue 9, checkpoints that don't match their config: refused at load, naming the tensors.

A tensor the config needs but the file lacks used to load with random weights (a new perplexity on
every load); a tensor the config has no place for used to be dropped. Each case below edits a saved
tiny checkpoint with safetensors and asserts one ModelLoadError naming the tensors, from the engine
and from the CLI (exit 2). Controls: the unedited checkpoint and a tied-head checkpoint (no
lm_head.weight in the file, as the config says) load and give the in-memory model's logits.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ppcore import ModelLoadError, load_model
from ppcore.cli import main
from ppcore.loading import Placement

HEAD = "lm_head.weight"
DOWN = "model.layers.1.mlp.down_proj.weight"
QKV_BIAS = ("model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
            "model.layers.0.self_attn.v_proj.bias")


pytestmark = pytest.mark.usefixtures("no_network")  # conftest: every load here is offline


def save_tokenizer(folder: Path, vocab: int = 128) -> None:
    """A tiny fast word-level tokenizer over the model's `vocab` ids, saved so AutoTokenizer reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab - 2)} | {"<unk>": vocab - 2, "</s>": vocab - 1}
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)


def tiny_checkpoint(folder: Path, tie: bool = False, seed: int = 0):
    """The brief's tiny Llama (2 layers, 6 query heads over 2 kv heads) saved with a tokenizer; returns the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=tie)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(folder)
    save_tokenizer(folder)
    return model


def edit_weights(folder: Path, drop=(), add=None) -> None:
    """Rewrite the folder's model.safetensors without the `drop` tensors and with the `add` ones."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    for name in drop:
        del tensors[name]
    tensors.update(add or {})
    save_file(tensors, str(path), metadata={"format": "pt"})


def refusal(folder: Path, tmp_path: Path, **kw) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache", **kw)
    return str(e.value)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))


def test_checkpoint_mismatch_complete_checkpoint_loads_with_its_logits(tmp_path):
    """Control: the unedited untied checkpoint loads, and twice gives the in-memory model's logits."""
    ref = tiny_checkpoint(tmp_path / "ok")
    first = load_model(str(tmp_path / "ok"), device="cpu", cache_dir=tmp_path / "cache")
    second = load_model(str(tmp_path / "ok"), device="cpu", cache_dir=tmp_path / "cache")
    assert torch.allclose(_logits(first.model, IDS), _logits(ref, IDS), atol=1e-6, rtol=0)
    assert torch.equal(_logits(first.model, IDS), _logits(second.model, IDS))


def test_checkpoint_mismatch_missing_untied_lm_head_is_refused(tmp_path):
    folder = tmp_path / "no-head"
    tiny_checkpoint(folder)
    edit_weights(folder, drop=[HEAD])
    msg = refusal(folder, tmp_path)
    assert f"{HEAD} is missing from the file" in msg
    assert str(folder) in msg and "tie_word_embeddings" in msg
    assert "\n" not in msg


def test_checkpoint_mismatch_missing_layer_tensor_is_refused(tmp_path):
    folder = tmp_path / "no-down"
    tiny_checkpoint(folder)
    edit_weights(folder, drop=[DOWN])
    msg = refusal(folder, tmp_path)
    assert f"{DOWN} is missing from the file" in msg
    assert "model.layers.0.mlp.down_proj.weight" not in msg  # only what is wrong is named


def test_checkpoint_mismatch_unexpected_biases_are_refused(tmp_path):
    """q/k/v biases in a checkpoint whose config says no bias used to be dropped silently."""
    folder = tmp_path / "biases"
    tiny_checkpoint(folder)
    edit_weights(folder, add={QKV_BIAS[0]: torch.ones(96), QKV_BIAS[1]: torch.ones(32), QKV_BIAS[2]: torch.ones(32)})
    msg = refusal(folder, tmp_path)
    for name in QKV_BIAS:
        assert f"{name} is in the file but not in the config" in msg
    assert "attention_bias" in msg


def test_checkpoint_mismatch_wrong_shape_is_refused(tmp_path):
    folder = tmp_path / "shape"
    tiny_checkpoint(folder)
    edit_weights(folder, add={DOWN: torch.zeros(96, 150)})
    msg = refusal(folder, tmp_path)
    assert f"{DOWN} has shape (96, 150) in the file but (96, 160) in the config" in msg


def test_checkpoint_mismatch_names_at_most_ten_tensors(tmp_path):
    folder = tmp_path / "many"
    tiny_checkpoint(folder)
    extra = {f"model.layers.{i}.self_attn.{p}.bias": torch.zeros(8) for i in range(2)
             for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    extra |= {f"model.layers.{i}.mlp.{p}.bias": torch.zeros(8) for i in range(2) for p in ("gate_proj", "up_proj")}
    edit_weights(folder, drop=[HEAD], add=extra)  # 1 missing + 12 unexpected = 13 tensors
    msg = refusal(folder, tmp_path)
    named = re.findall(r"(?:model\.layers\.\d+\.[\w.]+|lm_head\.weight) (?:is|has)", msg)
    assert len(named) == 10
    assert msg.count("; and 3 more") == 1


def test_checkpoint_mismatch_is_refused_with_a_device_map(tmp_path):
    """accelerate dispatch (layer 1 on disk) reports the missing tensor too, and refuses it."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    ok = tmp_path / "ok"
    tiny_checkpoint(ok)
    loaded = load_model(str(ok), cache_dir=tmp_path / "cache",
                        placement=Placement(device_map, offload_folder=str(tmp_path / "off-ok")))
    assert "disk" in loaded.model.hf_device_map.values()  # control: the complete checkpoint dispatches
    bad = tmp_path / "bad"
    tiny_checkpoint(bad)
    edit_weights(bad, drop=[DOWN])
    msg = refusal(bad, tmp_path, placement=Placement(device_map, offload_folder=str(tmp_path / "off-bad")))
    assert f"{DOWN} is missing from the file" in msg


def test_checkpoint_mismatch_tied_head_loads_with_same_logits(tmp_path):
    """tie_word_embeddings=True and no lm_head.weight in the file is what the config says: it loads."""
    folder = tmp_path / "tied"
    ref = tiny_checkpoint(folder, tie=True)
    assert HEAD not in load_file(str(folder / "model.safetensors"))
    lm = load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(_logits(lm.model, IDS), _logits(ref, IDS), atol=1e-6, rtol=0)


@pytest.mark.parametrize("command", [["info"], ["eval", "--seq-len", "8", "--batches", "1", "--batch-size", "1"]])
def test_checkpoint_mismatch_cli_exits_2_naming_the_tensor(command, tmp_path, capsys):
    folder = tmp_path / "no-down"
    tiny_checkpoint(folder)
    edit_weights(folder, drop=[DOWN])
    argv = [command[0], "--model", str(folder), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
            *command[1:]]
    capsys.readouterr()  # drop the progress bars of building the checkpoint
    with pytest.raises(SystemExit) as e:
        sys.exit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert DOWN in err and "\n" not in err and "Traceback" not in err
