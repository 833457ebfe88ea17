"""PP+ pilot on the official windows: PP against each PP+ mechanism alone and in combination, at 0.4 and 0.2.

    PYTHONPATH=. .venv/bin/python bench/pp_plus_pilot.py [--groups 1,2,3]
        [--official ../shared/reference/official_cpu_run]

Runs through the bench harness (`ppcore.bench.official_rows`: the official protocol's warm-up, eval and
calibration batches of 20, every config of a group interleaved batch by batch) one group of configs at a time,
and writes bench/results/pp_plus/pilot.json (every row, with its protocol and what was fitted on what) and
pilot.md after each group. Per row: perplexity, the fraction of PP's degradation removed,
(ppl_PP - ppl) / (ppl_PP - ppl_dense) with PP and dense from the same file, and the decoder FLOPs ratios.
Nothing here is tuned: every setting is fixed before the run, the allocation is fitted on calibration windows.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from ppcore.bench import OFFICIAL_BATCH_SIZE, official_rows
from ppcore.config import CalibConfig, PruneConfig
from ppcore.experiment import prepare
from ppcore.jsonfile import write_json

OUT = Path(__file__).resolve().parent / "results" / "pp_plus"
VARIANTS = {  # label -> PP+ switches (compensate, error_score, allocation, recover)
    "C": ("on", "off", "uniform", "off"),
    "E": ("off", "on", "uniform", "off"),
    "C+E": ("on", "on", "uniform", "off"),
    "A": ("off", "off", "sensitivity", "off"),
    "A+C+E": ("on", "on", "sensitivity", "off"),
    "L": ("off", "off", "local", "off"),
    "L+C+E": ("on", "on", "local", "off"),
    "R": ("off", "off", "uniform", "on"),
    "R+E": ("off", "on", "uniform", "on"),
    "R+A": ("off", "off", "sensitivity", "on"),
    "R+L": ("off", "off", "local", "on"),
}
GROUPS = {  # what runs together, most informative first
    1: [("A", 0.4), ("A+C+E", 0.4), ("C+E", 0.4)],
    2: [("A", 0.2), ("A+C+E", 0.2), ("C+E", 0.2)],
    3: [("C", 0.4), ("E", 0.4)],
    4: [("C", 0.2), ("E", 0.2)],
    5: [("dense", 0.0), ("pp", 0.4), ("pp", 0.2)],
    6: [("L", 0.4), ("L+C+E", 0.4)],  # measured with LOCAL_ROUNDS 2: labelled "L2", "L2+C+E" in the table
    7: [("L", 0.2), ("L+C+E", 0.2)],
    8: [("L", 0.4)],
    9: [("L", 0.2)],
    10: [("R", 0.4), ("R", 0.2)],
    11: [("R+A", 0.4), ("R+E", 0.4)],
    12: [("R+A", 0.2), ("R+E", 0.2)],
    13: [("R+L", 0.4)],
    14: [("R+L", 0.2)],
}
# Dense and PP where this run has not measured them: `make bench-official`'s rows (bench/results/official.json),
# whose code path PP+ leaves unchanged (group 5 reruns them as a check).
REFERENCE = Path(__file__).resolve().parent / "results" / "official.json"


def config(label: str, ratio: float) -> PruneConfig:
    """The config of a pilot label at a ratio: dense, pp, or pp-plus with VARIANTS[label]."""
    if label in ("dense", "pp"):
        return PruneConfig(method=label, ratio=ratio)
    c, e, a, r = VARIANTS[label]
    return PruneConfig(method="pp-plus", ratio=ratio, compensate=c, error_score=e, allocation=a, recover=r)


def label_of(row: dict) -> str:
    cfg = row["protocol"]["config"]
    if "compensate" not in cfg:  # a row from before PP+
        return cfg["method"]
    if cfg["method"] != "pp-plus":
        return cfg["method"]
    switches = (cfg["compensate"], cfg["error_score"], cfg["allocation"], cfg.get("recover", "off"))
    label = next(k for k, v in VARIANTS.items() if v == switches)
    rounds = len((row.get("fitted") or {}).get("rounds", [])) - 1  # 'local': its rounds of exchanges
    return label.replace("L", f"L{rounds}", 1) if "L" in label and rounds > 0 else label


def with_reference(rows: list[dict]) -> list[dict]:
    """`rows` plus dense and pp from REFERENCE where `rows` lacks them (marked `"source": "official.json"`)."""
    have = {(r["method"], r["ratio"]) for r in rows if r["method"] in ("dense", "pp")}
    ref = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else []
    extra = [dict(r, source="official.json") for r in ref if r["method"] in ("dense", "pp")
             and (r["method"], r["ratio"]) not in have and r["ratio"] in (0.0, 0.2, 0.4)]
    return rows + extra


def table(rows: list[dict]) -> str:
    """Markdown: one line per row, ratio then label, with the fraction of PP's degradation removed."""
    rows = with_reference(rows)
    dense = next((r["ppl"] for r in rows if r["method"] == "dense"), None)
    pp = {r["ratio"]: r["ppl"] for r in rows if r["method"] == "pp"}
    lines = ["| ratio | run | ppl | removed of PP's degradation | decoder FLOPs ratio | decoder probe FLOPs ratio |"
             " measured |", "|---|---|---|---|---|---|---|"]
    order = ["dense", "pp", *VARIANTS]

    def rank(r: dict) -> tuple:
        label = label_of(r)
        return (-r["ratio"], order.index(re.sub(r"L\d+", "L", label)), label)  # L2+C+E sorts as L+C+E

    for r in sorted(rows, key=rank):
        base = pp.get(r["ratio"])
        frac = (f"{(base - r['ppl']) / (base - dense):+.1%}" if base is not None and dense is not None
                and r["method"] == "pp-plus" else "")
        lines.append(f"| {r['ratio']:g} | {label_of(r)} | {r['ppl']:.2f} | {frac} | {r['decoder_flops_ratio']:.4f} | "
                     f"{r['decoder_probe_flops_ratio']:.4f} | {r.get('source', 'this run')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="1,2,3,4")
    p.add_argument("--official", default="../shared/reference/official_cpu_run")
    p.add_argument("--out", default=str(OUT / "pilot.json"))
    a = p.parse_args(argv)
    ref = Path(a.official)
    s = prepare(batch_size=OFFICIAL_BATCH_SIZE, windows_file=str(ref / "eval_windows.npy"),
                calib_windows_file=str(ref / "calib_windows.npy"), calib=CalibConfig(batch_size=OFFICIAL_BATCH_SIZE),
                front_end="bench")
    official = json.loads((ref / "results.json").read_text())["results"]
    out = Path(a.out)
    rows: list[dict] = json.loads(out.read_text())["rows"] if out.is_file() else []
    for g in (int(x) for x in a.groups.split(",")):
        cfgs = [config(label, ratio) for label, ratio in GROUPS[g]]
        new = official_rows(s, cfgs, official)
        done = {(label_of(r), r["ratio"]) for r in new}
        rows = [r for r in rows if (label_of(r), r["ratio"]) not in done] + new
        write_json(str(out), {"date": time.strftime("%Y-%m-%d", time.gmtime()),
                              "command": "PYTHONPATH=. .venv/bin/python bench/pp_plus_pilot.py "
                              + " ".join(sys.argv[1:]), "rows": rows})
        out.with_suffix(".md").write_text(table(rows))
        print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

