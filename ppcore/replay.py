"""Replay: a saved run record back into what the app's record-only views draw, without the model.

- `export_record(a, others)`: the record the app's Export tab writes: `Analysis.run_record` plus what a replay needs
  (schema 4): the analysed batch's token texts, the per-token losses of the method and of dense, KL and top-1
  agreement per position (exact float32), the model's sizes in `protocol.model`, and when it was saved.
- `read_record(data)`: an untrusted file's bytes to a `RunRecord`. Every size, index and shape a view relies on is
  checked first, within `RecordLimits`, so that a crafted file can neither exhaust memory nor break a view; anything
  wrong is one `RecordError` naming it.
- `rebuild(record)`: what `ppcore.session.replay` makes the views' `Analysis` of: the analysed method's batch (the
  first "single" batch; in a CLI record the first scored one), dense's and the baselines' on the same batch, and the
  per-token numbers the record holds. What an older (schema 1-3) or summary-level record lacks is None there and
  named in `Replayed.lacks`.

docs/run-record.md describes the format, docs/app.md the app's replay. No model, no Streamlit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
import torch

from .config import MAX_LAYER_INDEX, PruneConfig
from .errors import ConfigError, DataError
from .methods.probe import ProbeMethod
from .methods.registry import METHOD_CLASSES
from .record import BLOCK_NAMES, SCHEMAS, BatchRecord, BlockRecord, RunRecord, exact_floats

if TYPE_CHECKING:
    from .session import Analysis

__all__ = ["LACKS", "MODEL_SIZES", "RecordError", "RecordLimits", "Rebuilt", "Replayed", "check_record",
           "export_record", "parse_record", "read_record", "rebuild"]

# The model's sizes the export adds to protocol.model (LoadedModel.info()'s names); `layers` is what a replay checks
# the batches against.
FLOAT32_MAX = float(np.finfo(np.float32).max)
MODEL_SIZES = ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab")
PROBING = tuple(name for name, cls in METHOD_CLASSES.items() if issubclass(cls, ProbeMethod))  # pp, fullbatch

# What a replayed record can lack (`Replayed.lacks`), and what is missing then, in words.
LACKS = {
    "outputs": "per-token losses, KL and top-1 agreement (the app's Export tab saves them from schema 4): the "
               "header's perplexities and the Outputs tab's per-token view",
    "texts": "the token texts (saved from schema 4): tokens are shown as their ids",
    "dense": "dense's batch (the unpruned reference)",
    "baselines": "the oracle's and the static baselines' batches (the export holds them once Pruned channels or "
                 "Why this head has run them): agreement and the other methods' decisions",
    "importance": "the residual-importance grids (a record saved at level summary): the Probe view's maps",
    "energies": "the stage-2 energies (a record saved at level summary): the History view and the score's factors",
}
BLOCK_FIELDS = frozenset(BlockRecord.__dataclass_fields__)
BATCH_FIELDS = frozenset(BatchRecord.__dataclass_fields__)
ENERGIES = ("energy_probe", "energy_history", "energy_fused", "fusion_weight", "weight_factor")


class RecordError(DataError):
    """A file that cannot be replayed: not a run record, an unknown schema, no batch, a size over the limits, an
    index outside its block, batches that disagree on the model. The message says which, in one line."""


@dataclass(frozen=True)
class RecordLimits:
    """What a replayed record may hold: the bytes read, and every size a view allocates from (a record states its
    units and positions; the views draw layers x units and layers x positions maps). A file is refused over any."""

    max_bytes: int = 256 * 2**20
    batches: int = 256
    layers: int = MAX_LAYER_INDEX + 1
    units: int = 2**16  # heads or channels of one block
    channels: int = 2**20  # per-channel energies of one block (query heads x head_dim, or the MLP's channels)
    samples: int = 4096
    positions: int = 2**17
    tokens: int = 2**22  # samples x positions of one batch
    cells: int = 2**24  # layers x units of one block kind, and layers x positions: the views' maps


@dataclass
class Replayed:
    """Where a replayed Analysis came from: the record as read (what Export writes back), the file's name ('' when
    unknown), the baselines found in it ({method: record}, the analysed method and dense left out), and what it
    lacks (keys of LACKS, in that order)."""

    record: RunRecord
    name: str
    baselines: dict[str, BatchRecord]
    lacks: tuple[str, ...] = field(default_factory=tuple)

    @property
    def saved(self) -> Optional[str]:
        """When the app exported the record (ISO 8601 UTC), None when the record does not say (before schema 4)."""
        return self.record.saved

    def missing(self) -> list[str]:
        """What the record lacks, in words (LACKS)."""
        return [LACKS[k] for k in self.lacks]


# --- export ------------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ints(values: torch.Tensor, mask: Optional[torch.Tensor]) -> list:
    """A 0/1 tensor as nested lists of ints, None where `mask` is 0."""
    arr = values.numpy().astype(np.int64)
    keep = np.ones(arr.shape, dtype=bool) if mask is None else mask.numpy() != 0
    out = np.where(keep, arr, -1).tolist()
    return [[None if v < 0 else v for v in row] for row in out]


def export_record(a: "Analysis", others: Optional[Mapping[str, BatchRecord]] = None,
                  saved: Optional[str] = None) -> RunRecord:
    """The run record the app exports (schema 4): `a.run_record(others)` (the analysed method's batch, dense's, the
    baselines'), with the analysed batch's token texts, the per-token losses of the method and of dense (nats,
    None where a position is not scored), KL(dense || method) and top-1 agreement per position (None at pads),
    every float as the shortest decimal that reads back as the same float32; the model's sizes (MODEL_SIZES) in
    `protocol.model`; and `saved` (default: now, ISO 8601 UTC). A replayed analysis exports its record as read."""
    if a.replayed is not None:
        return a.replayed.record
    rec = a.run_record(others)
    if a.nll_dense is None or a.nll_pruned is None or a.nll_mask is None or a.kl is None or a.top1 is None:
        return replace(rec, saved=saved or _now())
    valid = a.batch.mask
    main = replace(rec.batches[0], token_texts=[list(row) for row in a.batch.tokens],
                   token_labels=None if a.batch.labels == a.batch.tokens else [list(row) for row in a.batch.labels],
                   token_loss=exact_floats(a.nll_pruned, a.nll_mask),
                   token_kl=exact_floats(a.kl, valid), token_top1=_ints(a.top1, valid))
    batches = [main]
    rest = rec.batches[1:]
    if a.cfg.method != "dense":  # run_record puts dense second
        batches.append(replace(rest[0], token_loss=exact_floats(a.nll_dense, a.nll_mask)))
        rest = rest[1:]
    model = {**a.protocol.model, **{k: a.info[k] for k in MODEL_SIZES if k in a.info}}
    return RunRecord(a.protocol.replace(model=model), batches + rest, saved=saved or _now())


# --- reading an untrusted file ---------------------------------------------------------------------------------

def read_record(data: bytes | str, limits: RecordLimits = RecordLimits()) -> RunRecord:
    """A run record from a file's bytes (`RunRecord.save`, the app's Export tab, `eval --record`), checked
    (`check_record`) within `limits`. Raises RecordError: over `limits.max_bytes` (before parsing), not JSON, not
    a run record, a schema this version does not read (SCHEMAS), no batch, or anything `check_record` refuses."""
    size = len(data)
    if size > limits.max_bytes:
        raise RecordError(f"the file is {size / 2**20:.1f} MB, over the {limits.max_bytes / 2**20:g} MB limit for run "
                          "records")
    if not data.strip():
        raise RecordError("the file is empty: choose a run record saved by the Export tab or `eval --record`")
    try:
        raw = json.loads(data)
    except UnicodeDecodeError:
        raise RecordError("not a run record: the file is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"not a run record: the file is not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise RecordError("not a run record: the file's JSON is nested too deeply") from None
    return parse_record(raw, limits)


def parse_record(raw: Any, limits: RecordLimits = RecordLimits()) -> RunRecord:
    """`read_record` after the JSON: a parsed object to a checked RunRecord (raises RecordError)."""
    if not isinstance(raw, dict) or "batches" not in raw:
        raise RecordError("not a run record: a run record is a JSON object with 'schema', 'protocol' and 'batches' "
                          "(docs/run-record.md)")
    schema = raw.get("schema")
    if isinstance(schema, bool) or schema not in SCHEMAS:
        known = ", ".join(map(str, SCHEMAS))
        raise RecordError(f"run record schema {schema!r} is not one this version reads ({known}): it was written by "
                          "another ppcore version, or it is not a run record")
    batches = raw["batches"]
    if not isinstance(batches, list):
        raise RecordError("not a run record: 'batches' is not a list")
    if not batches:
        raise RecordError("this run record holds no batch: there is nothing to show")
    if len(batches) > limits.batches:
        raise RecordError(f"the record holds {len(batches)} batches, over the limit of {limits.batches}")
    protocol = raw.get("protocol")
    if protocol is not None and not isinstance(protocol, dict):
        raise RecordError("not a run record: its 'protocol' is not an object")
    for i, b in enumerate(batches):
        _check_raw_batch(i, b, limits)
    try:
        rec = RunRecord.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RecordError(f"not a run record: {type(e).__name__}: {e}") from None
    check_record(rec, limits)
    return rec


def _check_raw_batch(i: int, b: Any, limits: RecordLimits) -> None:
    """The structure `BatchRecord.from_dict` relies on, before it builds anything."""
    where = f"batch {i}"
    if not isinstance(b, dict) or not isinstance(b.get("layers"), list):
        raise RecordError(f"not a run record: {where} is not an object with a 'layers' list")
    missing = [k for k in ("method", "ratio", "phase", "index", "input_ids", "attention_mask") if k not in b]
    if missing:
        raise RecordError(f"not a run record: {where} has no {', '.join(missing)}")
    layers = b["layers"]
    if not layers:
        raise RecordError(f"{where} holds no layer")
    if len(layers) > limits.layers:
        raise RecordError(f"{where} holds {len(layers)} layers, over the limit of {limits.layers}")
    for n, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise RecordError(f"not a run record: layer {n} of {where} is not an object")
        for name in BLOCK_NAMES:
            blk = layer.get(name)
            if not isinstance(blk, dict):
                raise RecordError(f"not a run record: layer {n} of {where} has no '{name}' block")
            unknown = sorted(set(blk) - BLOCK_FIELDS)
            if unknown:
                raise RecordError(f"layer {n} of {where}, block {name}: unknown fields {', '.join(unknown[:5])} (a "
                                  "newer ppcore version's record, or not a run record)")
            for key in ("pruned", "total", "kept"):
                if key not in blk:
                    raise RecordError(f"not a run record: layer {n} of {where}, block {name} has no '{key}'")


def _grid(values: Any, what: str, kind: str = "iuf", ndim: Optional[int] = None,
          nullable: bool = False) -> np.ndarray:
    """`values` as an array of numbers (`kind`: numpy kinds allowed; bools never), rectangular, with `ndim` dims;
    with `nullable`, None entries of a 2-D grid read as NaN."""
    if nullable:
        if not isinstance(values, list) or not all(isinstance(r, list) for r in values):
            raise RecordError(f"{what} is not a list of rows")
        values = [[math.nan if v is None else v for v in row] for row in values]
    try:
        arr = np.array(values)
    except (ValueError, TypeError, OverflowError):
        raise RecordError(f"{what} is not a rectangular grid of numbers") from None
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.float64 if "f" in kind else np.int64)
    if arr.dtype.kind not in kind or (ndim is not None and arr.ndim != ndim):
        raise RecordError(f"{what} is not {'a list' if ndim == 1 else 'a grid'} of "
                          f"{'whole numbers' if kind == 'iu' else 'numbers'}")
    if arr.dtype.kind == "f":  # the views read float32: a larger number would show as inf
        big = np.abs(arr[np.isfinite(arr)])
        if big.size and big.max() > FLOAT32_MAX:
            raise RecordError(f"{what} holds {big.max():g}, beyond the float32 range (about {FLOAT32_MAX:.1e}) "
                              "every number of a run record has: it was edited")
    return arr


def _indices(values: Any, high: int, what: str, unique: bool = True) -> np.ndarray:
    """Indices in [0, high), with no repeats when `unique`."""
    arr = _grid(values, what, "iu", 1)
    if arr.size and (arr.min() < 0 or arr.max() >= high):
        raise RecordError(f"{what} holds an index outside 0..{high - 1}")
    if unique and np.unique(arr).size != arr.size:
        raise RecordError(f"{what} holds an index twice")
    return arr


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecordError(f"{what} is {value!r}: it must be a whole number from {low} to {high}")
    return value


def _counts(d: Any, what: str) -> None:
    if not isinstance(d, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.values()):
        raise RecordError(f"{what} is not an object of numbers")


def _check_block(blk: BlockRecord, where: str, B: int, L: int, layers: int, limits: RecordLimits) -> None:
    if not isinstance(blk.pruned, bool):
        raise RecordError(f"{where}: 'pruned' is not true or false")
    total = _whole(blk.total, f"{where}: total", 1, limits.units)
    if layers * total > limits.cells:
        raise RecordError(f"{where}: {layers} layers x {total} units is over the limit of {limits.cells:,} cells")
    kept = _indices(blk.kept, total, f"{where}: kept")
    _indices(blk.probe_tokens, L, f"{where}: probe_tokens", unique=False)
    _indices(blk.probe_samples, B, f"{where}: probe_samples", unique=False)
    if blk.scores is not None:
        if len(_grid(blk.scores, f"{where}: scores", ndim=1)) != total:
            raise RecordError(f"{where}: {len(blk.scores)} scores for {total} units")
        if blk.pruned and not kept.size:
            raise RecordError(f"{where}: a pruned block that keeps no unit")
    if blk.kept_probe_only is not None:
        _indices(blk.kept_probe_only, total, f"{where}: kept_probe_only")
    forced = None if blk.forced is None else _indices(blk.forced, total, f"{where}: forced")
    if forced is not None and not set(forced.tolist()) <= set(kept.tolist()):
        raise RecordError(f"{where}: a forced unit that is not kept")
    if blk.importance is not None and _grid(blk.importance, f"{where}: importance", ndim=2).shape != (B, L):
        raise RecordError(f"{where}: the importance grid is not {B} samples x {L} positions")
    sizes = {len(_grid(getattr(blk, k), f"{where}: {k}", ndim=1)) for k in ENERGIES if getattr(blk, k) is not None}
    if sizes:
        if len(sizes) > 1:
            raise RecordError(f"{where}: the energies have different lengths {sorted(sizes)}")
        n = sizes.pop()
        if n > limits.channels or n % total or not n:
            raise RecordError(f"{where}: {n} channels of energies do not split into {total} units (at most "
                              f"{limits.channels:,} channels)")
        if blk.energy_probe is None or blk.energy_fused is None:
            raise RecordError(f"{where}: energies without energy_probe and energy_fused")
    _counts(blk.flops, f"{where}: flops")
    _counts(blk.times, f"{where}: times")


def _check_batch(b: BatchRecord, where: str, limits: RecordLimits) -> tuple[int, int]:
    """One batch's every field; returns (samples, positions)."""
    if not isinstance(b.method, str) or not b.method or not isinstance(b.phase, str):
        raise RecordError(f"{where}: 'method' and 'phase' must be text")
    if isinstance(b.ratio, bool) or not isinstance(b.ratio, (int, float)) or not math.isfinite(b.ratio):
        raise RecordError(f"{where}: 'ratio' is not a number")
    _whole(b.index, f"{where}: index", 0, 2**31)
    ids = _grid(b.input_ids, f"{where}: input_ids", "iu", 2)
    B, L = ids.shape
    if not (1 <= B <= limits.samples and 1 <= L <= limits.positions and B * L <= limits.tokens):
        raise RecordError(f"{where}: a batch of {B} x {L} tokens is outside the limits ({limits.samples} samples, "
                          f"{limits.positions} positions, {limits.tokens:,} tokens)")
    if len(b.layers) * L > limits.cells:
        raise RecordError(f"{where}: {len(b.layers)} layers x {L} positions is over the limit of {limits.cells:,} "
                          "cells")
    if ids.min() < 0:
        raise RecordError(f"{where}: input_ids holds a negative token id")
    if b.attention_mask is not None:
        mask = _grid(b.attention_mask, f"{where}: attention_mask", "iu", 2)
        if mask.shape != (B, L) or not np.isin(mask, (0, 1)).all():
            raise RecordError(f"{where}: attention_mask is not {B} x {L} zeros and ones")
    for n, layer in enumerate(b.layers):
        for name in BLOCK_NAMES:
            _check_block(getattr(layer, name), f"{where}, layer {n}, block {name}", B, L, len(b.layers), limits)
    for d, what in ((b.flops, "flops"), (b.units, "units"), (b.times, "times")):
        _counts(d, f"{where}: {what}")
    for key in ("token_texts", "token_labels"):
        rows = getattr(b, key)
        if rows is not None and (not isinstance(rows, list) or len(rows) != B or not all(
                isinstance(r, list) and len(r) == L and all(isinstance(t, str) for t in r) for r in rows)):
            raise RecordError(f"{where}: {key} is not {B} rows of {L} texts")
    for key, width, kind in (("token_loss", L - 1, "f"), ("token_kl", L, "f"), ("token_top1", L, "top1")):
        rows = getattr(b, key)
        if rows is None:
            continue
        arr = _grid(rows, f"{where}: {key}", "iuf", 2, nullable=True)
        if arr.shape != (B, width):
            raise RecordError(f"{where}: {key} is not {B} x {width}")
        real = arr[~np.isnan(arr)]
        if kind == "top1" and not np.isin(real, (0, 1)).all():
            raise RecordError(f"{where}: token_top1 holds values other than 0, 1 and null")
        if kind == "f" and not (np.isfinite(real).all() and (real >= 0).all()):
            raise RecordError(f"{where}: {key} holds a negative or non-finite value")
    return B, L


