"""The facade: a drawing front end's (the Streamlit app's) one door into the engine.

Every number a view shows comes from here, as dataclasses of run records, CPU tensors of per-token
numbers and tables. Nothing returned holds the model or a (B, L, D) hidden state, so a result can live
in a session and be redrawn without the model. The caller holds the model (`open_model`) and the
calibration (`calibration`), cached as it likes, and passes them to each computation:

- `analyse`: the chosen method and dense on one batch (records, per-token losses, KL, top-1, top-k);
- `baselines`: the oracle (fullbatch) and the static baselines at the same ratio;
- `comparison`: every method at one or more ratios (perplexity, time, FLOPs ratios, PRR; ppcore.session_timing);
- `stability`: consecutive batches through one Pruner (PP's history evolves, docs/algorithm.md §3.4);
- `generation`: dense and pruned greedy continuations of a prompt;
- `latency`: dense against the chosen method, per block (docs/algorithm.md §9.4; ppcore.session_timing);
- `ablation`: a named ablation grid on the analysis's batch (docs/ablations.md; ppcore.session_ablation);
- `side_by_side`: two configurations on the analysis's batch, their keep-sets per layer and their per-token
  losses told apart (ppcore.session_pair);
- `export_record`, `read_record`, `replay`: the record the app exports, and a saved one back into an `Analysis`
  without the model (ppcore.replay);
- `analysis_key`, `result_key_of`, `ResultStore`: the keys under which a front end keeps finished results on disk,
  shared across sessions and restarts (ppcore.result_store).

A `Progress` callback takes (fraction done in [0, 1], text) and runs after every layer; one that raises
stops the computation there, and the exception passes through. The engine never writes the model's
weights, so a stopped or failed computation leaves the shared model as it was.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np
from torch import Tensor

from . import clock
from .ablations import ABLATIONS, carried as carried_settings
from .analysis import (keep_jaccard, kept_fractions, kept_matrix, masked_mean, next_tokens, perplexity,
                       probe_token_matrix, uniform_kept_fractions)
from .analysis import stability as keep_set_stability
from .blocks import BLOCKS
from .calibrate import calibrate
from .config import METHODS, CalibConfig, PruneConfig, describe_calibration_batches
from .data import corpus_text, sample_windows, tokenize_text
from .errors import DataError
from .experiment import calibration_windows
from .flops import flops_ratios
from .generate import generate
from .embedded import EMBEDDED, EmbeddedModel, embedded_model, terms_file
from .loading import LoadedModel, Placement, load_model, prepare_model
from .fitting import build_pruner, fit_for, fits_missing, needs_fit
from .methods import Pruner
from .protocol import Protocol, build_protocol, describe_calibration
from .progress import Progress, layer_ticks as _ticks, quiet as _quiet, within as _within
from .record import BLOCK_NAMES, BatchRecord, RunRecord
from .stats import CalibStats
from .token_text import token_text
from .session_timing import (COMPARED_METHODS, BlockTiming, CompareRow, Latency, Timing, comparison,  # the timed ones
                             comparison_configs, latency)
from .session_ablation import AblationResult, AblationRow, ablation  # a named ablation on one batch
from .session_pair import LayerDiff, SideBySide, side_by_side  # two configurations on one batch
from .replay import LACKS, RecordError, RecordLimits, Replayed, export_record, read_record, rebuild  # replay
from .result_store import ResultStore, Stored, result_key  # finished results on disk
from .walk import WalkResult, token_nll, walk
from .lmeval.tasks import NAMES as TASK_NAMES
if TYPE_CHECKING:
    from .lmeval.run import TaskComparison
from .why import (SINK_FACTOR, HistoryEffect, Stage2, UnitWhy, Verdict, history_changes, history_effect,  # explaining
                  kept_sets, sink_positions, stage2, token_scores, unit_why)

__all__ = [
    "BASELINES", "COMPARED_METHODS", "DEVICES", "METHODS", "TOP_K", "Analysis", "Batch", "BlockTiming", "Calibration",
    "CompareRow", "Continuation", "GenerationPair", "Latency", "Progress", "Stability", "Timing", "TopK", "analyse",
    "baselines", "calibration", "calibration_text", "comparison", "comparison_configs", "corpus_windows", "generation",
    "kept_matrix", "latency", "layer_table", "licence", "named_models", "open_model", "prepare", "probe_token_matrix",
    "stability", "uniform_kept_fractions",
    # explaining one decision (ppcore.why)
    "SINK_FACTOR", "HistoryEffect", "Stage2", "UnitWhy", "Verdict", "history_changes", "history_effect", "kept_sets",
    "sink_positions", "stage2", "token_scores", "unit_why",
    "ZEROSHOT_TASKS", "zeroshot",  # zero-shot accuracy on one task (ppcore.lmeval)
    "ABLATIONS", "AblationResult", "AblationRow", "ablation", "carried_settings",  # an ablation on one batch
    "LayerDiff", "SideBySide", "side_by_side",  # two configurations on one batch
    "LACKS", "RecordError", "RecordLimits", "Replayed", "export_record", "open_record", "read_record",  # replay
    "replay",
    "ResultStore", "Stored", "analysis_key", "result_key_of",  # finished results on disk
]

BASELINES = ("fullbatch", "wanda-sp", "flap", "ppsp-calib")  # the oracle, then the static baselines
DEVICES = ("auto", "cpu", "cuda", "map")  # map: accelerate spreads the model over GPUs, CPU and disk
TOP_K = 20  # next-token candidates kept per position: a view may show up to this many
FRONT_END = "app"



# --- inputs: model, calibration, batch -------------------------------------------------------------------

def named_models() -> dict[str, str]:
    """The embedded models a front end offers by name: {name: title} ('default' first)."""
    return {name: m.title for name, m in EMBEDDED.items()}


def licence(spec: str) -> Optional[tuple[str, Optional[Path]]]:
    """(licence line, path of its full text or None) of an embedded model, or None for any other spec."""
    m: Optional[EmbeddedModel] = embedded_model(str(spec).strip())
    if m is None:
        return None
    from .cache import cache_root

    return m.licence, terms_file(m, cache_root())


def prepare(spec: str, progress: Optional[Progress] = None) -> None:
    """An embedded model's slow first-time work (joining its parts, converting it once), reported through
    `progress(fraction, text)` (fraction 0); a no-op otherwise and once done. Raises ModelLoadError."""
    say = progress or _quiet
    prepare_model(spec, progress=lambda text: say(0.0, text))


def open_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """`ppcore.load_model`, with device "map" meaning accelerate's device_map="auto" (a model too big for
    one device, spread over the GPUs, the CPU and disk). Raises ModelLoadError, UnsupportedModelError."""
    if device == "map":
        return load_model(spec, dtype=dtype, placement=Placement("auto"))
    return load_model(spec, device=device, dtype=dtype)


@dataclass(frozen=True)
class Calibration:
    """Calibration statistics (docs/algorithm.md §7) with what produced them: the config, the seed that
    drew the windows from the dataset's calibration split, and the protocol's calibration section."""

    stats: CalibStats
    config: CalibConfig
    seed: int
    protocol: dict[str, Any]


def calibration_text(config: CalibConfig) -> str:
    """'40 windows of 128 tokens from wiki-vital, in 2 batches of 20': for pages."""
    return (f"{config.windows} windows of {config.seq_len} tokens from {config.dataset}, in "
            f"{describe_calibration_batches(config.windows, config.batch_size)}")


def calibration(lm: LoadedModel, config: CalibConfig, seed: int, cache: bool = True) -> Calibration:
    """Calibrate `lm` on `config.windows` seeded windows of `config.seq_len` tokens from `config.dataset`'s
    calibration split, in batches of `config.batch_size` (FLAP's official compensation divides by it,
    docs/algorithm.md §8.1). With `cache`, the engine also keeps the statistics on disk.
    Raises DataError for an unknown dataset or one too short for the windows."""
    windows, source = calibration_windows(lm, config.dataset, config.windows, config.seq_len, seed)
    stats = calibrate(lm, windows, batch_size=config.batch_size, progress=False, cache=cache)
    return Calibration(stats, config, seed, describe_calibration(source, windows, config.batch_size, seed))


def _eval_tokens(tokenizer: Any, corpus: str) -> Tensor:
    return tokenize_text(tokenizer, corpus_text(corpus, "eval"))


def corpus_windows(tokenizer: Any, corpus: str, count: int, seq_len: int, seed: int,
                   bos: Optional[int] = None) -> Tensor:
    """`count` seeded windows of `seq_len` tokens from the eval split of `corpus` (wiki-vital, wikitext2 or
    a .txt path): (count, seq_len) long, each starting with `bos` when given (`LoadedModel.bos_id`).
    Raises DataError for an unknown or too short corpus."""
    return sample_windows(_eval_tokens(tokenizer, corpus), count, seq_len, seed, bos)


@dataclass
class Batch:
    """One batch as a front end built it. ids: (B, L) long token ids, right-padded; mask: (B, L) 0/1, None
    when nothing is padded; description: where the samples came from (protocol, captions); tokens: per
    sample, the text of each position ('' for pads), joined they give the sample's text (a character split over
    tokens is all on its last one); labels: the same grid with each token as it reads alone (`ppcore.token_text`:
    a part of a character as its bytes, '<bytes F0 9F>'), for every place that shows one token by itself (a chart
    axis, "actual next token", a per-token table); None: the same as `tokens`."""

    ids: Tensor
    mask: Optional[Tensor]
    description: str
    tokens: list[list[str]]
    labels: Optional[list[list[str]]] = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.labels is None:
            self.labels = self.tokens

    @property
    def lengths(self) -> list[int]:
        """Real tokens per sample."""
        return [int(r.sum()) for r in self.mask] if self.mask is not None else [self.ids.shape[1]] * self.ids.shape[0]


def _stats(calib: Optional[Calibration]) -> Optional[CalibStats]:
    return None if calib is None else calib.stats



def _walk(lm: LoadedModel, cfg: PruneConfig, calib: Optional[Calibration], ids: Tensor, mask: Optional[Tensor],
          level: str, tick: Optional[Callable[[int, int], None]] = None) -> WalkResult:
    """One batch through a fresh Pruner."""
    pruner = build_pruner(lm.adapter, cfg, _stats(calib))
    return walk(lm.adapter, pruner, ids, mask, level=level, on_layer=tick)


# --- the analysis of one batch ---------------------------------------------------------------------------

@dataclass
class TopK:
    """The TOP_K most likely next tokens at every position of one run, most likely first: ids (B, L, k)
    int32 and probs (B, L, k) fp32, with texts: token id -> its text (`ppcore.token_text`: a part of a character
    as its bytes), for every id in `ids`."""

    ids: Tensor
    probs: Tensor
    texts: dict[int, str]

    def at(self, sample: int, position: int, k: int) -> list[tuple[str, float]]:
        """(text, probability) of the k most likely tokens after `position` of `sample`. Raises IndexError
        outside the batch, ValueError for k outside 1..TOP_K."""
        B, L, kept = self.ids.shape
        if not (0 <= sample < B and 0 <= position < L):
            raise IndexError(f"(sample {sample}, position {position}) outside the batch ({B} x {L})")
        if not 1 <= k <= kept:
            raise ValueError(f"k must lie in 1..{kept}, got {k}")
        ids, probs = self.ids[sample, position, :k].tolist(), self.probs[sample, position, :k].tolist()
        return [(self.texts[i], p) for i, p in zip(ids, probs)]


@dataclass
class Analysis:
    """The chosen method and dense on one batch, with what the views draw from them.

    cfg: the run's PruneConfig; ratio: the ratio asked for (cfg.ratio is 0 for dense), used by the
    baselines and the comparison. info: `LoadedModel.info()`. main: the chosen method's record at level
    "full" (importance grids, energies); dense: dense's record (the same object when the method is dense).
    nll_dense, nll_pruned, nll_mask: (B, L-1) fp32 per-token losses in nats and their 0/1 mask. kl, top1:
    (B, L) fp32 KL(dense || pruned) in nats and top-1 agreement. top_dense, top_pruned: next-token top-k.
    prompt: the batch's first sample's first 24 tokens, as text (a default generation prompt).
    seconds: wall seconds of each walk, by method. All tensors are on the CPU.
    replayed: None for a computed analysis; for one rebuilt from a saved record (`replay`), where it came from and
    what it lacks. A replayed analysis has no top-k (None), and no dense, losses, KL or top-1 (None) when its
    record holds none; `summary()` gives None for the figures it cannot compute.
    """

    cfg: PruneConfig
    ratio: float
    info: dict[str, Any]
    batch: Batch
    main: BatchRecord
    dense: Optional[BatchRecord]  # None only in a replayed record without dense
    nll_dense: Optional[Tensor]  # None only in a replay whose record lacks them (the five below likewise)
    nll_pruned: Optional[Tensor]
    nll_mask: Optional[Tensor]
    kl: Optional[Tensor]
    top1: Optional[Tensor]
    top_dense: Optional[TopK]  # None in every replay: records hold no top-k
    top_pruned: Optional[TopK]
    prompt: str
    protocol: Protocol
    seconds: dict[str, float]
    replayed: Optional[Replayed] = None

    @property
    def valid(self) -> Optional[Tensor]:
        """(B, L) fp32 0/1 of real positions, None when nothing is padded."""
        return None if self.batch.mask is None else self.batch.mask.float()

    def summary(self) -> dict[str, Optional[float]]:
        """The header's numbers: perplexities, KL (nats), top-1 agreement (fraction), and the four FLOPs
        figures of `ppcore.flops.flops_ratios` (whole model and decoder layers only). None for the figures a
        replayed record holds nothing for."""
        m = self.nll_mask
        return {
            "ppl_dense": None if self.nll_dense is None or m is None else perplexity(self.nll_dense, m),
            "ppl_pruned": None if self.nll_pruned is None or m is None else perplexity(self.nll_pruned, m),
            "kl": None if self.kl is None else masked_mean(self.kl, self.valid),
            "top1": None if self.top1 is None else masked_mean(self.top1, self.valid),
            **flops_ratios(self.main.flops),
        }

    def run_record(self, others: Mapping[str, BatchRecord] | None = None) -> RunRecord:
        """The run record: the chosen method's batch, then dense (unless it is the method), then `others`
        (the baselines), with this analysis's protocol."""
        dense = [] if self.dense is None or self.dense is self.main else [self.dense]
        batches = [self.main] + dense + list((others or {}).values())
        return RunRecord(self.protocol.to_dict(), batches)


