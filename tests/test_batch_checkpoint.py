"""Per-batch checkpoints (ppcore.batch_checkpoint, ScoredRun.checkpoint/restore, Method.state): an ablation stopped
mid-seed and resumed gives the rows of an uninterrupted one, batch times apart; PP+'s running means travel too; a
checkpoint of another run, a broken one and one from another engine are each handled in the open."""
from __future__ import annotations

import json

import pytest
import torch

from ppcore import PruneConfig
from ppcore.batch_checkpoint import BatchCheckpoint
from ppcore.errors import DataError
from ppcore.scoring import score_batch, scored_runs
from tests.test_bench import tiny_eval_setup

TIMES = ("seconds", "batch_seconds")
BASE = PruneConfig(skip_layers=(0,), mlp_multiple=8)


@pytest.fixture(scope="module")
def tiny_setup():
    return tiny_eval_setup()


def _without_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def _ablate(ablate_run, tmp_path, **kw):
    return ablate_run.run_ablation("history", [0.5], [0], base=BASE, progress=False,
                                   json_path=str(tmp_path / "history.json"), **kw)


class Stop(Exception):
    """Stands for the user's Ctrl-C in the middle of a batch."""


def _stopping_at(calls_before_stop, real):
    count = [0]

    def score(*args, **kwargs):
        if count[0] == calls_before_stop:
            raise Stop
        count[0] += 1
        return real(*args, **kwargs)
    return score, count


def test_a_seed_stopped_after_two_batches_resumes_to_the_uninterrupted_rows(tiny_setup, tmp_path, monkeypatch):
    import ppcore.ablate_run as ablate_run

    monkeypatch.setattr(ablate_run, "prepare", lambda seed, **kw: tiny_setup)
    (tmp_path / "whole").mkdir()
    whole = _ablate(ablate_run, tmp_path / "whole")
    n_runs = len(whole["rows"])
    assert not list((tmp_path / "whole").glob("*.partial.pt"))  # dropped once the seed is in the JSON

    real, warm = ablate_run.score_batch, ablate_run.warm_up
    stop, _ = _stopping_at(2 * n_runs + 1, real)  # in the third batch, one run already scored
    monkeypatch.setattr(ablate_run, "score_batch", stop)
    with pytest.raises(Stop):
        _ablate(ablate_run, tmp_path)
    ckpt = tmp_path / "history.seed0.partial.pt"
    assert ckpt.is_file() and not (tmp_path / "history.json").exists()

    counted, calls = _stopping_at(-1, real)
    warmed = []
    monkeypatch.setattr(ablate_run, "score_batch", counted)
    monkeypatch.setattr(ablate_run, "warm_up", lambda *a, **k: warmed.append(1) or warm(*a, **k))
    resumed = _ablate(ablate_run, tmp_path, resume=True)
    # only the third batch was scored; the warm-up ran again (no state, but the next batch's time would be cold)
    assert calls[0] == n_runs and len(warmed) == n_runs
    assert _without_times(resumed["rows"]) == _without_times(whole["rows"])
    assert [len(r["batch_seconds"]) for r in resumed["rows"]] == [3] * n_runs
    assert json.loads((tmp_path / "history.json").read_text())["seeds"] == [0] and not ckpt.exists()


def test_without_resume_a_left_checkpoint_is_not_used(tiny_setup, tmp_path, monkeypatch):
    import ppcore.ablate_run as ablate_run

    monkeypatch.setattr(ablate_run, "prepare", lambda seed, **kw: tiny_setup)
    n_runs = len(ablate_run.grid("history", [0.5], BASE))
    real = ablate_run.score_batch
    stop, _ = _stopping_at(n_runs + 2, real)  # in the second batch: the first one's checkpoint is there
    monkeypatch.setattr(ablate_run, "score_batch", stop)
    with pytest.raises(Stop):
        _ablate(ablate_run, tmp_path)
    assert (tmp_path / "history.seed0.partial.pt").is_file()
    counted, calls = _stopping_at(-1, real)
    monkeypatch.setattr(ablate_run, "score_batch", counted)
    _ablate(ablate_run, tmp_path)
    assert calls[0] == 3 * n_runs  # every batch ran again
    assert not (tmp_path / "history.seed0.partial.pt").exists()