def check_record(record: RunRecord, limits: RecordLimits = RecordLimits()) -> None:
    """Everything a view relies on, within `limits`: each batch's ids, mask and per-token grids in shape, every
    kept unit, probe position and score inside its block, and one model: every batch with the same number of
    layers and the same heads and channels per block, and as many layers (and heads, MLP channels) as the protocol
    says the model has, and token ids below its vocabulary size, where it says. Raises RecordError naming the first
    problem."""
    if not record.batches:
        raise RecordError("this run record holds no batch: there is nothing to show")
    if len(record.batches) > limits.batches:
        raise RecordError(f"the record holds {len(record.batches)} batches, over the limit of {limits.batches}")
    p = record.protocol
    for section in ("model", "data"):
        if not isinstance(getattr(p, section), dict):
            raise RecordError(f"not a run record: its protocol's '{section}' is not an object")
    for section in ("config", "calibration", "settings"):
        if getattr(p, section) is not None and not isinstance(getattr(p, section), dict):
            raise RecordError(f"not a run record: its protocol's '{section}' is not an object")
    shape: Optional[tuple[int, ...]] = None
    for i, b in enumerate(record.batches):
        where = f"batch {i} ({b.method})" if isinstance(b.method, str) else f"batch {i}"
        if not b.layers:
            raise RecordError(f"{where} holds no layer")
        _check_batch(b, where, limits)
        this = (len(b.layers), *(getattr(b.layers[0], n).total for n in BLOCK_NAMES))
        for n, layer in enumerate(b.layers):
            if tuple(getattr(layer, name).total for name in BLOCK_NAMES) != this[1:]:
                raise RecordError(f"{where}: layer {n} has {layer.attn.total} heads and {layer.mlp.total} MLP "
                                  f"channels, layer 0 {this[1]} and {this[2]}: not one model")
        if shape is None:
            shape = this
        elif this != shape:
            raise RecordError(f"{where} has {this[0]} layers of {this[1]} heads and {this[2]} MLP channels, batch 0 "
                              f"{shape[0]} of {shape[1]} and {shape[2]}: the batches are not from one model")
    assert shape is not None
    for key, have, what in (("layers", shape[0], "layers"), ("heads", shape[1], "heads"),
                            ("intermediate", shape[2], "MLP channels")):
        claim = p.model.get(key)
        if claim is not None and claim != have:
            raise RecordError(f"the record says its model has {claim!r} {what}, but its batches hold {have}: it was "
                              "edited, or put together from different models")
    vocab = p.model.get("vocab")
    if isinstance(vocab, int) and not isinstance(vocab, bool):
        for i, b in enumerate(record.batches):
            top = int(np.asarray(b.input_ids).max())
            if top >= vocab:
                raise RecordError(f"batch {i}: input_ids holds token id {top}, but the record says its model's "
                                  f"vocabulary has {vocab} tokens (ids 0-{vocab - 1}): it was edited, or is from "
                                  "another model")


