"""One loaded model, two threads, two methods: same results as sequential runs, weights untouched."""
from __future__ import annotations

import threading

import torch

from ppcore import PruneConfig, Pruner, walk
from ppcore.calibrate import calibrate
from ppcore.walk import token_nll


def _run(lm, cfg, calib, batches):
    pruner = Pruner(lm.adapter, cfg, calib)
    out = []
    for ids in batches:
        res = walk(lm.adapter, pruner, ids, level="summary")
        nll, mask = token_nll(lm.adapter, res.hidden, ids, res.valid)
        out.append((nll.sum().item() / mask.sum().item(), [lay.attn.kept for lay in res.record.layers],
                    [lay.mlp.kept for lay in res.record.layers]))
    return out


def test_two_threads_match_sequential_runs(default_lm):
    lm = default_lm
    g = torch.Generator().manual_seed(0)
    vocab = lm.adapter.dims.vocab
    calib = calibrate(lm, torch.randint(0, vocab, (8, 48), generator=g), 4, cache=False, progress=False)
    batches = [torch.randint(0, vocab, (4, 48), generator=g) for _ in range(3)]
    cfgs = [PruneConfig(method="pp", ratio=0.4), PruneConfig(method="wanda-sp", ratio=0.4)]
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}

    sequential = [_run(lm, c, calib, batches) for c in cfgs]
    threaded: list = [None, None]

    def worker(i):
        threaded[i] = _run(lm, cfgs[i], calib, batches)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert threaded == sequential
    assert sequential[0] != sequential[1]  # the two methods really differ
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Stop(Exception):
    pass


def test_a_walk_stopped_half_way_leaves_the_model_and_the_next_run_intact():
    from tests.conftest import tiny_llama

    lm = tiny_llama()
    ids = torch.randint(0, lm.adapter.dims.vocab, (3, 20), generator=torch.Generator().manual_seed(0))
    cfg = PruneConfig(method="pp", ratio=0.4, use_history=False, skip_layers=(0,))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    expected = walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="none").hidden
    seen: list[tuple[int, int]] = []

    def stop_at_two(done, total):
        seen.append((done, total))
        if done == 2:
            raise _Stop

    try:
        walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="summary", on_layer=stop_at_two)
        raise AssertionError("the walk did not stop")
    except _Stop:
        pass
    assert seen == [(1, 4), (2, 4)]
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    assert torch.equal(walk(lm.adapter, Pruner(lm.adapter, cfg), ids, level="none").hidden, expected)
