"""Generation with a KV cache: dense equals HF's greedy generate; pruned equals re-walking the
whole sequence each step with the same keep-sets."""
from __future__ import annotations

import pytest
import torch

from ppcore import PruneConfig, Pruner, logits, walk
from ppcore.calibrate import calibrate
from ppcore.generate import generate, left_pad
from tests.conftest import tiny_gemma3, tiny_llama, tiny_opt

MODELS = {"llama-gqa": tiny_llama, "qwen2-bias": lambda: tiny_llama(bias=True), "opt": tiny_opt,
          "gemma3": lambda: tiny_gemma3(window=5)}  # windows shorter than prompt + new tokens


@pytest.mark.parametrize("name", list(MODELS))
def test_dense_generation_equals_hf_generate(name):
    lm = MODELS[name]()
    prompts = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    gen = generate(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), prompts.tolist(), max_new_tokens=8)
    with torch.inference_mode():
        hf = lm.model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=8, do_sample=False,
                               pad_token_id=0, eos_token_id=None)
    assert gen.tokens == hf[:, 9:].tolist()
    assert gen.decode_steps == 7 and gen.prefill_tokens_per_s > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_cached_generation_equals_rewalking(name):
    lm = MODELS[name]()
    g = torch.Generator().manual_seed(1)
    calib = calibrate(lm, torch.randint(0, 128, (8, 16), generator=g), 4, cache=False, progress=False)
    cfg = PruneConfig(method="wanda-sp", ratio=0.4, skip_layers=(0,), mlp_multiple=8)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 11, 4)]  # uneven: left padding
    pruner = Pruner(lm.adapter, cfg, calib)
    gen = generate(lm.adapter, pruner, prompts, max_new_tokens=6)
    # Reference: the whole sequence walked again for every new token, with the same static keep-sets.
    ids, mask = left_pad(prompts, 0)
    ref = []
    for _ in range(6):
        res = walk(lm.adapter, pruner, ids, mask, level="none")
        nxt = logits(lm.adapter, res.hidden[:, -1:]).argmax(-1)
        ref.append(nxt)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    assert gen.tokens == torch.cat(ref, 1).tolist()
    assert any(len(lay.attn.kept) < lay.attn.total for lay in gen.record.layers)


def test_pp_generation_decides_on_the_prompt():
    lm = tiny_llama()
    cfg = PruneConfig(method="pp", ratio=0.5, use_history=False, skip_layers=(0,), mlp_multiple=8)
    gen = generate(lm.adapter, Pruner(lm.adapter, cfg), [[5, 6, 7, 8, 9, 10]], max_new_tokens=4, eos_id=None)
    assert len(gen.tokens[0]) == 4
    assert gen.record.layers[1].attn.probe_tokens  # the probe ran on the prompt


def test_eos_rows_end_at_their_eos_and_later_steps_are_ignored():
    """Rows reaching EOS at different steps: each is cut after its EOS, the rest continue, and the steps run
    until the next EOS check (every EOS_CHECK_EVERY tokens) change nothing that is returned."""
    from ppcore.generate import EOS_CHECK_EVERY

    lm = tiny_llama()
    pruner = Pruner(lm.adapter, PruneConfig(method="dense"))
    prompts = [[5, 9, 14, 3], [7, 7, 2], [1, 2, 3, 4, 5, 6]]
    free = generate(lm.adapter, pruner, prompts, max_new_tokens=12).tokens
    eos = free[0][2]  # the third token of row 0 ends it; other rows end wherever they produce it, if at all
    got = generate(lm.adapter, pruner, prompts, max_new_tokens=12, eos_id=eos)
    for row, ref in zip(got.tokens, free):
        expected = ref[: ref.index(eos) + 1] if eos in ref else ref
        assert row == expected
    assert len(got.tokens[0]) == free[0].index(eos) + 1 <= 3
    # The loop stops only at a check (after a multiple of EOS_CHECK_EVERY steps) or after all 11 steps.
    assert got.decode_steps == 11 or got.decode_steps % EOS_CHECK_EVERY == 0


def test_a_decode_step_copies_only_its_own_keys_and_values(monkeypatch):
    """A pruned grouped-query layer caches its keys and values already expanded to the kept query heads, so a decode
    step expands only the new column: no index_select over the cached ones (a copy that grew with every token)."""
    from ppcore import generate as gen_mod

    lm = tiny_llama()  # 6 query heads over 2 key/value heads
    cfg = PruneConfig(method="pp", ratio=0.5, use_history=False, skip_layers=(0,), mlp_multiple=8)
    pruner = Pruner(lm.adapter, cfg)
    calls: list[tuple[int, ...]] = []
    caches = []
    method, function = torch.Tensor.index_select, torch.index_select

    def spy_method(t, dim, index):
        calls.append(tuple(t.shape))
        return method(t, dim, index)

    def spy_function(t, dim, index, **kw):
        calls.append(tuple(t.shape))
        return function(t, dim, index, **kw)

    step = gen_mod.decode_one_token

    def counted(adapter, p, state, tokens):
        caches.append(state.cache)
        with monkeypatch.context() as m:  # only inside a decode step: the prefill slices weights
            m.setattr(torch.Tensor, "index_select", spy_method)
            m.setattr(torch, "index_select", spy_function)
            return step(adapter, p, state, tokens)

    monkeypatch.setattr(gen_mod, "decode_one_token", counted)
    gen = generate(lm.adapter, pruner, [[5, 6, 7, 8, 9, 10, 11, 12]], max_new_tokens=5)
    kv = [c for c in calls if len(c) == 4]  # (B, heads, keys, d): keys and values
    assert kv and all(c[2] == 1 for c in kv)  # only each step's own column
    # The cache holds one entry per kept query head in a pruned layer, the model's key/value heads elsewhere.
    dims = lm.adapter.dims
    for layer, lay in enumerate(gen.record.layers):
        heads = len(lay.attn.kept) if len(lay.attn.kept) < lay.attn.total else dims.num_kv_heads
        assert caches[-1].k[layer].shape[1] == caches[-1].v[layer].shape[1] == heads
    assert any(len(lay.attn.kept) < lay.attn.total for lay in gen.record.layers)
