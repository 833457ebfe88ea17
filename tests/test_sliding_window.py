"""Sliding-window attention: each layer follows the attention type its HF config gives it (issue 9, kind 2).

Mistral slides every layer over `sliding_window` tokens; Qwen2 only the layers `layer_types` marks
"sliding_attention"; Llama none. The walk, calibration, PP's probe and generation all follow it, on
sequences longer than the window, padded or not.
"""
from __future__ import annotations

import pytest
import torch

from ppcore import PruneConfig, Pruner, logits, walk
from ppcore.calibrate import calibrate
from ppcore.generate import generate, left_pad
from tests.conftest import _finish

COMMON = dict(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=4, num_attention_heads=6,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _model(kind: str, window: int = 8):
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    torch.manual_seed(0)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=window))
    elif kind == "mistral-nowindow":
        model = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None))
    elif kind == "qwen2-mixed":  # layers 2 and 3 slide, 0 and 1 attend to everything
        model = Qwen2ForCausalLM(Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=window,
                                             max_window_layers=2))
    else:
        model = LlamaForCausalLM(LlamaConfig(**COMMON))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return _finish(model, kind)


DENSE = PruneConfig(method="dense")


def test_sliding_window_layers_follow_the_hf_config():
    assert _model("mistral").adapter.windows == (8, 8, 8, 8)
    assert _model("qwen2-mixed").adapter.windows == (None, None, 8, 8)
    assert _model("mistral-nowindow").adapter.windows == (None,) * 4
    assert _model("llama").adapter.windows == (None,) * 4


@pytest.mark.parametrize("kind", ["mistral", "qwen2-mixed"])
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_sliding_window_dense_walk_equals_hf_forward_past_the_window(kind, padding):
    lm = _model(kind)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (3, 30), generator=g)  # 30 tokens: far past the window of 8
    mask = None
    if padding != "none":
        mask = torch.ones(3, 30, dtype=torch.long)
        cut = slice(0, 9) if padding == "left" else slice(21, 30)
        mask[1, cut] = 0
    res = walk(lm.adapter, Pruner(lm.adapter, DENSE), ids, mask)
    with torch.inference_mode():
        hf = lm.model(input_ids=ids, attention_mask=mask).logits
    real = torch.ones(3, 30, dtype=torch.bool) if mask is None else mask.bool()
    diff = (logits(lm.adapter, res.hidden) - hf).abs()[real].max().item()
    assert diff <= 1e-4, diff
    # Without the window the logits would differ: the test would catch a walk that ignores it.
    full = _model("mistral-nowindow") if kind == "mistral" else None
    if full is not None and mask is None:
        with torch.inference_mode():
            assert (full.model(input_ids=ids).logits - hf).abs().max().item() > 1e-2


@pytest.mark.parametrize("kind", ["mistral", "qwen2-mixed"])
def test_sliding_window_greedy_generation_equals_hf_generate(kind):
    lm = _model(kind)
    g = torch.Generator().manual_seed(2)
    for lengths in ([6], [6, 11, 3]):  # one prompt (the case), then left-padded prompts of unequal length
        prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]
        gen = generate(lm.adapter, Pruner(lm.adapter, DENSE), prompts, max_new_tokens=12)
        ids, mask = left_pad(prompts, 0)
        with torch.inference_mode():
            hf = lm.model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                                   eos_token_id=None)
        assert gen.tokens == hf[:, ids.shape[1]:].tolist(), lengths


def test_sliding_window_calibration_and_pruned_runs_past_the_window():
    """Calibration statistics are the dense walk's activations, windowed; PP's probe attends within the
    window at its tokens' original positions, so it decides differently from a model without one."""
    lm, full = _model("mistral", window=4), _model("mistral-nowindow")
    g = torch.Generator().manual_seed(3)
    cal = torch.randint(0, 128, (8, 24), generator=g)
    stats = calibrate(lm, cal, 4, cache=False, progress=False)
    stats_full = calibrate(full, cal, 4, cache=False, progress=False)
    assert all(torch.isfinite(st.sq).all() for st in stats.blocks.values())
    assert not torch.allclose(stats.get(2, "attn").sq, stats_full.get(2, "attn").sq)
    ids = torch.randint(0, 128, (4, 24), generator=g)
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), sample_frac=0.5, mlp_multiple=8, use_history=False)
    rec = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="full").record
    rec_full = walk(full.adapter, Pruner(full.adapter, cfg), ids, level="full").record
    # Layer 1's probe sees what the windowed attention of layers 0 and 1 produced, not full attention.
    assert rec.layers[1].attn.energy_probe != rec_full.layers[1].attn.energy_probe
    # A window as long as the batch changes nothing at all: the same numbers as no window.
    wide = _model("mistral", window=24)
    rec_wide = walk(wide.adapter, Pruner(wide.adapter, cfg), ids, level="full").record
    assert [lay.attn.kept for lay in rec_wide.layers] == [lay.attn.kept for lay in rec_full.layers]
    assert [lay.attn.energy_probe for lay in rec_wide.layers] == [lay.attn.energy_probe for lay in rec_full.layers]


def test_sliding_window_probe_attention_matches_a_written_out_reference():
    """The probe's o_proj input at layer 1 (PP, one sample, every token probed) equals HF's own windowed
    attention on that sample: the probe follows the layer's window at the original positions."""
    lm = _model("mistral", window=5)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 128, (1, 20), generator=g)
    cfg = PruneConfig(method="pp", ratio=0.5, skip_layers=(0,), token_frac=1.0, sample_frac=1.0, mlp_multiple=8,
                      use_history=False)
    rec = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="full").record
    # Reference: capture HF's o_proj input at layer 1 with a forward hook (HF applies the window itself).
    seen = {}
    hook = lm.model.model.layers[1].self_attn.o_proj.register_forward_hook(lambda m, i, o: seen.setdefault("z", i[0]))
    try:
        with torch.inference_mode():
            lm.model(input_ids=ids)
    finally:
        hook.remove()
    ref = seen["z"][0].float().square().sum(0)  # per channel, summed over the (all probed) positions
    got = torch.tensor(rec.layers[1].attn.energy_probe)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6)
