"""Paired comparison of two methods' zero-shot answers on the same documents (issue 15, docs/zeroshot.md).

Two methods scored on the same documents are paired: what tells them apart is the documents one gets right
and the other wrong. Per task, McNemar's exact test on those discordant documents (a two-sided binomial test
of `a_only` against `b_only` at one half); over the tasks, the difference of their mean accuracies (the
unweighted mean over tasks, as the tables give it) with its standard error from the per-task paired variances,
and a normal (z) test of it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import DataError


@dataclass(frozen=True)
class Paired:
    """Method a against method b on one task (or, for `task` 'mean', the mean over tasks).

    `documents`: documents both answered; `a_only` / `b_only`: those only a / only b got right (None for the
    mean); `diff`: accuracy of a minus accuracy of b, in [−1, 1]; `stderr`: its standard error; `p`: two-sided
    p-value (McNemar's exact test per task, a z test for the mean)."""

    task: str
    metric: str
    documents: int
    a_only: int | None
    b_only: int | None
    diff: float
    stderr: float
    p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided p-value of McNemar's exact test: `a_only` successes of a fair coin in `a_only + b_only` tosses
    (1.0 when there is no discordant document)."""
    from scipy.stats import binomtest

    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def paired_task(task: str, metric: str, a: Sequence[float], b: Sequence[float]) -> Paired:
    """`a`, `b`: 0/1 correctness of the two methods on the same documents, in the same order. Raises DataError
    when they differ in length or are empty."""
    if len(a) != len(b) or not a:
        raise DataError(f"{task} {metric}: paired answers need the same documents, got {len(a)} and {len(b)}")
    n = len(a)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    diff = (a_only - b_only) / n
    # Per document d = a - b in {-1, 0, 1}: var(d) = E[d^2] - E[d]^2; the mean's variance is var(d) / n.
    var = max((a_only + b_only) / n - diff ** 2, 0.0) / n
    return Paired(task, metric, n, a_only, b_only, diff, math.sqrt(var), mcnemar_exact(a_only, b_only))


def paired_mean(per_task: Sequence[Paired]) -> Paired:
    """The difference of the unweighted means over tasks: mean of the per-task differences, its standard
    error sqrt(sum of per-task variances) / tasks (tasks are independent documents), two-sided z test."""
    from scipy.stats import norm

    if not per_task:
        raise DataError("no task to average")
    k = len(per_task)
    diff = sum(p.diff for p in per_task) / k
    se = math.sqrt(sum(p.stderr ** 2 for p in per_task)) / k
    # No spread at all: every document moved the same way (or none moved).
    p = (0.0 if diff else 1.0) if se == 0 else float(2 * norm.sf(abs(diff) / se))
    return Paired("mean", per_task[0].metric, sum(p.documents for p in per_task), None, None, diff, se, p)
