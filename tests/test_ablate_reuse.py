"""Runs one ablation grid takes from another's JSON (ppcore.ablate_reuse): the rows taken are those the run computes
itself, only the rest is computed, the oracle runs wherever a run still has to be compared with it, and a row
computed with other code or on other windows, or by a grid that did not compare keep-sets, is computed again."""
from __future__ import annotations

import json

import pytest

from ppcore import PruneConfig
from ppcore.ablate_reuse import ROWS_VERSION, reusable
from ppcore.ablations import ORACLE, grid
from ppcore.batch_checkpoint import computed_with
from tests.test_bench import tiny_eval_setup

BASE = PruneConfig(skip_layers=(0,), mlp_multiple=8)
TIMES = ("seconds", "batch_seconds")
PP = "probe + history (PP) @ 0.5"


@pytest.fixture(scope="module")
def tiny_setup():
    return tiny_eval_setup()


@pytest.fixture()
def ablate_run(tiny_setup, monkeypatch):
    """ppcore.ablate_run on the tiny setup, recording the labels each seed computes."""
    import ppcore.ablate_run as module

    computed: list[list[str]] = []
    real = module.ablate_setup

    def recording(s, name, labelled, seed, progress=False, **kw):
        computed.append([label for label, _ in labelled])
        return real(s, name, labelled, seed, progress, **kw)

    monkeypatch.setattr(module, "prepare", lambda seed, **kw: tiny_setup)
    monkeypatch.setattr(module, "ablate_setup", recording)
    module.computed = computed
    yield module
    del module.computed


def _run(module, name, folder, **kw):
    folder.mkdir(exist_ok=True)
    return module.run_ablation(name, [0.5], [0], base=BASE, progress=False, json_path=str(folder / f"{name}.json"),
                               **kw)


def _figures(row):
    return {k: v for k, v in row.items() if k not in (*TIMES, "label", "variant", "protocol", "reused_from", "jaccard")}


def test_a_run_another_grid_holds_is_taken_and_is_what_the_grid_computes_itself(ablate_run, tmp_path):
    history = _run(ablate_run, "history", tmp_path / "shared")
    fusion = _run(ablate_run, "fusion", tmp_path / "shared")
    alone = _run(ablate_run, "fusion", tmp_path / "alone")
    labels = [label for label, _ in grid("fusion", [0.5], BASE)]
    assert ablate_run.computed[1] == [x for x in labels if x not in ("dense", "importance-scaled (PP) @ 0.5")]
    assert ablate_run.computed[2] == labels  # nothing to take in a folder of its own
    assert [r["label"] for r in fusion["rows"]] == labels
    by_label = {r["label"]: r for r in fusion["rows"]}
    source = {r["label"]: r for r in history["rows"]}
    assert by_label["dense"]["reused_from"] == "history" and by_label["dense"]["batch_loss"] == source["dense"][
        "batch_loss"]
    assert by_label["importance-scaled (PP) @ 0.5"]["batch_loss"] == source[PP]["batch_loss"]
    assert by_label["importance-scaled (PP) @ 0.5"]["jaccard"] is None  # fusion compares no keep-sets
    assert by_label["importance-scaled (PP) @ 0.5"]["protocol"]["settings"] == {"ablation": "fusion",
                                                                               "computed_in": "history"}
    for got, own in zip(fusion["rows"], alone["rows"]):
        assert "reused_from" not in own
        assert _figures(got) == _figures(own), got["label"]  # bit for bit: a run does not depend on its company
    assert json.loads((tmp_path / "shared" / "fusion.json").read_text())["rows"] == fusion["rows"]


def test_no_reuse_computes_every_run(ablate_run, tmp_path):
    _run(ablate_run, "history", tmp_path)
    _run(ablate_run, "fusion", tmp_path, reuse=False)
    assert ablate_run.computed[1] == [label for label, _ in grid("fusion", [0.5], BASE)]


