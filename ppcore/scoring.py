"""The one scoring loop of the evaluation protocol (docs/algorithm.md §9.3, §9.4), shared by `evaluate`
and `bench`.

Warm-up: the first batch runs once before scoring, unscored, untimed, with no history update. Then
every batch is scored: walk + LM head + loss, timed on `ppcore.clock` from before the walk to after
the loss. Several runs advance batch by batch in turn (interleaved, so machine noise hits them alike),
and a batch can be timed `repeats` times: the first run is the scored one, the others recompute the
same decisions without touching the history, and the median time is kept.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import Tensor
from tqdm.auto import tqdm

from .clock import now
from .config import PruneConfig
from .flops import add_flops, flops_ratios
from .ratios import achieved_ratios
from .loading import LoadedModel
from .fitting import build_pruner, printed, silent
from .methods import Pruner
from .record import BatchRecord
from .stats import CalibStats
from .walk import token_nll, walk


@dataclass
class ScoredRun:
    """One config's pruner and what its scored batches gave, batch by batch.

    batch_loss: each scored batch's mean token cross-entropy (nats); batch_seconds: each batch's wall time (s,
    the median over repeats); tokens: scored tokens; flops: counts summed by key over the scored
    batches (dense, pruned, probe, head); records: the warm-up and scored batch records (level != none).
    """

    cfg: PruneConfig
    pruner: Pruner
    batch_loss: list[float] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    tokens: int = 0
    flops: dict[str, int] = field(default_factory=dict)
    records: list[BatchRecord] = field(default_factory=list)
    units: dict[str, int] = field(default_factory=dict)  # heads and MLP channels, all and kept, summed over batches

    @property
    def ppl(self) -> float:
        """exp(mean of the batch mean losses): docs/algorithm.md §9.3 (a mean of batch means, not token-weighted)."""
        return math.exp(sum(self.batch_loss) / len(self.batch_loss))

    def figures(self) -> dict[str, Any]:
        """method, ratio, ppl, tokens, seconds (sum over batches), the four FLOPs ratios
        (`ppcore.flops.flops_ratios`), the achieved ratios (`ppcore.ratios.achieved_ratios`), flops, units,
        batch_loss and batch_seconds: JSON-ready; and `fitted`, what a method fitted on calibration data and on
        which windows (PP+'s allocation), where it fitted anything."""
        fitted = getattr(self.pruner.method, "fitted", None)
        return {"method": self.cfg.method, "ratio": self.cfg.ratio, "ppl": self.ppl, "tokens": self.tokens,
                "seconds": sum(self.batch_seconds), **flops_ratios(self.flops), **achieved_ratios(self.units),
                "flops": dict(self.flops), "units": dict(self.units),
                "batch_loss": list(self.batch_loss), "batch_seconds": list(self.batch_seconds),
                **({"fitted": fitted} if fitted is not None else {})}


    def checkpoint(self) -> dict[str, Any]:
        """What the scored batches so far left in this run, for `restore` in another process: the accumulators
        (batch_loss, batch_seconds, tokens, flops, units), the pruner's `poisoned` and its method's `state()` (PP's
        history; tensors, for `torch.save`). Raises ValueError while the run holds batch records, which a
        checkpoint does not keep (score with level "none", or pop them as `ppcore.ablate_run` does)."""
        if self.records:
            raise ValueError("a checkpoint keeps no batch records: this run holds some (pop them after each batch)")
        return {"batch_loss": list(self.batch_loss), "batch_seconds": list(self.batch_seconds), "tokens": self.tokens,
                "flops": dict(self.flops), "units": dict(self.units), "poisoned": self.pruner.poisoned,
                "state": self.pruner.method.state()}

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from `checkpoint()` of a run of the same config, so the batches after it score exactly as in
        one uninterrupted run. Raises DataError for a method state of another method, model or config."""
        self.pruner.method.load_state(saved["state"])
        self.batch_loss, self.batch_seconds = list(saved["batch_loss"]), list(saved["batch_seconds"])
        self.tokens, self.flops, self.units = saved["tokens"], dict(saved["flops"]), dict(saved["units"])
        self.pruner.poisoned = saved["poisoned"]


def warm_up(lm: LoadedModel, run: ScoredRun, ids: Tensor, level: str = "none") -> None:
    """The official warm-up (docs/algorithm.md §9.4): `ids` (B, L) run once, LM head included,
    unscored, untimed and without a history update. Its record (level != none) joins `run.records`."""
    res = walk(lm.adapter, run.pruner, ids, update_history=False, level=level, timing=level != "none",
               phase="warmup", index=0)
    token_nll(lm.adapter, res.hidden, ids, res.valid)
    if res.record is not None:
        run.records.append(res.record)


def score_batch(lm: LoadedModel, run: ScoredRun, ids: Tensor, index: int, *, level: str = "none",
                repeats: int = 1) -> None:
    """Score batch `index` (`ids`: (B, L) token ids) for `run`: walk + LM head + mean token loss, timed.

    Only the first of `repeats` runs updates the history, counts and records; the median of their times
    is kept. A record (level != none) gets the loss, the token count, head_s (LM head and loss) and
    total_s (the whole batch) beside the walk's own times.
    """
    dev = lm.device
    times: list[float] = []
    for rep in range(repeats):
        first = rep == 0
        lvl = level if first else "none"
        t0 = now(dev)
        res = walk(lm.adapter, run.pruner, ids, update_history=first, level=lvl, timing=lvl != "none",
                   phase="scored", index=index)
        t_head = now(dev) if res.record is not None else t0  # a sync only when the record wants the split
        nll, mask = token_nll(lm.adapter, res.hidden, ids, res.valid)
        loss = float(nll.double().sum() / mask.double().sum())
        t_end = now(dev)
        times.append(t_end - t0)
        if not first:
            continue
        run.batch_loss.append(loss)
        run.tokens += int(mask.sum())
        add_flops(run.flops, res.flops)
        add_flops(run.units, res.units)
        if res.record is not None:
            res.record.loss, res.record.tokens = loss, int(mask.sum())
            res.record.times.update(head_s=t_end - t_head, total_s=t_end - t0)
            run.records.append(res.record)
    run.batch_seconds.append(statistics.median(times))


def score(lm: LoadedModel, runs: list[ScoredRun], windows: Tensor, batch_size: int, *, warmup: bool = True,
          level: str = "none", repeats: int = 1, progress: bool = True, desc: str = "") -> None:
    """The protocol for every run in `runs`, interleaved batch by batch.

    `windows` (N, L) token ids are scored in N // batch_size full batches of `batch_size` rows; with
    `warmup`, the first batch is first run once per run (`warm_up`). The caller validates the shapes.
    """
    n_batches = windows.shape[0] // batch_size
    if warmup:
        for run in runs:
            warm_up(lm, run, windows[:batch_size], level)
    for b in tqdm(range(n_batches), desc=desc, unit="batch", disable=not progress):
        ids = windows[b * batch_size:(b + 1) * batch_size]
        for run in runs:
            score_batch(lm, run, ids, b, level=level, repeats=repeats)


def scored_runs(lm: LoadedModel, cfgs: list[PruneConfig], calib: Optional[CalibStats],
                progress: bool = False) -> list[ScoredRun]:
    """One fresh `ScoredRun` per config; `calib` goes only to the configs that need calibration. With `progress`, a
    fit a config needs first (pp-plus's allocation, `ppcore.fitting`) says how far it is on stderr."""
    say = printed() if progress else silent
    return [ScoredRun(c, build_pruner(lm.adapter, c, calib if c.needs_calibration else None, progress=say))
            for c in cfgs]
