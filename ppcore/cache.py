"""Where ppcore caches things on disk, and the content keys that name each cache entry.

A key changes whenever what the entry was computed from changes, and only then:
  * converted GGUF models (``models/``): the file's content (`file_digest`) and `conversion_key`;
  * model fingerprints: a content hash for folders (`fingerprint_folder`), the commit or the snapshot's
    content for hub ids (`hub_fingerprint`, `snapshot_fingerprint`), the config plus torch for random
    models (`random_fingerprint`);
  * tokenised corpora (``tokens/``): the text and the tokenizer's content (`tokens_key`);
  * calibration statistics (``calib/``): the model, the windows, the batch size, the engine code and the
    numerics (`calib_key`; docs/algorithm.md §7, §8.1).
File digests of big files are remembered in ``hashes/`` so gigabytes are read once. The key strings are
part of the on-disk format: changing how one is built orphans every entry cached under it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import pkgutil
import threading
import weakref
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from .errors import ConfigError
from .versions import package_version, source_hash

if TYPE_CHECKING:
    from .loading import LoadedModel

CONVERSION_VERSION = 2  # bump when the cached conversion format changes (the code and libraries are keyed too)
STATS_VERSION = 2  # bump when the calibration statistics or their update rules change
MEMO_MIN_BYTES = 1 << 20  # files at least this big have their content hash remembered in cache_root()/hashes
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt")  # the files of a checkpoint folder that are hashed


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    """Where ppcore keeps converted models, hashes, tokens and calibration statistics (created if missing).

    `cache_dir`, else $PPCORE_CACHE, else ~/.cache/ppcore. Raises ConfigError when it cannot be created
    (a file in the way, no permission).
    """
    root = Path(cache_dir or os.environ.get("PPCORE_CACHE") or Path.home() / ".cache" / "ppcore")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot use {root} as the cache folder ({e.strerror or e}): give a writable folder "
                          "with --cache-dir or PPCORE_CACHE") from None
    return root


def tokens_path(key: str, cache_dir: Optional[str | Path] = None) -> Path:
    """The .npy file that holds a tokenised corpus under `key` (`tokens_key`)."""
    return cache_root(cache_dir) / "tokens" / f"{key}.npy"


def calib_path(key: str, cache_dir: Optional[str | Path] = None) -> Path:
    """The .safetensors file that holds calibration statistics under `key` (`calib_key`)."""
    return cache_root(cache_dir) / "calib" / f"{key}.safetensors"


def offload_folder(root: Path, fingerprint: str) -> Path:
    """Where accelerate writes a model's disk-offloaded weights: per model fingerprint, under `root`."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in fingerprint)
    return root / "offload" / safe


# --- file content ---------------------------------------------------------------------------------
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 hex digest of a file's content, read in chunks of `chunk` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stat_id(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def file_digest(path: Path, root: Optional[Path] = None, memo_min_bytes: int = MEMO_MIN_BYTES) -> str:
    """sha256 hex digest of a file's content, always by content, read at most once per file version.

    Files of at least `memo_min_bytes` have their digest remembered in `cache_root(root)/hashes`, keyed by
    the resolved path, size, mtime_ns, inode and ctime_ns: a later call with none of them changed reads
    the small index entry instead of gigabytes. A file that changes while it is read is not remembered.
    Raises OSError if the file cannot be read.
    """
    real = Path(path).resolve()
    before = real.stat()
    if before.st_size < memo_min_bytes:
        return sha256_file(real)
    ident = json.dumps([str(real), *_stat_id(before)])
    entry = cache_root(root) / "hashes" / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"
    try:
        rec = json.loads(entry.read_text())
        if rec.get("id") == ident and isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64:
            return rec["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # no entry, or a damaged one: hash again
    digest = sha256_file(real)
    if _stat_id(real.stat()) == _stat_id(before):
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps({"id": ident, "sha256": digest}))
            os.replace(tmp, entry)
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return digest


