"""Half-precision models (as on GPU: bf16 by default) walk, calibrate, prune and generate, and keep
history, statistics and scores in fp32 whatever the model dtype."""
from __future__ import annotations

import pytest
import torch

from ppcore import PruneConfig, Pruner, logits, walk
from ppcore.calibrate import calibrate
from ppcore.generate import generate
from tests.conftest import tiny_llama, tiny_opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("make", [tiny_llama, tiny_opt])
def test_half_precision_runs_every_method(make, dtype):
    lm = make()
    lm.model.to(dtype)
    lm.dtype = dtype
    g = torch.Generator().manual_seed(0)
    calib = calibrate(lm, torch.randint(0, 128, (8, 24), generator=g), 4, cache=False, progress=False)
    assert all(st.sq.dtype == torch.float32 and st.fluc.dtype == torch.float32 for st in calib.blocks.values())
    ids = torch.randint(0, 128, (4, 24), generator=g)
    dense = logits(lm.adapter, walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), ids).hidden)
    for method in ("pp", "fullbatch", "wanda-sp", "flap", "ppsp-calib"):
        cfg = PruneConfig(method=method, ratio=0.5, skip_layers=(0,), mlp_multiple=8)
        pruner = Pruner(lm.adapter, cfg, calib)
        res = walk(lm.adapter, pruner, ids, level="full")
        out = logits(lm.adapter, res.hidden)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert not torch.equal(out, dense)
        if pruner.history is not None:
            assert all(h.dtype == torch.float32 for h in pruner.history.states.values())
        gen = generate(lm.adapter, pruner, ids[:2, :8].tolist(), 3)
        assert len(gen.tokens[0]) == 3
