"""What the engine holds besides the model: per loaded model, the transposed final projections of the layers
a per-batch method sliced (`Adapter.transposed`, reported by `info`); per run, a static method's kept slices, and
for PP one reusable set of slice tensors per block kind (reported by `Pruner.held_bytes`)."""
from __future__ import annotations

import pytest
import torch

from ppcore import PruneConfig, Pruner, walk
from ppcore.calibrate import calibrate
from ppcore.generate import generate
from tests.conftest import tiny_llama


def _calib(lm):
    g = torch.Generator().manual_seed(4)
    return calibrate(lm, torch.randint(0, 128, (8, 16), generator=g), 4, cache=False, progress=False)


def test_info_reports_the_weights_and_no_extra_copy():
    lm = tiny_llama()
    info = lm.info()
    assert info["weight_bytes"] == sum(p.numel() * 4 for p in lm.model.parameters())
    assert info["extra_weight_bytes"] == 0


def test_pp_holds_one_slice_per_block_kind_whatever_the_batches():
    lm = tiny_llama()  # 4 layers, 6 heads of 16 over 2 kv heads, hidden 96, MLP 160
    dims = lm.adapter.dims
    pruner = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), _calib(lm))
    assert pruner.held_bytes() == 0
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        walk(lm.adapter, pruner, torch.randint(0, 128, (4, 16), generator=g), level="none")
    heads = dims.num_heads - pruner.n_heads_pruned
    attn = 2 * heads * dims.head_dim * dims.hidden  # q rows and o columns; grouped-query k and v are the model's
    mlp = 3 * pruner.n_mlp_kept * dims.hidden  # gate and up rows, down columns
    assert pruner.held_bytes() == 4 * (attn + mlp)


def test_info_reports_the_transposed_final_projections_per_batch_slicing_made():
    """PP's per-batch slices copy o_proj's and down_proj's kept columns as rows of a transpose made once per loaded
    model, for the layers it pruned only; `info` counts them, and a second run makes none."""
    lm = tiny_llama()
    dims, calib = lm.adapter.dims, _calib(lm)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(5))
    for _ in range(2):
        walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), calib), ids,
             level="none")
        per_layer = dims.hidden * (dims.num_heads * dims.head_dim + dims.intermediate)  # o_proj and down_proj
        assert lm.info()["extra_weight_bytes"] == 4 * 3 * per_layer  # layers 1-3, in fp32


def test_transposed_slices_compute_the_same_bits_as_column_gathers(monkeypatch):
    """The transposed layout is a speed change only: a PP walk gives bit-identical hidden states without it."""
    lm = tiny_llama()
    calib = _calib(lm)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(6))

    def run():
        pruner = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), calib)
        return walk(lm.adapter, pruner, ids, level="none").hidden

    with_t = run()
    assert lm.info()["extra_weight_bytes"] > 0
    monkeypatch.setattr(lm.adapter, "transposed", lambda *a: None)  # column gathers from the model's own tensors
    assert torch.equal(run(), with_t)


def test_static_methods_hold_their_kept_slices_and_generation_no_buffers():
    lm = tiny_llama()
    dims, calib = lm.adapter.dims, _calib(lm)
    wanda = Pruner(lm.adapter, PruneConfig(method="wanda-sp", ratio=0.4, skip_layers=(0,)), calib)
    walk(lm.adapter, wanda, torch.randint(0, 128, (2, 16)), level="none")
    heads = dims.num_heads - wanda.n_heads_pruned
    per_layer = 2 * heads * dims.head_dim * dims.hidden + 3 * wanda.n_mlp_kept * dims.hidden
    assert wanda.held_bytes() == 4 * 3 * per_layer  # three pruned layers
    # Generation keeps the prompt's slices for every decoded token: they are never written over.
    pp = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), calib)
    generate(lm.adapter, pp, [[1, 2, 3, 4, 5], [6, 7, 8]], 4, level="none")
    assert pp.held_bytes() == 0


def test_kv_cache_writes_in_place_and_refuses_to_overflow():
    from ppcore.kv_cache import KVCache

    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    cache = KVCache([(k, -k)], torch.ones(2, 3, dtype=torch.bool), torch.arange(3).expand(2, 3), capacity=4)
    buf = cache.k[0]
    cache.add_key(torch.tensor([[3], [3]]))
    assert cache.key_pos.tolist() == [[0, 1, 2, 3]] * 2 and bool(cache.key_valid.all())
    new = torch.full((2, 1, 1, 2), 7.0)
    keys, values = cache.extend(0, new, -new)
    cache.commit()
    assert keys.data_ptr() == buf.data_ptr() and keys.shape == (2, 1, 4, 2)  # a view of the one buffer
    assert torch.equal(keys[:, :, :3], k) and torch.equal(values[:, :, 3:], -new)
    assert cache.length == 4
    with pytest.raises(IndexError, match="full"):
        cache.add_key(torch.tensor([[4], [4]]))


def test_extra_weight_bytes_counts_a_copy_kept_beside_the_model():
    """`info`'s extra_weight_bytes is measured: any tensor the engine kept beside the model would show."""
    lm = tiny_llama()
    assert lm.info()["extra_weight_bytes"] == 0
    w = lm.adapter.layer(0).down_w
    lm.adapter.some_copy = w.t().contiguous()  # a copy held in an attribute of its own, not in `transposed`'s dict
    assert lm.info()["extra_weight_bytes"] == w.numel() * 4
