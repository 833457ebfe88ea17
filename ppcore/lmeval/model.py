"""ppcore as a model of lm-evaluation-harness: `--model ppcore`, any lm-eval task, with batch-wise pruning.

Log-likelihood requests run through the walk (`ppcore.walk.walk`) and the LM head on the continuation's
positions only; generation requests through prompt-decided generation (`ppcore.generate.generate`).
One `Pruner` serves the whole run, so PP's history carries from batch to batch in the order below.

How requests are grouped, which matters for PP because the batch is what the probe sees
(docs/zeroshot.md, recorded as `PPCoreLM.grouping()` in every protocol):

- a batch never mixes tasks: requests are split by task first, in the order lm-eval hands them over;
- `order=docs` (default, as the official code): within a task, requests in lm-eval's order (document by
  document, each document's choices together), cut into consecutive batches of `batch_size` (default 20,
  the official code's); the last batch of a task may be smaller (lm-eval needs every request answered,
  where the official code dropped it). `order=length`: longest first within a task, as lm-eval's `hf` model
  sorts them (fewer pads, faster; PP then sees batches of similar length rather than of neighbouring
  documents);
- each row is context + continuation (left-truncated to `max_length` + 1 tokens, the last one dropped, as
  lm-eval's `hf` model does), right-padded; pads are masked, so they never enter the probe, PP's history,
  the attention or the scores (the walk runs real tokens first and drops pad-only columns);
- generation requests are grouped the same way, and further by their generation settings; decisions are
  taken once on each batch of prompts and reused for every new token.

Dense through this model gives lm-eval's `hf` model's per-request log-likelihoods (fp32: within 1e-4) and
accuracies: tokenisation, truncation and scoring follow `lm_eval.models.huggingface.HFLM`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

from ..config import CalibConfig, PruneConfig, settings_of
from ..errors import ConfigError, DataError
from .parallel import Ranks

log = logging.getLogger("ppcore")

MODEL_NAME = "ppcore"
ORDERS = ("docs", "length")
DEFAULT_BATCH = 20  # the official code's zero-shot batch
DEFAULT_MAX_LENGTH = 512  # the official code's zero-shot max_seq_len
MAX_GEN_TOKS = 256  # lm-eval's default for generation requests that name none

# model_args ppcore takes besides the PruneConfig settings (by field name or flag) and the CalibConfig ones
# (calib_dataset, calib_windows, calib_seq_len, calib_batch_size).
MODEL_ARGS = {
    "model": "'default', 'gemma3-270m', a hub id, a checkpoint folder or a .gguf file",
    "device": "auto, cpu or cuda",
    "dtype": "auto, float32, bfloat16 or float16",
    "cache_dir": "where converted models, calibration and the offline task files live",
    "seed": "draws the calibration windows (default 0)",
    "batch_size": f"requests per batch, the batch PP's probe sees (default {DEFAULT_BATCH})",
    "order": "docs (lm-eval's request order, default) or length (longest first)",
    "max_length": f"tokens per row at most, truncated from the left (default {DEFAULT_MAX_LENGTH})",
    "add_bos_token": "prepend the tokenizer's BOS token (default: the tokenizer's own behaviour, as hf)",
}


def _setting_names() -> dict[str, tuple[type, str]]:
    """model_arg name -> (config class, field name), for every PruneConfig and CalibConfig setting."""
    out: dict[str, tuple[type, str]] = {}
    for s in settings_of(PruneConfig):
        out[s.name] = out[s.flag.replace("-", "_")] = (PruneConfig, s.name)
    for s in settings_of(CalibConfig):
        out[s.flag.replace("-", "_")] = (CalibConfig, s.name)
    return out


def known_model_args() -> list[str]:
    """Every model_args key `ppcore` takes, sorted."""
    return sorted(set(MODEL_ARGS) | set(_setting_names()))


def _parse_bool(name: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"model_args {name}: expected true or false, got {value!r}")


def _positive_int(name: str, value: Any) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"model_args {name}: expected a whole number, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"model_args {name} must be at least 1, got {n}")
    return n


@dataclass(frozen=True)
class Options:
    """The parsed model_args: what to load, how to prune (`prune`, `calib`), how to group requests."""

    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Optional[str] = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH
    order: str = "docs"
    max_length: int = DEFAULT_MAX_LENGTH
    add_bos_token: Optional[bool] = None
    prune: PruneConfig = PruneConfig()
    calib: CalibConfig = CalibConfig()


def parse_model_args(args: dict[str, Any]) -> Options:
    """model_args (values as text or as lm-eval parsed them) -> Options. Raises ConfigError naming an
    unknown key (with the known ones) or a bad value. `skip_layers` takes ranges (0-2): lm-eval splits
    model_args on commas."""
    settings = _setting_names()
    unknown = sorted(k for k in args if k not in MODEL_ARGS and k not in settings)
    if unknown:
        raise ConfigError(f"ppcore does not know the model_args {', '.join(unknown)}; it takes "
                          f"{', '.join(known_model_args())}")
    values: dict[str, Any] = {}
    fields: dict[type, dict[str, Any]] = {PruneConfig: {}, CalibConfig: {}}
    for key, value in args.items():
        if key in settings:
            cls, name = settings[key]
            s = next(s for s in settings_of(cls) if s.name == name)
            try:
                fields[cls][name] = s.parse(str(value))
            except ConfigError as e:
                raise ConfigError(f"model_args {key}: {e}") from None
        elif key in ("batch_size", "max_length", "seed"):
            values[key] = _positive_int(key, value) if key != "seed" else int(str(value))
        elif key == "add_bos_token":
            values[key] = _parse_bool(key, value)
        elif key == "order":
            if str(value) not in ORDERS:
                raise ConfigError(f"model_args order must be one of {', '.join(ORDERS)}, got {value!r}")
            values[key] = str(value)
        else:
            values[key] = None if value is None else str(value)
    try:
        prune = PruneConfig(**fields[PruneConfig])
        calib = CalibConfig(**fields[CalibConfig])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_args: {e}") from None
    return Options(**values, prune=prune, calib=calib)


def batches(keys: list[Any], lengths: list[int], size: int, order: str) -> list[list[int]]:
    """Request indices grouped into batches: split by `keys` (task, and for generation its settings) in
    order of first appearance, within each key in request order (`order` 'docs') or longest first
    (`order` 'length', ties by request order), cut into consecutive batches of `size` (the last one of a
    key smaller). `lengths`: tokens per request."""
    groups: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    out: list[list[int]] = []
    for idx in groups.values():
        if order == "length":
            idx = sorted(idx, key=lambda i: (-lengths[i], i))
        out.extend(idx[s:s + size] for s in range(0, len(idx), size))
    return out


def _with_lm_eval_config(args: dict[str, Any], extra: Optional[dict]) -> dict[str, Any]:
    """model_args plus what lm-eval's own flags say. Its `--batch_size` (default 1, so it cannot say whether it
    was given) sets the batch only when it is a number above 1 and model_args name no batch_size; its
    `--device` (default cuda:0) counts only as `cpu`: otherwise model_args' device (default auto) decides."""
    extra = extra or {}
    bs = extra.get("batch_size")
    if "batch_size" not in args and bs is not None and str(bs).isdigit() and int(bs) > 1:
        args["batch_size"] = int(bs)
    if "device" not in args and str(extra.get("device") or "").lower() == "cpu":
        args["device"] = "cpu"
    return args