def test_the_oracle_runs_while_a_run_still_has_to_be_compared_with_it(ablate_run, tiny_setup, tmp_path):
    _run(ablate_run, "fusion", tmp_path)  # read first (by name), its PP row without Jaccard: passed over for history's
    history = _run(ablate_run, "history", tmp_path)
    probe = _run(ablate_run, "probe", tmp_path)
    oracle = f"{ORACLE} @ 0.5"
    pp_probe = "tokens 50% x samples 5% (PP) @ 0.5"
    assert oracle in ablate_run.computed[2] and pp_probe not in ablate_run.computed[2]
    taken = {r["label"]: r for r in probe["rows"]}[pp_probe]
    assert taken["jaccard"] == {r["label"]: r for r in history["rows"]}[PP]["jaccard"] is not None
    # Where everything compared at a ratio is taken, the oracle is taken too.
    labelled = [x for x in grid("probe", [0.5], BASE) if x[0] in ("dense", oracle, pp_probe)]
    got = reusable(tmp_path, "probe", history["key"] | {"ablation": "probe"}, tiny_setup.protocol.to_dict(),
                   computed_with(tiny_setup.lm), labelled, 0)
    assert set(got) == {"dense", oracle, pp_probe}


def test_a_row_of_other_code_other_windows_or_without_keep_sets_is_computed_again(ablate_run, tmp_path):
    _run(ablate_run, "fusion", tmp_path)  # compares no keep-sets: its PP row cannot serve a grid that does
    _run(ablate_run, "history", tmp_path)
    assert PP in ablate_run.computed[1] and "dense" not in ablate_run.computed[1]
    path = tmp_path / "history.json"
    obj = json.loads(path.read_text())
    for row in obj["rows"]:
        if row["label"] == "dense":  # another thread count (other fp32 sums)
            row["protocol"]["environment"] = {**row["protocol"].get("environment", {}), "cpu_threads": 99}
        elif row["label"] == PP:
            row["protocol"]["data"]["windows_sha256_16"] = "0" * 16
        else:
            del row["computed_with"]  # written before rows carried the note
    path.write_text(json.dumps(obj))
    (tmp_path / "fusion.json").unlink()
    _run(ablate_run, "fusion", tmp_path)
    assert ablate_run.computed[2] == [label for label, _ in grid("fusion", [0.5], BASE)]
    # Rows made another way (a later ROWS_VERSION) are not taken either.
    (tmp_path / "fusion.json").unlink()
    obj = json.loads(path.read_text())
    for row in obj["rows"]:
        row.update(computed_with=computed_with(ablate_run.prepare(0).lm), rows_version=ROWS_VERSION + 1)
        row["protocol"]["data"] = obj["rows"][0]["protocol"]["data"]
    path.write_text(json.dumps(obj))
    _run(ablate_run, "fusion", tmp_path)
    assert ablate_run.computed[3] == [label for label, _ in grid("fusion", [0.5], BASE)]
    # And rows of other code (another `computed_with` note), everything else equal.
    (tmp_path / "fusion.json").unlink()
    for row in obj["rows"]:
        row.update(rows_version=ROWS_VERSION, computed_with="another engine")
        row["protocol"]["environment"] = obj["rows"][1]["protocol"].get("environment", {})
    path.write_text(json.dumps(obj))
    _run(ablate_run, "fusion", tmp_path)
    assert ablate_run.computed[4] == [label for label, _ in grid("fusion", [0.5], BASE)]


def test_a_row_taken_twice_names_the_grid_that_computed_it(ablate_run, tmp_path):
    _run(ablate_run, "history", tmp_path)
    _run(ablate_run, "fusion", tmp_path)  # takes dense and PP from history
    score = _run(ablate_run, "score", tmp_path)  # finds them in fusion.json first
    dense = {r["label"]: r for r in score["rows"]}["dense"]
    assert dense["reused_from"] == "history" and dense["protocol"]["settings"]["computed_in"] == "history"