# --- model fingerprints -----------------------------------------------------------------------------
def fingerprint_folder(folder: Path, root: Optional[Path] = None, memo_min_bytes: int = MEMO_MIN_BYTES) -> str:
    """Content hash (16 hex digits) of a checkpoint folder's config and weight files, whatever their size.

    Each file is hashed by content (names and sizes alone let two fine-tunes of one base collide);
    big files' digests are remembered (`file_digest`), so only the first load reads them.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        h.update(file_digest(p, root, memo_min_bytes).encode())
    return h.hexdigest()[:16]


def hub_fingerprint(spec: str, revision: str) -> str:
    """Fingerprint of a hub id pinned to a commit: 'hub:{spec}@{revision}'."""
    return f"hub:{spec}@{revision}"


def snapshot_fingerprint(spec: str, snapshot: Path, root: Optional[Path] = None) -> str:
    """Fingerprint of a hub id whose commit is unknown: the content of the snapshot folder it loaded from."""
    return f"hub:{spec}@content-{fingerprint_folder(snapshot, root)}"


def random_fingerprint(spec: str, cfg: Any, device: torch.device, seed: int = 0) -> str:
    """Fingerprint of a random-weight model: its spec, its whole config, the seed and what draws the weights.

    The weights come from torch's random number generator (its CPU and CUDA streams differ), so the
    torch version and the device type are part of it.
    """
    h = hashlib.sha256()
    for part in (spec, cfg.to_json_string(use_diff=False), f"seed={seed}", f"torch={torch.__version__}",
                 f"device={torch.device(device).type}"):
        h.update(part.encode())
        h.update(b"\0")
    return f"random:{spec.split(':', 1)[1]}-{h.hexdigest()[:16]}"


# --- GGUF conversions -------------------------------------------------------------------------------
def _library_versions() -> tuple[tuple[str, str], ...]:
    """Versions of the libraries a GGUF conversion runs through."""
    return tuple((name, package_version(name)) for name in ("transformers", "gguf", "torch", "numpy", "safetensors"))


def conversion_key(converter: Callable[..., Any]) -> str:
    """What a cached GGUF conversion depends on besides the file (12 hex digits): CONVERSION_VERSION, the
    versions of transformers, gguf, torch, numpy and safetensors, and the source of `converter`, the
    conversion function (editing it converts again)."""
    parts = {"version": CONVERSION_VERSION, "libraries": list(_library_versions()), "code": source_hash(converter)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def gguf_cache_entry(gguf: Path, root: Path, converter: Callable[..., Any]) -> tuple[Path, str]:
    """(converted folder, model fingerprint) of a GGUF file converted by `converter`: both change with the
    file's content and with `conversion_key(converter)`."""
    digest = file_digest(gguf, root)[:16]
    conv = conversion_key(converter)
    return root / "models" / f"gguf-{digest}-c{conv}", f"{digest}-c{conv}"


def conversion_manifest(gguf: Path, fingerprint: str, converter: Callable[..., Any]) -> dict[str, Any]:
    """What a converted folder's ppcore.json records: the GGUF's name and hash, and the conversion's key,
    version and libraries."""
    return {"gguf": gguf.name, "sha256_16": fingerprint.split("-")[0], "conversion_key": conversion_key(converter),
            "conversion_version": CONVERSION_VERSION, "libraries": dict(_library_versions())}


# --- tokenizers and tokens ----------------------------------------------------------------------------
# init kwargs that name where files were read from, not how text is tokenised (the content is hashed)
_PATH_KWARGS = {"name_or_path", "tokenizer_file", "vocab_file", "merges_file", "cache_dir", "_commit_hash",
                "local_files_only", "token", "revision"}
_TOKENIZER_HASHES: dict[int, str] = {}  # id(tokenizer) -> hash, dropped when the tokenizer is collected
_TOKENIZER_LOCK = threading.Lock()


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of everything that decides how a tokenizer splits text (not memoised; see tokenizer_hash)."""
    h = hashlib.sha256()

    def add(label: str, value: Any) -> None:
        h.update(label.encode() + b"=")
        h.update(value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass"))
        h.update(b"\0")

    cls = type(tokenizer)
    add("class", f"{cls.__module__}.{cls.__qualname__}")
    add("versions", f"transformers={package_version('transformers')} tokenizers={package_version('tokenizers')}")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # normaliser, pre-tokeniser, model (whole vocabulary and merges), added tokens, post-processor
        add("backend", backend.to_str())
    else:
        add("vocab", json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False))
        sp = getattr(tokenizer, "sp_model", None)
        if sp is not None and hasattr(sp, "serialized_model_proto"):
            add("sentencepiece", sp.serialized_model_proto())
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if isinstance(ranks, dict):
            add("merges", json.dumps(sorted((" ".join(k), v) for k, v in ranks.items()), ensure_ascii=False))
    kwargs = {k: v for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items() if k not in _PATH_KWARGS}
    add("init_kwargs", json.dumps(kwargs, sort_keys=True, default=str, ensure_ascii=False))
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    add("added", json.dumps(sorted((int(i), str(t)) for i, t in added.items()), ensure_ascii=False))
    return h.hexdigest()


def _forget(key: int) -> None:
    with _TOKENIZER_LOCK:
        _TOKENIZER_HASHES.pop(key, None)


def tokenizer_hash(tokenizer: Any) -> str:
    """Content hash (sha256 hex) of a tokenizer: its whole serialisation (for fast tokenizers the backend's
    JSON, else the whole vocabulary, merges or sentencepiece model), class, init kwargs, added tokens, and
    the transformers and tokenizers versions. Computed once per tokenizer object (the tokenizer is not
    touched; the memo entry goes when the tokenizer is garbage-collected)."""
    key = id(tokenizer)
    with _TOKENIZER_LOCK:
        known = _TOKENIZER_HASHES.get(key)
    if known is not None:
        return known
    digest = _tokenizer_fingerprint(tokenizer)
    try:
        weakref.finalize(tokenizer, _forget, key)
    except TypeError:  # cannot be weakly referenced: no memo, since its id may be reused later
        return digest
    with _TOKENIZER_LOCK:
        _TOKENIZER_HASHES[key] = digest
    return digest


def tokens_key(tokenizer: Any, text: str) -> str:
    """Key (20 hex digits) of the tokenised-corpus cache: the text, the tokenizer's content hash and its
    current size."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(tokenizer_hash(tokenizer).encode())
    h.update(str(len(tokenizer)).encode())  # tokens added after the hash was taken
    return h.hexdigest()[:20]


