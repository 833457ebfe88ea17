"""`python -m ppcore bench`: methods x ratios x seeds on one loaded model, interleaved batch by batch,
and the official run's own windows with the official figures beside ours.

Every run of a seed advances one batch at a time in turn (`ppcore.scoring.score`), so machine noise
hits all methods alike. Each batch is timed `repeats` times (the first run is the scored one; the
others recompute the same decisions without touching the history) and the median is kept.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from .bench_report import Row
from .config import CalibConfig, PruneConfig
from .errors import DataError
from .experiment import EvalSetup, prepare
from .jsonfile import read_json_object, run_seeds
from .scoring import score, scored_runs

OFFICIAL_BATCH_SIZE = 20  # the official run's eval and calibration batch size
LOAD_ARGS = ("model", "device", "dtype", "cache_dir", "placement")  # prepare()'s arguments that pick the model


def bench_setup(setup: EvalSetup, cfgs: list[PruneConfig], repeats: int = 1, seed: int = 0,
                progress: bool = True) -> list[Row]:
    """Run every config on `setup`'s windows, interleaved batch by batch, under the official protocol
    (docs/algorithm.md §9). One JSON-ready row per config: `ScoredRun.figures()` plus seed, repeats and
    the protocol (with the config and the interleaved methods)."""
    needs = any(c.needs_calibration for c in cfgs)
    runs = scored_runs(setup.lm, cfgs, setup.calibration() if needs else None, progress)
    score(setup.lm, runs, setup.windows, setup.batch_size, repeats=repeats, progress=progress,
          desc=f"bench seed {seed}")
    interleaved = [c.method for c in cfgs]
    return [{**run.figures(), "seed": seed, "repeats": repeats,
             "protocol": setup.protocol.replace(config=run.cfg.to_dict(), interleaved=interleaved,
                                                settings={"repeats": repeats}).to_dict()}
            for run in runs]


def configs(methods: list[str], ratios: list[float], base: PruneConfig = PruneConfig()) -> list[PruneConfig]:
    """Dense once (first, at ratio 0: every relative figure needs it), then one config per other method
    and ratio, each `base` with that method and ratio. Raises ConfigError for an invalid combination."""
    out = [replace(base, method="dense", ratio=0.0)]
    for m in methods:
        if m != "dense":
            out += [base.as_method(m, r) for r in ratios]
    return out


def official_rows(setup: EvalSetup, cfgs: list[PruneConfig], official: list[Row], progress: bool = True) -> list[Row]:
    """`bench_setup` rows on the official windows, each with official_ppl and official_batch_loss (None
    where the official run has no such method and ratio) from the official `results.json` rows."""
    rows = bench_setup(setup, cfgs, 1, 0, progress)
    for row in rows:
        off = next((o for o in official if o["method"] == row["method"] and abs(o["ratio"] - row["ratio"]) < 1e-9),
                   None)
        row["official_ppl"] = off["ppl"] if off else None
        row["official_batch_loss"] = off.get("batch_loss") if off else None
    return rows


def bench_key(cfgs: list[PruneConfig], calib: Optional[CalibConfig], setup: dict[str, Any]) -> dict[str, Any]:
    """What a resumed bench must share with the file it resumes: every config, the calibration and the setup."""
    return {"configs": [c.to_dict() for c in cfgs], "calib": None if calib is None else calib.to_dict(),
            "setup": {k: str(v) for k, v in sorted(setup.items())}}


def run_bench(cfgs: list[PruneConfig], seeds: list[int], *, calib: Optional[CalibConfig] = None, repeats: int = 1,
              official_dir: Optional[str] = None, progress: bool = True, json_path: Optional[str] = None,
              resume: bool = False, **setup: Any) -> dict[str, Any]:
    """The seeded protocol for every seed (none: official windows only), plus the official windows when
    `official_dir` holds eval_windows.npy, calib_windows.npy and results.json.

    `setup` takes `prepare`'s model and window arguments (model, device, dtype, seq_len, batch_size,
    batches, cache_dir, placement, calib_len_follows); the seeded runs calibrate as `calib` says. The
    official windows are run as the official protocol ran them (eval and calibration batches of 20),
    whatever the arguments say. `json_path`: the result is written there after every seed (a bench stopped in
    its third seed keeps its first two); with `resume`, the seeds a file there already holds for the same configs,
    calibration, repeats and setup are kept, not rerun. Returns {"seeded": rows, "official": rows, "seeds": the
    seeds done, "key": `bench_key`}; each row's protocol records what it used. Raises DataError for a file to
    resume that holds another bench, and what `prepare` raises.
    """
    key = json.loads(json.dumps({**bench_key(cfgs, calib, setup), "repeats": repeats}, default=str))  # as read back
    results: dict[str, Any] = {"seeded": [], "official": [], "seeds": [], "key": key}
    if resume and json_path and Path(json_path).is_file():
        old = read_json_object(json_path, ("seeded",), "a bench's JSON")
        if old.get("key") != key:
            raise DataError(f"{json_path} holds another bench (methods, ratios, settings, calibration or windows), or "
                            "one written before bench could resume: write to another --out-dir, or drop --resume")
        results["seeds"] = [x for x in old.get("seeds", []) if x in seeds]
        results["seeded"] = [r for r in old["seeded"] if r["seed"] in results["seeds"]]

    def one_seed(seed: int) -> list[dict[str, Any]]:
        s = prepare(**setup, seed=seed, calib=calib, progress=progress, front_end="bench")
        return bench_setup(s, cfgs, repeats, seed, progress)

    run_seeds(results, "seeded", seeds, one_seed, json_path=json_path, label="bench", progress=progress)
    if official_dir:
        ref = Path(official_dir)
        s = prepare(**{k: v for k, v in setup.items() if k in LOAD_ARGS}, batch_size=OFFICIAL_BATCH_SIZE,
                    windows_file=str(ref / "eval_windows.npy"), calib_windows_file=str(ref / "calib_windows.npy"),
                    calib=CalibConfig(batch_size=OFFICIAL_BATCH_SIZE), progress=progress, front_end="bench")
        official = json.loads((ref / "results.json").read_text())["results"]
        results["official"] = official_rows(s, cfgs, official, progress)
    return results