def analyse(lm: LoadedModel, calib: Optional[Calibration], cfg: PruneConfig, batch: Batch, *,
            ratio: Optional[float] = None, seed: Optional[int] = None, settings: Optional[dict[str, Any]] = None,
            progress: Progress = _quiet) -> Analysis:
    """Walk `batch` with `cfg` (level "full") and with dense, and compare their outputs: per-token losses,
    KL, top-1 agreement and each run's next-token top-k (docs/algorithm.md §9.3). `ratio`: the ratio
    asked for (default cfg.ratio); `seed` and `settings` go into the protocol (front_end "app").

    Raises ConfigError for a config the model cannot take (e.g. a skipped layer past its last),
    DataError for a bad batch, NonFiniteError when activations overflow.
    """
    seconds: dict[str, float] = {}
    ids, mask = batch.ids, batch.mask

    def run(c: PruneConfig, level: str, lo: float, hi: float, label: str) -> WalkResult:
        res, seconds[c.method] = clock.timed(lambda: _walk(lm, c, calib, ids, mask, level,
                                                            _ticks(progress, lo, hi, label)), lm.device)
        return res

    if calib is not None and needs_fit(cfg):  # pp-plus's fits: made once, before and outside the timed walk
        # a fit to compute takes minutes, the walks seconds: it gets most of the bar (a newcomer saw 0-10 % for minutes)
        share = 0.8 if fits_missing(cfg, calib.stats) else 0.0
        fit_for(lm.adapter, cfg, calib.stats, _within(progress, 0.0, max(share, 0.1)))
        progress = _within(progress, share, 1.0)
    label = f"{cfg.method} at ratio {cfg.ratio:.2f}"
    progress(0.1, label)
    main = run(cfg, "full", 0.1, 0.45, label)
    progress(0.45, "dense reference")
    dense = main if cfg.method == "dense" else run(PruneConfig(method="dense"), "summary", 0.45, 0.85,
                                                   "dense reference")
    progress(0.85, "losses, KL and top-1 agreement")
    ad, tok = lm.adapter, lm.tokenizer
    nll_d, m = token_nll(ad, dense.hidden, ids, dense.valid)
    nll_p, _ = token_nll(ad, main.hidden, ids, main.valid)
    nt = next_tokens(ad, dense.hidden, main.hidden, TOP_K)
    texts = {i: token_text(tok, i) for i in set(nt.ref_ids.flatten().tolist()) | set(nt.ids.flatten().tolist())}
    # One batch, no warm-up: the perplexity is that batch's, so the protocol states no warm-up.
    protocol = build_protocol(FRONT_END, lm, {"source": batch.description, "shape": list(ids.shape)},
                              config=cfg.to_dict(), calibration=None if calib is None else calib.protocol,
                              seed=seed, settings=settings).replace(warmup=None)
    assert main.record is not None and dense.record is not None  # levels "full" and "summary" record
    return Analysis(cfg, cfg.ratio if ratio is None else ratio, lm.info(), batch, main.record, dense.record,
                    nll_d.cpu(), nll_p.cpu(), m.cpu(), nt.kl, nt.top1, TopK(nt.ref_ids, nt.ref_probs, texts),
                    TopK(nt.ids, nt.probs, texts),
                    tok.decode(ids[0, : min(batch.lengths[0], 24)].tolist(), skip_special_tokens=True),
                    protocol, seconds)


