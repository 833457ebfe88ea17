"""Loading a causal LM: an embedded model by name ('default', 'gemma3-270m'), a hub id, a local folder or a
.gguf file.

`trust_remote_code` is never enabled. GGUF files are dequantised once and cached on disk as
safetensors, keyed by the file's content hash and by the conversion (its code and the library
versions), so later loads take seconds. A checkpoint whose tensors do not match its config is refused.
Every failure raises one `ModelLoadError` or `UnsupportedModelError` that names what was asked and
what is supported.

Every model gets a fingerprint that changes whenever its weights or config do (it keys the
calibration cache): a content hash for folders and GGUF files, the commit for hub ids, and the config
plus the torch version for random models; `ppcore.cache` builds them. Whether a model is supported is
decided by `ppcore.adapters.check_supported`, before any weight is read.
"""
from __future__ import annotations

import difflib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .adapters import Adapter, check_supported, make_adapter
from .cache import (cache_root, conversion_manifest, file_digest, fingerprint_folder, gguf_cache_entry,
                    hub_fingerprint, offload_folder, random_fingerprint, snapshot_fingerprint)
from .embedded import ALIASES, EMBEDDED, EmbeddedModel, Progress, embedded_model, find_gguf
from .errors import ModelLoadError
from .integrity import check_finite, check_loading_info

DEFAULT_WHEEL = EMBEDDED["default"].parts[0].requirement
DEFAULT_PACKAGE = EMBEDDED["default"].parts[0].package
DEFAULT_GGUF = EMBEDDED["default"].gguf_name
MODEL_NAMES = (*EMBEDDED, *ALIASES)  # what --model takes besides hub ids, folders and .gguf paths
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger("ppcore")


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

    @property
    def bos_id(self) -> Optional[int]:
        """The token every window and prompt starts with, for a family trained with one on every sequence
        (`Adapter.prepend_bos`: Gemma 3, whose loss is about twice as high without it), else None (the
        official protocol's windows start anywhere in the text)."""
        if not self.adapter.prepend_bos or self.tokenizer is None:
            return None
        return getattr(self.tokenizer, "bos_token_id", None)

    def with_bos(self, ids: list[int]) -> list[int]:
        """A prompt's token ids with `bos_id` in front (unless it is already there, or there is none)."""
        bos = self.bos_id
        return ids if bos is None or ids[:1] == [bos] else [bos, *ids]

    def extra_weight_bytes(self) -> int:
        """Bytes of tensors held by this object or its adapter (directly, or in a dict, list or tuple) that
        are not the model's own parameters or buffers: copies the engine would keep per loaded model."""
        own = {t.untyped_storage().data_ptr() for t in [*self.model.parameters(), *self.model.buffers()]}
        found: dict[int, int] = {}
        for holder in (self, self.adapter):
            for value in list(vars(holder).values()):
                # list(...) copies a dict another thread may be adding to (the adapter's transposes) in one step
                items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                    else (value,)
                for t in items:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in own:
                        found[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(found.values())

    def info(self) -> dict[str, Any]:
        """What `ppcore info` prints: name, family, fingerprint, device, dtype, sizes (`ModelDims`), the
        parameter count and bytes, the bytes of weight copies the engine keeps per loaded model (the transposes a
        per-batch slicing run made in this process, `Adapter.transposed`; 0 before any) and the most such a run
        adds (`pp_extra_weight_bytes_max`) and,
        when dispatched, how many modules sit on each device."""
        d = self.adapter.dims
        placement = getattr(self.model, "hf_device_map", None)
        return {
            "name": self.name, "family": self.adapter.family, "model_type": self.model.config.model_type,
            "fingerprint": self.fingerprint, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
            "layers": d.num_layers, "hidden": d.hidden, "heads": d.num_heads, "kv_heads": d.num_kv_heads,
            "head_dim": d.head_dim, "intermediate": d.intermediate, "vocab": d.vocab,
            "max_positions": d.max_positions,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "weight_bytes": sum(p.numel() * p.element_size() for p in self.model.parameters()),
            # Tensors the engine keeps beside the model (the transposed final projections a per-batch slicing run
            # made, `Adapter.transposed`; none before); what a run copies (its kept slices) is
            # `Pruner.held_bytes()`, reported by `ppcore speed`.
            "extra_weight_bytes": self.extra_weight_bytes(),
            # What PP's per-batch slicing adds at most, once per loaded model (every layer pruned; the default skip
            # list leaves out three): the transposes `extra_weight_bytes` then counts.
            "pp_extra_weight_bytes_max": self.adapter.transposes_bytes(),
            # The licence of an embedded model (shown where it is chosen); None for a model the user brought.
            "licence": getattr(embedded_model(self.name), "licence", None),
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
    """'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'; ModelLoadError for others or a missing GPU."""
    if device not in DEVICES:
        raise ModelLoadError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' (bfloat16 on CUDA, float32 elsewhere) or a name in DTYPES; ModelLoadError for others."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(spec: str = "default", device: str = "auto", dtype: str = "auto",
               cache_dir: Optional[str | Path] = None, placement: Optional[Placement] = None,
               progress: Optional[Progress] = None) -> LoadedModel:
    """Load `spec`: an embedded model's name (`MODEL_NAMES`: 'default' is SmolLM2-135M-Instruct,
    'gemma3-270m' Gemma-3-270M), a hub id ('org/name'), a local checkpoint folder or a .gguf path.

    With `placement`, accelerate spreads the layers over the GPUs, the CPU and disk (`device` is
    then ignored); the walk follows each layer's device and materialises offloaded layers one at a time.
    `progress(text)` hears each stage of a slow first load (joining parts, converting once).
    Raises ModelLoadError (not found, unreadable, corrupt, or not matching its config) or
    UnsupportedModelError (`ppcore.adapters.check_supported` says why).
    """
    dev = resolve_device("auto" if placement is not None else device)
    dt = resolve_dtype(dtype, dev)
    root = cache_root(cache_dir)
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError(f"no model given: name one of {', '.join(repr(n) for n in MODEL_NAMES)}, a hub id, a "
                             "local checkpoint folder or a .gguf file")
    revision: Optional[str] = None
    embedded = embedded_model(spec)
    if embedded is not None:
        gguf = embedded_gguf(embedded, root, progress)
        folder, fingerprint = convert_gguf(gguf, root, progress)
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
        fingerprint = hub_fingerprint(spec, revision) if revision else ""
    else:
        close = difflib.get_close_matches(spec.lower().replace("_", "-"), MODEL_NAMES, 1, 0.6)
        raise ModelLoadError(
            f"model {spec!r} not found" + (f" (did you mean {close[0]!r}?)" if close else "") + ": give "
            f"{', '.join(repr(n) for n in MODEL_NAMES)}, a hub id like 'HuggingFaceTB/SmolLM2-135M', a local "
            "checkpoint folder or a .gguf file"
        )
    dispatch = None if placement is None else _dispatch_kwargs(placement, root, fingerprint or "hub:" + spec)
    if progress is not None:
        progress(f"reading the weights of {spec!r}")
    model, tok = _load_hf(str(folder), spec, dt, dispatch, revision)
    if not fingerprint:  # a hub id whose commit is unknown: hash the snapshot folder it was read from
        fingerprint = snapshot_fingerprint(spec, hub_snapshot(spec), root)
    if dispatch is None:
        model.to(dev)
    check_finite(model, spec)  # NaN/inf weights: refuse the checkpoint, naming the tensor (on its device)
    model.eval()
    adapter = make_adapter(model, spec)
    return LoadedModel(model, tok, adapter, spec, source, fingerprint, adapter.device, dt)


def _dispatch_kwargs(p: Placement, root: Path, fingerprint: str) -> dict[str, Any]:
    if isinstance(p.device_map, str) and p.device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"device map {p.device_map!r} is not known; use one of {', '.join(DEVICE_MAPS)} "
                             "or a {module: device} mapping")
    folder = Path(p.offload_folder) if p.offload_folder else offload_folder(root, fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"device_map": p.device_map, "offload_folder": str(folder)}
    if p.max_memory:
        out["max_memory"] = p.max_memory
    return out


