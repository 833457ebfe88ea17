"""`python -m ppcore ablate NAME`: one named ablation (`ppcore.ablations`) on the default protocol, every variant
interleaved batch by batch with dense (and the full-batch oracle where keep-sets are compared), over seeds;
rows, a Markdown table and a Plotly chart (docs/ablations.md).

Per run: perplexity, the decoder FLOPs ratio and the probe's share of the decoder's dense FLOPs, and, for the
ablations that compare keep-sets, the mean Jaccard index of every pruned block's keep-set with the oracle's on
the same batch (attention heads and MLP channels apart).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .ablate_reuse import ROWS_VERSION, as_row, reusable, same_run
from .ablations import ORACLE, ablation, carried, grid
from .heap import release_freed_heap
from .analysis import jaccard
from .batch_checkpoint import BatchCheckpoint, computed_with
from .bench_report import mean_se
from .config import CalibConfig, PruneConfig
from .errors import DataError
from .jsonfile import read_json_object, run_seeds
from .experiment import EvalSetup, prepare
from .record import BLOCK_NAMES, BatchRecord
from .scoring import score_batch, scored_runs, warm_up

Kept = dict[tuple[int, str], list[int]]


def _kept(rec: BatchRecord) -> Kept:
    """The keep-set of every block the method decided in one batch's record."""
    return {(i, name): getattr(layer, name).kept for i, layer in enumerate(rec.layers) for name in BLOCK_NAMES
            if getattr(layer, name).pruned}


def _agreement(kept: Kept, oracle: Kept) -> dict[str, Optional[float]]:
    """Mean Jaccard per block kind over the blocks both decided (None where none was). The app's one-batch
    ablation (`ppcore.session_ablation`, via `analysis.keep_jaccard`) averages over the blocks either decided: the
    same wherever both prune the same layers, as in every grid that compares keep-sets."""
    out: dict[str, Optional[float]] = {}
    for name in BLOCK_NAMES:
        vals = [jaccard(k, oracle[key]) for key, k in kept.items() if key[1] == name and key in oracle]
        out[name] = statistics.fmean(vals) if vals else None
    return out


def _mean_agreement(per_batch: list[dict[str, Optional[float]]]) -> Optional[dict[str, Optional[float]]]:
    """A run's Jaccard over its batches: per block kind, the mean of the batches that decided one (None where
    none did); None where the run was not compared at all."""
    if not per_batch:
        return None
    return {k: (statistics.fmean(x[k] for x in per_batch if x[k] is not None)
                if any(x[k] is not None for x in per_batch) else None) for k in BLOCK_NAMES}


