"""Command line: `python -m ppcore eval ...` and `python -m ppcore info ...`.

Bad arguments and user errors exit with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import FLAP_BIAS_MODES, METHODS, PruneConfig
from .errors import PPCoreError
from .record import LEVELS, RunRecord


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _skip_list(text: str) -> tuple[int, ...]:
    """'0,1,2', '0-2' or 'none'."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layer indices like '0,1,2' or '0-2', got {text!r}") from None
    return tuple(out)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a hub id, a checkpoint folder or a .gguf file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--cache-dir", default=None, help="where converted models and calibration live "
                   "(default: $PPCORE_CACHE or ~/.cache/ppcore)")


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
    e.add_argument("--token-frac", type=float, default=0.5)
    e.add_argument("--sample-frac", type=float, default=0.05)
    e.add_argument("--skip-layers", type=_skip_list, default=(0, 1, 2), help="e.g. '0-2' or '0,1,2' or 'none'")
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

    i = sub.add_parser("info", help="load a model and print its configuration")
    _add_model_args(i)
    return p


def _cmd_eval(a: argparse.Namespace) -> int:
    from .setup import prepare

    cfg = PruneConfig(
        method=a.method, ratio=a.ratio, token_frac=a.token_frac, sample_frac=a.sample_frac,
        skip_layers=a.skip_layers, prune_attn=not a.no_attn, prune_mlp=not a.no_mlp, ema=a.ema,
        mlp_multiple=a.mlp_multiple, use_history=not a.no_history, flap_bias=a.flap_bias,
    )
    for path in (a.json, a.record):
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            raise PPCoreError(f"cannot write {path}: its folder does not exist")
    setup = prepare(
        model=a.model, device=a.device, dtype=a.dtype, dataset=a.dataset, seq_len=a.seq_len,
        batch_size=a.batch_size, batches=a.batches, calib_seqs=a.calib_seqs, seed=a.seed,
        windows_file=a.windows, calib_windows_file=a.calib_windows, calib_dataset=a.calib_dataset,
        cache_dir=a.cache_dir, progress=not a.quiet,
    )
    res = setup.run(cfg, level=a.record_level if a.record else "none")
    print(res.line())
    if a.json:
        Path(a.json).write_text(json.dumps(res.summary(), indent=1))
    if a.record:
        RunRecord(res.protocol, res.records).save(a.record)
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from .loading import load_model

    lm = load_model(a.model, device=a.device, dtype=a.dtype, cache_dir=a.cache_dir)
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
        return {"eval": _cmd_eval, "info": _cmd_info}[args.command](args)
    except PPCoreError as e:
        print(f"python -m ppcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
