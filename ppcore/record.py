"""The run record: what each batch's pruning decided, why, and what it cost.

A public format (the app draws from it; users export and replay it): the schema is documented in
docs/run-record.md. Everything is plain lists and numbers on the CPU.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .protocol import Protocol

# 2: batches are stored in the walk's layout (each row's real tokens first, so column = token position),
#    and "flops" carries "head" (the part outside the decoder layers).
# 3: a probing method's block carries what stage 2 and the "why" panel draw: fusion_weight and weight_factor
#    (level "full"), kept_probe_only (with a history, any level). Versions 1 and 2 still load (new fields: None).
# 4: what a replay needs, written by the app's Export tab (ppcore.replay.export_record): a batch's token_texts,
#    token_loss, token_kl and token_top1 (per position, exact float32), the record's "saved" time, and the model's
#    sizes in protocol.model. Versions 1-3 still load (new fields: None).
# 5: a block's "forced": units kept whatever their score (PP+'s recovery core). Versions 1-4 still load (None).
# 6: a batch's token_labels (the export's): each token as it reads alone, where token_texts put a character split
#    over tokens all on its last one. Versions 1-5 still load (None: labels are the texts).
SCHEMA_VERSION = 6
SCHEMAS = (1, 2, 3, 4, 5, 6)  # the versions this code reads
LEVELS = ("none", "summary", "full")
BLOCK_NAMES = ("attn", "mlp")  # the two prunable blocks of a decoder layer, in the order they run


def round_floats(values: Any, digits: int = 6) -> Any:
    """Floats to `digits` significant digits: keeps exported records small and stable."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return arr.tolist()
    out = np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(arr)
    return out.tolist()


