"""The run record: what each batch's pruning decided, why, and what it cost.

A public format (the app draws from it; users export and replay it): the schema is documented in
README.md, section "Run record". Everything is plain lists and numbers on the CPU.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

# 2: batches are stored in the walk's layout (each row's real tokens first, so column = token position),
#    and "flops" carries "head" (the part outside the decoder layers). Version 1 records still load.
SCHEMA_VERSION = 2
LEVELS = ("none", "summary", "full")
BLOCK_NAMES = ("attn", "mlp")  # the two prunable blocks of a decoder layer, in the order they run


def round_floats(values: Any, digits: int = 6) -> Any:
    """Floats to `digits` significant digits: keeps exported records small and stable."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return arr.tolist()
    out = np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(arr)
    return out.tolist()


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
    energy_probe: Optional[list[float]] = None  # per channel, summed over probe positions
    energy_history: Optional[list[float]] = None
    energy_fused: Optional[list[float]] = None
    flops: dict[str, int] = field(default_factory=dict)  # dense, pruned, probe
    times: dict[str, float] = field(default_factory=dict)  # probe_s, decide_s, full_s

    @property
    def kept_fraction(self) -> float:
        return len(self.kept) / self.total if self.total else 1.0


@dataclass
class LayerRecord:
    attn: BlockRecord
    mlp: BlockRecord


@dataclass
class BatchRecord:
    """One batch: what every layer decided, and the batch as the walk ran it.

    `input_ids` and `attention_mask` are in the walk's layout (`ppcore.walk.canonical_layout`): each
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
    times: dict[str, float] = field(default_factory=dict)  # embed_s, layers_s, head_s, total_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BatchRecord":
        layers = [LayerRecord(BlockRecord(**l["attn"]), BlockRecord(**l["mlp"])) for l in d["layers"]]
        rest = {k: v for k, v in d.items() if k != "layers" and k in cls.__dataclass_fields__}
        return cls(layers=layers, **rest)


@dataclass
class RunRecord:
    protocol: dict[str, Any]
    batches: list[BatchRecord]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "protocol": self.protocol, "batches": [b.to_dict() for b in self.batches]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        return cls(protocol=d.get("protocol", {}), batches=[BatchRecord.from_dict(b) for b in d["batches"]])

    @classmethod
    def load(cls, path: str | Path) -> "RunRecord":
        return cls.from_dict(json.loads(Path(path).read_text()))

