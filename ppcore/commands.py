"""The commands of `python -m ppcore` (`COMMANDS`): each reads its parsed options (`ppcore.cli`), builds the
configs, runs the engine and prints and writes its results. User errors raise PPCoreError (exit 2).

Every result a command writes carries a `ppcore.protocol.Protocol` (front_end = the command name).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config import METHODS, PLUS_FIELDS, PLUS_METHOD, CalibConfig, PruneConfig, settings_of
from .embedded import embedded_model
from .errors import PPCoreError
from .flags import given, read_settings
from .jsonfile import write_json
from .record import RunRecord

if TYPE_CHECKING:
    from .loading import LoadedModel, Placement

OFFICIAL_GUESS = Path("../shared/reference/official_cpu_run")  # where the official run sits beside a checkout


class CalibWindowsFile(str):
    """A .npy path given to --calib-windows, which took a file before it took a count."""


def count_or_file(raw: str) -> Any:
    """--calib-windows's text: a count (CalibConfig's parse), or a .npy path (`CalibWindowsFile`)."""
    if raw.strip().lower().endswith(".npy"):
        return CalibWindowsFile(raw)
    return next(s for s in settings_of(CalibConfig) if s.name == "windows").parse(raw)


def _placement(a: argparse.Namespace) -> Optional[Placement]:
    """The accelerate placement the model flags ask for, or None for one device."""
    from .loading import Placement

    if a.device_map is None:
        if a.max_memory or a.offload_folder:
            raise PPCoreError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
        return None
    return Placement(a.device_map, Placement.parse_max_memory(a.max_memory) if a.max_memory else None,
                     a.offload_folder)


def _load(a: argparse.Namespace) -> LoadedModel:
    from .loading import load_model, prepare_model

    if not getattr(a, "quiet", False):  # a first load's joining and conversion, said on stderr as it goes
        prepare_model(a.model, a.cache_dir, progress=lambda text: print(text, file=sys.stderr, flush=True))
    return load_model(a.model, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir, placement=_placement(a))


def _prune_config(a: argparse.Namespace, **fixed: Any) -> PruneConfig:
    """The PruneConfig the options say, with `fixed` fields (e.g. method) set by the command."""
    return PruneConfig(**read_settings(a, PruneConfig, skip=tuple(fixed)), **fixed)


def _calib_config(a: argparse.Namespace) -> CalibConfig:
    return CalibConfig(**read_settings(a, CalibConfig))


def _follows(a: argparse.Namespace) -> bool:
    """True when --calib-seq-len was not given: calibration windows as long as the scored ones."""
    return "calib_seq_len" not in given(a)


def _writable(*paths: Optional[str]) -> None:
    for path in paths:
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            raise PPCoreError(f"cannot write {path}: its folder does not exist")


def _cmd_eval(a: argparse.Namespace) -> int:
    from . import experiment

    calib_file = a.calib_windows_file
    if isinstance(a.calib_windows, CalibWindowsFile):  # the old spelling of --calib-windows-file
        if calib_file:
            raise PPCoreError("give the calibration windows file once (--calib-windows-file)")
        calib_file, a.calib_windows = str(a.calib_windows), CalibConfig().windows
    cfg = _prune_config(a)
    calib = _calib_config(a)
    _writable(a.json, a.record)
    setup = experiment.prepare(
        model=a.model, device=a.device, dtype=a.dtype, dataset=a.dataset, seq_len=a.seq_len,
        batch_size=a.batch_size, batches=a.batches, seed=a.seed, windows_file=a.windows,
        calib_windows_file=calib_file, cache_dir=a.cache_dir, progress=not a.quiet, placement=_placement(a),
        calib=calib, calib_len_follows=_follows(a), front_end="eval",
    )
    res = setup.run(cfg, level=a.record_level if a.record else "none")
    print(res.line())
    if a.json:
        Path(a.json).write_text(json.dumps(res.summary(), indent=1))
    if a.record:
        RunRecord(res.protocol, res.records).save(a.record)
    return 0


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PPCoreError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def _numbers(text: str, name: str, kind: type) -> list[Any]:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PPCoreError(f"--{name} expects comma-separated {kind.__name__}s, got {text!r}") from None


def _official_dir(text: str, model: str) -> Optional[str]:
    """The official run's folder: found beside the checkout for 'auto' (only for the default model, whose token
    ids its windows are), none for 'none', else the given folder. Raises PPCoreError for a folder without
    results.json, or an explicit folder with another model (its windows would be another vocabulary's ids)."""
    default = getattr(embedded_model(str(model).strip()), "name", None) == "default"
    if text == "auto":
        return str(OFFICIAL_GUESS) if default and (OFFICIAL_GUESS / "results.json").is_file() else None
    if text == "none":
        return None
    if not default:
        raise PPCoreError(f"--official {text}: the official run's windows are token ids of the default model "
                          f"(SmolLM2-135M-Instruct); they mean nothing to --model {model}. Drop --official, or use "
                          "--official none")
    if not (Path(text) / "results.json").is_file():
        raise PPCoreError(f"--official {text}: no results.json there")
    return text


def _cmd_bench(a: argparse.Namespace) -> int:
    from .bench import configs, run_bench
    from .bench_report import chart_html, markdown, official_markdown

    methods, ratios = _methods(a.methods), _numbers(a.ratios, "ratios", float)
    # PP+'s switches (--recover on, ...) set pp-plus's runs; every other method keeps its own defaults
    plus = PLUS_METHOD in methods and any(f in given(a) for f in PLUS_FIELDS)
    base = _prune_config(a, method=PLUS_METHOD if plus else "pp", ratio=PruneConfig().ratio)
    if not ratios and any(m != "dense" for m in methods):
        raise PPCoreError(f"--ratios {a.ratios!r} gives no ratio: give one or more, e.g. --ratios 0.2,0.4")
    cfgs = configs(methods, ratios, base)  # validates before loading
    seeds = [] if a.seeds.strip().lower() in ("none", "") else _numbers(a.seeds, "seeds", int)
    calib = _calib_config(a)
    official = _official_dir(a.official, a.model)
    if not seeds and not official:
        raise PPCoreError("nothing to run: --seeds none needs the official windows (--official DIR), which exist for "
                          "the default model only; give seeds (e.g. --seeds 0) for another model")
    if a.repeats < 1:
        raise PPCoreError(f"--repeats must be at least 1 (timed runs per batch), got {a.repeats}")
    official_out = a.official_out or (str(Path(a.out_dir) / "official.json") if not seeds else None)
    _writable(official_out)
    if seeds:  # the results folder, before hours of work rather than after
        try:
            Path(a.out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PPCoreError(f"--out-dir {a.out_dir}: cannot create it ({e.strerror or e})") from None
    if a.resume and not seeds:
        raise PPCoreError("--resume keeps seeds already run: give --seeds")
    res = run_bench(cfgs, seeds, calib=calib, repeats=a.repeats, official_dir=official, progress=not a.quiet,
                    json_path=str(Path(a.out_dir) / "bench.json") if seeds else None, resume=a.resume,
                    calib_len_follows=_follows(a), model=a.model, device=a.device, dtype=a.dtype,
                    seq_len=a.seq_len, batch_size=a.batch_size, batches=a.batches, cache_dir=a.cache_dir,
                    placement=_placement(a))
    parts = []
    if res["seeded"]:
        parts.append(markdown(res["seeded"]))
    if res["official"]:
        parts.append(f"Official windows (`{official}`):\n\n" + official_markdown(res["official"]))
    text = "\n\n".join(parts)
    if res["seeded"]:
        out = Path(a.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "bench.json", res)
        (out / "bench.md").write_text(text + "\n")
        (out / "bench.html").write_text(chart_html(res["seeded"], "Perplexity vs runtime"))
    if official_out and res["official"]:
        Path(official_out).write_text(json.dumps(res["official"], indent=1))
        Path(official_out).with_suffix(".md").write_text(official_markdown(res["official"]) + "\n")
    print(text)
    return 0


def _calibrate(a: argparse.Namespace, lm: LoadedModel, calib: CalibConfig, windows: Any, source: dict[str, Any],
               seed: int) -> tuple[Any, dict[str, Any]]:
    """Calibration statistics of `windows` in batches of `calib.batch_size`, and their protocol section."""
    from .calibrate import calibrate
    from .protocol import describe_calibration

    stats = calibrate(lm, windows, calib.batch_size, cache_dir=a.cache_dir, progress=not a.quiet)
    return stats, describe_calibration(source, windows, calib.batch_size, seed)


def _cmd_generate(a: argparse.Namespace) -> int:
    from .experiment import calibration_windows
    from .generate import generate
    from .fitting import build_pruner
    from .protocol import build_protocol

    cfg = _prune_config(a)
    calib = _calib_config(a)
    if a.max_new_tokens < 1:
        raise PPCoreError(f"--max-new-tokens must be at least 1, got {a.max_new_tokens}")
    _writable(a.json)
    lm = _load(a)
    tok = lm.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in a.prompt]
    if any(not p for p in prompts):
        raise PPCoreError("every --prompt needs some text")
    prompts = [lm.with_bos(p) for p in prompts]  # a family trained with <bos> on every sequence gets it
    stats = calib_info = None
    if cfg.needs_calibration:
        windows, source = calibration_windows(lm, calib.dataset, calib.windows, calib.seq_len, a.seed, a.cache_dir)
        stats, calib_info = _calibrate(a, lm, calib, windows, source, a.seed)
    runs = [PruneConfig(method="dense")] + ([cfg] if cfg.method != "dense" else [])
    report = []
    for c in runs:
        gen = generate(lm.adapter, build_pruner(lm.adapter, c, stats), prompts,
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
        protocol = build_protocol("generate", lm, {"prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts]},
                                  config=cfg.to_dict(), calibration=calib_info, seed=a.seed, scores_perplexity=False,
                                  settings={"max_new_tokens": a.max_new_tokens})
        Path(a.json).write_text(json.dumps({"prompts": a.prompt, "calibration": calib_info, "runs": report,
                                            "protocol": protocol.to_dict()}, indent=1))
    return 0


def _cmd_speed(a: argparse.Namespace) -> int:
    from .bench import configs
    from .protocol import build_protocol, describe_windows
    from .speed import (generation_markdown, measure, measure_generation, per_layer_markdown, speed_windows,
                        summary_markdown)

    cfgs = configs(_methods(a.methods), [a.ratio], _prune_config(a, method="pp"))
    if a.repeats < 1 or a.batch_size < 1 or a.seq_len < 2 or a.generate < 0:
        raise PPCoreError("--repeats and --batch-size must be >= 1, --seq-len >= 2 and --generate >= 0")
    calib = _calib_config(a)
    if _follows(a):
        calib = replace(calib, seq_len=a.seq_len)
    _writable(a.json)
    lm = _load(a)
    batch, source, cwin, calib_source = speed_windows(lm, a.batch_size, a.seq_len, calib, a.cache_dir)
    stats, calib_info = _calibrate(a, lm, calib, cwin, calib_source, 0)
    res = measure(lm, cfgs, batch, stats, repeats=a.repeats, hf=not a.no_hf)
    res["model"] = lm.name
    res["calibration"] = calib_info
    res["protocol"] = build_protocol(
        "speed", lm, describe_windows(source, batch, a.batch_size), calibration=calib_info, seed=0,
        scores_perplexity=False, settings={"repeats": a.repeats, "hf": not a.no_hf, "generate": a.generate},
        configs=[c.to_dict() for c in cfgs]).to_dict()
    print(summary_markdown(res))
    if a.per_layer:
        for c in cfgs:
            if c.method != "dense":
                print("\n" + per_layer_markdown(res, c.method))
    if a.generate > 0:
        res["generation"] = measure_generation(lm, cfgs, batch[:, :min(64, a.seq_len)], stats, a.generate,
                                               repeats=min(a.repeats, 3))
        print("\n" + generation_markdown(res["generation"]))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


def _cmd_zeroshot(a: argparse.Namespace) -> int:
    """Zero-shot accuracy through lm-eval (ppcore.lmeval.run): prints the table and the note on the paper."""
    from .lmeval.run import run_zeroshot

    cfg = _prune_config(a)
    calib = _calib_config(a)
    _writable(a.json)
    args: dict[str, Any] = {"model": a.model, "device": a.device, "dtype": a.dtype, "seed": a.seed,
                            "batch_size": a.batch_size, "order": a.order, "max_length": a.max_length}
    if a.cache_dir:
        args["cache_dir"] = a.cache_dir
    args.update({s.name: getattr(cfg, s.name) for s in settings_of(PruneConfig)})
    args["skip_layers"] = ",".join(str(i) for i in cfg.skip_layers)
    args.update({f"calib_{s.name}": getattr(calib, s.name) for s in settings_of(CalibConfig)})
    lm = _load(a) if a.device_map else None  # a spread model is loaded here; otherwise by the lm-eval model
    if a.methods or a.subset is not None:
        return _zeroshot_grid(a, cfg, args, lm)
    if a.resume or a.markdown or a.ratios:
        raise PPCoreError("--ratios, --resume and --markdown belong to a grid: give --methods (or --subset)")
    res = run_zeroshot(a.tasks.split(","), args, limit=a.limit, online=a.online, lm=lm)
    label = cfg.method if cfg.method == "dense" else f"{cfg.method} {cfg.ratio:g}"
    print(f"{label} on {res['protocol']['model']['name']}:\n\n{res['table']}\n\n{res['note']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


def _zeroshot_grid(a: argparse.Namespace, cfg: PruneConfig, args: dict[str, Any], lm: Any) -> int:
    """`zeroshot --methods ... [--subset N]`: every config on the same documents (ppcore.lmeval.grid), the report
    printed (and written to --markdown), the JSON written after every run."""
    from .lmeval.grid import grid_configs, run_grid
    from .lmeval.grid_report import grid_markdown

    if a.online:
        raise PPCoreError("a grid (--methods, --subset) runs on the offline tasks: drop --online")
    if a.resume and not a.json:
        raise PPCoreError("--resume reads the grid's JSON: give --json too")
    _writable(a.markdown)
    methods = _methods(a.methods) if a.methods else [cfg.method]
    ratios = _numbers(a.ratios, "ratios", float) if a.ratios else [cfg.ratio]
    cfgs = grid_configs(methods, ratios, cfg) if a.methods else [cfg]
    say = (lambda text: None) if a.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    res = run_grid(a.tasks.split(","), args, cfgs, subset=a.subset, subset_seed=a.subset_seed, limit=a.limit,
                   lm=lm, json_path=a.json, resume=a.resume, say=say)
    report = grid_markdown(res)
    print(report)
    if a.markdown:
        Path(a.markdown).write_text(report + "\n")
    return 0


def _cmd_ablate(a: argparse.Namespace) -> int:
    """One named ablation (ppcore.ablations) over seeds: prints the table, writes NAME.json, .md and .html."""
    from .ablate_report import chart_html, markdown
    from .ablate_run import run_ablation
    from .ablations import grid

    base = _prune_config(a, method="pp", ratio=PruneConfig().ratio)
    ratios = _numbers(a.ratios, "ratios", float)
    seeds = _numbers(a.seeds, "seeds", int)
    if not seeds:
        raise PPCoreError(f"--seeds {a.seeds!r} gives no seed: give one or more, e.g. --seeds 0,1,2")
    grid(a.ablation, ratios, base)  # ConfigError for the name or a variant, before anything loads
    out = Path(a.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PPCoreError(f"--out-dir {a.out_dir}: cannot create it ({e.strerror or e})") from None
    res = run_ablation(a.ablation, ratios, seeds, base=base, calib=_calib_config(a), progress=not a.quiet,
                       json_path=str(out / f"{a.ablation}.json"), resume=a.resume, reuse=not a.no_reuse,
                       calib_len_follows=_follows(a), model=a.model, device=a.device, dtype=a.dtype,
                       seq_len=a.seq_len, batch_size=a.batch_size, batches=a.batches, cache_dir=a.cache_dir,
                       placement=_placement(a))
    text = markdown(res)
    print(text)
    (out / f"{a.ablation}.md").write_text(text + "\n")
    (out / f"{a.ablation}.html").write_text(chart_html(res))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    print(json.dumps(_load(a).info(), indent=1))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": _cmd_eval, "bench": _cmd_bench, "ablate": _cmd_ablate, "generate": _cmd_generate, "speed": _cmd_speed,
    "zeroshot": _cmd_zeroshot, "info": _cmd_info,
}