# --- replay ------------------------------------------------------------------------------------------------------

def _main_batch(batches: list[BatchRecord]) -> BatchRecord:
    """The analysed batch: the first "single" one (the app's), else the first scored one (eval's), else the first."""
    for phase in ("single", "scored"):
        hit = next((b for b in batches if b.phase == phase), None)
        if hit is not None:
            return hit
    return batches[0]


def _config(record: RunRecord, main: BatchRecord) -> PruneConfig:
    """The run's PruneConfig: the protocol's when it is valid and names the analysed method, else one from the
    batch (its method and ratio, the layers it pruned none of as skipped). Raises RecordError."""
    saved = record.protocol.config
    cfg: Optional[PruneConfig] = None
    if isinstance(saved, dict):
        try:
            cfg = PruneConfig.from_dict(saved)
        except (ConfigError, TypeError, ValueError):
            cfg = None
    if cfg is None or cfg.method != main.method:
        skipped = tuple(i for i, lay in enumerate(main.layers) if not (lay.attn.pruned or lay.mlp.pruned))
        try:
            cfg = PruneConfig(method=main.method, ratio=float(main.ratio),
                              skip_layers=() if main.method == "dense" else skipped)
        except ConfigError as e:
            raise RecordError(f"the record's method {main.method!r} at ratio {main.ratio!r} cannot be replayed: "
                              f"{e}") from None
    try:
        cfg.check_layers(len(main.layers))
    except ConfigError as e:
        raise RecordError(f"the record's settings do not fit its own batches: {e}") from None
    return cfg


