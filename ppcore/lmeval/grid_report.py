"""Markdown of a zero-shot grid (`ppcore.lmeval.grid.run_grid`'s result): accuracies, paired comparisons, times.

Every table is made from the grid's JSON alone, so the docs' tables can be made again from the JSON they cite.
"""
from __future__ import annotations

from typing import Any

from .grid import comparisons
from .run import METRICS
from .tasks import OFFLINE_SUFFIX

SIGNIFICANT = 0.05  # two-sided, per comparison (not corrected for the number of comparisons: the docs say so)


def _short(task: str) -> str:
    return task[: -len(OFFLINE_SUFFIX)] if task.endswith(OFFLINE_SUFFIX) else task


def accuracy_table(res: dict[str, Any], metric: str) -> str:
    """One row per run, one column per task that has `metric`, then their unweighted mean; values in %."""
    runs = res["runs"]
    tasks = [t for t in dict.fromkeys(r["task"] for run in runs for r in run["rows"] if r["metric"] == metric)]
    lines = [f"| {metric} | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for run in runs:
        vals = {r["task"]: r["value"] for r in run["rows"] if r["metric"] == metric}
        cells = [f"{100 * vals[t]:.1f}" if t in vals else "" for t in tasks]
        mean = 100 * sum(vals[t] for t in tasks if t in vals) / max(sum(t in vals for t in tasks), 1)
        lines.append(f"| {run['label']} | " + " | ".join(cells) + f" | {mean:.1f} |")
    return "\n".join(lines)


def paired_table(res: dict[str, Any], against: str, metric: str) -> str:
    """`against` minus each other run, in accuracy points, per task and for the mean; a star where the
    difference is significant at 5 % (McNemar's exact test per task, a z test for the mean), with the p-value
    and, per task, the discordant documents (only `against` right / only the other right)."""
    comp = comparisons(res, against, metric)
    if not comp:
        return ""
    tasks = [_short(p.task) for p in next(iter(comp.values()))]
    lines = [f"| {against} minus ({metric}) | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for other, per in comp.items():
        cells = []
        for p in per:
            star = "*" if p.p < SIGNIFICANT else ""
            extra = f" ({p.a_only}/{p.b_only})" if p.a_only is not None else f" ±{100 * p.stderr:.1f}"
            cells.append(f"{100 * p.diff:+.1f}{star}{extra}, p={p.p:.2g}")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def times_table(res: dict[str, Any]) -> str:
    """Wall and CPU seconds of each run (CPU: the process's, all threads), with its date."""
    lines = ["| run | wall s | CPU s | date |", "|---|---:|---:|---|"]
    lines += [f"| {r['label']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r.get('date', '')} |" for r in res["runs"]]
    return "\n".join(lines)


def paper_table(res: dict[str, Any], metric: str = "acc") -> str:
    """The paper's seven-task averages at 40 % beside this grid's means (`metric`) of the same methods at 0.4."""
    means = {}
    for run in res["runs"]:
        vals = [r["value"] for r in run["rows"] if r["metric"] == metric]
        ratio = run["config"]["ratio"]
        plain = "[" not in run["label"]  # a run with ablation settings is not the paper's method
        if vals and plain and (run["config"]["method"] == "dense" or abs(ratio - 0.4) < 1e-9):
            means[run["config"]["method"]] = 100 * sum(vals) / len(vals)
    methods = ["dense", "pp", "fullbatch", "wanda-sp", "flap"]
    cols = list(res["paper"]) + [f"this grid ({metric} mean)"]
    lines = ["| method (40 %) | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        cells = [f"{res['paper'][k][m]:.1f}" for k in res["paper"]] + [f"{means[m]:.1f}" if m in means else ""]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_markdown(res: dict[str, Any], against: str | None = None) -> str:
    """The whole report: documents, accuracy per metric, paired comparisons of `against` (default: the first PP
    run), times, the paper's averages, and the note on what compares with the paper."""
    setup = res["setup"]
    docs = (f"a seeded subset of {setup['subset']} documents per task (seed {setup['subset_seed']}; all where fewer)"
            if setup.get("subset") else f"lm-eval's first {setup['limit']} documents" if setup.get("limit")
            else "every document")
    counts = ", ".join(f"{_short(t)} {len(v) if res.get('subset') else n}"
                       for t, n in res["sizes"].items() for v in [(res.get("subset") or {}).get(t, [])])
    parts = [f"Documents: {docs} ({counts}); validation splits.", ""]
    for metric in METRICS:
        parts += [accuracy_table(res, metric), ""]
    labels = [r["label"] for r in res["runs"]]
    against = against or next((x for x in labels if x.startswith("pp ")), None)
    if against:
        for metric in METRICS:
            t = paired_table(res, against, metric)
            if t:
                parts += [t, ""]
        parts += [f"Cells: difference in points, * significant at {SIGNIFICANT:g} (two-sided, uncorrected), "
                  "(documents only the first right / only the other right), p-value; the mean's ± is its standard "
                  "error.", ""]
    parts += [times_table(res), "", paper_table(res), "", res["note"]]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`python -m ppcore.lmeval.grid_report GRID.json [--against LABEL]`: the report of a grid's JSON (written by
    `python -m ppcore zeroshot --methods ...`, complete or not), printed. Exit 2 with one line for a bad file."""
    import argparse
    import sys

    from ..errors import PPCoreError
    from ..jsonfile import read_json_object

    p = argparse.ArgumentParser(prog="python -m ppcore.lmeval.grid_report", description=main.__doc__)
    p.add_argument("json", help="the grid's JSON")
    p.add_argument("--against", default=None, help="the run PP-style comparisons are made against (default: the "
                   "first pp run)")
    a = p.parse_args(argv)
    try:
        res = read_json_object(a.json, ("setup", "runs", "sizes", "note", "paper"), "a zero-shot grid's JSON",
                               hint="")
        print(grid_markdown(res, a.against))
    except PPCoreError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