def test_the_row_code_is_pinned_to_rows_version():
    """Changing how a row's keep-set agreement is made changes what a reused row would mean: raise ROWS_VERSION in
    ppcore/ablate_reuse.py, then put the new hash here."""
    import hashlib
    import inspect

    from ppcore import ablate_run

    src = "".join(inspect.getsource(f) for f in (ablate_run._kept, ablate_run._agreement, ablate_run._mean_agreement))
    assert (ROWS_VERSION, hashlib.sha256(src.encode()).hexdigest()[:16]) == (1, "6c2cf418e916a72e")


def test_a_stopped_seed_resumes_with_the_runs_it_was_computing(ablate_run, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    _run(ablate_run, "history", tmp_path / "alone")
    whole = _run(ablate_run, "fusion", tmp_path / "alone")
    real = ablate_run.score_batch
    calls = [0]

    def stopping(*a, **k):
        calls[0] += 1
        if calls[0] > len(whole["rows"]) + 1:  # in the second batch
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(ablate_run, "score_batch", stopping)
    with pytest.raises(Stop):
        _run(ablate_run, "fusion", tmp_path / "late", reuse=False)  # every run computed; then history lands
    monkeypatch.setattr(ablate_run, "score_batch", real)
    (tmp_path / "late" / "history.json").write_text((tmp_path / "alone" / "history.json").read_text())
    resumed = _run(ablate_run, "fusion", tmp_path / "late", resume=True)
    assert ablate_run.computed[-1] == [r["label"] for r in whole["rows"]]  # the checkpoint's runs, all of them
    assert not any("reused_from" in r for r in resumed["rows"])
    assert [_figures(r) for r in resumed["rows"]] == [_figures(r) for r in whole["rows"]]


def _stop_in_second_batch(ablate_run, monkeypatch, runs: int):
    class Stop(Exception):
        pass

    real, calls = ablate_run.score_batch, [0]

    def stopping(*a, **k):
        calls[0] += 1
        if calls[0] > runs + 1:
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(ablate_run, "score_batch", stopping)
    return Stop, real


def test_a_seed_stopped_while_taking_rows_resumes_taking_them(ablate_run, tmp_path, monkeypatch, capsys):
    _run(ablate_run, "history", tmp_path)
    whole = _run(ablate_run, "fusion", tmp_path / "whole")  # alone: every run computed
    taken_labels = ["dense", "importance-scaled (PP) @ 0.5"]
    own = [label for label, _ in grid("fusion", [0.5], BASE) if label not in taken_labels]
    stop, real = _stop_in_second_batch(ablate_run, monkeypatch, len(own))
    with pytest.raises(stop):
        _run(ablate_run, "fusion", tmp_path)
    assert ablate_run.computed[-1] == own and (tmp_path / "fusion.seed0.partial.pt").is_file()
    monkeypatch.setattr(ablate_run, "score_batch", real)
    resumed = _run(ablate_run, "fusion", tmp_path, resume=True)
    assert ablate_run.computed[-1] == own
    assert [_figures(r) for r in resumed["rows"]] == [_figures(r) for r in whole["rows"]]
    # Stopped again, and then the rows it took are gone: the seed starts over, computing everything.
    (tmp_path / "fusion.json").unlink()
    stop, real = _stop_in_second_batch(ablate_run, monkeypatch, len(own))
    with pytest.raises(stop):
        _run(ablate_run, "fusion", tmp_path)
    monkeypatch.setattr(ablate_run, "score_batch", real)
    (tmp_path / "history.json").unlink()
    again = _run(ablate_run, "fusion", tmp_path, resume=True)
    assert "this seed starts over" in capsys.readouterr().err
    assert ablate_run.computed[-1] == [label for label, _ in grid("fusion", [0.5], BASE)]
    assert [_figures(r) for r in again["rows"]] == [_figures(r) for r in whole["rows"]]
