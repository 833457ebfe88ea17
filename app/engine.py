"""The app's calls into ppcore: cached model and calibration, and the runs behind each view.

The model is loaded once per (model, device, dtype) and shared by every session: the engine reads
its weights and never writes them, so sharing is safe. Each run builds its own Pruner.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import streamlit as st
from torch import Tensor

from ppcore import (METHODS, BatchRecord, CalibStats, DataError, LoadedModel, Placement, PruneConfig, Pruner, RunRecord,
                    load_model, token_nll, walk)
from ppcore.analysis import logit_agreement, masked_mean, perplexity, prr, stability
from ppcore.calibrate import calibrate
from ppcore.data import corpus_text, sample_windows, tokenize_text
from ppcore.evaluate import environment
from ppcore.flops import RATIO_NAMES, flops_ratios
from ppcore.generate import generate
from ppcore.experiment import calibration_windows
from ppcore.speed import measure

from .batch import Batch
from .state import Settings, prune_config

BASELINES = ("fullbatch", "wanda-sp", "flap", "ppsp-calib")
# The four FLOPs figures (../shared/BENCHMARKS.md): whole model, then decoder layers only (the paper's).
FLOPS_FIELDS = RATIO_NAMES
Progress = Callable[[float, str], None]


@st.cache_resource(show_spinner=False, max_entries=2)
def get_model(spec: str, device: str, dtype: str) -> LoadedModel:
    """device 'map': too big for one device, so accelerate places the layers (device_map="auto")."""
    if device == "map":
        return load_model(spec, dtype=dtype, placement=Placement("auto"))
    return load_model(spec, device=device, dtype=dtype)


@st.cache_resource(show_spinner=False, max_entries=8)
def get_calibration(_lm: LoadedModel, fingerprint: str, device: str, dtype: str, count: int, seq_len: int,
                    seed: int, batch_size: int, disk: bool = True) -> CalibStats:
    """Calibration statistics from `count` windows of `seq_len` tokens, run in batches of `batch_size`
    (the Settings' calib_batch_size: FLAP's official compensation divides by it); with `disk`, also cached
    on disk by the engine, so restarts are warm too.

    The demo keeps only its default calibration on disk: each other setting would write another file of
    tens of MB, and visitors choose the settings (SECURITY.md, resource exhaustion)."""
    windows, _ = calibration_windows(_lm, "wiki-vital", count, seq_len, seed)
    return calibrate(_lm, windows, batch_size=batch_size, progress=False, cache=disk)


Tick = Callable[[int, int], None]  # (layers done, layers in the model)


def walk_with_ticks(lm: LoadedModel, cfg: PruneConfig, calib: Optional[CalibStats], ids: Tensor,
                    mask: Optional[Tensor], level: str, tick: Optional[Tick] = None):
    """ppcore.walk with a fresh Pruner, calling tick(done, total) after each layer (the engine's on_layer).
    The app's tick updates the progress bar: a Streamlit call, and so the point where a Stop press (or
    any widget used mid-run) interrupts the run, by raising out of the walk."""
    return walk(lm.adapter, Pruner(lm.adapter, cfg, calib), ids, mask, level=level, on_layer=tick)


@dataclass
class Result:
    """One analysed batch: the chosen method against dense and the baselines. Lives in session_state."""

    key: str
    settings: Settings
    cfg: PruneConfig
    info: dict[str, Any]
    batch: Batch
    main: BatchRecord  # the chosen method, level "full" (importance grids, energies)
    dense: BatchRecord
    others: dict[str, BatchRecord]  # fullbatch and static baselines, same ratio (summary); filled on demand
    hidden_dense: Tensor
    hidden_pruned: Tensor
    nll_dense: Tensor  # (B, L-1)
    nll_pruned: Tensor
    nll_mask: Tensor
    kl: Tensor  # (B, L) KL(dense || pruned)
    top1: Tensor  # (B, L) 1 where the top-1 next token agrees
    protocol: dict[str, Any]
    seconds: dict[str, float]
    extras: dict[str, Any] = field(default_factory=dict)  # latency, comparison, generation, stability

    @property
    def valid(self) -> Optional[Tensor]:
        return None if self.batch.mask is None else self.batch.mask.float()

    def summary(self) -> dict[str, Optional[float]]:
        """The header's numbers: perplexities, KL, top-1 agreement, and the four FLOPs figures of
        `ppcore.flops.flops_ratios` (whole model and decoder layers only; the decoder ones are None for a
        record written before the LM head was counted apart)."""
        m = self.nll_mask
        return {
            "ppl_dense": perplexity(self.nll_dense, m), "ppl_pruned": perplexity(self.nll_pruned, m),
            "kl": masked_mean(self.kl, self.valid), "top1": masked_mean(self.top1, self.valid),
            **flops_ratios(self.main.flops),
        }

    def run_record(self) -> RunRecord:
        batches = [self.main] + ([] if self.cfg.method == "dense" else [self.dense]) + list(self.others.values())
        return RunRecord(self.protocol, batches)


def analyse(lm: LoadedModel, calib: Optional[CalibStats], s: Settings, batch: Batch, key: str,
            progress: Progress) -> Result:
    cfg = prune_config(s)
    seconds: dict[str, float] = {}
    ad, ids, mask = lm.adapter, batch.ids, batch.mask

    def run(c: PruneConfig, level: str, lo: float, hi: float, label: str):
        t0 = time.perf_counter()

        def tick(done: int, total: int) -> None:
            progress(lo + (hi - lo) * done / total, f"{label}: {done} of {total} layers")

        res = walk_with_ticks(lm, c, calib, ids, mask, level, tick)
        seconds[c.method] = time.perf_counter() - t0
        return res

    progress(0.1, f"{cfg.method} at ratio {cfg.ratio:.2f}")
    main = run(cfg, "full", 0.1, 0.45, f"{cfg.method} at ratio {cfg.ratio:.2f}")
    progress(0.45, "dense reference")
    dense = main if cfg.method == "dense" else run(PruneConfig(method="dense"), "summary", 0.45, 0.85, "dense reference")
    progress(0.85, "losses, KL and top-1 agreement")
    nll_d, m = token_nll(ad, dense.hidden, ids, dense.valid)
    nll_p, _ = token_nll(ad, main.hidden, ids, main.valid)
    kl, top1 = logit_agreement(ad, dense.hidden, main.hidden)
    protocol = {
        "app": "Probe Pruning Lab", "model": lm.info(), "batch": {"source": batch.description,
                                                                  "shape": list(ids.shape)},
        "calibration": None if calib is None else {"dataset": "wiki-vital", "split": "calibration",
                                                   "windows": s.calib, "seq_len": s.calib_len, "seed": s.seed,
                                                   "batch_size": calib.batch_size},
        "config": cfg.to_dict(), "settings": s.__dict__, "environment": environment(),
    }
    return Result(key, s, cfg, lm.info(), batch, main.record, dense.record, {}, dense.hidden, main.hidden,
                  nll_d.cpu(), nll_p.cpu(), m.cpu(), kl, top1, protocol, seconds)


def baselines(lm: LoadedModel, calib: Optional[CalibStats], r: Result, progress: Progress) -> dict[str, BatchRecord]:
    """The oracle (fullbatch) and the static baselines at the same ratio, for the agreement charts.

    Run when the channel view first needs them, not before the first result: that keeps the page's
    first answer to two walks (the method and dense).
    """
    ratio = r.cfg.ratio if r.cfg.method != "dense" else r.settings.ratio
    out: dict[str, BatchRecord] = {}
    todo = [m for m in BASELINES if m != r.cfg.method]
    for i, m in enumerate(todo):
        progress(i / len(todo), f"baseline {m} at ratio {ratio:.2f}")
        c = prune_config(r.settings, method=m, ratio=ratio)

        def tick(done: int, total: int, i: int = i, m: str = m) -> None:
            progress((i + done / total) / len(todo), f"baseline {m} at ratio {ratio:.2f}: {done} of {total} layers")

        out[m] = walk_with_ticks(lm, c, calib, r.batch.ids, r.batch.mask, "summary", tick).record
    progress(1.0, "done")
    return out


def latency(lm: LoadedModel, calib: Optional[CalibStats], r: Result, repeats: int) -> dict[str, Any]:
    """Dense vs the chosen method on the same batch: warm-up, interleaved repeats, medians."""
    cfgs = [PruneConfig(method="dense")] + ([] if r.cfg.method == "dense" else [r.cfg])
    return measure(lm, cfgs, r.batch.ids, calib, repeats=repeats, hf=False)


def compare(lm: LoadedModel, calib: Optional[CalibStats], r: Result, ratios: list[float], repeats: int,
            progress: Progress) -> list[dict[str, Any]]:
    """Every method at each ratio on the result's batch: perplexity, time, FLOPs, degradation per time saved."""
    ad, ids, mask = lm.adapter, r.batch.ids, r.batch.mask
    rows: list[dict[str, Any]] = []
    dense_ppl = perplexity(r.nll_dense, r.nll_mask)
    for k, ratio in enumerate(ratios):
        cfgs = [prune_config(r.settings, method=m, ratio=ratio) for m in METHODS if m != "dense"]
        progress(k / len(ratios), f"ratio {ratio:.2f}: timing {len(cfgs) + 1} methods")
        timing = measure(lm, cfgs, ids, calib, repeats=repeats, hf=False)
        dense_t = next(x for x in timing["runs"] if x["method"] == "dense")["seconds"]
        for c, t in zip(cfgs, [x for x in timing["runs"] if x["method"] != "dense"]):
            res = walk(ad, Pruner(ad, c, calib), ids, mask, level="none")
            nll, m = token_nll(ad, res.hidden, ids, res.valid)
            ppl = perplexity(nll, m)
            rows.append({"method": c.method, "ratio": ratio, "ppl": ppl, "ppl_increase": ppl - dense_ppl,
                         "seconds": t["seconds"], "time_vs_dense": t["time_vs_dense"],
                         **{f: t[f] for f in FLOPS_FIELDS},
                         "prr": prr(ppl, dense_ppl, t["seconds"], dense_t)})
        if k == 0 or not any(x["method"] == "dense" for x in rows):
            d = next(x for x in timing["runs"] if x["method"] == "dense")
            rows.append({"method": "dense", "ratio": 0.0, "ppl": dense_ppl, "ppl_increase": 0.0, "seconds": dense_t,
                         "time_vs_dense": 1.0, **{f: d[f] for f in FLOPS_FIELDS}, "prr": None})
    progress(1.0, "done")
    return rows