def exact_floats(values: Any, mask: Any = None) -> list:
    """A float32 array as nested lists of the shortest decimals that read back as the same float32 (a saved
    per-token loss replays bit for bit), None where `mask` (the same shape, 0/1) is 0."""
    arr = np.asarray(values, dtype=np.float32)
    keep = np.ones(arr.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    flat = [float(str(v)) if k else None for v, k in zip(arr.reshape(-1), keep.reshape(-1))]
    return np.array(flat, dtype=object).reshape(arr.shape).tolist()


@dataclass
class BlockRecord:
    """One attention or MLP block of one layer, for one batch.

    kept: kept query heads (attn) or intermediate channels (mlp), ascending; all of them when the
    layer is skipped or the method is dense. probe_*: indices into the batch (empty without a probe).
    """

    pruned: bool
    total: int
    kept: list[int]
    probe_tokens: list[int] = field(default_factory=list)
    probe_samples: list[int] = field(default_factory=list)
    scores: Optional[list[float]] = None
    importance: Optional[list[list[float]]] = None  # residual norm, samples x tokens (level "full")
    # Stage 2 (docs/algorithm.md §3.3-4), level "full", probing methods only; per channel C (H*d or I):
    energy_probe: Optional[list[float]] = None  # probe's mean-over-samples x^2, summed over probe positions
    energy_history: Optional[list[float]] = None  # the history at the same positions (None without history)
    energy_fused: Optional[list[float]] = None  # what PPsp scored
    fusion_weight: Optional[list[float]] = None  # a = P / (P + G + eps), averaged over probe positions
    weight_factor: Optional[list[float]] = None  # sqrt(sum_i W[i, c]^4) of the final projection
    kept_probe_only: Optional[list[int]] = None  # the keep-set PPsp picks from the probe alone (any level)
    forced: Optional[list[int]] = None  # units kept whatever their score (PP+'s recovery core), ascending; schema 5
    flops: dict[str, int] = field(default_factory=dict)  # dense, pruned, probe
    times: dict[str, float] = field(default_factory=dict)  # probe_s, decide_s, full_s

    @property
    def kept_fraction(self) -> float:
        """Kept over total heads or channels (1.0 for an empty block)."""
        return len(self.kept) / self.total if self.total else 1.0


@dataclass
class LayerRecord:
    """One decoder layer's two blocks (BLOCK_NAMES order)."""

    attn: BlockRecord
    mlp: BlockRecord


@dataclass
class BatchRecord:
    """One batch: what every layer decided, and the batch as the walk ran it.

    `input_ids` and `attention_mask` are in the walk's layout (`ppcore.layout.canonical_layout`): each
    row's real tokens first, pad-only columns dropped, so `probe_tokens` and the columns of
    `importance` are token positions whatever side the caller padded.
    """

    method: str
    ratio: float
    phase: str  # "warmup", "scored" or "single"
    index: int
    input_ids: list[list[int]]
    attention_mask: Optional[list[list[int]]]
    layers: list[LayerRecord]
    loss: Optional[float] = None  # mean token cross-entropy of the batch
    tokens: int = 0  # scored (predicted, non-pad) tokens
    flops: dict[str, int] = field(default_factory=dict)  # whole model: dense, pruned, probe
    units: dict[str, int] = field(default_factory=dict)  # heads and MLP channels: attn, attn_kept, mlp, mlp_kept
    times: dict[str, float] = field(default_factory=dict)  # embed_s, layers_s, head_s, total_s
    # Schema 4, the app's export (ppcore.replay.export_record): what its views draw per token, None elsewhere.
    token_texts: Optional[list[list[str]]] = None  # B x L, each position's text ('' for pads): the analysed batch
    token_loss: Optional[list[list[Optional[float]]]] = None  # B x (L-1), nats, predicting t+1; None: not scored
    token_kl: Optional[list[list[Optional[float]]]] = None  # B x L, KL(dense || this run), nats; None at pads
    token_top1: Optional[list[list[Optional[int]]]] = None  # B x L, 1: the same most likely next token as dense
    # Schema 6: B x L, each token as it reads alone (a part of a character as '<bytes F0 9F>'; '' for pads).
    token_labels: Optional[list[list[str]]] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the "batches" entries of a saved RunRecord)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchRecord":
        """From `to_dict()` output (unknown keys are ignored)."""
        layers = [LayerRecord(BlockRecord(**lay["attn"]), BlockRecord(**lay["mlp"])) for lay in d["layers"]]
        rest = {k: v for k, v in d.items() if k != "layers" and k in cls.__dataclass_fields__}
        return cls(layers=layers, **rest)


@dataclass
class RunRecord:
    """A run's protocol and its batch records (warm-up first, then the scored batches in order).

    `protocol` is a `ppcore.protocol.Protocol`; a plain dict (an older record's free-form protocol, or a
    caller's) is converted with `Protocol.from_dict`, its keys kept. Saved as JSON with plain dicts.
    """

    protocol: Protocol
    batches: list[BatchRecord]
    saved: Optional[str] = None  # when the app exported it, ISO 8601 UTC ("2025-01-31T12:00:00Z"; schema 4)

    def __post_init__(self) -> None:
        if not isinstance(self.protocol, Protocol):
            self.protocol = Protocol.from_dict(self.protocol or {})

    def to_dict(self) -> dict[str, Any]:
        """{"schema", "saved", "protocol", "batches"} as plain JSON-ready values."""
        return {"schema": SCHEMA_VERSION, "saved": self.saved, "protocol": self.protocol.to_dict(),
                "batches": [b.to_dict() for b in self.batches]}

    def save(self, path: str | Path) -> None:
        """Write `to_dict()` as JSON to `path`."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        """From `to_dict()` output; schemas 1-4 and free-form protocols load too. (`ppcore.replay.read_record` reads
        an untrusted file: it checks the schema, the sizes and every index first.)"""
        saved = d.get("saved")
        return cls(protocol=Protocol.from_dict(d.get("protocol") or {}),
                   batches=[BatchRecord.from_dict(b) for b in d["batches"]],
                   saved=saved if isinstance(saved, str) else None)

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        """Read a record written by `save` (or `eval --record`)."""
        return cls.from_dict(json.loads(Path(path).read_text()))