def replay(record: RunRecord, name: str = "", limits: RecordLimits = RecordLimits()) -> Analysis:
    """The Analysis a saved run record replays, without the model (ppcore.replay.rebuild: the analysed method's
    batch, dense's, the baselines in `replayed.baselines`, the per-token numbers the record holds; no top-k).
    `name`: the file's. Raises RecordError for a record that cannot be replayed."""
    p = rebuild(record, name, limits)
    batch = Batch(p.ids, p.mask, p.description, p.tokens, labels=p.labels)
    return Analysis(p.cfg, p.ratio, p.info, batch, p.main, p.dense,
                    p.nll_dense, p.nll_pruned, p.nll_mask, p.kl, p.top1, None, None, p.prompt, record.protocol,
                    p.seconds, replayed=p.replayed)


def open_record(data: bytes | str, name: str = "", limits: RecordLimits = RecordLimits()) -> Analysis:
    """`replay(read_record(data, limits), name, limits)`: a run record file's bytes to the Analysis the views draw
    (the sizes checked before parsing). Raises RecordError."""
    return replay(read_record(data, limits), name, limits)


def layer_table(main: BatchRecord, others: Mapping[str, BatchRecord]) -> list[dict[str, Any]]:
    """Per block and layer: the kept fraction of `main`, and the Jaccard of its keep-set with each of
    `others` (None where neither pruned that block): rows of layer, block, kept_fraction, jaccard_<method>."""
    rows = []
    for block in BLOCK_NAMES:
        jac = {m: keep_jaccard(main, rec, block) for m, rec in others.items()}
        for i, f in enumerate(kept_fractions(main, block)):
            rows.append({"layer": i, "block": block, "kept_fraction": f,
                         **{f"jaccard_{m}": j[i] for m, j in jac.items()}})
    return rows


