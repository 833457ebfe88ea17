"""The dense calibration pass, cached on disk keyed by everything the statistics depend on."""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from .config import PruneConfig
from .data import windows_hash
from .errors import DataError
from .loading import LoadedModel, cache_root
from .methods import Decision, Pruner
from .stats import CalibStats, StatsAccumulator
from .versions import package_version, source_hash
from .walk import walk
from .walk_context import WalkCtx

STATS_VERSION = 1  # bump when the statistics or their update rules change


class _Observer(Pruner):
    """A dense pruner that feeds every final projection's input into the accumulator."""

    def __init__(self, lm: LoadedModel, acc: StatsAccumulator) -> None:
        super().__init__(lm.adapter, PruneConfig(method="dense"))
        self.acc = acc

    def observe(self, ctx: WalkCtx, layer: int, block: str, z: Tensor, d: Decision) -> None:
        self.acc.update(layer, block, z)


# The engine modules a calibration pass runs through: their source is part of the key, so statistics
# computed by other code are never reused even where STATS_VERSION was not bumped.
_ENGINE_MODULES = ("adapters", "blocks", "calibrate", "methods", "stats", "walk", "walk_context")


@functools.lru_cache(maxsize=1)
def _engine_source_hash() -> str:
    return source_hash(*(importlib.import_module(f"{__package__}.{name}") for name in _ENGINE_MODULES))[:16]


def _numerics(device: str) -> str:
    """Settings that change fp32 results on this device: matmul precision and, on CUDA, TF32."""
    out = f"matmul={torch.get_float32_matmul_precision()}"
    if device == "cuda":
        out += f" tf32={torch.backends.cuda.matmul.allow_tf32} cudnn_tf32={torch.backends.cudnn.allow_tf32}"
    return out


def calib_key(lm: LoadedModel, windows: Tensor, batch_size: int) -> str:
    """Key of the calibration cache: everything the statistics depend on.

    The model's fingerprint (weights and config), dtype, device type and placement over devices, the
    windows and the batch size, STATS_VERSION and the source of the engine modules the pass runs
    through, the torch and transformers versions (kernels; the model's own rotary module) and the fp32
    matmul settings.
    """
    placement = getattr(lm.model, "hf_device_map", None)
    parts = [lm.fingerprint, str(lm.dtype), lm.device.type, windows_hash(windows), str(tuple(windows.shape)),
             str(batch_size), str(STATS_VERSION), _engine_source_hash(), f"torch={torch.__version__}",
             f"transformers={package_version('transformers')}", _numerics(lm.device.type),
             json.dumps(sorted((str(k), str(v)) for k, v in placement.items())) if placement else "one-device"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def calibrate(lm: LoadedModel, windows: Tensor, batch_size: int, *, cache: bool = True,
              cache_dir: Optional[str | Path] = None, progress: bool = True) -> CalibStats:
    """Dense pass over `windows` (N x L), running statistics at every o_proj / down_proj input.

    The batch size is part of the result: the official FLAP statistics depend on it (spec 8.1a).
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise DataError(f"calibration windows must be a non-empty (N x L) array, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise DataError(f"calibration batch size must be >= 1, got {batch_size}")
    key = calib_key(lm, windows, batch_size)
    path = cache_root(cache_dir) / "calib" / f"{key}.safetensors"
    meta = {"key": key, "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
            "batch_size": batch_size, "windows_sha256_16": windows_hash(windows), "version": STATS_VERSION}
    if cache and path.is_file():
        try:
            return CalibStats.from_tensors(load_file(str(path)), meta)
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
    acc = StatsAccumulator()
    observer = _Observer(lm, acc)
    starts = range(0, windows.shape[0], batch_size)
    for s in tqdm(starts, desc="calibration", unit="batch", disable=not progress):
        walk(lm.adapter, observer, windows[s:s + batch_size], level="none", timing=False)
    stats = acc.finish(meta)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        save_file(stats.to_tensors(), str(tmp), metadata={"meta": json.dumps(meta)})
        tmp.rename(path)
    return stats