def _gemma3_layer_types(n: int) -> list[str]:
    """Gemma 3's pattern: every sixth layer attends globally, the others through a sliding window."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]


# Real models' shapes with random weights, for speed measurements only (no tokenizer, no download: they run where the
# weights cannot travel, e.g. a lent GPU machine). A Llama unless "family" says otherwise.
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    # LLaMA-2-7B's shapes (hidden 4096, MLP 11008, 32 heads).
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                     num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096),
    # The default model's (SmolLM2-135M: 30 layers, 9 query over 3 key/value heads, MLP 1536, tied LM head).
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=30, vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    # Gemma-3-270M's (18 layers, every sixth global, a 512-token window elsewhere, 4 query heads of 256 over 1).
    "gemma3-270m": dict(family="gemma3", hidden_size=640, intermediate_size=2048, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, num_hidden_layers=18,
                        layer_types=_gemma3_layer_types(18), sliding_window=512, vocab_size=262144,
                        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
                        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
}


def random_model(spec: str, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """'random:NAME[:LAYERS]' (NAME a key of `RANDOM_SHAPES`): that model's shapes with random weights (no
    tokenizer), its first LAYERS decoder layers when given. Raises ModelLoadError for another spec."""
    parts = spec.split(":")
    shape = RANDOM_SHAPES.get(parts[1]) if len(parts) > 1 else None
    if shape is None or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
        raise ModelLoadError(f"unknown random model {spec!r}; use random:{'|'.join(RANDOM_SHAPES)}[:LAYERS]")
    kw = {k: v for k, v in shape.items() if k != "family"}
    if len(parts) == 3:
        kw["num_hidden_layers"] = int(parts[2])
        if "layer_types" in kw:
            kw["layer_types"] = _gemma3_layer_types(int(parts[2]))
    if shape.get("family") == "gemma3":
        from transformers import Gemma3ForCausalLM as Model, Gemma3TextConfig as Config
    else:
        from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
    cfg = Config(**kw)
    seed = 0
    torch.manual_seed(seed)
    with torch.device(device):
        model = Model(cfg).to(dtype)
    model.eval()
    return LoadedModel(model, None, make_adapter(model, spec), spec, "random",
                       random_fingerprint(spec, cfg, device, seed), device, dtype)


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


def hub_snapshot(spec: str) -> Path:
    """The local HF-cache snapshot folder a hub id was loaded from (for a hub id whose commit is unknown).

    Raises ModelLoadError when the cache does not say.
    """
    try:
        from transformers.utils.hub import cached_file

        config = cached_file(spec, "config.json", local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"{spec}: could not tell which revision was loaded ({_short(e)}); download it "
                             "into a local folder and give that folder instead") from None
    if not config:
        raise ModelLoadError(f"{spec}: could not tell which revision was loaded (no cached config.json); "
                             "download it into a local folder and give that folder instead")
    return Path(config).parent


def _load_hf(folder: str, spec: str, dtype: torch.dtype, dispatch: Optional[dict[str, Any]] = None,
             revision: Optional[str] = None) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    pin = {"revision": revision} if revision else {}
    try:
        cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False, **pin)
    except Exception as e:  # transformers raises many types for a bad folder / unreachable hub
        raise ModelLoadError(f"could not read the model config of {spec!r}: {_short(e)}") from None
    check_supported(cfg, spec)
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
def prepare_model(spec: str, cache_dir: Optional[str | Path] = None, progress: Optional[Progress] = None) -> None:
    """The slow first-time work for an embedded model (joining its parts, converting it once), with
    `progress(text)` at each stage, so that a front end can show it before its cached `load_model`; a no-op
    for any other spec and once done. Raises ModelLoadError or UnsupportedModelError as `load_model` does."""
    embedded = embedded_model(str(spec).strip())
    if embedded is not None:
        root = cache_root(cache_dir)
        convert_gguf(embedded_gguf(embedded, root, progress), root, progress)


def find_default_gguf(root: Path) -> Path:
    """The default model's GGUF: from the installed wheel, or fetched once with pip into the cache."""
    return embedded_gguf(EMBEDDED["default"], root)