# --- keys of finished results on disk (ppcore.result_store) ---------------------------------------------------

def _model_parts(lm: LoadedModel, calib: Optional[Calibration]) -> dict[str, Any]:
    """What every result of `lm` depends on besides its batch and settings: the weights (fingerprint), dtype and
    device, and the calibration (config and the seed that drew its windows; the statistics follow from them, the
    model and the engine's code, which result_key also covers)."""
    placement = getattr(lm.model, "hf_device_map", None)  # device "map": spread over devices, slower
    return {"model": lm.fingerprint, "dtype": str(lm.dtype), "device": str(lm.device),
            "placement": None if not placement else {str(k): str(v) for k, v in placement.items()},
            "calibration": None if calib is None else {**asdict(calib.config), "seed": calib.seed}}


def analysis_key(lm: LoadedModel, calib: Optional[Calibration], cfg: PruneConfig, batch: Batch, *,
                 ratio: Optional[float] = None, seed: Optional[int] = None,
                 settings: Optional[dict[str, Any]] = None) -> str:
    """The key (32 hex digits) of `analyse(lm, calib, cfg, batch, ratio=, seed=, settings=)`'s result: the same
    key means the same Analysis (its wall seconds and protocol date aside, which are the first run's)."""
    return result_key("analysis", **_model_parts(lm, calib), cfg=cfg.to_dict(), ratio=ratio, seed=seed,
                      settings=settings, ids=batch.ids, mask=batch.mask, description=batch.description)