def run_ablation(name: str, ratios: list[float], seeds: list[int], *, base: PruneConfig = PruneConfig(),
                 calib: Optional[CalibConfig] = None, progress: bool = True, json_path: Optional[str] = None,
                 resume: bool = False, reuse: bool = True, **setup: Any) -> dict[str, Any]:
    """Every variant of ablation `name` at every ratio, for every seed, on `prepare`'s windows (`setup`: model,
    device, dtype, seq_len, batch_size, batches, cache_dir, placement, calib_len_follows), interleaved batch by
    batch (`ablate_setup`). `json_path`: the result is written there after every seed, and a checkpoint
    (`ppcore.batch_checkpoint`, NAME.seedS.partial.pt beside it) after every batch, deleted once the seed is in;
    with `resume`, the seeds a file there already holds for the same ablation, ratios, base config and setup are
    kept, not rerun, and a seed stopped mid-way continues from its checkpoint. With `reuse` (and `json_path`), a run
    another grid's JSON in the same folder holds for the same config, seed, protocol and code is taken from it, not
    computed again (`ppcore.ablate_reuse`; the row says `reused_from`).

    Returns {"ablation", "question", "ratios", "seeds", "carried" (`ppcore.ablations.carried`), "setup", "rows"}
    (rows: `ablate_setup`'s). Raises ConfigError for an unknown ablation or a variant invalid at a ratio (before
    anything loads), DataError for a file to resume that holds another grid, and what `prepare` raises.
    """
    a = ablation(name)
    labelled = grid(name, ratios, base)
    key = {"ablation": name, "ratios": list(ratios), "base": base.to_dict(),
           "setup": {k: str(v) for k, v in sorted(setup.items())}, "calib": None if calib is None else calib.to_dict()}
    res: dict[str, Any] = {"ablation": name, "question": a.question, "ratios": list(ratios), "seeds": [],
                           "carried": carried(base), "key": key, "rows": []}
    if resume and json_path and Path(json_path).is_file():
        old = read_json_object(json_path, ("key", "rows", "seeds"), "an ablation's JSON")
        if not same_run(old["key"], key):
            raise DataError(f"{json_path} holds another ablation run (name, ratios, settings or protocol): write to "
                            "another folder, or drop --resume")
        res["rows"] = [r for r in old["rows"] if r["seed"] in seeds]
        res["seeds"] = [x for x in old["seeds"] if x in seeds]

    def checkpoint(seed: int, labels: list[str]) -> Optional[BatchCheckpoint]:
        if not json_path:
            return None
        path = Path(json_path)
        return BatchCheckpoint(path.with_name(f"{path.stem}.seed{seed}.partial.pt"), {**key, "seed": seed,
                                                                                       "labels": labels})

    def one_seed(seed: int) -> list[dict[str, Any]]:
        s = prepare(**setup, seed=seed, calib=calib, progress=progress, front_end="ablate")
        taken = (reusable(Path(json_path).parent, name, key, s.protocol.to_dict(), computed_with(s.lm), labelled,
                          seed) if reuse and json_path else {})
        everything = [label for label, _ in labelled]
        stored = checkpoint(seed, everything)
        if stored is not None and not resume:
            stored.drop()  # a fresh run: a checkpoint left by an earlier one is not this run's
        elif stored is not None and (saved := stored.stored_key()) is not None:
            # A stopped seed continues with the runs it was computing, where the rest can still be taken.
            ran = saved.get("labels")
            if {**saved, "labels": None} == {**stored.key, "labels": None} and isinstance(ran, list):
                if set(ran) <= set(everything) and set(everything) - set(ran) <= set(taken):
                    taken = {label: hit for label, hit in taken.items() if label not in ran}
                else:  # a row it relied on is gone (a grid rerun elsewhere): its runs are not this run's
                    print(f"{stored.path}: computed other runs than this seed now needs; this seed starts over",
                          file=sys.stderr)
                    stored.drop()
        runs = [(label, cfg) for label, cfg in labelled if label not in taken]
        if taken and progress:
            print(f"ablate {name} seed {seed}: {len(taken)} of {len(labelled)} runs taken from "
                  f"{', '.join(sorted({f'{h.source}.json' for h in taken.values()}))} (same config, seed, protocol "
                  "and code); computing the rest", flush=True)
        done = {row["label"]: row for row in (ablate_setup(s, name, runs, seed, progress,
                                                           checkpoint=checkpoint(seed, [lab for lab, _ in runs]))
                                              if runs else [])}
        return [done[label] if label in done else as_row(taken[label], label, name, a.jaccard)
                for label in everything]

    def written(seed: int) -> None:  # the seed's rows are in the JSON: its checkpoint is spent
        if (ckpt := checkpoint(seed, [])) is not None:
            ckpt.drop()

    return run_seeds(res, "rows", seeds, one_seed, json_path=json_path, label=f"ablate {name}", progress=progress,
                     written=written)


