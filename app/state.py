"""The app's settings: one typed record, shared through the URL (st.query_params) and the sidebar."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ppcore import METHODS, PruneConfig
from ppcore.config import CALIB_BATCH_SIZE, MAX_LAYER_INDEX, MAX_LAYER_LIST_CHARS, parse_layer_list

# Demo mode (hosted teaching): the model, device, dtype and corpus are locked, the batch is capped,
# uploads are small text files, and messages carry no server paths (app/messages.py). The environment
# is read on every script run (demo()), so a test can switch it; DEMO is its value at import.
DEMO = os.environ.get("PP_DEMO", "") == "1"
DEMO_BATCH, DEMO_SEQ, DEMO_CALIB, DEMO_NEW_TOKENS = 8, 128, 16, 32
SOURCES = ("examples", "paste", "upload", "corpus")
SPLITS = ("line", "paragraph")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "map")  # map: accelerate spreads the model over GPUs, CPU and disk
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEMO_CORPORA = ("wiki-vital",)  # embedded: no hub download, no file path
MAX_SKIP_INDEX = MAX_LAYER_INDEX  # skipped-layer indices: the engine's bound (ppcore.config.parse_layer_list)
MAX_SKIP_CHARS = MAX_LAYER_LIST_CHARS
MAX_SEED = 2**31 - 1
URL_TEXT_CHARS = 2000  # pasted text longer than this stays out of the URL (browsers cap URL length)


def demo() -> bool:
    """Demo mode for this script run: PP_DEMO=1 now, or at import (it can be switched on, never off)."""
    return DEMO or os.environ.get("PP_DEMO", "") == "1"


@dataclass(frozen=True)
class Limits:
    """What one run may ask for. Every limit is checked on the server, whatever the widgets allow."""

    batch: int
    seq: int
    calib: int
    calib_len: int
    calib_batch: int  # windows per calibration batch (memory: min(this, calib) x calib_len tokens at once)
    new_tokens: int
    upload_mb: int  # per uploaded file
    text_chars: int  # pasted text
    rows: int = 10_000  # rows of an uploaded .csv / .jsonl that are read (the batch needs at most `batch`)
    repeats: int = 20  # timing repeats (latency, method comparison)
    ratios: int = 6  # ratios in one method comparison
    extra_batches: int = 8  # stability: batches after the current one

    @property
    def upload_bytes(self) -> int:
        return self.upload_mb * 1024 * 1024


LOCAL = Limits(batch=64, seq=1024, calib=256, calib_len=1024, calib_batch=256, new_tokens=256, upload_mb=256,
               text_chars=50_000_000)
DEMO_LIMITS = Limits(batch=DEMO_BATCH, seq=DEMO_SEQ, calib=DEMO_CALIB, calib_len=DEMO_SEQ,
                     calib_batch=CALIB_BATCH_SIZE, new_tokens=DEMO_NEW_TOKENS, upload_mb=1, text_chars=100_000, rows=2_000, repeats=3,
                     ratios=3, extra_batches=3)


def limits() -> Limits:
    return DEMO_LIMITS if demo() else LOCAL


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
    calib_batch_size: int = CALIB_BATCH_SIZE  # windows per calibration batch (FLAP's compensation divides by it)
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
        """Demo mode: the default model on the server's own device and dtype, the embedded corpus, and
        sizes within the caps. Applied to every run's settings (URL or widgets), so nothing bypasses it."""
        if not demo():
            return self
        lim = limits()
        return replace(self, model="default", device="auto", dtype="auto",
                       corpus=self.corpus if self.corpus in DEMO_CORPORA else DEMO_CORPORA[0],
                       batch_size=min(self.batch_size, lim.batch), seq_len=min(self.seq_len, lim.seq),
                       calib=min(self.calib, lim.calib), calib_len=min(self.calib_len, lim.calib_len),
                       calib_batch_size=min(self.calib_batch_size, lim.calib_batch),
                       text=self.text[: lim.text_chars])


CHOICES: dict[str, tuple[str, ...]] = {"source": SOURCES, "split": SPLITS, "device": DEVICE_CHOICES,
                                       "dtype": DTYPE_CHOICES, "method": METHODS}


def _short(raw: str, n: int = 40) -> str:
    return raw if len(raw) <= n else raw[:n] + "…"


def from_query(params: Mapping[str, Any]) -> tuple[Settings, list[str]]:
    """Settings from URL parameters; a value that does not parse is reported and left at its default."""
    default = Settings()
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        if f.name not in params:
            continue
        raw = params[f.name]
        raw = str(raw[-1] if isinstance(raw, list) and raw else raw)
        kind = type(getattr(default, f.name))
        what = f"a valid {kind.__name__}"
        try:
            if kind is bool:
                if raw.lower() not in ("1", "0", "true", "false"):
                    raise ValueError
                values[f.name] = raw.lower() in ("1", "true")
            elif f.name in CHOICES:
                what = "one of " + ", ".join(CHOICES[f.name])
                if raw not in CHOICES[f.name]:
                    raise ValueError
                values[f.name] = raw
            else:
                v = kind(raw)
                if kind is float and not math.isfinite(v):
                    what = "a finite number"
                    raise ValueError
                values[f.name] = v
        except ValueError:
            problems.append(f"URL parameter {f.name}={_short(raw)!r} is not {what}; using {getattr(default, f.name)!r}")
    return replace(default, **values), problems


def parse_skip(text: str) -> tuple[int, ...]:
    """The skipped-layers setting as indices: the engine's one parser, `ppcore.config.parse_layer_list`
    ('0-2,5' -> (0, 1, 2, 5); empty -> none; anything else, reversed or huge ranges included, a ConfigError)."""
    return parse_layer_list(text)


def prune_config(s: Settings, method: str | None = None, ratio: float | None = None) -> PruneConfig:
    """The engine's config for these settings (raises ConfigError with the engine's message)."""
    return PruneConfig(method=method or s.method, ratio=s.ratio if ratio is None else ratio,
                       token_frac=s.token_frac, sample_frac=s.sample_frac, skip_layers=parse_skip(s.skip),
                       prune_attn=s.attn, prune_mlp=s.mlp, ema=s.ema)