def _per_token(rows: list, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A saved per-token grid as (values, mask) float32 tensors: 0 and 0 where it holds None."""
    arr = np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float32)
    arr = arr.reshape(len(rows), width)
    known = ~np.isnan(arr)
    arr[~known] = 0.0
    return torch.from_numpy(arr), torch.from_numpy(known.astype(np.float32))


def _info(record: RunRecord, main: BatchRecord) -> dict[str, Any]:
    """`LoadedModel.info()`'s keys the views read, from the protocol and the batches (None where unknown)."""
    p = record.protocol
    m = p.model
    first = main.layers[0]
    return {"name": str(m.get("name") or "an unnamed model"), "family": m.get("family"),
            "model_type": m.get("model_type"), "fingerprint": m.get("fingerprint"),
            "device": p.device or None, "dtype": p.dtype or None, "layers": len(main.layers),
            "heads": first.attn.total, "kv_heads": m.get("kv_heads"), "head_dim": m.get("head_dim"),
            "intermediate": first.mlp.total, "hidden": m.get("hidden"), "vocab": m.get("vocab")}


def _description(record: RunRecord, B: int, L: int) -> str:
    data = record.protocol.data
    if isinstance(data.get("source"), str) and data["source"]:
        return data["source"]
    where = data.get("dataset") or data.get("windows_file")
    return f"{B} windows of {L} tokens from {where}" if isinstance(where, str) else f"{B} samples of up to {L} tokens"


@dataclass
class Rebuilt:
    """What `ppcore.session.replay` builds its Analysis from (the same names; ids, mask, description, tokens
    and labels make its Batch)."""

    cfg: PruneConfig
    ratio: float
    info: dict[str, Any]
    ids: torch.Tensor
    mask: Optional[torch.Tensor]
    description: str
    tokens: list[list[str]]
    labels: list[list[str]]
    main: BatchRecord
    dense: Optional[BatchRecord]
    nll_dense: Optional[torch.Tensor]
    nll_pruned: Optional[torch.Tensor]
    nll_mask: Optional[torch.Tensor]
    kl: Optional[torch.Tensor]
    top1: Optional[torch.Tensor]
    prompt: str
    seconds: dict[str, float]
    replayed: Replayed


def rebuild(record: RunRecord, name: str = "", limits: RecordLimits = RecordLimits()) -> Rebuilt:
    """Everything `ppcore.session.replay` needs from `record` (checked first with `check_record`): the analysed
    method's batch, dense's on the same batch (None when the record has none), the baselines, the per-token numbers
    of the export (None when the record lacks them: before schema 4, or not the app's), the token texts (else each
    token's id, '⟨id⟩'), and what is lacking. Raises RecordError."""
    check_record(record, limits)
    main = _main_batch(record.batches)
    for n, b in enumerate(record.batches):  # one batch index of one phase is one batch for every method
        if b.phase == main.phase and b.index == main.index and b.input_ids != main.input_ids:
            raise RecordError(f"batches[{n}] ({b.method}, {b.phase} batch {b.index}) holds other tokens than the "
                              f"{main.method} batch it should share them with: the record was edited or is damaged; "
                              "export it again")
    same = [b for b in record.batches if b is not main and b.phase == main.phase and b.input_ids == main.input_ids]
    dense = main if main.method == "dense" else next((b for b in same if b.method == "dense"), None)
    others: dict[str, BatchRecord] = {}
    for b in same:
        if b.method not in (main.method, "dense"):
            others.setdefault(b.method, b)
    cfg = _config(record, main)
    settings = record.protocol.settings or {}
    asked = settings.get("ratio")
    ratio = (float(asked) if isinstance(asked, (int, float)) and not isinstance(asked, bool) and 0 <= asked < 1
             else cfg.ratio)
    ids = torch.tensor(main.input_ids, dtype=torch.long)
    B, L = ids.shape
    mask = None if main.attention_mask is None else torch.tensor(main.attention_mask, dtype=torch.long)
    real = [[1] * L] * B if main.attention_mask is None else main.attention_mask
    texts = main.token_texts or [[f"⟨{t}⟩" if m else "" for t, m in zip(row, ms)]
                                 for row, ms in zip(main.input_ids, real)]

    lacks = []
    outputs = (dense is not None and main.token_loss is not None and dense.token_loss is not None
               and main.token_kl is not None and main.token_top1 is not None)
    nll_d = nll_p = nll_mask = kl = top1 = None
    if outputs:
        assert dense is not None and dense.token_loss is not None and main.token_loss is not None
        nll_p, nll_mask = _per_token(main.token_loss, L - 1)
        nll_d = nll_p if dense is main else _per_token(dense.token_loss, L - 1)[0]
        kl, _ = _per_token(main.token_kl, L)
        top1, _ = _per_token(main.token_top1, L)
    else:
        lacks.append("outputs")
    if main.token_texts is None:
        lacks.append("texts")
    if dense is None:
        lacks.append("dense")
    if not others:
        lacks.append("baselines")
    blocks = [getattr(lay, n) for lay in main.layers for n in BLOCK_NAMES]
    if all(b.importance is None for b in blocks):
        lacks.append("importance")
    if main.method in PROBING and any(b.pruned for b in blocks) and all(b.energy_fused is None for b in blocks):
        lacks.append("energies")
    seconds = {b.method: float(b.times["total_s"]) for b in (main, dense) if b is not None and "total_s" in b.times}
    labels = texts if main.token_labels is None else main.token_labels
    return Rebuilt(cfg, ratio, _info(record, main), ids, mask, _description(record, B, L), [list(r) for r in texts],
                   [list(r) for r in labels], main, dense, nll_d, nll_p, nll_mask, kl, top1,
                   "".join(texts[0][:24]).strip(), seconds,
                   Replayed(record, name, others, tuple(k for k in LACKS if k in lacks)))