def embedded_gguf(model: EmbeddedModel, root: Path, progress: Optional[Progress] = None) -> Path:
    """An embedded model's GGUF (`ppcore.embedded.find_gguf`), its content checked against the pinned sha256
    where there is one (the hash is remembered, so later loads do not read it again). Raises ModelLoadError."""
    gguf = find_gguf(model, root, progress)
    if model.sha256 is not None and file_digest(gguf, root) != model.sha256:
        gguf.unlink(missing_ok=True)  # a damaged join in the cache: the next load joins the parts again
        raise ModelLoadError(f"model {model.name!r}: the cached GGUF {gguf} was damaged and is removed; load it "
                             "again to rejoin it from its packages")
    return gguf


def convert_gguf(gguf: Path, root: Path, progress: Optional[Progress] = None) -> tuple[Path, str]:
    """Dequantise a GGUF once into a safetensors checkpoint folder in the cache; returns (folder, fingerprint).

    The folder and the fingerprint are keyed by the GGUF's content and by `ppcore.cache.conversion_key`,
    so a new conversion code or library version converts again instead of reusing a conversion it did
    not make. Raises ModelLoadError (unreadable GGUF) or UnsupportedModelError.
    """
    folder, fingerprint = gguf_cache_entry(gguf, root, _convert)
    if (folder / "ppcore.json").is_file():
        return folder, fingerprint
    log.info("converting %s to safetensors once (20-100 s on 2 CPU cores); later loads reuse %s", gguf.name, folder)
    if progress is not None:
        progress(f"converting {gguf.name} to float32 safetensors, once (20-100 s on 2 CPU cores); later loads "
                 "reuse it")
    (root / "models").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root / "models"))
    try:
        _convert(gguf, tmp)
        (tmp / "ppcore.json").write_text(json.dumps(conversion_manifest(gguf, fingerprint, _convert)))
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
    check_supported(model.config, gguf.name)  # the family's own reasons, before anything is written
    check_loading_info(info, str(gguf))  # a tensor the GGUF lacks would be saved as random weights
    # The weights are already dequantised; drop the GGUF marker so they save and load as plain
    # safetensors (this model object is ours and thrown away after saving).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
