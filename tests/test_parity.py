"""The dense walk equals the Hugging Face forward; ratio 0 equals dense; pruning is physical."""
from __future__ import annotations

import pytest
import torch

from ppcore import PruneConfig, Pruner, logits, walk
from ppcore.slices import attn_front, attn_out, head_channels, mlp_front, mlp_out, slice_attn, slice_mlp
from tests.conftest import tiny_gemma3, tiny_llama, tiny_opt

TINY = {"llama-gqa": lambda: tiny_llama(), "qwen2-bias": lambda: tiny_llama(bias=True), "opt": lambda: tiny_opt(),
        "llama-mha": lambda: tiny_llama(kv_heads=6), "gemma3": lambda: tiny_gemma3()}


def _hf_logits(lm, ids, mask=None):
    kw = {}
    if mask is not None:
        kw["attention_mask"] = mask
        if lm.adapter.family == "llama":  # HF Llama counts positions from 0 regardless of padding
            kw["position_ids"] = (mask.cumsum(1) * mask - 1).clamp_min(0)
    with torch.inference_mode():
        return lm.model(input_ids=ids, **kw).logits


def _walk_logits(lm, ids, mask=None, cfg=PruneConfig(method="dense")):
    res = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, mask)
    return logits(lm.adapter, res.hidden)


@pytest.mark.parametrize("name", list(TINY))
def test_dense_walk_equals_hf_forward(name):
    lm = TINY[name]()
    ids = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(1))
    diff = (_walk_logits(lm, ids) - _hf_logits(lm, ids)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("name", list(TINY))
def test_dense_walk_equals_hf_forward_padded(name):
    lm = TINY[name]()
    ids = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 17:] = 0
    mask[2, 5:] = 0
    d = (_walk_logits(lm, ids, mask) - _hf_logits(lm, ids, mask)).abs()
    assert d[mask.bool()].max().item() <= 1e-4


def test_default_model_dense_parity(default_lm):
    ids = torch.randint(0, default_lm.adapter.dims.vocab, (2, 48), generator=torch.Generator().manual_seed(3))
    diff = (_walk_logits(default_lm, ids) - _hf_logits(default_lm, ids)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("method", ["pp", "fullbatch"])
def test_ratio_zero_equals_dense(name, method):
    lm = TINY[name]()
    ids = torch.randint(0, 128, (4, 20), generator=torch.Generator().manual_seed(4))
    cfg = PruneConfig(method=method, ratio=0.0, use_history=False)
    res = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="summary")
    assert all(len(lay.attn.kept) == lay.attn.total for lay in res.record.layers)
    assert torch.equal(logits(lm.adapter, res.hidden), _walk_logits(lm, ids))


@pytest.mark.parametrize("name", list(TINY))
def test_sliced_attention_equals_masked_dense(name):
    lm = TINY[name]()
    ad, dims = lm.adapter, lm.adapter.dims
    w = ad.layer(1)
    x = torch.randn(2, 16, dims.hidden, generator=torch.Generator().manual_seed(5))
    pos = torch.arange(16).expand(2, 16)
    rot = ad.layer_rotary(ad.rotary(x, pos), 1)
    # Uneven kept heads per kv group exercise the expanded-kv path as well as SDPA's GQA mode.
    for heads in ([0, 2, 3], [1, 4], [0, 1, 2, 3], [2]):
        heads = [h for h in heads if h < dims.num_heads]
        kept = torch.tensor(heads)
        with torch.inference_mode():
            full = slice_attn(w, dims, None)
            z = attn_front(full, x, dims.head_dim, rot, None)
            mask = torch.zeros(z.shape[-1])
            mask[head_channels(kept, dims.head_dim)] = 1
            ref = attn_out(full, z * mask)
            sl = slice_attn(w, dims, kept)
            got = attn_out(sl, attn_front(sl, x, dims.head_dim, rot, None))
        assert sl.q_w.shape[0] == len(heads) * dims.head_dim
        assert (got - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(TINY))
def test_sliced_mlp_equals_masked_dense(name):
    lm = TINY[name]()
    ad, dims = lm.adapter, lm.adapter.dims
    w = ad.layer(2)
    x = torch.randn(2, 16, dims.hidden, generator=torch.Generator().manual_seed(6))
    kept = torch.randperm(dims.intermediate, generator=torch.Generator().manual_seed(7))[:64].sort().values
    with torch.inference_mode():
        full = slice_mlp(w, None)
        mask = torch.zeros(dims.intermediate)
        mask[kept] = 1
        ref = mlp_out(full, mlp_front(full, x, ad.act) * mask)
        sl = slice_mlp(w, kept)
        got = mlp_out(sl, mlp_front(sl, x, ad.act))
    assert sl.down_w.shape[1] == 64 and sl.down_w.is_contiguous()
    assert (got - ref).abs().max().item() <= 1e-5


def test_attention_slices_have_static_shapes():
    """A slice's shapes follow from the number of kept heads only (no host sync to build it): grouped-query
    attention keeps every kv head and maps each kept query head to its own; multi-head slices k and v alike."""
    lm = tiny_llama()  # 6 query heads over 2 kv heads: heads 0-2 read kv 0, heads 3-5 read kv 1
    dims, w = lm.adapter.dims, lm.adapter.layer(0)
    for heads, kv in (([0, 1, 2], [0, 0, 0]), ([2, 3], [0, 1]), ([4], [1])):
        sl = slice_attn(w, dims, torch.tensor(heads))
        assert sl.n_kv == 2 and sl.k_w.shape[0] == 2 * dims.head_dim and sl.kv_index.tolist() == kv
    mha = tiny_llama(kv_heads=6)
    sl = slice_attn(mha.adapter.layer(0), mha.adapter.dims, torch.tensor([1, 4]))
    assert sl.n_kv == 2 and sl.kv_index is None and sl.k_w.shape[0] == 2 * mha.adapter.dims.head_dim


@pytest.mark.parametrize("name", list(TINY))
def test_walk_never_mutates_the_model(name):
    """Per-batch slices are written into reused buffers: never into the model's tensors (grouped-query slices
    keep the model's k and v, multi-head and MLP slices copy theirs)."""
    lm = TINY[name]()
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    for method in ("pp", "fullbatch"):
        cfg = PruneConfig(method=method, ratio=0.5, skip_layers=(0,), use_history=False)
        pruner = Pruner(lm.adapter, cfg)
        for _ in range(3):  # later batches write into the buffers of earlier ones
            walk(lm.adapter, pruner, torch.randint(0, 128, (4, 20), generator=g))
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