def result_key_of(kind: str, lm: LoadedModel, calib: Optional[Calibration], a: Analysis, **params: Any) -> str:
    """The key (32 hex digits) of an on-request result `kind` (e.g. "baselines", "comparison") computed for the
    analysis `a` with `params` (plain data: ratios, repeats, a task name...). Raises TypeError for a param that is
    not plain data."""
    return result_key(kind, **_model_parts(lm, calib), cfg=a.cfg.to_dict(), ratio=a.ratio, ids=a.batch.ids,
                      mask=a.batch.mask, params=params)


# --- on request: baselines, stability, generation ------------------------------------------------------------

def baselines(lm: LoadedModel, calib: Optional[Calibration], a: Analysis,
              progress: Progress = _quiet) -> dict[str, BatchRecord]:
    """The oracle (fullbatch) and the static baselines (docs/algorithm.md §8) at the analysis's ratio, on
    its batch, level "summary": {method: record}, the analysed method left out; pp first when the analysed
    method is another one (every comparison then includes Probe Pruning). Raises as `analyse`."""
    out: dict[str, BatchRecord] = {}
    todo = [m for m in ("pp", *BASELINES) if m != a.cfg.method]
    for i, m in enumerate(todo):
        label, lo, hi = f"baseline {m} at ratio {a.ratio:.2f}", i / len(todo), (i + 1) / len(todo)
        progress(lo, label)
        res = _walk(lm, a.cfg.as_method(m, a.ratio), calib, a.batch.ids, a.batch.mask, "summary",
                    _ticks(progress, lo, hi, label))
        assert res.record is not None
        out[m] = res.record
    progress(1.0, "done")
    return out


