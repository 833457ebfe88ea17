"""Latency of every method on one batch: end to end and per block, against FLOPs and HF's forward.

Discipline (docs/algorithm.md §9.4): every method is warmed up first; methods are interleaved repeat
by repeat; medians are kept; every timed region is read on `ppcore.clock`, which synchronises the
device. End-to-end runs take no per-block clock (no extra syncs); separate breakdown runs take one per
block (probe, decision, full inference).
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .clock import now, timed
from .config import CalibConfig, PruneConfig
from .flops import flops_ratios
from .head_chunks import run_head
from .ratios import achieved_ratios
from .loading import LoadedModel
from .fitting import build_pruner, silent
from .methods import Pruner
from .record import BLOCK_NAMES
from .stats import CalibStats
from .walk import walk


def speed_windows(lm: LoadedModel, batch_size: int, seq_len: int, calib: CalibConfig,
                  cache_dir: Optional[str] = None) -> tuple[Tensor, dict[str, Any], Tensor, dict[str, Any]]:
    """The timed batch (batch_size, seq_len) from the wiki-vital eval split and `calib.windows` calibration
    windows of `calib.seq_len` tokens from `calib.dataset`, both drawn with seed 0, each with its source
    for the protocol. A model without a tokenizer (random weights) gets random tokens: they time the same.
    """
    if lm.tokenizer is not None:
        from .data import corpus_text, sample_windows, tokenize_text
        from .experiment import calibration_windows

        ids = tokenize_text(lm.tokenizer, corpus_text("wiki-vital", "eval", cache_dir), cache_dir)
        batch = sample_windows(ids, batch_size, seq_len, 0, lm.bos_id)
        cwin, calib_source = calibration_windows(lm, calib.dataset, calib.windows, calib.seq_len, 0, cache_dir)
        return batch, {"dataset": "wiki-vital", "split": "eval", "corpus_tokens": int(ids.numel())}, cwin, calib_source
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, lm.adapter.dims.vocab, (batch_size, seq_len), generator=g)
    cwin = torch.randint(0, lm.adapter.dims.vocab, (calib.windows, calib.seq_len), generator=g)
    random = {"dataset": "random tokens (the model has no tokenizer)"}
    return batch, random, cwin, dict(random)


def measure(lm: LoadedModel, cfgs: list[PruneConfig], ids: Tensor, calib: Optional[CalibStats],
            repeats: int = 5, hf: bool = True,
            between: Optional[Callable[[float, str], None]] = None) -> dict[str, Any]:
    """Medians over `repeats` interleaved runs of every config (and HF's forward: its decoder and the blockwise
    LM head) on `ids` (B, L). `between(fraction done, text)` runs after each run, outside every timed region (a
    progress bar; one that raises stops the measurement there).

    Returns {"batch", "repeats", "device", "dtype", "threads", "hf_forward_s", "model_extra_bytes", "runs"}: the
    bytes of copies kept per loaded model after the runs (`LoadedModel.extra_weight_bytes`), and one run per config
    (dense first, added when missing) with seconds end to end, time_vs_dense, the four FLOPs ratios,
    embed_s, head_s, held_bytes and per block (layer, attn|mlp) probe_s, decide_s and full_s. Times in seconds.
    """
    ad, dev = lm.adapter, lm.device
    if not any(c.method == "dense" for c in cfgs):
        cfgs = [PruneConfig(method="dense")] + cfgs
    # A fit a config needs (pp-plus's allocation) is made here, before any timed region, and reported as progress.
    pruners = [build_pruner(ad, c, calib, progress=between or silent) for c in cfgs]

    def run(p: Pruner, timing: bool, level: str = "none"):
        with torch.inference_mode():
            res = walk(ad, p, ids, update_history=False, level=level, timing=timing)
            t0 = now(dev) if timing else 0.0
            run_head(ad, res.hidden)  # block by block: a 262k vocabulary's logits do not fit at once
            if res.record is not None:
                res.record.times["head_s"] = now(dev) - t0  # the unpruned LM head
        return res

    # HF's reference: its decoder (HF's own modules and kernels), then the same blockwise LM head as the walk's (a
    # 262k vocabulary's logits for a whole batch would not fit). Before 0.4.0 it was HF's whole forward.
    def hf_forward():
        with torch.inference_mode():
            out = lm.model.base_model(input_ids=ids.to(dev), use_cache=False)
            run_head(ad, out.last_hidden_state)

    step, steps = 0, len(pruners) * (1 + 2 * repeats)

    def done(text: str) -> None:
        nonlocal step
        step += 1
        if between is not None:
            between(step / steps, text)

    for c, p in zip(cfgs, pruners):  # warm-up: allocator, kernels, static slices
        run(p, False)
        done(f"warming up {c.method}")
    if hf:
        hf_forward()
    e2e: list[list[float]] = [[] for _ in cfgs]
    hf_t: list[float] = []
    records: list[list] = [[] for _ in cfgs]
    for k in range(repeats):
        if hf:
            hf_t.append(timed(hf_forward, dev)[1])
        for i, p in enumerate(pruners):
            e2e[i].append(timed(lambda: run(p, False), dev)[1])
            done(f"repeat {k + 1} of {repeats}: timed {cfgs[i].method}")
        for i, p in enumerate(pruners):
            records[i].append(run(p, True, "summary").record)
            done(f"repeat {k + 1} of {repeats}: per-block times of {cfgs[i].method}")
    out: dict[str, Any] = {"batch": list(ids.shape), "repeats": repeats, "device": str(dev),
                           "dtype": str(lm.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
                           "hf_forward_s": statistics.median(hf_t) if hf else None, "runs": []}
    held = [p.held_bytes() for p in pruners]  # after the runs: static slices and per-batch buffers exist
    out["model_extra_bytes"] = lm.extra_weight_bytes()  # and the per-model copies per-batch slicing made
    dense_blocks = _block_medians(records[0])
    dense_s = statistics.median(e2e[0])
    for cfg, times, recs, held_bytes in zip(cfgs, e2e, records, held):
        blocks = _block_medians(recs)
        fl = recs[0].flops
        layers = []
        for (layer, block), t in blocks.items():
            b = getattr(recs[0].layers[layer], block)
            layers.append({
                "layer": layer, "block": block, "pruned": b.pruned, "probe_s": t["probe_s"], "decide_s": t["decide_s"],
                "full_s": t["full_s"], "dense_full_s": dense_blocks[(layer, block)]["full_s"],
                "flops_ratio": flops_ratios(b.flops)["flops_ratio"],  # one block: decoder FLOPs by nature
            })
        out["runs"].append({
            "method": cfg.method, "ratio": cfg.ratio, "seconds": statistics.median(times),
            "time_vs_dense": statistics.median(times) / dense_s,
            **flops_ratios(fl), "flops": dict(fl), **achieved_ratios(recs[0].units),
            "embed_s": statistics.median(r.times["embed_s"] for r in recs),
            "head_s": statistics.median(r.times["head_s"] for r in recs), "blocks": layers,
            "probe_decide_s": statistics.median(_probe_decide_s(r) for r in recs), "held_bytes": held_bytes,
        })
    return out


def measure_generation(lm: LoadedModel, cfgs: list[PruneConfig], prompts: Tensor, calib: Optional[CalibStats],
                       new_tokens: int = 32, repeats: int = 3) -> list[dict[str, Any]]:
    """Prefill and decode tokens/s per method (medians over interleaved repeats, one warm-up each).

    `prompts` (B, P) token ids. Pruning is decided on the prompt and the kept weights are reused for
    every decoded token. One row per config (dense first, added when missing).
    """
    from .generate import generate

    ad = lm.adapter
    if not any(c.method == "dense" for c in cfgs):
        cfgs = [PruneConfig(method="dense")] + cfgs
    rows = prompts.tolist()
    pruners = [build_pruner(ad, c, calib) for c in cfgs]
    for p in pruners:
        generate(ad, p, rows, 2, level="none")
    gens: list[list] = [[] for _ in cfgs]
    for _ in range(repeats):
        for i, p in enumerate(pruners):
            gens[i].append(generate(ad, p, rows, new_tokens, level="none"))
    return [{
        "method": c.method, "ratio": c.ratio, "batch": len(rows), "prompt_tokens": prompts.shape[1],
        "new_tokens": new_tokens,
        "prefill_tokens_per_s": statistics.median(g.prefill_tokens_per_s for g in gs),
        "decode_tokens_per_s": statistics.median(g.decode_tokens_per_s for g in gs),
    } for c, gs in zip(cfgs, gens)]


def generation_markdown(rows: list[dict[str, Any]]) -> str:
    """The generation table: prefill and decode tokens/s per method, and each against dense."""
    dense = rows[0]
    lines = [f"generation: batch {dense['batch']}, prompt {dense['prompt_tokens']} tokens, "
             f"{dense['new_tokens']} new tokens (decided on the prompt, KV cache)", "",
             "| method | ratio | prefill tok/s | vs dense | decode tok/s | vs dense |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:.0%} | {r['prefill_tokens_per_s']:.1f} | "
                     f"{r['prefill_tokens_per_s'] / dense['prefill_tokens_per_s']:.2f}x | "
                     f"{r['decode_tokens_per_s']:.1f} | "
                     f"{r['decode_tokens_per_s'] / dense['decode_tokens_per_s']:.2f}x |")
    return "\n".join(lines)


def _probe_decide_s(rec) -> float:
    """Seconds one timed walk spent probing and deciding, over every block."""
    return sum(getattr(layer, b).times.get(k, 0.0) for layer in rec.layers for b in BLOCK_NAMES
               for k in ("probe_s", "decide_s"))


def _block_medians(recs: list) -> dict[tuple[int, str], dict[str, float]]:
    out: dict[tuple[int, str], dict[str, float]] = {}
    for layer in range(len(recs[0].layers)):
        for block in BLOCK_NAMES:
            vals = [getattr(r.layers[layer], block).times for r in recs]
            out[(layer, block)] = {k: statistics.median(v.get(k, 0.0) for v in vals)
                                   for k in ("probe_s", "decide_s", "full_s")}
    return out


def summary_markdown(res: dict[str, Any]) -> str:
    """One row per method: end to end vs dense and FLOPs; pruned blocks' full inference vs FLOPs.

    Time is compared with the whole-model FLOPs ratio (wall time includes the LM head); the decoder-only
    ratios (the paper's definition) are shown beside it.
    """
    lines = [f"batch {res['batch'][0]} x {res['batch'][1]} tokens, {res['device']}, {res['dtype']}, "
             f"{res['threads']} threads, median of {res['repeats']}"]
    if res["hf_forward_s"]:
        dense = next(r for r in res["runs"] if r["method"] == "dense")
        lines.append(f"HF forward (its decoder + the blockwise LM head) {res['hf_forward_s']:.3f} s; dense walk "
                     f"{dense['seconds']:.3f} s "
                     f"({dense['seconds'] / res['hf_forward_s']:.3f} x HF)")
    lines += ["", "| method | ratio | removed: heads / channels | seconds | time / dense | FLOPs / dense (model) | "
              "FLOPs / dense (decoder) | time / FLOPs ratio (model) | probe FLOPs (model) | probe FLOPs (decoder) | "
              "probe + decide share | pruned blocks: full time / dense full time ÷ FLOPs ratio (attn, mlp) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        pruned = [b for b in r["blocks"] if b["pruned"]]
        over = r["seconds"] and sum(b["probe_s"] + b["decide_s"] for b in r["blocks"]) / r["seconds"]
        eff = {}
        for blk in BLOCK_NAMES:
            bs = [b for b in pruned if b["block"] == blk]
            if bs:
                t = sum(b["full_s"] for b in bs) / sum(b["dense_full_s"] for b in bs)
                f = statistics.fmean(b["flops_ratio"] for b in bs)
                eff[blk] = f"{t / f:.2f}"
        dec = r.get("decoder_flops_ratio")
        dec_probe = r.get("decoder_probe_flops_ratio")
        removed = " / ".join("-" if r.get(k) is None else f"{r[k]:.1%}" for k in ("heads_removed", "channels_removed"))
        lines.append(f"| {r['method']} | {r['ratio']:.0%} | {removed} | {r['seconds']:.3f} | "
                     f"{r['time_vs_dense']:.3f} | "
                     f"{r['flops_ratio']:.3f} | {'-' if dec is None else f'{dec:.3f}'} | "
                     f"{r['time_vs_dense'] / r['flops_ratio']:.3f} | {r['probe_flops_ratio']:.2%} | "
                     f"{'-' if dec_probe is None else f'{dec_probe:.2%}'} | {over:.2%} | "
                     f"{eff.get('attn', '-')}, {eff.get('mlp', '-')} |")
    held = ", ".join(f"{r['method']} {r['held_bytes'] / 2**20:.1f} MiB" for r in res["runs"] if "held_bytes" in r)
    if held:
        model = res.get("model_extra_bytes")
        shared = "" if model is None else (f"; per loaded model, shared by every run (transposed o_proj/down_proj "
                                           f"for per-batch slicing): {model / 2**20:.1f} MiB")
        lines += ["", f"weight copies held per run: {held}{shared}"]
    return "\n".join(lines)


def per_layer_markdown(res: dict[str, Any], method: str) -> str:
    """One row per decoder layer for `method`'s run in a `measure` result: for attention and the MLP, the
    block's FLOPs ratio, its full inference's time over dense's, and that time ratio ÷ the FLOPs ratio (1:
    the block's time falls exactly as its FLOPs; skipped layers show 1.000 FLOPs). Raises StopIteration
    when the result has no run of `method`."""
    run = next(r for r in res["runs"] if r["method"] == method)
    rows = {(b["layer"], b["block"]): b for b in run["blocks"]}
    lines = [f"{method} at {run['ratio']:.0%}, per layer (full inference only: probe and decision excluded)", "",
             "| layer | attn FLOPs ratio | attn time ratio | attn ÷ FLOPs | mlp FLOPs ratio | mlp time ratio | "
             "mlp ÷ FLOPs |", "|---|---|---|---|---|---|---|"]
    for layer in sorted({k[0] for k in rows}):
        cells = []
        for blk in BLOCK_NAMES:
            b = rows[(layer, blk)]
            t = b["full_s"] / b["dense_full_s"] if b["dense_full_s"] else float("nan")
            per_flop = f"{t / b['flops_ratio']:.2f}" if b["flops_ratio"] else "-"  # a block pruned away entirely
            cells += [f"{b['flops_ratio']:.3f}", f"{t:.3f}", per_flop]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
