"""The page's figures as text: the result header's eight metrics (app/main.py, and the checks that read the
page back: bench/load_test.py), the number formats the tables share with the header (the Latency and Compare
views), and the plain sentence that says whether pruning ran faster than dense, and why not. No streamlit here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import pandas as pd

from ppcore.analysis import TIME_TIE

from .glossary import explain

if TYPE_CHECKING:
    from ppcore.session import BlockTiming, Timing

WHOLE = "whole model: the decoder layers and the LM head (what wall time pays)"
DECODER = "decoder layers only, the LM head left out: the paper's definition, for comparing with its figures"


@dataclass(frozen=True)
class Metric:
    label: str
    value: str
    delta: Optional[str] = None
    help: Optional[str] = None

    def lines(self) -> list[str]:
        """The metric's visible text lines, as a browser shows them (label, value, delta)."""
        return [self.label, self.value] + ([self.delta] if self.delta else [])


NA = "n/a"  # a figure that does not exist (PRR of dense, decoder FLOPs of an old record): never "None"
# How the page writes each figure, by the name the engine gives it (CompareRow.row(), Analysis.summary()):
# FLOPs over dense to three decimals, the probe's FLOPs share as a percentage, as the header shows them.
FORMATS = {"ratio": ".2f", "ppl": ".2f", "ppl_increase": "+.2f", "seconds": ".3f", "time_vs_dense": ".3f",
           "flops_ratio": ".3f", "decoder_flops_ratio": ".3f", "probe_flops_ratio": ".2%",
           "decoder_probe_flops_ratio": ".2%", "prr": ".2f", "share": ".1%", "mib": ".1f"}


def missing(v: Any) -> bool:
    """Whether a table cell holds no figure: None, NaN (any float type), pandas' NA."""
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # a list or an array: a value, not a missing one
        return False


def figure(v: Any, spec: str) -> str:
    """One number as the page writes it: `format(v, spec)`, or NA for a missing or NaN value."""
    return NA if missing(v) else format(v, spec)