def windows_hash(windows: Tensor) -> str:
    """Content hash (16 hex digits) of integer token windows (N x L), as int64 bytes."""
    return hashlib.sha256(windows.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


# --- calibration statistics ---------------------------------------------------------------------------
# The engine code a calibration pass runs through: its source is part of the key, so statistics computed
# by other code are never reused even where STATS_VERSION was not bumped. Found from the module below
# rather than listed, so a module split off the walk later is keyed too.
CALIB_ROOT = "calibrate"


def _engine_modules() -> list["ModuleType"]:
    """ppcore.calibrate and every ppcore module it reaches, transitively, through its module-level names
    (modules imported, and the modules defining the functions, classes and objects imported); a
    subpackage reached counts whole. Sorted by name. Imports inside functions are not followed."""
    prefix = f"{__package__}."
    seen: dict[str, ModuleType] = {}
    todo = [prefix + CALIB_ROOT]
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith(prefix):
            continue
        module = seen[name] = importlib.import_module(name)
        todo.extend(_defining_module(value) for value in vars(module).values())
        parent = name.rpartition(".")[0]
        todo.append(parent)  # the package of a subpackage module, which brings its other modules
        if hasattr(module, "__path__"):
            todo.extend(f"{name}.{info.name}" for info in pkgutil.iter_modules(module.__path__))
    return [seen[name] for name in sorted(seen)]


def _defining_module(value: Any) -> str:
    """The name of the module `value` is, or was defined in ('' when it says none)."""
    if isinstance(value, ModuleType):
        return value.__name__
    try:
        name = getattr(value, "__module__", None)
    except Exception:  # an object whose attribute lookup itself fails names no module
        return ""
    return name if isinstance(name, str) else ""


@functools.lru_cache(maxsize=1)
def engine_source_hash() -> str:
    """16 hex digits of the source of the engine modules a calibration pass runs through (read once per process)."""
    return source_hash(*_engine_modules())[:16]


def numerics_key(device: str) -> str:
    """Settings that change fp32 results on this device type: matmul precision and, on CUDA, TF32."""
    out = f"matmul={torch.get_float32_matmul_precision()}"
    if device == "cuda":
        out += f" tf32={torch.backends.cuda.matmul.allow_tf32} cudnn_tf32={torch.backends.cudnn.allow_tf32}"
    return out


def calib_key(lm: "LoadedModel", windows: Tensor, batch_size: int) -> str:
    """Key (20 hex digits) of the calibration cache: everything the statistics depend on.

    The model's fingerprint (weights and config), dtype, device type and placement over devices, the
    windows (N x L) and the batch size (docs/algorithm.md §8.1: FLAP's statistics depend on it),
    STATS_VERSION and the source of the engine modules the pass runs through, the torch and transformers
    versions (kernels; the model's own rotary module) and the fp32 matmul settings.
    """
    placement = getattr(lm.model, "hf_device_map", None)
    parts = [lm.fingerprint, str(lm.dtype), lm.device.type, windows_hash(windows), str(tuple(windows.shape)),
             str(batch_size), str(STATS_VERSION), engine_source_hash(), f"torch={torch.__version__}",
             f"transformers={package_version('transformers')}", numerics_key(lm.device.type),
             json.dumps(sorted((str(k), str(v)) for k, v in placement.items())) if placement else "one-device"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
