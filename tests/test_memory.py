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
        assert lm.info()["pp_extra_weight_bytes_max"] == 4 * 4 * per_layer  # every layer: what info says beforehand


def test_transposed_slices_compute_what_column_gathers_do(monkeypatch):
    """The transposed layout is a speed change only: a PP walk gives the same hidden states without it, bit for bit
    at this batch (as at 8 x 64 and 20 x 512 on the default model), and within rounding at any (a batch of two
    tokens rounded differently there: the product's kernel depends on the layout and the shape)."""
    lm = tiny_llama()
    calib = _calib(lm)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randint(0, 128, shape, generator=g) for shape in ((4, 16), (1, 2), (2, 7))]

    def run(ids):
        pruner = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,)), calib)
        return walk(lm.adapter, pruner, ids, level="none").hidden

    with_t = [run(ids) for ids in batches]
    assert lm.info()["extra_weight_bytes"] > 0
    monkeypatch.setattr(lm.adapter, "transposed", lambda *a: None)  # column gathers from the model's own tensors
    without = [run(ids) for ids in batches]
    assert torch.equal(without[0], with_t[0])
    for a, b in zip(without[1:], with_t[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_transposes_follow_the_weights_and_stay_on_the_cpu():
    """A weight written in place gets a new transpose (never a stale one); an offloaded layer's is made per call and
    not kept; a weight on another device gets none (its slice gathers columns)."""
    lm = tiny_llama()
    w = lm.adapter.layer(1).down_w
    first = lm.adapter.transposed(1, "mlp", w)
    assert torch.equal(first, w.t()) and lm.adapter.transposed(1, "mlp", w) is first
    with torch.no_grad():
        w.mul_(2.0)
    again = lm.adapter.transposed(1, "mlp", w)
    assert again is not first and torch.equal(again, w.t())
    lm.adapter._offloaded[2] = True
    w2 = lm.adapter.layer(2).down_w
    assert torch.equal(lm.adapter.transposed(2, "mlp", w2), w2.t()) and (2, "mlp") not in lm.adapter._transposed
    assert lm.adapter.transposed(3, "mlp", lm.adapter.layer(3).down_w.to("meta")) is None


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