@register_model(MODEL_NAME)
class PPCoreLM(TemplateLM):
    """lm-eval's `ppcore` model: a ppcore-loaded model, pruned batch by batch with a PruneConfig.

    Built by lm-eval from `--model_args` (`create_from_arg_string`), or directly with `lm=` (a LoadedModel
    already loaded, e.g. in tests) and `calib_stats=` (CalibStats, else computed when the method needs them).
    Raises ConfigError for unknown or bad model_args, ModelLoadError for a model that cannot load.
    """

    def __init__(self, lm: Any = None, calib_stats: Any = None, prune: Optional[PruneConfig] = None,
                 **model_args: Any) -> None:
        super().__init__()
        self.options = opts = parse_model_args(model_args)
        if prune is not None:  # a caller's PruneConfig (the app's), instead of one from model_args
            self.options = opts = replace(opts, prune=prune)
        # Under `accelerate launch`, one rank of several (ppcore.lmeval.parallel): lm-eval shards the documents.
        self.ranks = Ranks(cpu=opts.device == "cpu" or not torch.cuda.is_available())
        self._rank, self._world_size = self.ranks.rank, self.ranks.world_size
        with self.ranks.main_first():  # rank 0 converts the model and fills the calibration cache first
            if lm is None:
                from ..loading import load_model

                device = opts.device
                if self.ranks.device is not None and opts.device == "auto":
                    device = self.ranks.device.type  # this rank's: the CPU, or its GPU made the current one
                    if device == "cuda":
                        torch.cuda.set_device(self.ranks.device)
                lm = load_model(opts.model, device=device, dtype=opts.dtype, cache_dir=opts.cache_dir)
            if lm.tokenizer is None:
                raise ConfigError(f"model {lm.name} has no tokenizer: lm-eval tasks are text")
            opts.prune.check_layers(lm.adapter.dims.num_layers)
            self.lm, self.tokenizer = lm, lm.tokenizer
            self.add_bos_token = opts.add_bos_token
            self.calibration: Optional[dict[str, Any]] = None
            if calib_stats is None and opts.prune.needs_calibration:
                calib_stats, self.calibration = self._calibrate()
            from ..fitting import build_pruner, printed, silent

            # pp-plus's fits take minutes: rank 0 makes them (and says how far it is), the others read its cache
            self.pruner = build_pruner(lm.adapter, opts.prune, calib_stats,
                                       progress=printed() if self._rank == 0 else silent)
        self.batch_log: list[dict[str, Any]] = []  # per batch: kind, task, rows, real and padded tokens

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "PPCoreLM":
        """From lm-eval's `--model_args` text (`_with_lm_eval_config` says what lm-eval's own flags add)."""
        return cls(**_with_lm_eval_config(lm_utils.simple_parse_args_string(arg_string), additional_config))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "PPCoreLM":
        """From `--model_args` as lm-eval parsed them into a dict."""
        return cls(**_with_lm_eval_config(dict(arg_dict), additional_config))

    def _calibrate(self) -> tuple[Any, dict[str, Any]]:
        from ..calibrate import calibrate
        from ..experiment import calibration_windows
        from ..protocol import describe_calibration

        c = self.options.calib
        windows, source = calibration_windows(self.lm, c.dataset, c.windows, c.seq_len, self.options.seed,
                                              self.options.cache_dir)
        stats = calibrate(self.lm, windows, c.batch_size, cache_dir=self.options.cache_dir, progress=self._rank == 0)
        return stats, describe_calibration(source, windows, c.batch_size, self.options.seed)

    # --- what lm-eval asks of a model -------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes: BOS, else EOS (as hf)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.options.max_length

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`, special tokens as lm-eval's hf model adds them."""
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding gives it) per request; encoded as
        lm-eval's TemplateLM does, batched by task (module docstring)."""
        encoded = []
        for context, continuation in (r.args for r in requests):
            if context == "":
                cont = self.tok_encode(continuation, add_special_tokens=False)
                ctx, cont = (([self.prefix_token_id], cont) if self.prefix_token_id != cont[0]
                             else (cont[:1], cont[1:]))
            else:
                ctx, cont = self._encode_pair(context, continuation)
            encoded.append(((context, continuation), ctx, cont))
        return self._loglikelihood_tokens(encoded, tasks=[getattr(r, "task_name", None) for r in requests])

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], tasks: Optional[list] = None,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """Score (key, context ids, continuation ids) requests in batches; `tasks` keys the grouping."""
        keys = tasks or [None] * len(requests)
        rows = [self._row(ctx, cont) for _, ctx, cont in requests]
        out: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        for idx in batches(keys, [len(r[0]) for r in rows], self.options.batch_size, self.options.order):
            for i, res in zip(idx, self._score([rows[i] for i in idx], keys[idx[0]])):
                out[i] = res
        return out  # type: ignore[return-value]

    def _row(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        """(model input ids, continuation ids): hf's left truncation of context + continuation to
        max_length + 1 tokens, the last one dropped (it is predicted, never input). Raises DataError for
        an empty continuation or one longer than max_length."""
        if not cont:
            raise DataError("a log-likelihood request has an empty continuation")
        if len(cont) > self.max_length:
            raise DataError(f"a continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
        return (ctx + cont)[-(self.max_length + 1):][:-1], cont

    @torch.inference_mode()
    def _score(self, rows: list[tuple[list[int], list[int]]], task: Any) -> list[tuple[float, bool]]:
        """One batch: right-padded rows (B, L) through the walk, then the LM head on each continuation's
        positions only; (sum of the continuation's log-probabilities in nats, all its tokens greedy)."""
        from ..walk import walk

        ad = self.lm.adapter
        L = max(len(inp) for inp, _ in rows)
        ids = torch.full((len(rows), L), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for b, (inp, _) in enumerate(rows):
            ids[b, :len(inp)] = torch.tensor(inp)
            mask[b, :len(inp)] = 1
        padded = not bool(mask.all())
        res = walk(ad, self.pruner, ids.to(ad.device), mask.to(ad.device) if padded else None,
                   level="none", timing=False)
        real = int(mask.sum())
        self.batch_log.append({"kind": "loglikelihood", "task": task, "rows": len(rows), "tokens": real,
                               "pads": len(rows) * L - real})
        # Position t predicts token t + 1: the continuation's tokens are predicted by the last len(cont)
        # positions of each row's input.
        picks = torch.cat([torch.arange(b * L + len(inp) - len(cont), b * L + len(inp))
                           for b, (inp, cont) in enumerate(rows)])
        hidden = res.hidden.reshape(len(rows) * L, -1)[picks.to(res.hidden.device)]
        logp = F.log_softmax(ad.head(hidden).float(), dim=-1)
        target = torch.tensor([t for _, cont in rows for t in cont], device=logp.device)
        chosen = logp.gather(1, target[:, None])[:, 0]
        greedy = logp.argmax(-1) == target
        out, start = [], 0
        for _, cont in rows:
            end = start + len(cont)
            out.append((float(chosen[start:end].sum()), bool(greedy[start:end].all())))
            start = end
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks): lm-eval's disjoint rolling windows of max_length
        tokens, as hf builds them, scored in batches like any request; one sum per text."""
        windows: list[tuple[Any, list[int], list[int]]] = []
        owner: list[int] = []
        tasks: list[Any] = []
        for i, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
                tasks.append(getattr(req, "task_name", None))
        scores = self._loglikelihood_tokens(windows, tasks=tasks)
        total = [0.0] * len(requests)
        for i, (lp, _) in zip(owner, scores):
            total[i] += lp
        return total

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, pruning decided once per batch of prompts (`ppcore.generate.generate`), cut
        at the first of the request's `until` strings. Raises ConfigError for sampling (do_sample true, or
        a temperature above 0): ppcore generates greedily."""
        from ..generate import generate

        specs = [self._gen_spec(r.args[1]) for r in requests]
        prompts = [self.tok_encode(r.args[0]) for r in requests]
        keys = [(getattr(r, "task_name", None), s) for r, s in zip(requests, specs)]
        out: list[str] = [""] * len(requests)
        for idx in batches(keys, [len(p) for p in prompts], self.options.batch_size, self.options.order):
            until, max_new = specs[idx[0]]
            room = max(self.max_length - max_new, 1)
            batch = [prompts[i][-room:] or [self.prefix_token_id] for i in idx]
            gen = generate(self.lm.adapter, self.pruner, batch, max_new, pad_id=self.tokenizer.pad_token_id or 0,
                           eos_id=self.eot_token_id, level="none")
            real = sum(len(p) for p in batch)
            self.batch_log.append({"kind": "generate_until", "task": keys[idx[0]][0], "rows": len(idx),
                                   "tokens": real, "pads": len(idx) * max(len(p) for p in batch) - real})
            for i, toks in zip(idx, gen.tokens):
                text = self.tok_decode(toks)
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
        return out

    def _gen_spec(self, kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int]:
        """(stop strings, max new tokens) of a generation request's settings."""
        kw = dict(kwargs or {})
        if kw.get("do_sample") or float(kw.get("temperature") or 0) > 0:
            raise ConfigError("ppcore generates greedily: this task asks for sampling (do_sample or a temperature "
                              "above 0)")
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        return tuple(until + ([eos] if eos not in until else [])), int(kw.get("max_gen_toks") or MAX_GEN_TOKS)

    # --- data-parallel collectives lm-eval's evaluator calls (ppcore.lmeval.parallel) ---------------------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.ranks.all_gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list[Any]]:
        return self.ranks.gather_object(obj, dst)

    def barrier(self) -> None:
        self.ranks.barrier()

    # --- what a protocol records ----------------------------------------------------------------------

    def grouping(self) -> dict[str, Any]:
        """How requests were batched, for the protocol: the settings and what the batches held."""
        log_ = self.batch_log
        return {
            "batch_size": self.options.batch_size, "order": self.options.order, "max_length": self.options.max_length,
            "split_by": "task (and generation settings)", "padding": "right (generation: left); pads masked, never "
            "in the probe, the history or the scores", "history": "one Pruner for the whole run: PP's history "
            "carries from batch to batch in this order; no warm-up batch",
            "batches": len(log_), "rows": sum(b["rows"] for b in log_), "tokens": sum(b["tokens"] for b in log_),
            "pad_tokens": sum(b["pads"] for b in log_),
            "ranks": self.world_size, "rank": self.rank,  # with several, each rank batches its own share: these
            # counts are this rank's; documents go to ranks in turn (document i to rank i mod ranks)
        }