def stability_runs(lm: LoadedModel, calib: Optional[CalibStats], r: Result, extra_batches: int,
                   progress: Progress) -> dict[str, Any]:
    """The current batch, then corpus batches of the same shape, through ONE pruner (PP's history evolves)."""
    ad = lm.adapter
    pruner = Pruner(ad, r.cfg, calib)
    B, L = r.batch.ids.shape
    corpus = tokenize_text(lm.tokenizer, corpus_text(r.settings.corpus, "eval"))
    recs = [walk(ad, pruner, r.batch.ids, r.batch.mask, level="summary").record]
    for k in range(extra_batches):
        progress((k + 1) / (extra_batches + 1), f"batch {k + 2} of {extra_batches + 1}")
        ids = sample_windows(corpus, B, L, r.settings.seed + 1 + k)
        recs.append(walk(ad, pruner, ids, level="summary").record)
    return {"attn": stability(recs, "attn"), "mlp": stability(recs, "mlp"), "batches": len(recs)}


def generation(lm: LoadedModel, calib: Optional[CalibStats], cfg: PruneConfig, prompt: str,
               max_new_tokens: int, max_prompt_tokens: Optional[int] = None) -> dict[str, Any]:
    """Greedy continuations by dense and by the pruned model (decided on the prompt, reused while decoding)."""
    tok = lm.tokenizer
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DataError("the prompt is empty: type a few words to continue")
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise DataError(f"the prompt has {len(ids)} tokens, over the limit of {max_prompt_tokens}: shorten it")
    out: dict[str, Any] = {"prompt": prompt}
    for name, c in (("dense", PruneConfig(method="dense")), ("pruned", cfg)):
        g = generate(lm.adapter, Pruner(lm.adapter, c, calib), [ids], max_new_tokens,
                     pad_id=tok.pad_token_id or 0, eos_id=tok.eos_token_id)
        out[name] = {"text": tok.decode(g.tokens[0], skip_special_tokens=True), "tokens": len(g.tokens[0]),
                     "prefill_s": g.prefill_s, "decode_s": g.decode_s}
    return out