def ablate_setup(s: EvalSetup, name: str, labelled: list[tuple[str, PruneConfig]], seed: int,
                 progress: bool = False, *, checkpoint: Optional[BatchCheckpoint] = None) -> list[dict[str, Any]]:
    """The (label, config) runs on one setup's windows, interleaved batch by batch after the official warm-up
    (docs/algorithm.md §9.4). One row per run: `ScoredRun.figures()`, label, variant, seed, config, `jaccard`
    ({"attn", "mlp"}: the mean over batches and pruned blocks of the keep-set's Jaccard with the oracle's on the
    same batch, or None where the ablation compares none), the protocol and `computed_with` (the note of
    `ppcore.batch_checkpoint.computed_with`: engine and loop source, versions, model).

    `checkpoint`: saved after every batch and, where it already holds this run's first k batches, continued from
    there after the warm-up; the rows are then those of an uninterrupted run, batch times apart. Raises DataError
    for a checkpoint of another run (`BatchCheckpoint.load`)."""
    a = ablation(name)
    cfgs = [c for _, c in labelled]
    runs = scored_runs(s.lm, cfgs, s.calibration() if any(c.needs_calibration for c in cfgs) else None, progress)
    bs = s.batch_size
    n = s.windows.shape[0] // bs
    agree: dict[str, list[dict[str, Optional[float]]]] = {label: [] for label, _ in labelled}
    saved = checkpoint.load(s.lm, runs) if checkpoint is not None else None
    start = 0
    if saved is not None:
        start, agree = saved[0], saved[1]["agree"]
        if progress:
            print(f"ablate {name} seed {seed}: batches 1-{start} of {n} kept from {checkpoint.path}", flush=True)
    for run in runs:  # also on a resume: it leaves no state, but the next batch's time would include a cold start
        warm_up(s.lm, run, s.windows[:bs])
        release_freed_heap()  # a dozen runs' freed activations would otherwise stay resident (ppcore.heap)
    t0 = time.perf_counter()
    for b in range(start, n):
        ids = s.windows[b * bs:(b + 1) * bs]
        oracle: dict[float, Kept] = {}
        for (label, cfg), run in zip(labelled, runs):
            compare = a.jaccard and cfg.method != "dense"
            score_batch(s.lm, run, ids, b, level="summary" if compare else "none")
            release_freed_heap()  # after the run's timed batch, before the next run's
            if not compare:
                continue
            kept = _kept(run.records.pop())  # keep-sets only: the records are not kept
            if label.startswith(ORACLE):
                oracle[cfg.ratio] = kept
            else:
                agree[label].append(_agreement(kept, oracle[cfg.ratio]))
        if checkpoint is not None:
            checkpoint.save(s.lm, b + 1, runs, {"agree": agree})
        if progress:
            per = (time.perf_counter() - t0) / (b + 1 - start)  # this process's batches: the machine as it is now
            print(f"ablate {name} seed {seed}: batch {b + 1}/{n} ({per / 60:.1f} min a batch, about "
                  f"{per * (n - b - 1) / 60:.0f} min left in this seed)", flush=True)
    interleaved = [label for label, _ in labelled]
    note = computed_with(s.lm)  # engine and loop source, versions, model: what another grid may reuse a row by
    rows = []
    for (label, cfg), run in zip(labelled, runs):
        jac = _mean_agreement(agree[label])
        rows.append({**run.figures(), "label": label, "variant": label.rsplit(" @ ", 1)[0], "seed": seed,
                     "config": cfg.to_dict(), "jaccard": jac, "computed_with": note, "rows_version": ROWS_VERSION,
                     "protocol": s.protocol.replace(config=cfg.to_dict(), interleaved=interleaved,
                                                    settings={"ablation": name}).to_dict()})
    return rows


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per label: ppl (mean, SE) over seeds, the FLOPs figures' means, the Jaccard means, and the
    difference from PP's perplexity at the same ratio (mean over seeds of the paired differences)."""
    labels = list(dict.fromkeys(r["label"] for r in res["rows"]))
    out = []
    for label in labels:
        group = [r for r in res["rows"] if r["label"] == label]
        entry: dict[str, Any] = {"label": label, "variant": group[0]["variant"], "ratio": group[0]["ratio"],
                                 "method": group[0]["method"], "ppl": mean_se([r["ppl"] for r in group]),
                                 "decoder_flops_ratio": statistics.fmean(r["decoder_flops_ratio"] for r in group),
                                 "decoder_probe_flops_ratio": statistics.fmean(r["decoder_probe_flops_ratio"]
                                                                               for r in group)}
        jac = [r["jaccard"] for r in group if r["jaccard"]]
        entry["jaccard"] = ({k: statistics.fmean(j[k] for j in jac) if all(j[k] is not None for j in jac) else None
                             for k in BLOCK_NAMES} if jac else None)
        out.append(entry)
    return out