@dataclass
class Stability:
    """Keep-set Jaccard between consecutive batches through one Pruner: attn and mlp are (batches - 1,
    layers) arrays, NaN where the block was not pruned; batches: how many batches ran.

    How PP's history moved (docs/algorithm.md §3.4), per block name: `history[block]` (batches, layers, units)
    float32, the history each batch was decided with, summed over the batch's positions and each unit's channels
    (NaN where the block is not pruned); `history_changed[block]` (batches, layers), the decisions the history
    turned around against the probe alone (`ppcore.why.HistoryEffect.changed`; NaN likewise). Both empty dicts
    for a method without a history."""

    attn: np.ndarray
    mlp: np.ndarray
    batches: int
    history: dict[str, np.ndarray] = field(default_factory=dict)
    history_changed: dict[str, np.ndarray] = field(default_factory=dict)

    def mean(self, block: str) -> float:
        """Mean Jaccard over pruned layers and batch pairs (NaN when nothing was pruned)."""
        mat = getattr(self, block)
        return float(np.nanmean(mat)) if np.isfinite(mat).any() else float("nan")


def stability(lm: LoadedModel, calib: Optional[Calibration], a: Analysis, corpus: str, seed: int,
              extra_batches: int, progress: Progress = _quiet) -> Stability:
    """The analysis's batch, then `extra_batches` windows of the same shape from `corpus`'s eval split
    (seeds seed+1, seed+2, ...), all through ONE Pruner, so that PP's history evolves from batch to batch.
    Raises DataError for an unknown or too short corpus."""
    pruner = build_pruner(lm.adapter, a.cfg, _stats(calib))
    B, L = a.batch.ids.shape
    tokens = _eval_tokens(lm.tokenizer, corpus)
    batches = [(a.batch.ids, a.batch.mask)] + [(sample_windows(tokens, B, L, seed + 1 + k, lm.bos_id), None)
                                                for k in range(extra_batches)]
    recs: list[BatchRecord] = []
    states: list[dict[str, np.ndarray]] = []
    for k, (ids, mask) in enumerate(batches):
        progress(k / len(batches), f"batch {k + 1} of {len(batches)}")
        states.append(_history_units(pruner, L))  # what this batch is decided with
        rec = walk(lm.adapter, pruner, ids, mask, level="summary").record  # keep-sets, probe-only ones too
        assert rec is not None
        recs.append(rec)
    history = {b: np.stack([s[b] for s in states]) for b in BLOCK_NAMES} if pruner.history is not None else {}
    changed = {b: np.array([[np.nan if c is None else c for c in history_changes(r, b)] for r in recs],
                           dtype=np.float32) for b in BLOCK_NAMES} if pruner.history is not None else {}
    return Stability(**{b: keep_set_stability(recs, b) for b in BLOCK_NAMES}, batches=len(recs),
                     history=history, history_changed=changed)


