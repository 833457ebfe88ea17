"""Why a block kept what it kept: stage 2 and the PPsp score of one head or channel, read from run records.

Pure functions over `BatchRecord`s (no model): what a front end draws to answer "why was this head pruned?"
(docs/algorithm.md §3.3-4). A record's stage-2 fields (schema 3, level "full", probing methods) hold per channel
of the block's final projection input: the probe's energy P, the history's energy G at the probe's positions, the
fusion weight a = P / (P + G + eps), the fused energy s that PPsp scored, and the weight factor
w = sqrt(sum_i W[i, c]^4). PPsp is then s_c * w_c for an MLP channel and the L2 norm of (s_c * w_c) over a
head's channels for a head (`ppcore.scores.ppsp_heads`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from .record import BLOCK_NAMES, BatchRecord, BlockRecord


def block_of(rec: BatchRecord, layer: int, block: str) -> BlockRecord:
    """The record of one block. ValueError for a layer outside the record or a block name not in BLOCK_NAMES."""
    if block not in BLOCK_NAMES:
        raise ValueError(f"block must be one of {', '.join(BLOCK_NAMES)}, got {block!r}")
    if not 0 <= layer < len(rec.layers):
        raise ValueError(f"layer {layer} is outside the record's {len(rec.layers)} layers (0..{len(rec.layers) - 1})")
    return getattr(rec.layers[layer], block)


def channels_per_unit(b: BlockRecord) -> int:
    """Channels of the final projection's input per unit: the head width d for attention, 1 for MLP channels
    (from the length of the record's energies). ValueError when the record holds no energies."""
    if b.energy_fused is None:
        raise ValueError("this block's record holds no energies (a probing method at level 'full' records them)")
    n = len(b.energy_fused)
    if b.total <= 0 or n % b.total:
        raise ValueError(f"{n} channels do not split into {b.total} units")
    return n // b.total


def per_unit(values: Sequence[float], units: int, how: str = "sum") -> np.ndarray:
    """(U,) float64 from a per-channel (U * d,) list: "sum" or "mean" over each unit's d channels."""
    v = np.asarray(values, dtype=np.float64).reshape(units, -1)
    return v.sum(1) if how == "sum" else v.mean(1)


def ranks(scores: Sequence[float], kept: Optional[Sequence[int]] = None) -> np.ndarray:
    """(U,) int: 1 for the best unit, U for the worst, by score; among equal scores the higher index ranks first,
    as the keep-sort breaks ties (`ppcore.scores.keep_top_heads`: a stable ascending sort whose first units are
    dropped). With `kept`, the kept units rank first whatever their recorded scores (a record rounds scores to 6
    digits, which can tie units the decision told apart), so rank <= len(kept) exactly for the kept ones."""
    s = np.asarray(scores, dtype=np.float64)
    first = np.zeros(len(s), dtype=bool)
    if kept is not None:
        first[list(kept)] = True
    order = np.lexsort((np.arange(len(s)), s, first))[::-1]  # primary: kept, then score, then index
    out = np.empty(len(s), dtype=int)
    out[order] = np.arange(1, len(s) + 1)
    return out


@dataclass
class Verdict:
    """What one method decided for a unit: kept or not, its rank among the block's units by that method's own
    score (1 = highest; None when the method records no scores), and that score (None likewise). `decided` is
    False when the method did not prune the block (it then keeps everything)."""

    method: str
    kept: bool
    decided: bool
    rank: Optional[int]
    score: Optional[float]


@dataclass
class UnitWhy:
    """One head or channel of one block, explained (docs/algorithm.md §3.3-4).

    `kept`, `score`, `rank` (1 = best of `total`), `n_kept` and `cutoff` (the lowest score among the kept units
    the score chose, leaving out `forced` ones) come from the record; `forced` says the unit was kept whatever its
    score (PP+'s recovery core, schema 5). Per channel of the unit (`channels`, indices into the final projection's
    input): the probe's energy, the history's (None without history), the fusion weight (None likewise), the fused
    energy and the weight factor (None in a record older than schema 3). `probe_only_kept` says whether PPsp on the
    probe's energy alone would have kept the unit (None without history). `others`: each other method's verdict.
    """

    method: str
    layer: int
    block: str
    unit: int
    total: int
    kept: bool
    score: float
    rank: int
    n_kept: int
    cutoff: float
    channels: list[int]
    energy_probe: Optional[list[float]]
    energy_history: Optional[list[float]]
    fusion_weight: Optional[list[float]]
    energy_fused: Optional[list[float]]
    weight_factor: Optional[list[float]]
    probe_only_kept: Optional[bool]
    others: list[Verdict]
    forced: bool = False

    @property
    def contributions(self) -> Optional[list[float]]:
        """Per channel, fused energy x weight factor: PPsp is their L2 norm for a head, the one value for a channel."""
        if self.energy_fused is None or self.weight_factor is None:
            return None
        return [s * w for s, w in zip(self.energy_fused, self.weight_factor)]

    @property
    def score_from_factors(self) -> Optional[float]:
        """PPsp recomputed from the recorded factors (equals `score` up to the record's 6-digit rounding)."""
        c = self.contributions
        return None if c is None else float(np.sqrt(np.sum(np.square(c))))

    @property
    def margin(self) -> float:
        """Score over the cut-off (the lowest kept score): at least 1 for a kept unit, at most 1 for a pruned one
        (1 exactly: a tie the keep-sort broke by index). With a cut-off of 0: inf for a positive score, else 1."""
        if self.cutoff > 0:
            return self.score / self.cutoff
        return float("inf") if self.score > 0 else 1.0


def unit_why(main: BatchRecord, others: Mapping[str, BatchRecord], layer: int, block: str, unit: int) -> UnitWhy:
    """Explain `unit` (a query head of attention, a channel of the MLP) of `layer`'s `block` in `main`, beside
    each record of `others` ({method: record}, e.g. the oracle and the static baselines on the same batch).

    Raises ValueError for a layer, block or unit outside the record, or a block `main`'s method did not decide
    (a skipped layer, a dense run: nothing was scored).
    """
    b = block_of(main, layer, block)
    if not 0 <= unit < b.total:
        raise ValueError(f"{block} unit {unit} is outside 0..{b.total - 1}")
    if not b.pruned or b.scores is None:
        raise ValueError(f"layer {layer}'s {block} block was not pruned by {main.method} (a skipped layer, a "
                         "switched-off block or a dense run): nothing was scored there")
    kept = set(b.kept)
    forced = set(b.forced or [])
    # The cut-off is what the score had to beat: units kept whatever their score (PP+'s core) do not set it.
    kept_scores = [b.scores[k] for k in kept - forced] or [b.scores[k] for k in kept]  # a pruned block keeps one
    d = channels_per_unit(b) if b.energy_fused is not None else (1 if block == "mlp" else None)
    chans = list(range(unit * d, (unit + 1) * d)) if d else []

    def part(values: Optional[list[float]]) -> Optional[list[float]]:
        return None if values is None or not chans else [values[c] for c in chans]

    verdicts = []
    for m, rec in others.items():
        o = block_of(rec, layer, block)
        scored = o.scores is not None and o.pruned
        rank = int(ranks(o.scores, o.kept)[unit]) if scored else None
        verdicts.append(Verdict(m, unit in set(o.kept), o.pruned, rank, float(o.scores[unit]) if scored else None))
    return UnitWhy(
        method=main.method, layer=layer, block=block, unit=unit, total=b.total, kept=unit in kept,
        score=float(b.scores[unit]), rank=int(ranks(b.scores, sorted(kept - forced))[unit]), n_kept=len(kept),
        cutoff=float(min(kept_scores)),
        channels=chans,
        energy_probe=part(b.energy_probe), energy_history=part(b.energy_history), fusion_weight=part(b.fusion_weight),
        energy_fused=part(b.energy_fused), weight_factor=part(b.weight_factor),
        probe_only_kept=None if b.kept_probe_only is None else unit in set(b.kept_probe_only),
        others=verdicts, forced=unit in forced)


def kept_sets(records: Mapping[str, BatchRecord], layer: int, block: str) -> dict[str, list[int]]:
    """Each method's kept units at one block: {method: ascending unit indices} (all units where it did not prune)."""
    return {m: list(block_of(rec, layer, block).kept) for m, rec in records.items()}


@dataclass
class HistoryEffect:
    """Where the history changed one block's decision (docs/algorithm.md §3.3): `gained` units kept only because
    of the history (the probe alone would have pruned them), `lost` units pruned only because of it."""

    gained: list[int]
    lost: list[int]

    @property
    def changed(self) -> int:
        """Decisions the history turned around: units kept thanks to it plus units pruned because of it (the
        keep-sets have equal sizes, so each swap turns two decisions around)."""
        return len(self.gained) + len(self.lost)


def history_effect(b: BlockRecord) -> Optional[HistoryEffect]:
    """Keep-set from the fusion against keep-set from the probe alone; None where the record has no probe-only
    keep-set (no history, not pruned, or a record older than schema 3)."""
    if b.kept_probe_only is None or not b.pruned:
        return None
    fused, alone = set(b.kept), set(b.kept_probe_only)
    return HistoryEffect(sorted(fused - alone), sorted(alone - fused))


def history_changes(rec: BatchRecord, block: str) -> list[Optional[int]]:
    """Per layer, how many of `block`'s decisions the history turned around (`HistoryEffect.changed`; None where
    `history_effect` is None)."""
    out: list[Optional[int]] = []
    for layer in rec.layers:
        e = history_effect(getattr(layer, block))
        out.append(None if e is None else e.changed)
    return out


@dataclass
class Stage2:
    """One block's stage 2 per unit (U,) float64: the probe's energy, the history's energy at the probe's
    positions, the fused energy (sums over each unit's channels), the fusion weight (the mean over the unit's
    channels of the per-channel weight) and the PPsp score; `kept` and `kept_probe_only` as recorded."""

    energy_probe: np.ndarray
    energy_history: Optional[np.ndarray]
    fusion_weight: Optional[np.ndarray]
    energy_fused: np.ndarray
    scores: np.ndarray
    kept: list[int]
    kept_probe_only: Optional[list[int]]


def stage2(b: BlockRecord) -> Stage2:
    """Per-unit stage 2 of a decided block. ValueError when the record holds no energies (not a probing method,
    not pruned, or a level below "full")."""
    if not b.pruned or b.energy_probe is None or b.energy_fused is None or b.scores is None:
        raise ValueError("this block holds no stage-2 record: it was not decided by a probing method (pp or "
                         "fullbatch) at level 'full'")
    U = b.total
    return Stage2(per_unit(b.energy_probe, U), None if b.energy_history is None else per_unit(b.energy_history, U),
                  None if b.fusion_weight is None else per_unit(b.fusion_weight, U, "mean"),
                  per_unit(b.energy_fused, U), np.asarray(b.scores, dtype=np.float64), list(b.kept),
                  None if b.kept_probe_only is None else list(b.kept_probe_only))


# --- stage 1, readable (docs/algorithm.md §2.3) -----------------------------------------------------------------
SINK_FACTOR = 5.0  # a position this many times the median batch-wide score is treated as an attention sink


def token_scores(importance: Sequence[Sequence[float]]) -> np.ndarray:
    """(L,) the batch-wide token score that picks the probe's tokens: the L2 norm over samples of the residual
    importance (B, L) at each position (`ppcore.scores.select_tokens`)."""
    return np.linalg.norm(np.asarray(importance, dtype=np.float64), axis=0)


def sink_positions(scores: Sequence[float], factor: float = SINK_FACTOR) -> list[int]:
    """Positions whose batch-wide token score exceeds `factor` x the median score: attention-sink tokens, which
    in deep layers reach ~100x the others (token 0 most often) and flatten a linear colour scale."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return []
    med = float(np.median(s))
    return [int(i) for i in np.nonzero(s > factor * med)[0]] if med > 0 else []
