"""Head layouts that cannot work (issue 9, kind 7): refused at load with one message, before any run."""
from __future__ import annotations

import pytest
import torch

from ppcore import UnsupportedModelError, load_model
from ppcore.adapters import make_adapter
from ppcore.cli import main
from tests.conftest import copy_default_tokenizer


def _llama(heads: int, kv: int, vocab: int = 128):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=96, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=heads, num_key_value_heads=kv, head_dim=16))


def _folder(tmp_path, model):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    copy_default_tokenizer(folder)
    return folder


@pytest.mark.parametrize("heads,kv", [(6, 4), (6, 5), (4, 8)])
def test_head_layouts_that_cannot_work_are_refused_by_the_adapter(heads, kv):
    with pytest.raises(UnsupportedModelError) as e:
        make_adapter(_llama(heads, kv).eval())
    assert f"{heads} query heads over {kv} key/value heads" in str(e.value)


def test_head_layouts_that_work_still_load():
    for heads, kv in ((6, 2), (6, 3), (6, 6), (6, 1)):
        assert make_adapter(_llama(heads, kv).eval()).dims.group == heads // kv


def test_head_layouts_that_cannot_work_info_and_eval_exit_2(tmp_path, capsys):
    folder = _folder(tmp_path, _llama(6, 4, vocab=49152))
    with pytest.raises(UnsupportedModelError):
        load_model(str(folder), device="cpu", cache_dir=tmp_path / "cache")
    capsys.readouterr()
    for argv in (["info", "--model", str(folder), "--device", "cpu"],
                 ["eval", "--model", str(folder), "--device", "cpu", "--seq-len", "16", "--batch-size", "2",
                  "--batches", "1", "--calib-seqs", "2", "--quiet"]):
        assert main(argv + ["--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "6 query heads over 4 key/value heads" in err[0], err


def test_weights_that_disagree_with_the_head_layout_are_refused():
    """A config whose head size does not match the projections (here: q_proj built for 8 heads while the
    config says 6) is refused by name, not run on the wrong slices."""
    model = _llama(6, 2).eval()
    layer = model.model.layers[1].self_attn
    layer.q_proj = torch.nn.Linear(96, 8 * 16, bias=False)
    with pytest.raises(UnsupportedModelError, match="layer 1 q_proj has shape"):
        make_adapter(model)
