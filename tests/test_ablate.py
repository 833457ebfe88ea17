"""`python -m ppcore ablate` (ppcore.ablations, ablate_run, ablate_report; docs/ablations.md): every named grid is
valid at the documented ratios, an interleaved ablation changes no run's numbers, the Jaccard with the oracle is
what it says, the report is made from the JSON, and bad input gets one line."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ppcore import PruneConfig
from ppcore.ablate_report import markdown
from ppcore.ablate_run import _agreement, ablate_setup, summary
from ppcore.analysis import jaccard
from ppcore.ablations import ABLATIONS, ORACLE, grid
from ppcore.cli import main
from ppcore.evaluate import evaluate
from tests.test_bench import tiny_eval_setup


def test_every_ablation_is_settings_of_the_one_config_at_both_ratios():
    for name, a in ABLATIONS.items():
        runs = grid(name, [0.2, 0.4])
        assert runs[0][0] == "dense" and runs[0][1].method == "dense"
        assert sum(1 for label, _ in runs if label.endswith("(PP) @ 0.4")) == 1, name  # one reference per ratio
        pp = next(c for label, c in runs if label.endswith("(PP) @ 0.4"))
        assert pp == PruneConfig(ratio=0.4), name  # PP's reference is PP's defaults
        assert (ORACLE + " @ 0.4" in [label for label, _ in runs]) == a.jaccard
        assert len({label for label, _ in runs}) == len(runs)  # labels are unique
        for label, cfg in runs:
            cfg.check_layers(30)  # valid on the default model (30 layers, 3 skipped)


def test_the_blocks_grid_shifts_the_ratio_between_attention_and_mlp():
    cfgs = dict(grid("blocks", [0.4]))
    c = cfgs["attention r/2, MLP 3r/2 @ 0.4"]
    assert (c.attn_ratio, c.mlp_ratio) == (0.2, pytest.approx(0.6))
    assert cfgs["attention only (MLP 0) @ 0.4"].mlp_ratio == 0.0


def test_jaccard_and_the_agreement_per_block_kind():
    assert jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert jaccard([], []) == 1.0
    kept = {(1, "attn"): [0, 1], (1, "mlp"): [0, 1, 2, 3], (2, "mlp"): [5]}
    oracle = {(1, "attn"): [0, 1], (1, "mlp"): [2, 3, 4, 5], (2, "mlp"): [5]}
    got = _agreement(kept, oracle)
    assert got["attn"] == 1.0 and got["mlp"] == pytest.approx((2 / 6 + 1.0) / 2)


@pytest.fixture(scope="module")
def tiny_setup():
    return tiny_eval_setup()


def test_an_interleaved_ablation_changes_no_runs_numbers(tiny_setup):
    base = PruneConfig(skip_layers=(0,), mlp_multiple=8)
    labelled = grid("history", [0.5], base)
    rows = ablate_setup(tiny_setup, "history", labelled, seed=0)
    assert [r["label"] for r in rows] == [label for label, _ in labelled]
    for (label, cfg), row in zip(labelled, rows):
        alone = evaluate(tiny_setup.lm, cfg, tiny_setup.windows, 4, tiny_setup._calib, progress=False)
        assert row["batch_loss"] == pytest.approx(alone.batch_loss, abs=1e-6), label
        assert row["decoder_flops_ratio"] == pytest.approx(alone.decoder_flops_ratio)
        if cfg.method in ("dense",) or label.startswith(ORACLE):
            assert row["jaccard"] is None
        else:
            assert 0 < row["jaccard"]["attn"] <= 1 and 0 < row["jaccard"]["mlp"] <= 1


def test_a_probe_of_the_whole_batch_without_history_agrees_with_the_oracle_everywhere(tiny_setup):
    kw = {"ratio": 0.5, "skip_layers": (0,), "mlp_multiple": 8}
    labelled = [("dense", PruneConfig(method="dense")),
                (f"{ORACLE} @ 0.5", PruneConfig(method="fullbatch", **kw)),
                ("whole @ 0.5", PruneConfig(token_frac=1.0, sample_frac=1.0, use_history=False, **kw)),
                ("pp @ 0.5", PruneConfig(**kw))]
    rows = ablate_setup(tiny_setup, "probe", labelled, seed=0)
    assert rows[2]["jaccard"] == {"attn": 1.0, "mlp": 1.0}
    assert rows[3]["jaccard"]["mlp"] < 1.0


def test_the_report_is_made_from_the_json(tiny_setup):
    labelled = grid("fusion", [0.5], PruneConfig(skip_layers=(0,), mlp_multiple=8))
    rows = ablate_setup(tiny_setup, "fusion", labelled, seed=0) + ablate_setup(tiny_setup, "fusion", labelled, seed=1)
    res = {"ablation": "fusion", "question": ABLATIONS["fusion"].question, "ratios": [0.5], "seeds": [0, 1],
           "rows": rows}
    again = json.loads(json.dumps(res))
    assert markdown(again) == markdown(res)
    md = markdown(res)
    for e in summary(res):
        assert f"| {e['variant']} | {e['ppl'][0]:.2f}" in md
    pp = next(e for e in summary(res) if e["variant"] == "importance-scaled (PP)")
    assert "Jaccard" not in md and pp["ppl"][1] == 0.0  # same windows twice: no spread


@pytest.mark.parametrize("argv, message", [
    (["nonsense"], "unknown ablation 'nonsense'"),
    (["history", "--ratios", "0.4,abc"], "--ratios expects"),
    (["history", "--seeds", ""], "gives no seed"),
    (["blocks", "--ratios", "0.7"], "ablation blocks"),
    (["fusion", "--ratios", "0.4,0.4"], "each ratio once"),
])
def test_bad_ablate_input_gets_one_line_before_anything_loads(argv, message, capsys, monkeypatch):
    import ppcore.ablate_run as ablate_run

    monkeypatch.setattr(ablate_run, "prepare", None)  # nothing may load
    assert main(["ablate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_an_ablation_is_written_after_every_seed_and_resumes(tiny_setup, tmp_path, monkeypatch):
    import ppcore.ablate_run as ablate_run
    from ppcore.errors import DataError

    prepared: list[int] = []

    def fake_prepare(seed, **kw):
        prepared.append(seed)
        return tiny_setup

    monkeypatch.setattr(ablate_run, "prepare", fake_prepare)
    base = PruneConfig(skip_layers=(0,), mlp_multiple=8)
    path = tmp_path / "fusion.json"
    first = ablate_run.run_ablation("fusion", [0.5], [0], base=base, progress=False, json_path=str(path))
    assert json.loads(path.read_text()) == json.loads(json.dumps(first)) and first["seeds"] == [0]
    both = ablate_run.run_ablation("fusion", [0.5], [0, 1], base=base, progress=False, json_path=str(path),
                                   resume=True)
    assert prepared == [0, 1] and both["seeds"] == [0, 1]  # seed 0 was kept, not rerun
    assert both["rows"][: len(first["rows"])] == first["rows"]
    with pytest.raises(DataError, match="another ablation run"):
        ablate_run.run_ablation("fusion", [0.4], [0], base=base, progress=False, json_path=str(path), resume=True)
    # A file written before a setting existed (absent: at its default) still resumes; a changed setting does not.
    old = json.loads(path.read_text())
    del old["key"]["base"]["probe_weight"]
    path.write_text(json.dumps(old))
    again = ablate_run.run_ablation("fusion", [0.5], [0, 1], base=base, progress=False, json_path=str(path),
                                    resume=True)
    assert prepared == [0, 1] and again["seeds"] == [0, 1]
    with pytest.raises(DataError, match="another ablation run"):
        ablate_run.run_ablation("fusion", [0.5], [0], base=replace(base, ema=0.9), progress=False,
                                json_path=str(path), resume=True)


def test_a_broken_file_to_resume_gets_one_message(tiny_setup, tmp_path, monkeypatch):
    import ppcore.ablate_run as ablate_run
    from ppcore.errors import DataError

    monkeypatch.setattr(ablate_run, "prepare", lambda seed, **kw: tiny_setup)
    path = tmp_path / "fusion.json"
    for text, message in (('{"key": {}, "rows": [', "cannot be read"), ("[1, 2]", "lacks key, rows, seeds")):
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            ablate_run.run_ablation("fusion", [0.5], [0], base=PruneConfig(skip_layers=(0,)), progress=False,
                                    json_path=str(path), resume=True)


def test_the_docs_tables_are_the_committed_jsons():
    """docs/ablations.md shows every row of every grid measured so far (bench/results/ablations/NAME.json) exactly as
    `markdown` makes it from the JSON, and names the seeds it holds (issue: the tables match their JSON)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "ablations.md").read_text()
    found = sorted((root / "bench" / "results" / "ablations").glob("*.json"))
    for path in found:
        res = json.loads(path.read_text())
        md = markdown(res)
        rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| variant")]
        missing = [line for line in rows if line not in doc]
        assert not missing, f"docs/ablations.md lacks {path.name}'s rows: {missing[:2]}"
        assert (root / "bench" / "results" / "ablations" / f"{res['ablation']}.md").read_text().strip() == md.strip()
