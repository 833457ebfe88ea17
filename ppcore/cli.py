"""Command line: `python -m ppcore eval ...` and `python -m ppcore info ...`.

Bad arguments and user errors exit with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .config import CALIB_BATCH_SIZE, FLAP_BIAS_MODES, METHODS, PruneConfig, check_calib_batch_size, parse_layer_list
from .errors import PPCoreError
from .record import LEVELS, RunRecord

if TYPE_CHECKING:
    from .loading import Placement


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_calib_batch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-batch-size", type=int, default=CALIB_BATCH_SIZE,
                   help=f"windows per batch of the calibration pass (default {CALIB_BATCH_SIZE}, the official "
                        "protocol's); FLAP's official bias compensation divides by it")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a hub id, a checkpoint folder or a .gguf file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--cache-dir", default=None, help="where converted models and calibration live "
                   "(default: $PPCORE_CACHE or ~/.cache/ppcore)")
    p.add_argument("--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
                   help="spread a model too big for one device over the GPUs, the CPU and disk with accelerate "
                        "(--device is then ignored)")
    p.add_argument("--max-memory", default=None, help="with --device-map: caps per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    p.add_argument("--offload-folder", default=None, help="with --device-map: where disk-offloaded weights go "
                   "(default: under the cache dir)")


def _placement(a: argparse.Namespace) -> Optional[Placement]:
    """The accelerate placement the model flags ask for, or None for one device."""
    from .loading import Placement

    if a.device_map is None:
        if a.max_memory or a.offload_folder:
            raise PPCoreError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
        return None
    return Placement(a.device_map, Placement.parse_max_memory(a.max_memory) if a.max_memory else None,
                     a.offload_folder)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ppcore", description="Probe Pruning engine")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("eval", help="perplexity of one method on seeded corpus windows")
    _add_model_args(e)
    e.add_argument("--method", default="pp", choices=METHODS)
    e.add_argument("--ratio", type=float, default=0.4)
    e.add_argument("--dataset", default="wiki-vital", help="wiki-vital, wikitext2 or a path to a .txt file")
    e.add_argument("--calib-dataset", default="wiki-vital")
    e.add_argument("--seq-len", type=int, default=512)
    e.add_argument("--batch-size", type=int, default=20)
    e.add_argument("--batches", type=int, default=10)
    e.add_argument("--calib-seqs", type=int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--windows", default=None, help=".npy token windows to score instead of sampling")
    e.add_argument("--calib-windows", default=None, help=".npy calibration windows")
    _add_calib_batch_arg(e)
    e.add_argument("--token-frac", type=float, default=0.5)
    e.add_argument("--sample-frac", type=float, default=0.05)
    e.add_argument("--skip-layers", default="0-2",
                   help="layers left unpruned: indices and ranges, e.g. '0-2' or '0,1,2' or '0-2,5'; '' skips none")
    e.add_argument("--ema", type=float, default=0.99)
    e.add_argument("--mlp-multiple", type=int, default=64)
    e.add_argument("--no-attn", action="store_true", help="do not prune attention heads")
    e.add_argument("--no-mlp", action="store_true", help="do not prune MLP channels")
    e.add_argument("--no-history", action="store_true", help="PP without calibration history")
    e.add_argument("--flap-bias", default="official", choices=FLAP_BIAS_MODES)
    e.add_argument("--json", default=None, help="write the result object here")
    e.add_argument("--record", default=None, help="write the run records (warm-up and scored batches) here")
    e.add_argument("--record-level", default="full", choices=[lv for lv in LEVELS if lv != "none"])
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="methods x ratios x seeds, interleaved; JSON, Markdown and HTML chart")
    _add_model_args(b)
    b.add_argument("--methods", default="pp,wanda-sp,flap", help="comma-separated; dense is always added")
    b.add_argument("--ratios", default="0.4")
    b.add_argument("--seeds", default="0,1,2")
    b.add_argument("--seq-len", type=int, default=512)
    b.add_argument("--batch-size", type=int, default=20)
    b.add_argument("--batches", type=int, default=10)
    b.add_argument("--calib-seqs", type=int, default=100)
    _add_calib_batch_arg(b)
    b.add_argument("--repeats", type=int, default=1, help="timed runs per batch (median kept)")
    b.add_argument("--flap-bias", default="official", choices=FLAP_BIAS_MODES)
    b.add_argument("--official", default="auto", help="folder of the official run's windows and results "
                   "('auto': ../shared/reference/official_cpu_run when present; 'none' to skip)")
    b.add_argument("--out-dir", default="bench/results")
    b.add_argument("--quiet", action="store_true")

    g = sub.add_parser("generate", help="greedy continuation, pruning decided on the prompt; dense beside it")
    _add_model_args(g)
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    g.add_argument("--method", default="pp", choices=METHODS)
    g.add_argument("--ratio", type=float, default=0.4)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--calib-seqs", type=int, default=100)
    g.add_argument("--calib-seq-len", type=int, default=512)
    _add_calib_batch_arg(g)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", default=None)
    g.add_argument("--quiet", action="store_true")

    sp = sub.add_parser("speed", help="latency of each method on one batch: end to end, per block, vs FLOPs")
    _add_model_args(sp)
    sp.add_argument("--methods", default="pp,wanda-sp,flap", help="comma-separated; dense is always added")
    sp.add_argument("--ratio", type=float, default=0.4)
    sp.add_argument("--batch-size", type=int, default=20)
    sp.add_argument("--seq-len", type=int, default=512)
    sp.add_argument("--repeats", type=int, default=5)
    sp.add_argument("--calib-seqs", type=int, default=20)
    _add_calib_batch_arg(sp)
    sp.add_argument("--no-hf", action="store_true", help="skip timing HF's own forward")
    sp.add_argument("--generate", type=int, default=0, metavar="N",
                    help="also time generation of N new tokens from 64-token prompts (prefill and decode tok/s)")
    sp.add_argument("--json", default=None)
    sp.add_argument("--quiet", action="store_true")

    i = sub.add_parser("info", help="load a model and print its configuration")
    _add_model_args(i)
    return p


def _cmd_eval(a: argparse.Namespace) -> int:
    from .experiment import prepare

    cfg = PruneConfig(
        method=a.method, ratio=a.ratio, token_frac=a.token_frac, sample_frac=a.sample_frac,
        skip_layers=parse_layer_list(a.skip_layers), prune_attn=not a.no_attn, prune_mlp=not a.no_mlp, ema=a.ema,
        mlp_multiple=a.mlp_multiple, use_history=not a.no_history, flap_bias=a.flap_bias,
    )
    calib_bs = check_calib_batch_size(a.calib_batch_size)
    for path in (a.json, a.record):
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            raise PPCoreError(f"cannot write {path}: its folder does not exist")
    setup = prepare(
        model=a.model, device=a.device, dtype=a.dtype, dataset=a.dataset, seq_len=a.seq_len,
        batch_size=a.batch_size, batches=a.batches, calib_seqs=a.calib_seqs, calib_batch_size=calib_bs, seed=a.seed,
        windows_file=a.windows, calib_windows_file=a.calib_windows, calib_dataset=a.calib_dataset,
        cache_dir=a.cache_dir, progress=not a.quiet, placement=_placement(a),
    )
    res = setup.run(cfg, level=a.record_level if a.record else "none")
    print(res.line())
    if a.json:
        Path(a.json).write_text(json.dumps(res.summary(), indent=1))
    if a.record:
        RunRecord(res.protocol, res.records).save(a.record)
    return 0


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PPCoreError(f"--{name} expects comma-separated numbers, got {text!r}") from None


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import run_bench
    from .bench_report import chart_html, markdown, official_markdown

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PPCoreError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    ratios = _floats(a.ratios, "ratios")
    seeds = [int(x) for x in _floats(a.seeds, "seeds")]
    for r in ratios:
        PruneConfig(method="pp", ratio=r)  # validates the ratio before anything loads
    calib_bs = check_calib_batch_size(a.calib_batch_size)
    official = a.official
    if official == "auto":
        guess = Path("../shared/reference/official_cpu_run")
        official = str(guess) if (guess / "results.json").is_file() else None
    elif official == "none":
        official = None
    elif not (Path(official) / "results.json").is_file():
        raise PPCoreError(f"--official {official}: no results.json there")
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = run_bench(methods, ratios, seeds, model=a.model, device=a.device, dtype=a.dtype, seq_len=a.seq_len,
                    batch_size=a.batch_size, batches=a.batches, calib_seqs=a.calib_seqs, calib_batch_size=calib_bs,
                    repeats=a.repeats, flap_bias=a.flap_bias, official_dir=official, cache_dir=a.cache_dir,
                    progress=not a.quiet, placement=_placement(a))
    (out / "bench.json").write_text(json.dumps(res, indent=1))
    text = markdown(res["seeded"])
    if res["official"]:
        text += "\n\nOfficial windows (`shared/reference/official_cpu_run`):\n\n" + official_markdown(res["official"])
    (out / "bench.md").write_text(text + "\n")
    (out / "bench.html").write_text(chart_html(res["seeded"], "Perplexity vs runtime"))
    print(text)
    return 0


def _cmd_generate(a: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .generate import generate
    from .loading import load_model
    from .methods import Pruner
    from .experiment import calibration_windows

    cfg = PruneConfig(method=a.method, ratio=a.ratio)
    calib_bs = check_calib_batch_size(a.calib_batch_size)
    if a.max_new_tokens < 1:
        raise PPCoreError(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}")
    lm = load_model(a.model, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir, placement=_placement(a))
    tok = lm.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in a.prompt]
    if any(not p for p in prompts):
        raise PPCoreError("every --prompt needs some text")
    calib = calib_info = None
    if cfg.needs_calibration:
        windows, calib_info = calibration_windows(lm, "wiki-vital", a.calib_seqs, a.calib_seq_len, a.seed,
                                                  a.cache_dir)
        calib = calibrate(lm, windows, calib_bs, cache_dir=a.cache_dir, progress=not a.quiet)
        calib_info.update(windows=int(windows.shape[0]), seq_len=int(windows.shape[1]), batch_size=calib_bs,
                          seed=a.seed)
    runs = [PruneConfig(method="dense")] + ([cfg] if cfg.method != "dense" else [])
    report = []
    for c in runs:
        gen = generate(lm.adapter, Pruner(lm.adapter, c, calib), prompts,
                       a.max_new_tokens, pad_id=tok.pad_token_id or 0, eos_id=tok.eos_token_id)
        texts = [tok.decode(t, skip_special_tokens=True) for t in gen.tokens]
        label = c.method if c.method == "dense" else f"{c.method} {c.ratio:g}"
        print(f"== {label}: prefill {gen.prefill_tokens_per_s:.1f} tok/s, decode {gen.decode_tokens_per_s:.1f} tok/s")
        for prompt, text in zip(a.prompt, texts):
            print(f"{prompt}|{text}")
        report.append({"method": c.method, "ratio": c.ratio, "texts": texts, "tokens": gen.tokens,
                       "prefill_tokens_per_s": gen.prefill_tokens_per_s,
                       "decode_tokens_per_s": gen.decode_tokens_per_s, "prefill_s": gen.prefill_s,
                       "decode_s": gen.decode_s})
    if a.json:
        Path(a.json).write_text(json.dumps({"prompts": a.prompt, "calibration": calib_info, "runs": report},
                                           indent=1))
    return 0


def _cmd_speed(a: argparse.Namespace) -> int:
    import torch

    from .calibrate import calibrate
    from .data import corpus_text, sample_windows, tokenize_text
    from .loading import load_model
    from .experiment import calibration_windows
    from .speed import generation_markdown, measure, measure_generation, summary_markdown

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    cfgs = [PruneConfig(method=m, ratio=0.0 if m == "dense" else a.ratio) for m in methods]
    if a.repeats < 1 or a.batch_size < 1 or a.seq_len < 2 or a.calib_seqs < 1:
        raise PPCoreError("--repeats, --batch-size and --calib-seqs must be >= 1 and --seq-len >= 2")
    calib_bs = check_calib_batch_size(a.calib_batch_size)
    lm = load_model(a.model, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir, placement=_placement(a))
    if lm.tokenizer is not None:
        ids = tokenize_text(lm.tokenizer, corpus_text("wiki-vital", "eval", a.cache_dir), a.cache_dir)
        batch = sample_windows(ids, a.batch_size, a.seq_len, 0)
        cwin, calib_info = calibration_windows(lm, "wiki-vital", a.calib_seqs, a.seq_len, 0, a.cache_dir)
    else:  # random-weight models: random tokens measure speed just as well
        g = torch.Generator().manual_seed(0)
        batch = torch.randint(0, lm.adapter.dims.vocab, (a.batch_size, a.seq_len), generator=g)
        cwin = torch.randint(0, lm.adapter.dims.vocab, (a.calib_seqs, a.seq_len), generator=g)
        calib_info = {"dataset": "random tokens (the model has no tokenizer)"}
    calib = calibrate(lm, cwin, calib_bs, cache_dir=a.cache_dir, progress=not a.quiet)
    calib_info.update(windows=int(cwin.shape[0]), seq_len=int(cwin.shape[1]), batch_size=calib_bs, seed=0)
    res = measure(lm, cfgs, batch, calib, repeats=a.repeats, hf=not a.no_hf)
    res["model"] = lm.name
    res["calibration"] = calib_info
    print(summary_markdown(res))
    if a.generate > 0:
        res["generation"] = measure_generation(lm, cfgs, batch[:, :min(64, a.seq_len)], calib, a.generate,
                                               repeats=min(a.repeats, 3))
        print("\n" + generation_markdown(res["generation"]))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .loading import load_model

    lm = load_model(a.model, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir, placement=_placement(a))
    print(json.dumps(lm.info(), indent=1))
    return 0


def _quiet_libraries() -> None:
    """The CLI owns its process: keep transformers' own bars and warnings off stderr."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ppcore: %(message)s"))
    log = logging.getLogger("ppcore")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        commands = {"eval": _cmd_eval, "bench": _cmd_bench, "generate": _cmd_generate, "speed": _cmd_speed,
                    "info": _cmd_info}
        return commands[args.command](args)
    except PPCoreError as e:
        print(f"python -m ppcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