def _history_units(pruner: Pruner, positions: int) -> dict[str, np.ndarray]:
    """PP's history now, per block name (layers, units) float32: summed over the first `positions` positions (the
    ones batches of that length read and update) and each unit's channels; NaN rows for the layers and blocks the
    pruner does not decide (skipped, switched off), whose history nothing reads."""
    out = {}
    dims, h = pruner.dims, pruner.history
    for block in BLOCKS:
        units = block.units(dims)
        m = np.full((dims.num_layers, units), np.nan, dtype=np.float32)
        for layer in range(dims.num_layers):
            if h is not None and h.has(layer, block.name) and pruner.prunes_block(layer, block):
                rows = h.states[block.key(layer)][:positions]
                m[layer] = rows.sum(0).view(units, -1).sum(1).float().cpu().numpy()
        out[block.name] = m
    return out


# --- on request: zero-shot accuracy on one task (lm-eval; ppcore.lmeval) --------------------------------------

ZEROSHOT_TASKS = TASK_NAMES  # the seven commonsense tasks, offline (docs/zeroshot.md)


def zeroshot(lm: LoadedModel, calib: Optional[Calibration], a: Analysis, task: str, limit: int,
             progress: Progress = _quiet) -> "TaskComparison":
    """Dense against the analysed config (pp at its ratio when the analysis is dense) on the first `limit` documents
    of one of ZEROSHOT_TASKS, through lm-eval's own prompts and metrics (`ppcore.lmeval.run.compare_on_task`):
    accuracies and every document's picks. Raises DataError for an unknown task, a limit below 1 or a missing
    data wheel."""
    from .lmeval.run import compare_on_task

    cfg = a.cfg if a.cfg.method != "dense" else replace(a.cfg, method="pp", ratio=a.ratio)
    return compare_on_task(lm, _stats(calib), cfg, task, limit, progress)