def text_table(df: pd.DataFrame, formats: Mapping[str, str]) -> pd.DataFrame:
    """`df` with every cell as the text the page shows: the columns named in `formats` through `figure`,
    the others as they are, and NA wherever a value is missing, so a table never prints "None" or "nan"."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        spec = formats.get(col)
        out[col] = [figure(v, spec) if spec else NA if missing(v) else str(v) for v in df[col]]
    return out


def _change(d: float) -> Optional[str]:
    """A perplexity change as the header shows it, or None when it rounds to zero (at ratio 0 a newcomer saw a red
    up arrow beside "+0.00" and read it as worse)."""
    text = f"{d:+.2f}"
    return None if text.lstrip("+-") == "0.00" else text


def header_metrics(s: dict[str, Any], method: str) -> list[Metric]:
    """From `ppcore.session.Analysis.summary()`: perplexities (with the change), KL, top-1 agreement, then the four
    FLOPs figures of `ppcore.flops.flops_ratios` (pruned and probe FLOPs over dense, counted over the whole
    model and over the decoder layers only). Decoder figures of an old record without a `head` count: n/a."""
    return [
        Metric("Perplexity, dense", f"{s['ppl_dense']:.2f}", help=explain("perplexity")),
        Metric(f"Perplexity, {method}", f"{s['ppl_pruned']:.2f}", _change(s['ppl_pruned'] - s['ppl_dense']),
               help=explain("perplexity")),
        Metric("KL(dense ‖ pruned)", f"{s['kl']:.4f}",
               help="nats, mean over the batch's real positions\n\n" + explain("KL")),
        Metric("Top-1 agreement", f"{s['top1']:.1%}", help=explain("top-1 agreement")),
        Metric("FLOPs / dense (whole model)", figure(s["flops_ratio"], FORMATS["flops_ratio"]),
               help=f"pruned over dense FLOPs, {WHOLE}\n\n" + explain("FLOPs")),
        Metric("FLOPs / dense (decoder layers)", figure(s["decoder_flops_ratio"], FORMATS["decoder_flops_ratio"]),
               help=f"pruned over dense FLOPs, {DECODER}\n\n" + explain("FLOPs")),
        Metric("Probe FLOPs / dense (whole model)", figure(s["probe_flops_ratio"], FORMATS["probe_flops_ratio"]),
               help=f"the probe's FLOPs over the dense FLOPs, {WHOLE}\n\n" + explain("probe", "FLOPs")),
        Metric("Probe FLOPs / dense (decoder layers)",
               figure(s["decoder_probe_flops_ratio"], FORMATS["decoder_probe_flops_ratio"]),
               help=f"the probe's FLOPs over the dense FLOPs, {DECODER}\n\n" + explain("probe", "FLOPs")),
    ]


# --- whether pruning ran faster than dense, and why not ------------------------------------------------------

TIE = TIME_TIE  # times within 3 % of each other count as equal: below what repeats on a busy CPU can tell apart
# A run more than this much faster than its FLOPs predict: less arithmetic cannot explain it, so the note says the
# timings are off (a newcomer saw "about what its FLOPs predict" beside 0.61x measured for 0.76x predicted).
FASTER_THAN_FLOPS = 0.10
# Tokens per batch from which per-layer fixed costs stop dominating: at 20 x 512 on 2 CPU cores PP's time follows
# its FLOPs (docs/results.md, "Speed on 2 CPU cores"); at 8 x 64 probing and deciding are 12 % of its time.
LARGE_BATCH = 8_192


def predicted_ratio(flops: Mapping[str, Optional[float]]) -> float:
    """The time over dense's that FLOPs predict: the pruned run's whole-model FLOPs, probe included, over dense's."""
    whole = flops.get("flops_ratio")
    return (1.0 if whole is None else whole) + (flops.get("probe_flops_ratio") or 0.0)


def _full_inference(blocks: Sequence[BlockTiming]) -> Optional[tuple[float, float]]:
    """(time, FLOPs) of full inference on the pruned blocks over dense's: the time summed over those blocks, the
    FLOPs ratio weighted by each block's dense time (the time FLOPs predict); None when nothing was pruned."""
    pruned = [b for b in blocks if b.flops_ratio < 1.0]
    dense_s = sum(b.dense_full_s for b in pruned)
    if not pruned or dense_s <= 0:
        return None
    return sum(b.full_s for b in pruned) / dense_s, sum(b.flops_ratio * b.dense_full_s for b in pruned) / dense_s


def _larger(B: int, L: int, largest: Optional[tuple[int, int]]) -> str:
    """What would be larger than this B x L batch, within the `largest` (batch size, sequence length) one can ask
    for here (None: no bound): the advice never names a size the app refuses."""
    more_b, more_l = largest is None or B < largest[0], largest is None or L < largest[1]
    if more_b and more_l:
        return "Larger batches and longer sequences"
    if more_b:
        return f"Larger batches (up to {largest[0]} samples here)"
    if more_l:
        return f"Longer sequences (up to {largest[1]} tokens here)"
    return ("This is the largest batch the app runs here; on the command line, `python -m ppcore speed` with a "
            "larger --batch-size or --seq-len measures batches that")


