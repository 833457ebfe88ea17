"""Runs an ablation seed can take from another grid's JSON instead of computing them again (docs/ablations.md).

The grids share runs: dense and PP are in every grid, the full-batch oracle in two, calibration-only PPsp in two. A
run's rows are a function of its config, the seed's windows and calibration, the model, the code and the number of
CPU threads, not of the runs interleaved with it (tests/test_ablate_reuse.py computes a grid both ways), so a row
that another grid's JSON in the same folder holds for the same config and seed, under the same base config, setup
and calibration, with the same protocol (model, windows, calibration windows, dtype, device, CPU threads, GPU), the
same `computed_with` note (engine and loop source, torch, transformers, matmul settings, model weights) and the same
`rows_version` (how the rows are made from the runs) is that run's row. Rows written before the note existed are
never reused.

In a grid that compares keep-sets with the oracle, a row is reusable only where its own grid compared it with the
same oracle (its Jaccard is there), and the oracle at a ratio only where nothing at that ratio still has to be
compared with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ablations import ORACLE, ablation
from .config import PruneConfig

# The protocol's parts a reused row must share with this run (its `config`, `seed` and `interleaved` are the row's).
SAME_PROTOCOL = ("model", "data", "calibration", "device", "dtype", "warmup", "ppl")
# What a row must hold to be taken (the report reads the rest of `ScoredRun.figures()` only where present).
ROW_FIELDS = frozenset({"method", "ratio", "ppl", "decoder_flops_ratio", "decoder_probe_flops_ratio", "batch_loss",
                        "seed", "config", "protocol", "jaccard"})
# How `ablate_setup` makes a row beyond the run's own figures (the keep-set agreement with the oracle and its mean):
# `computed_with` covers the engine and the scoring loop, not this. tests/test_ablate_reuse.py pins the source of
# those functions, so that a change to them fails until this is raised; rows without `rows_version` are version 1.
ROWS_VERSION = 1


@dataclass(frozen=True)
class Reused:
    """A row taken from another grid: `source` (that grid's name) and the `row` as that grid wrote it."""

    source: str
    row: dict[str, Any]


def same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether an ablation JSON's `key` (`old`) is the run `new` describes: the same name, ratios, setup and
    calibration, and the same base config once the fields at today's PruneConfig defaults are left out on both
    sides. So a file written before a new setting existed (the field absent, i.e. at its default) resumes, and one
    whose base differs from today's in any setting does not."""
    defaults = PruneConfig().to_dict()

    def trimmed(key: dict[str, Any]) -> dict[str, Any]:
        base = key.get("base")
        if not isinstance(base, dict):
            return key
        return {**key, "base": {k: v for k, v in base.items() if k not in defaults or v != defaults[k]}}

    return trimmed(old) == trimmed(new)


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


def _protocol_part(protocol: Any) -> dict[str, Any]:
    if not isinstance(protocol, dict):
        return {}
    env = protocol.get("environment") if isinstance(protocol.get("environment"), dict) else {}
    # The thread count changes fp32 sums in the 5th-6th significant digit (CPU kernels split reductions by thread):
    # measured on this project's rows, the same run with 2 threads and with 1 differed there.
    return {**{k: protocol.get(k) for k in SAME_PROTOCOL}, "cpu_threads": env.get("cpu_threads"),
            "gpu": env.get("gpu")}


def _same_base(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return same_run({**a, "ablation": None, "ratios": None}, {**b, "ablation": None, "ratios": None})


def reusable(folder: Path, name: str, key: dict[str, Any], protocol: dict[str, Any], note: str,
             labelled: list[tuple[str, PruneConfig]], seed: int) -> dict[str, Reused]:
    """label -> the row another grid's JSON in `folder` holds for that run, for the labels of `labelled` (ablation
    `name`'s runs, `ppcore.ablations.grid`) that can be taken instead of computed on `seed`. `key`: this run's key
    (`run_ablation`); `protocol`: the seed's protocol (`EvalSetup.protocol.to_dict()`); `note`: `computed_with` for
    the loaded model. Files that cannot be read, or are not ablation results, are passed over."""
    want = _protocol_part(protocol)
    found: dict[str, list[Reused]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not (isinstance(obj, dict) and isinstance(obj.get("key"), dict) and isinstance(obj.get("rows"), list)):
            continue
        source = obj.get("ablation")
        if source == name or not _same_base(obj["key"], key):
            continue
        for row in obj["rows"]:
            if not (isinstance(row, dict) and row.get("seed") == seed and row.get("computed_with") == note
                    and row.get("rows_version", 1) == ROWS_VERSION and ROW_FIELDS <= row.keys()
                    and isinstance(row["config"], dict) and _protocol_part(row["protocol"]) == want):
                continue
            found.setdefault(_config_key(row["config"]), []).append(Reused(str(source), row))
    compares = ablation(name).jaccard
    out: dict[str, Reused] = {}
    for label, cfg in labelled:
        # Of the grids that hold the run, one that compared it with the oracle where this grid compares keep-sets.
        needs_jaccard = compares and cfg.method != "dense" and not label.startswith(ORACLE)
        hit = next((h for h in found.get(_config_key(cfg.to_dict()), ())
                    if not needs_jaccard or h.row.get("jaccard") is not None), None)
        if hit is not None:
            out[label] = hit
    if compares:  # the oracle runs wherever a run at its ratio is still compared with it
        for label, cfg in labelled:
            if label.startswith(ORACLE) and any(
                    c.ratio == cfg.ratio and c.method != "dense" and not lab.startswith(ORACLE) and lab not in out
                    for lab, c in labelled):
                out.pop(label, None)
    return out


def as_row(hit: Reused, label: str, name: str, compares: bool) -> dict[str, Any]:
    """The reused row as this grid's: its label and variant, `reused_from` (the grid that computed it) and, where
    this grid compares no keep-sets, no Jaccard. Perplexity, FLOPs, batch losses and times are the source's."""
    row = dict(hit.row)
    source = row.get("reused_from") or hit.source  # a row taken twice names the grid that computed it
    row.update(label=label, variant=label.rsplit(" @ ", 1)[0], reused_from=source)
    if not compares:
        row["jaccard"] = None
    protocol = dict(row.get("protocol") or {})
    protocol["settings"] = {**(protocol.get("settings") or {}), "ablation": name, "computed_in": source}
    row["protocol"] = protocol
    return row
