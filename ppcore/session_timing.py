"""The facade's timed computations (see ppcore.session, which re-exports them): dense against the chosen
method per block, and every method at one or more ratios. Timings follow docs/algorithm.md §9.4: warm-up,
interleaved repeats, medians, clocks synchronised with the device (`ppcore.speed.measure`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Optional

from .analysis import TIME_TIE, perplexity, prr
from .config import METHODS, PLUS_METHOD, PruneConfig
from .flops import RATIO_NAMES
from .fitting import build_pruner
from .speed import measure
from .walk import token_nll, walk

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .session import Analysis, Calibration

# The methods the comparison runs beside the analysed one. pp-plus is left out unless it is the analysed method: its
# default allocation is fitted on the calibration windows before its first batch (a walk per block and fitted
# fraction, docs/algorithm.md "PP+"), minutes on a CPU, and the comparison would pay it again for every ratio.
COMPARED_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m != PLUS_METHOD)


@dataclass
class Timing:
    """One method on the batch (`ppcore.speed.measure`: warm-up, interleaved repeats, medians): seconds,
    time over dense's, the four FLOPs ratios of `ppcore.flops.flops_ratios` by name, the seconds of a timed
    run spent probing and deciding, and the bytes of weight copies the run holds (`Pruner.held_bytes`)."""

    method: str
    ratio: float
    seconds: float
    time_vs_dense: float
    flops: dict[str, Optional[float]]
    probe_decide_s: float = 0.0
    held_bytes: int = 0

    @property
    def probe_decide_share(self) -> float:
        """Probing and deciding over the end-to-end time (0 for dense and the static methods)."""
        return self.probe_decide_s / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BlockTiming:
    """One block of one layer of a timed run: median seconds of probe, decision and full inference, dense's
    full inference, and the block's pruned over dense FLOPs."""

    layer: int
    block: str
    probe_s: float
    decide_s: float
    full_s: float
    dense_full_s: float
    flops_ratio: float


@dataclass
class Latency:
    """Dense against the chosen method on one batch: device, CPU threads, batch shape (B, L), repeats, one
    Timing per method (dense first), and per block the last method's timings."""

    device: str
    threads: int
    batch: tuple[int, int]
    repeats: int
    runs: list[Timing]
    blocks: list[BlockTiming]


def _timings(measured: dict[str, Any]) -> list[Timing]:
    return [Timing(x["method"], x["ratio"], x["seconds"], x["time_vs_dense"], {k: x.get(k) for k in RATIO_NAMES},
                   x.get("probe_decide_s", 0.0), x.get("held_bytes", 0)) for x in measured["runs"]]


def latency(lm: LoadedModel, calib: Optional[Calibration], a: Analysis, repeats: int) -> Latency:
    """Dense and the analysed config on its batch (B, L): warm-up, `repeats` interleaved repeats, median
    wall seconds (docs/algorithm.md §9.4), clocks synchronised with the device. Raises NonFiniteError when
    activations overflow."""
    cfgs = [PruneConfig(method="dense")] + ([] if a.cfg.method == "dense" else [a.cfg])
    res = measure(lm, cfgs, a.batch.ids, calib.stats if calib is not None else None, repeats=repeats, hf=False)
    blocks = [BlockTiming(b["layer"], b["block"], b["probe_s"], b["decide_s"], b["full_s"], b["dense_full_s"],
                          b["flops_ratio"]) for b in res["runs"][-1]["blocks"]]
    return Latency(res["device"], res["threads"], (res["batch"][0], res["batch"][1]), res["repeats"],
                   _timings(res), blocks)


@dataclass
class CompareRow:
    """One method at one ratio: its Timing, perplexity on the batch, the increase over dense's, and PRR
    (`ppcore.analysis.prr`, None for dense and for a method that saved no more than `TIME_TIE` of dense's time)."""

    timing: Timing
    ppl: float
    ppl_increase: float
    prr: Optional[float]

    def row(self) -> dict[str, Any]:
        """Flat: method, ratio, ppl, ppl_increase, seconds, time_vs_dense, the four FLOPs ratios, prr."""
        t = self.timing
        return {"method": t.method, "ratio": t.ratio, "ppl": self.ppl, "ppl_increase": self.ppl_increase,
                "seconds": t.seconds, "time_vs_dense": t.time_vs_dense, **t.flops, "prr": self.prr}


def comparison_configs(a: Analysis, ratios: list[float], num_layers: int) -> list[list[PruneConfig]]:
    """The configs `comparison` runs, per ratio: every compared method but dense at that ratio, the analysis's
    other settings kept. Checked here, all of them, before any runs: raises ConfigError for a ratio outside [0, 1)
    or one the model's unskipped layers cannot take (a sweep found it only after minutes of the ratios before it)."""
    compared = COMPARED_METHODS + ((a.cfg.method,) if a.cfg.method not in COMPARED_METHODS else ())
    out = []
    for ratio in ratios:
        cfgs = [a.cfg.as_method(m, ratio) for m in compared if m != "dense"]
        for c in cfgs:
            c.check_layers(num_layers)
        out.append(cfgs)
    return out


def comparison(lm: LoadedModel, calib: Optional[Calibration], a: Analysis, ratios: list[float], repeats: int,
               progress: Optional[Callable[[float, str], None]] = None) -> list[CompareRow]:
    """Every pruning method at each ratio on the analysis's batch (its other settings kept), timed
    together with dense (`repeats` repeats), then dense once: perplexity, median wall seconds, FLOPs ratios
    and PRR. `progress(fraction, text)` between runs (one that raises stops the comparison there). Raises
    ConfigError for a ratio the model cannot take (`comparison_configs`, before anything runs), NonFiniteError
    when activations overflow."""
    ad, ids, mask = lm.adapter, a.batch.ids, a.batch.mask
    stats = calib.stats if calib is not None else None
    dense_ppl = perplexity(a.nll_dense, a.nll_mask)
    rows: list[CompareRow] = []
    progress = progress or (lambda fraction, text: None)
    per_ratio = comparison_configs(a, ratios, ad.dims.num_layers)
    for k, (ratio, cfgs) in enumerate(zip(ratios, per_ratio)):
        lo, span = k / len(ratios), 1 / len(ratios)
        progress(lo, f"ratio {ratio:.2f}: timing {len(cfgs) + 1} methods")
        timings = _timings(measure(lm, cfgs, ids, stats, repeats=repeats, hf=False, between=lambda f, text: progress(
            lo + 0.8 * span * f, f"ratio {ratio:.2f}: {text}")))
        dense = next(t for t in timings if t.method == "dense")
        for j, (c, t) in enumerate(zip(cfgs, [t for t in timings if t.method != "dense"])):
            progress(lo + span * (0.8 + 0.2 * j / len(cfgs)), f"ratio {ratio:.2f}: perplexity of {c.method}")
            res = walk(ad, build_pruner(ad, c, stats), ids, mask, level="none")
            ppl = perplexity(*token_nll(ad, res.hidden, ids, res.valid))
            rows.append(CompareRow(t, ppl, ppl - dense_ppl, prr(ppl, dense_ppl, t.seconds, dense.seconds, TIME_TIE)))
        if k == 0:
            rows.append(CompareRow(replace(dense, ratio=0.0, time_vs_dense=1.0), dense_ppl, 0.0, None))
    progress(1.0, "done")
    return rows
