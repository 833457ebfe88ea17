"""The one protocol type: how a result was produced, written into every result and run record.

`eval`, `bench`, `speed`, `generate` and the app all describe their runs with a `Protocol`, so a
record from any of them reads the same way. Sections that differ in detail by front end (what was
scored, how calibration was drawn) are plain dictionaries with documented keys (docs/run-record.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Mapping, Optional

PPL_DEFINITION = "exp(mean over scored batches of each batch's mean token cross-entropy)"
WARMUP_OFFICIAL = "first batch run once before scoring: unscored, untimed, no history update"


@dataclass
class Protocol:
    """Everything needed to reproduce a result.

    model: name, fingerprint, family, model_type. config: `PruneConfig.to_dict()` of the run (None where
    a record holds several configs, e.g. `bench`). data: what was scored (dataset or source, windows,
    seq_len, batch_size, batches, windows_sha256_16). calibration: `CalibConfig.to_dict()` plus seed,
    batches, last_batch_size and windows_sha256_16; None when no statistics were used. front_end: "eval",
    "bench", "speed", "generate" or "app"; settings: that front end's own settings, when it has any.
    Reads like a mapping too (`protocol["calibration"]`), for code written against the dict form.
    """

    front_end: str
    model: dict[str, Any]
    data: dict[str, Any]
    config: Optional[dict[str, Any]] = None
    calibration: Optional[dict[str, Any]] = None
    seed: Optional[int] = None
    device: str = ""
    dtype: str = ""
    warmup: Optional[str] = None
    ppl: str = PPL_DEFINITION
    environment: dict[str, Any] = field(default_factory=dict)
    settings: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a front end adds (e.g. bench's interleaving)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Protocol":
        """From `to_dict()` output or an older record's free-form dict (unknown keys go to `extra`)."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        known.setdefault("front_end", str(d.get("app", "") and "app") or "unknown")
        known.setdefault("model", {})
        known.setdefault("data", {})
        return cls(**known, extra=extra)

    def replace(self, **changes: Any) -> "Protocol":
        """A copy with some sections changed (unknown names go to `extra`)."""
        d = self.to_dict()
        d.update(changes)
        return Protocol.from_dict(d)

    # Mapping-style reads, for scripts that treat the protocol as the JSON it is saved as.
    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def keys(self):
        return self.to_dict().keys()
