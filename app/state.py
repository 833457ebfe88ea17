"""The app's settings: one typed record, shared through the URL (st.query_params) and the sidebar."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ppcore import ConfigError, PruneConfig

# Demo mode (hosted teaching): the model is locked to the default and the batch is capped.
DEMO = os.environ.get("PP_DEMO", "") == "1"
DEMO_BATCH, DEMO_SEQ, DEMO_CALIB, DEMO_NEW_TOKENS = 8, 128, 16, 32
MAX_BATCH = DEMO_BATCH if DEMO else 64
MAX_SEQ = DEMO_SEQ if DEMO else 1024
MAX_CALIB = DEMO_CALIB if DEMO else 256
MAX_NEW_TOKENS = DEMO_NEW_TOKENS if DEMO else 256
SOURCES = ("examples", "paste", "upload", "corpus")
SPLITS = ("line", "paragraph")


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on, apart from an uploaded file's bytes."""

    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    source: str = "examples"  # examples | paste | upload | corpus
    text: str = ""  # pasted text
    split: str = "line"  # one sample per line, or per blank-line paragraph
    column: str = ""  # the text column of an uploaded .csv / .jsonl
    corpus: str = "wiki-vital"
    batch_size: int = 8
    seq_len: int = 64
    method: str = "pp"
    ratio: float = 0.4
    token_frac: float = 0.5
    sample_frac: float = 0.05
    skip: str = "0-2"
    attn: bool = True
    mlp: bool = True
    calib: int = 16  # calibration windows
    calib_len: int = 128  # tokens per calibration window
    ema: float = 0.99
    seed: int = 0

    def key(self, extra: str = "") -> str:
        """A stable hash: results are cached per key, so a rerun with the same settings is free."""
        return hashlib.sha256((json.dumps(asdict(self), sort_keys=True) + extra).encode()).hexdigest()[:16]

    def to_query(self) -> dict[str, str]:
        """Only what differs from the defaults, so shared URLs stay short."""
        default = Settings()
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(default, f.name):
                out[f.name] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out

    def locked(self) -> "Settings":
        """Demo mode: the default model, and batch sizes within the caps."""
        if not DEMO:
            return self
        return replace(self, model="default", batch_size=min(self.batch_size, DEMO_BATCH),
                       seq_len=min(self.seq_len, DEMO_SEQ), calib=min(self.calib, DEMO_CALIB),
                       calib_len=min(self.calib_len, DEMO_SEQ))


def from_query(params: Mapping[str, Any]) -> tuple[Settings, list[str]]:
    """Settings from URL parameters; a value that does not parse is reported and left at its default."""
    default = Settings()
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        if f.name not in params:
            continue
        raw = params[f.name]
        raw = raw[-1] if isinstance(raw, list) else str(raw)
        kind = type(getattr(default, f.name))
        try:
            if kind is bool:
                if raw.lower() not in ("1", "0", "true", "false"):
                    raise ValueError
                values[f.name] = raw.lower() in ("1", "true")
            else:
                values[f.name] = kind(raw)
        except ValueError:
            problems.append(f"URL parameter {f.name}={raw!r} is not a valid {kind.__name__}; using {getattr(default, f.name)!r}")
    return replace(default, **values), problems


def parse_skip(text: str) -> tuple[int, ...]:
    """'0-2,5' -> (0, 1, 2, 5); empty -> no skipped layers."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ConfigError(f"skipped layers {text!r}: use indices and ranges like '0-2,5'") from None
    return tuple(sorted(out))


def prune_config(s: Settings, method: str | None = None, ratio: float | None = None) -> PruneConfig:
    """The engine's config for these settings (raises ConfigError with the engine's message)."""
    return PruneConfig(method=method or s.method, ratio=s.ratio if ratio is None else ratio,
                       token_frac=s.token_frac, sample_frac=s.sample_frac, skip_layers=parse_skip(s.skip),
                       prune_attn=s.attn, prune_mlp=s.mlp, ema=s.ema)
