"""The one protocol type: how a result was produced, written into every result and run record.

`eval`, `bench`, `speed`, `generate` and the app all describe their runs with a `Protocol`, built by
`build_protocol`, so a record from any of them reads the same way. Sections that differ in detail by
front end (what was scored, how calibration was drawn) are plain dictionaries with documented keys
(`describe_windows`, `describe_calibration`). The evaluation protocol itself is
docs/algorithm.md §9. Records import this module, so it imports neither configs nor methods.
"""
from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from torch import Tensor

from .data import windows_hash
from .ratios import calibration_batches

if TYPE_CHECKING:
    from .loading import LoadedModel

PPL_DEFINITION = "exp(mean over scored batches of each batch's mean token cross-entropy)"
WARMUP_OFFICIAL = "first batch run once before scoring: unscored, untimed, no history update"
FRONT_ENDS = ("eval", "bench", "speed", "generate", "app", "zeroshot", "ablate")


@dataclass
class Protocol:
    """Everything needed to reproduce a result.

    model: name, fingerprint, family, model_type. config: `PruneConfig.to_dict()` of the run (None where
    one result covers several configs: `speed` lists them under `configs`). data: what was scored
    (dataset or source, windows, seq_len, batch_size, batches, windows_sha256_16). calibration: the
    calibration windows as `describe_calibration` gives them (their source, windows, seq_len,
    batch_size, batches, last_batch_size, windows_sha256_16, seed); None when the run drew no
    calibration windows. front_end: "eval",
    "bench", "speed", "generate" or "app"; settings: that front end's own settings, when it has any.
    warmup and ppl: the warm-up and perplexity definitions (docs/algorithm.md §9.3, §9.4) where the
    front end scores perplexity, else None.
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
    ppl: Optional[str] = PPL_DEFINITION
    environment: dict[str, Any] = field(default_factory=dict)
    settings: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys a front end adds (e.g. bench's interleaving)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: the fields, with `extra`'s keys at the top level."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Protocol":
        """From `to_dict()` output or an older record's free-form dict (unknown keys go to `extra`);
        a Protocol is returned as it is."""
        if isinstance(d, Protocol):
            return d
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
        """`protocol.get("seed")`, as on the dict it is saved as."""
        return self.to_dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def keys(self):
        """The keys of `to_dict()`."""
        return self.to_dict().keys()


def environment() -> dict[str, Any]:
    """Versions and machine: ppcore, Python, torch, transformers, platform, CPU threads, GPU name (or None)."""
    import torch
    import transformers

    from . import __version__

    return {
        "ppcore": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe_windows(source: dict[str, Any], windows: Tensor, batch_size: int) -> dict[str, Any]:
    """The `data` section of scored windows (N, L): `source` (dataset, split, corpus_tokens, or
    windows_file) plus windows N, seq_len L, batch_size, batches (N // batch_size full batches) and
    windows_sha256_16 (the first 16 hex digits of the windows' SHA-256)."""
    n, seq_len = (int(x) for x in windows.shape)
    return {**source, "windows": n, "seq_len": seq_len, "batch_size": batch_size, "batches": n // batch_size,
            "windows_sha256_16": windows_hash(windows)}


def describe_calibration(source: dict[str, Any], windows: Tensor, batch_size: int,
                         seed: Optional[int] = None) -> dict[str, Any]:
    """The `calibration` section: as `describe_windows`, but batches and last_batch_size count the
    calibration pass's batches, the last one smaller when the windows do not fill it (docs/algorithm.md
    §8.1c: FLAP's official compensation divides by the batch size); plus the seed that drew the
    windows, when given."""
    out = describe_windows(source, windows, batch_size)
    out["batches"], out["last_batch_size"] = calibration_batches(out["windows"], batch_size)
    if seed is not None:
        out["seed"] = seed
    return out


def build_protocol(front_end: str, lm: "LoadedModel", data: dict[str, Any], *,
                   config: Optional[dict[str, Any]] = None, calibration: Optional[dict[str, Any]] = None,
                   seed: Optional[int] = None, scores_perplexity: bool = True,
                   settings: Optional[dict[str, Any]] = None, **extra: Any) -> Protocol:
    """The protocol of a run of `front_end` (one of FRONT_ENDS) on `lm`: the one place a Protocol is made.

    `scores_perplexity` adds the official warm-up and perplexity definitions (docs/algorithm.md §9.3,
    §9.4); `speed` and `generate` score none. Keyword arguments not named here go to `extra`.
    """
    return Protocol(
        front_end=front_end,
        model={"name": lm.name, "fingerprint": lm.fingerprint, "family": lm.adapter.family,
               "model_type": lm.model.config.model_type},
        data=data, config=config, calibration=calibration, seed=seed, device=str(lm.device),
        dtype=str(lm.dtype).replace("torch.", ""), warmup=WARMUP_OFFICIAL if scores_perplexity else None,
        ppl=PPL_DEFINITION if scores_perplexity else None, environment=environment(), settings=settings,
        extra=extra,
    )