def speed_note(dense: Timing, run: Timing, device: str, batch: tuple[int, int],
               blocks: Optional[Sequence[BlockTiming]] = None, short: bool = False,
               largest: Optional[tuple[int, int]] = None) -> str:
    """One plain paragraph: did `run` take less time than `dense` on this batch of B x L tokens, against what its
    FLOPs predict (`predicted_ratio`), and, where it fell short of that, why, from the measurements: the share
    of its time spent probing and deciding, full inference on the kept weights against its FLOPs (`blocks`,
    the Latency view's per-block timings), and the batch's size and device. `short`: the first sentence only.
    `largest`: the largest (batch size, sequence length) the caller can run, so that no advice exceeds it."""
    B, L = batch
    measured, predicted = run.time_vs_dense, predicted_ratio(run.flops)
    head = (f"On this batch ({B} x {L} tokens) {run.method} at ratio {run.ratio:.2f} took {measured:.2f}x dense's "
            f"time ({run.seconds:.3f} s against {dense.seconds:.3f} s; its FLOPs predict {predicted:.2f}x)")
    if measured < 1 - TIE:
        verdict = f"it ran faster than dense, saving {1 - measured:.0%} of the time"
    elif measured <= 1 + TIE:
        verdict = "it took about as long as dense: pruning saved no time"
    else:
        verdict = f"it was slower than dense, by {measured - 1:.0%}"
    first = f"{head}: {verdict}."
    if short:
        return first
    probe = run.flops.get("probe_flops_ratio") or 0.0
    if predicted == 1.0 and not probe:  # ratio 0, or nothing decided: the same arithmetic as dense
        return (f"{first} It pruned nothing at this ratio and ran dense's own arithmetic, so the difference from "
                "dense is not pruning: it is other load on the machine, or the walk's own bookkeeping.")
    if measured < predicted * (1 - FASTER_THAN_FLOPS):
        return (f"{first} That is faster than its FLOPs predict, which less arithmetic cannot explain: dense's "
                "runs were most likely slowed by other load on the machine. Measure again, with more repeats, "
                "before reading the gap.")
    if measured <= predicted * (1 + TIE):  # as fast as the arithmetic says, or within noise of it
        if predicted > 1 + TIE:
            return (f"{first} That is what its FLOPs predict: they are more than dense's, because its probe adds "
                    f"{probe:.2%} of dense's FLOPs to those of the kept weights.")
        if predicted >= 1 - TIE:
            either = " either" if measured >= 1 - TIE else ""
            return (f"{first} Its FLOPs predict no saving{either}: the kept weights and its probe ({probe:.2%} of "
                    "dense's FLOPs) add up to about dense's arithmetic.")
        return f"{first} That is about what its FLOPs predict."
    where = []
    share = run.probe_decide_share
    if share >= 0.02:
        probe = run.flops.get("probe_flops_ratio") or 0.0
        where.append(f"probing and deciding took {share:.0%} of its time, though the probe is {probe:.2%} of "
                     "dense's FLOPs")
    full = _full_inference(blocks or [])
    if full is not None and full[0] > full[1] * (1 + TIE):
        where.append(f"full inference on the kept weights took {full[0]:.2f}x dense's time for {full[1]:.2f}x its "
                     "FLOPs")
    out = [first]
    if where:
        out.append("Where the time went: " + "; ".join(where) + ".")
    tokens = B * L
    cpu = str(device).startswith("cpu")
    overhead = "running Python" if cpu else "launching kernels"
    if run.probe_decide_s > 0 or probe > 0:
        costs = f"probing, slicing weights and {overhead} for every layer"
    else:  # a static method: decided once, its slices held; what is left is the per-layer overhead
        costs = f"{overhead} for every layer and multiplying smaller, odd-shaped matrices"
    weigh = "outweigh the arithmetic saved" if measured > 1 + TIE else "eat up most of the arithmetic saved" if (
        measured > 1 - TIE) else "eat part of the arithmetic saved"
    if tokens < LARGE_BATCH:
        out.append(f"At {tokens:,} tokens per batch on {'a CPU' if cpu else device}, the fixed costs of {costs} "
                   f"{weigh}. {_larger(B, L, largest)} spread those costs over more arithmetic"
                   + ("; a GPU with large batches is where the saved FLOPs become wall time." if cpu else "."))
    else:
        out.append(f"At {tokens:,} tokens per batch those fixed costs ({costs}) should be small next to the "
                   "arithmetic: measure again with more repeats to tell a real gap from other load on the machine.")
    return " ".join(out)
