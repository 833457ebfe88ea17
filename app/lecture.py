"""Lecture mode's content (issue 14 item 1): the steps of a guided walk through Probe Pruning's three stages, and
everything they draw, computed once per server and kept (app/lecture_job.py shares it; app/views/lecture.py draws
it; `python -m app.lecture_prepare` fills the server's disk before class).

The lecture runs the page's settings (the defaults unless a link or the sidebar changed them; in demo mode always
the defaults) with method pp: the analysis of the batch, the oracle's and the static baselines' keep-sets, every
method at the ratios of a sweep (which holds the analysed ratio, so one comparison serves both the comparison step
and the sweep), and a latency measurement. Each part is looked up on the server's disk first (app/stored.py) under
the same key the tabs use, so a lecture prepared before class also serves the Compare and Latency tabs, and the
other way round.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from ppcore import ConfigError, LoadedModel, PruneConfig, session
from ppcore.session import Progress, Stored

from . import messages
from .batch import build_batch
from .result import Result
from .state import Settings, demo, prune_config
from .stored import reused_note

T = TypeVar("T")
# app/stored.py `remembered`: (key, compute, write) -> (value, the Stored it came from or None when computed now).
Remember = Callable[[str, Callable[[], T], bool], tuple[T, Optional[Stored]]]

URL_PARAMS = ("lecture", "step")  # lecture mode's place in the page's address, beside the settings (and `layer`)
SWEEP = (0.2, 0.4, 0.6)  # the ratio sweep: the Compare view's default sweep, so its stored result is shared
COMPARE_REPEATS = 2  # the Compare view's default repeats (the same key, the same stored result)
LATENCY_REPEATS = 3  # the Latency view's default repeats
# The server's environment may change them (a quicker preparation on a slow machine, or a wider sweep):
# PP_LECTURE_SWEEP="0.2,0.5" and PP_LECTURE_REPEATS="1" (the comparison's and the latency's repeats).
SWEEP_ENV, REPEATS_ENV = "PP_LECTURE_SWEEP", "PP_LECTURE_REPEATS"
PARTS = {"analysis": "the analysis of the batch", "baselines": "the oracle's and the static baselines' keep-sets",
         "comparison": "the comparison of every method over the ratio sweep",
         "latency": "the latency measurement"}
TIMED = ("comparison", "latency")  # wall-time measurements of this machine: the page says when they were made


class NotStored(Exception):
    """A lecture read back from the server's disk only (app/lecture_job.py preload) lacks a part there: `prepare`
    lets it through (it is not one part's failure), and nothing is computed."""


@dataclass(frozen=True)
class Step:
    """One lecture step: `slug` names its figure (app/views/lecture.py draws it), `title` and `text` (plain words,
    markdown) go beside the figure, `layered` steps show the model overview and a layer selector, `needs` are the
    PARTS it draws from beyond the analysis."""

    slug: str
    title: str
    text: str
    layered: bool = False
    needs: tuple[str, ...] = ()


STEPS: tuple[Step, ...] = (
    Step("model", "The model, the batch, and where Probe Pruning acts",
         "A language model is a stack of **decoder layers**. Each layer has two blocks: **attention** (its "
         "heads decide which earlier words matter) and an **MLP** (its channels transform each word). "
         "Probe Pruning (PP) removes whole heads and channels **for each batch of text**, a fresh decision every "
         "time, in three stages: a small **probe** (1), mixed with the **history** of earlier batches (2), decides "
         "what the whole batch runs on (3). The strip shows every layer: blue is the share the batch kept; {skipped}."),
    Step("importance", "Stage 1: which words are loud",
         "Before a block runs, PP measures how **loud** each word is: the length of its vector in the residual "
         "stream (the running sum every layer adds to). Bright cells are loud. Loud positions carry most of what "
         "the block will compute, so PP keeps {positions} for its probe: the **red ticks** above the map.",
         layered=True),
    Step("samples", "Stage 1: the probe's samples",
         "Then PP keeps only the samples (texts) that are loudest **at those positions**, {samples}: the red "
         "bars. The probe is these samples at these positions, {probe_share} of the batch. It runs through the "
         "block with **all** its weights, which shows what each head and channel would do on this batch.",
         layered=True),
    Step("history", "Stage 2: the probe meets the history",
         "A probe this small is noisy, so PP does not trust it alone. It keeps a **history**: what each channel "
         "did on earlier batches (the calibration text at first). {fusion}", layered=True),
    Step("kept", "Stage 3: what the batch runs on",
         "Each head and channel gets a score: {score} "
         "The highest scores are kept (blue), the rest removed, and the whole batch runs on the smaller "
         "matrices. The map: the heads every layer kept (a row per layer). Below it: this layer's scores, kept "
         "against pruned.",
         layered=True),
    Step("why", "Why was this head pruned?",
         "One pruned head, taken apart: its score, its rank, and how far it fell below the cut-off (the lowest "
         "kept score). The grid shows what every other method kept at this layer: the **oracle** (the whole "
         "batch as its probe, the best PP could do) and the static baselines, which decide once from "
         "calibration text and never look at the batch.", layered=True, needs=("baselines",)),
    Step("outputs", "What pruning did to the output",
         "The whole batch on the kept weights, against the unpruned (dense) model on the same text. **Perplexity**: "
         "how surprised the model is by the real next word (lower is better). **KL**: how far the pruned model's "
         "predictions moved. **Top-1 agreement**: how often both pick the same next word. The bars: the change in "
         "loss on each word of one sample (red: worse after pruning)."),
    Step("compare", "Against the baselines",
         "Every method at the same ratio on the same batch: **Wanda-sp** and **FLAP** decide once from calibration "
         "text; **fullbatch** is the oracle that probes the whole batch; **ppsp-calib** is PP's score without a "
         "probe. Lower perplexity at the same time is better.", needs=("comparison",)),
    Step("sweep", "Prune more, lose more",
         "The same comparison at several ratios: perplexity against the share of heads and channels removed, one "
         "line per method. The dashed line is the unpruned model. A method whose line stays low for longer "
         "prunes better.", needs=("comparison",)),
    Step("latency", "Is it faster?",
         "Dense and PP timed on this batch, on this machine: warmed up, runs interleaved, medians. Per layer, the "
         "bars split PP's time into probing, deciding and running the kept weights, beside the dense block's "
         "time.", needs=("latency",)),
)


def step_text(step: Step, cfg: PruneConfig) -> str:
    """`step.text` in the words of the lecture's config `cfg`: its probe sizes, fusion and score (a lecture on
    ablation settings says what it runs, not the paper's defaults)."""
    half = cfg.token_frac == 0.5
    skip = cfg.skip_layers
    words = {
        "skipped": ("no layer is left whole" if not skip else
                    f"layer {skip[0]} is left whole" if len(skip) == 1 else
                    f"layers {skip[0]}-{skip[-1]} are left whole" if list(skip) == list(range(skip[0], skip[-1] + 1))
                    else f"layers {', '.join(map(str, skip))} are left whole"),
        "positions": "every position (here the probe takes them all)" if cfg.token_frac >= 1 else
                     f"only the loudest {'half' if half else f'{cfg.token_frac:.0%}'} of the positions",
        "samples": "here all of them" if cfg.sample_frac >= 1 else
                   f"{cfg.sample_frac:.0%} of the batch's samples (at least one)",
        "probe_share": f"nominally {cfg.token_frac * cfg.sample_frac:.1%}",
        "fusion": ("Here it runs **without history** (the setting `history` is off): the probe's energy (P) alone is "
                   "scored." if not cfg.use_history else
                   (f"For every channel it mixes the probe's energy (P) with the history's (G) at fixed weights, "
                    f"**{cfg.probe_weight:g}·P + {1 - cfg.probe_weight:g}·G**, and scores the mix." if
                    cfg.fusion == "fixed" else
                    "For every channel it mixes the probe's energy (P) with the history's (G), trusting whichever is "
                    "larger, and scores the mix.") + " Green and red bars are decisions the history turned around."),
        "score": {"ppsp": "the **PPsp score**, its fused energy times the size of its output weights.",
                  "wanda-sp": "here **Wanda-sp's** metric on the fused energy, the L1 norm of its output weights times "
                              "the root of its energy.",
                  "flap": "here **FLAP's** metric on the fused energy, its energy times the squared norm of its "
                          "output weights."}.get(cfg.score, f"the score {cfg.score!r}."),
    }
    return step.text.format(**words)


def step_number(text: Any, default: int = 1) -> int:
    """A step number (1 to len(STEPS)) from URL text; `default` for anything else."""
    t = str(text).strip()
    return int(t) if t.isascii() and t.isdigit() and 1 <= int(t) <= len(STEPS) else default


def lecture_settings(s: Settings) -> tuple[Settings, list[str]]:
    """The settings the lecture runs, with what it changed and why: method pp at a ratio above 0 (it is a lecture
    on Probe Pruning), the example prompts in place of an upload (a file is one session's, the lecture is the
    server's), and in demo mode the demo's defaults (a fixed, bounded set of lectures)."""
    if demo():
        d = Settings().locked()
        return d, ([] if s == d else ["Demo mode: the lecture runs the default settings and batch."])
    notes, out = [], s
    if s.method != "pp":
        out = replace(out, method="pp")
        notes.append(f"The lecture is about Probe Pruning: it runs pp (the sidebar has {s.method}).")
    if s.ratio <= 0:
        out = replace(out, ratio=Settings().ratio)
        notes.append(f"A ratio of 0 prunes nothing: the lecture runs ratio {out.ratio:.2f}.")
    if s.source == "upload":
        out = replace(out, source="examples")
        notes.append("The lecture cannot use an uploaded file: it runs the example prompts.")
    return out, notes


@dataclass
class LectureData:
    """Everything the lecture draws, held in memory for every session (app/lecture_job.py): `result` holds the
    analysis and, where they succeeded, the baselines, the comparison (every method at each ratio of `sweep`) and
    the latency; `when[part]`: when and where that part was computed, in words; `errors[part]`: one message for a
    part that failed (the steps that need it say so); `layer`: the layer the layer-specific steps open on; `figures`:
    the figures drawn from it so far (a cache)."""

    settings: Settings
    result: Result
    sweep: tuple[float, ...]
    layer: int
    when: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # The steps' Plotly figures by (builder, layer), each a Future (built, or being built ahead): shared by every
    # session (app/views/lecture.py).
    figures: dict[tuple[str, int], Any] = field(default_factory=dict, compare=False, repr=False)

    def missing(self, step: Step) -> list[str]:
        """The messages of the parts `step` needs that failed."""
        return [f"{PARTS[p]} failed: {self.errors[p]}" for p in step.needs if p in self.errors]


def pruned_layers(r: Result) -> list[int]:
    """Layers where the analysed run decided a block (the others ran dense)."""
    return [i for i, layer in enumerate(r.analysis.main.layers) if layer.attn.pruned or layer.mlp.pruned]


def middle_layer(r: Result) -> int:
    """The middle pruned layer: deep enough that the probe picks more than the first token, far from the end."""
    pruned = pruned_layers(r) or [0]
    return pruned[len(pruned) // 2]


def kept_strip(r: Result) -> np.ndarray:
    """(2, layers) kept fraction of attention heads (row 0) and MLP channels (row 1) per layer; NaN where the
    block was not pruned (a skipped layer runs whole)."""
    rows = []
    for block in ("attn", "mlp"):
        rows.append([len(b.kept) / b.total if b.pruned and b.total else np.nan
                     for b in (getattr(layer, block) for layer in r.analysis.main.layers)])
    return np.asarray(rows, dtype=float)


def sample_scores(importance: Any, probe_tokens: list[int]) -> np.ndarray:
    """(B,) each sample's score at the probe's tokens, the one that picks the probe's samples
    (docs/algorithm.md §2.2: the L2 norm of its residual importance over the chosen positions)."""
    grid = np.asarray(importance, dtype=np.float64)
    return np.linalg.norm(grid[:, list(probe_tokens)], axis=1) if probe_tokens else np.zeros(grid.shape[0])


def first_pruned_unit(r: Result, layer: int, block: str = "attn") -> Optional[int]:
    """The first unit the analysed run pruned at `layer` (None when it pruned none there)."""
    b = getattr(r.analysis.main.layers[layer], block)
    kept = set(b.kept)
    return next((u for u in range(b.total) if u not in kept), None) if b.pruned else None


def plan(s: Settings) -> tuple[tuple[float, ...], int, int]:
    """(the sweep's ratios, with the lecture's own ratio among them; the comparison's repeats; the latency's
    repeats) from SWEEP_ENV and REPEATS_ENV, else the defaults. Raises ConfigError for a value that does not parse."""
    sweep, compare, lat = SWEEP, COMPARE_REPEATS, LATENCY_REPEATS
    text = os.environ.get(SWEEP_ENV, "").strip()
    try:
        if text:
            sweep = tuple(float(x) for x in text.split(",") if x.strip())
            if not sweep or not all(0 <= r < 1 for r in sweep):
                raise ValueError
        reps = os.environ.get(REPEATS_ENV, "").strip()
        if reps:
            compare = lat = int(reps)
            if not 1 <= compare <= 20:
                raise ValueError
    except ValueError:
        raise ConfigError(f"{SWEEP_ENV}={text!r} / {REPEATS_ENV}={os.environ.get(REPEATS_ENV)!r}: give ratios in "
                          "[0, 1) separated by commas, and a whole number of repeats from 1 to 20") from None
    return tuple(sorted({*(round(r, 2) for r in sweep), round(float(s.ratio), 2)})), compare, lat


def _span(progress: Progress, lo: float, hi: float) -> Progress:
    """`progress` with fractions mapped from [0, 1] into [lo, hi]."""
    return lambda v, text: progress(lo + (hi - lo) * min(max(v, 0.0), 1.0), text)


def prepare(s: Settings, lm: LoadedModel, calib: session.Calibration, remember: Remember, write: bool,
            progress: Progress) -> LectureData:
    """Compute (or read back from the server's disk through `remember`) everything the lecture draws, for the
    settings `s` (already `lecture_settings`) on the model `lm` with `calib`; `write`: whether computed parts may
    be stored (app/stored.py writable). A failed analysis raises (nothing can be drawn without it); a failed
    baseline run, comparison or latency is kept as that part's message and the rest goes on.
    `progress(fraction, text)` after each step of each part."""
    sweep, compare_reps, latency_reps = plan(s)
    cfg = prune_config(s)
    cfg.check_layers(lm.adapter.dims.num_layers)
    batch = build_batch(lm.tokenizer, lm.adapter.dims.vocab, s, None, lm.bos_id)
    when: dict[str, str] = {}
    t0 = time.time()
    progress(0.0, f"the analysis: pp at ratio {s.ratio:.2f} on {batch.description}")
    akey = session.analysis_key(lm, calib, cfg, batch, ratio=s.ratio, seed=s.seed, settings=asdict(s))
    analysis, hit = remember(akey, lambda: session.analyse(lm, calib, cfg, batch, ratio=s.ratio, seed=s.seed,
                                                           settings=asdict(s), progress=_span(progress, 0, 0.2)),
                             write)
    analysis.protocol = messages.scrub(analysis.protocol)
    when["analysis"] = _when(hit, t0)
    r = Result(s.key(), s, analysis)
    errors: dict[str, str] = {}
    parts: tuple[tuple[str, dict[str, Any], Callable[[Progress], Any], float, float], ...] = (
        ("baselines", {}, lambda p: session.baselines(lm, calib, analysis, p), 0.2, 0.35),
        ("comparison", {"ratios": list(sweep), "repeats": compare_reps},
         lambda p: session.comparison(lm, calib, analysis, list(sweep), compare_reps, p), 0.35, 0.85),
        ("latency", {"repeats": latency_reps}, lambda p: session.latency(lm, calib, analysis, latency_reps),
         0.85, 1.0),
    )
    for name, params, compute, lo, hi in parts:
        progress(lo, PARTS[name])
        t0 = time.time()
        try:
            # The key the app's on-request views use (app/main.py _on_request): one stored result serves both.
            key = session.result_key_of(name, lm, calib, analysis, **params, entry=None)
            value, hit = remember(key, lambda: compute(_span(progress, lo, hi)), write)
        except NotStored:
            raise
        except Exception as e:  # noqa: BLE001 — one part's failure is that part's message; the lecture goes on
            errors[name] = messages.failure(e)
            continue
        r.keep(name, value)
        r.reused[name] = None if hit is None else reused_note(hit)
        when[name] = _when(hit, t0)
    progress(1.0, "ready")
    return LectureData(s, r, sweep, middle_layer(r), when, errors)


def _when(hit: Optional[Stored], started: float) -> str:
    """When a part was computed, in words: from the store, or just now by this server."""
    if hit is not None:
        return reused_note(hit)
    took = time.time() - started
    return f"computed on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} in {took:.1f} s by this server"