@dataclass
class Continuation:
    """One greedy continuation: its text, its token count, and the median wall seconds of its prefill (reading
    the prompt, where the pruning is decided) and of its decode (writing the new tokens)."""

    text: str
    tokens: int
    prefill_s: float
    decode_s: float


@dataclass
class GenerationPair:
    """The prompt, and its greedy continuations by dense and by the pruned model. The times are medians of
    `repeats` timed runs of each, after one untimed warm-up run of each, dense and pruned alternating
    (docs/algorithm.md §9.4)."""

    prompt: str
    dense: Continuation
    pruned: Continuation
    repeats: int = 1


GENERATION_REPEATS = 2  # timed runs of each model per generation: the order alternates, the medians are kept


def generation(lm: LoadedModel, calib: Optional[Calibration], cfg: PruneConfig, prompt: str, max_new_tokens: int,
               max_prompt_tokens: Optional[int] = None, repeats: int = GENERATION_REPEATS,
               progress: Progress = _quiet) -> GenerationPair:
    """Greedy continuations of `prompt` by dense and by `cfg`, pruning decided on the prompt (the prefill)
    and reused for every new token, timed fairly: one short untimed run of each first (allocator, kernels,
    a static method's slices), then `repeats` timed runs of each, dense and pruned alternating which goes
    first, and the median prefill and decode seconds. Every run leaves PP's history as it was, so each one
    decides, and writes, exactly what a single greedy run with a fresh Pruner would. `progress(fraction,
    text)` before each run. Raises DataError for an empty prompt, one over `max_prompt_tokens`, one that
    with `max_new_tokens` exceeds the model's context, or repeats < 1."""
    if repeats < 1:
        raise DataError(f"repeats must be at least 1, got {repeats}")
    tok = lm.tokenizer
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError("the prompt is empty: type a few words to continue")
    ids = lm.with_bos(ids)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise DataError(f"the prompt has {len(ids)} tokens, over the limit of {max_prompt_tokens}: shorten it")
    cfgs = [PruneConfig(method="dense")] + ([] if cfg.method == "dense" else [cfg])
    pruners = [build_pruner(lm.adapter, c, _stats(calib)) for c in cfgs]

    def run(p: Pruner, n: int) -> Any:
        return generate(lm.adapter, p, [ids], n, pad_id=tok.pad_token_id or 0, eos_id=tok.eos_token_id,
                        level="none", update_history=False)

    total, done = len(pruners) * (1 + repeats), 0
    for p, c in zip(pruners, cfgs):  # warm-up: the prefill and one decode step, untimed
        progress(done / total, f"warming up {c.method}")
        run(p, min(2, max_new_tokens))
        done += 1
    runs: list[list[Any]] = [[] for _ in pruners]
    for k in range(repeats):
        order = range(len(pruners)) if k % 2 == 0 else reversed(range(len(pruners)))
        for i in order:
            progress(done / total, f"generating with {cfgs[i].method}, run {k + 1} of {repeats}")
            runs[i].append(run(pruners[i], max_new_tokens))
            done += 1
    progress(1.0, "done")
    out = []
    for gs in runs:
        first = gs[0].tokens[0]  # greedy and deterministic: every repeat writes the same tokens
        prefill_s, decode_s = (float(np.median([getattr(g, k) for g in gs])) for k in ("prefill_s", "decode_s"))
        out.append(Continuation(tok.decode(first, skip_special_tokens=True), len(first), prefill_s, decode_s))
    return GenerationPair(prompt, out[0], out[-1], repeats)