def test_a_seeds_checkpoint_goes_as_soon_as_its_rows_are_written(tiny_setup, tmp_path, monkeypatch):
    import ppcore.ablate_run as ablate_run

    monkeypatch.setattr(ablate_run, "prepare", lambda seed, **kw: tiny_setup)
    n_runs = len(ablate_run.grid("history", [0.5], BASE))
    stop, _ = _stopping_at(4 * n_runs + 2, ablate_run.score_batch)  # in seed 1's second batch
    monkeypatch.setattr(ablate_run, "score_batch", stop)
    with pytest.raises(Stop):
        ablate_run.run_ablation("history", [0.5], [0, 1], base=BASE, progress=False,
                                json_path=str(tmp_path / "history.json"))
    assert sorted(p.name for p in tmp_path.glob("*.partial.pt")) == ["history.seed1.partial.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_another_runs_or_a_broken_checkpoint_gets_one_message_and_another_engine_starts_over(tiny_setup, tmp_path,
                                                                                              monkeypatch, capsys):
    import ppcore.batch_checkpoint as batch_checkpoint

    lm = tiny_setup.lm
    runs = scored_runs(lm, [PruneConfig(ratio=0.5, **{"skip_layers": (0,), "mlp_multiple": 8})], tiny_setup._calib)
    score_batch(lm, runs[0], tiny_setup.windows[:4], 0)
    path = tmp_path / "x.partial.pt"
    BatchCheckpoint(path, {"seed": 0}).save(lm, 1, runs, {"agree": {}})
    with pytest.raises(DataError, match="checkpoint of another run"):
        BatchCheckpoint(path, {"seed": 1}).load(lm, runs)
    # Computed otherwise (another engine, torch, model revision): started over, even under another key (an upgrade
    # that adds a setting changes the key too).
    monkeypatch.setattr(batch_checkpoint, "computed_with", lambda lm: "another")
    assert BatchCheckpoint(path, {"seed": 0}).load(lm, runs) is None
    assert BatchCheckpoint(path, {"seed": 0, "new_setting": 1}).load(lm, runs) is None
    assert "starts over" in capsys.readouterr().err
    torch.save({"key": "{}", "engine": "x", "done": 1, "runs": [], "extra": {}}, path)  # the first version's format
    assert BatchCheckpoint(path, {"seed": 0}).load(lm, runs) is None
    torch.save([1, 2], path)
    with pytest.raises(DataError, match="not a checkpoint of `ppcore ablate`"):
        BatchCheckpoint(path, {"seed": 0}).load(lm, runs)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be read as a checkpoint"):
        BatchCheckpoint(path, {"seed": 0}).load(lm, runs)


def test_a_checkpoint_that_cannot_be_written_warns_and_leaves_no_stray_file(tiny_setup, tmp_path, monkeypatch,
                                                                            capsys):
    lm = tiny_setup.lm
    runs = scored_runs(lm, [PruneConfig(method="dense")], None)

    def full_disk(obj, f):
        open(f, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    BatchCheckpoint(tmp_path / "x.partial.pt", {"seed": 0}).save(lm, 1, runs, {})
    assert list(tmp_path.iterdir()) == [] and "No space left on device" in capsys.readouterr().err


def test_pp_plus_running_means_and_the_history_travel_in_a_checkpoint(tiny_lm, tiny_calib, tmp_path):
    cfg = PruneConfig(method="pp-plus", ratio=0.5, skip_layers=(0,), compensate="on", error_score="on",
                      allocation="uniform", recover="off")
    g = torch.Generator().manual_seed(3)
    batches = [torch.randint(0, 128, (4, 16), generator=g) for _ in range(3)]
    whole = scored_runs(tiny_lm, [cfg], tiny_calib)[0]
    first = scored_runs(tiny_lm, [cfg], tiny_calib)[0]
    for i, ids in enumerate(batches):
        score_batch(tiny_lm, whole, ids, i)
    for i, ids in enumerate(batches[:2]):
        score_batch(tiny_lm, first, ids, i)
    assert set(first.pruner.method.state()) == {"history", "means"}
    ckpt = BatchCheckpoint(tmp_path / "p.partial.pt", {"cfg": cfg.to_dict()})
    ckpt.save(tiny_lm, 2, [first], {})
    second = scored_runs(tiny_lm, [cfg], tiny_calib)[0]
    assert ckpt.load(tiny_lm, [second]) == (2, {})
    score_batch(tiny_lm, second, batches[2], 2)
    assert second.batch_loss == whole.batch_loss and second.flops == whole.flops and second.units == whole.units
    for name, tensors in whole.pruner.method.state().items():
        for key, t in tensors.items():
            assert torch.equal(second.pruner.method.state()[name][key], t), (name, key)
    # A state of another config (PP has no running means) is refused, not half taken.
    pp = scored_runs(tiny_lm, [PruneConfig(ratio=0.5, skip_layers=(0,))], tiny_calib)[0]
    with pytest.raises(DataError, match="another method or config"):
        ckpt.load(tiny_lm, [pp])


def test_a_run_holding_records_refuses_a_checkpoint(tiny_lm, tiny_calib):
    run = scored_runs(tiny_lm, [PruneConfig(ratio=0.5, skip_layers=(0,))], tiny_calib)[0]
    score_batch(tiny_lm, run, torch.zeros(2, 8, dtype=torch.long), 0, level="summary")
    with pytest.raises(ValueError, match="keeps no batch records"):
        run.checkpoint()
