"""The dense calibration pass, cached on disk keyed by everything the statistics depend on."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from .blocks import BlockLike, as_block
from .config import PruneConfig
from .cache import STATS_VERSION, calib_key, calib_path, windows_hash
from .errors import DataError
from .loading import LoadedModel
from .methods import Decision, Pruner
from .stats import CalibSource, CalibStats, StatsAccumulator
from .walk import walk
from .walk_context import WalkCtx


class _Observer(Pruner):
    """A dense pruner feeding every final projection's input (B, L, C) to the accumulator (docs/algorithm.md §7)."""

    def __init__(self, lm: LoadedModel, acc: StatsAccumulator) -> None:
        super().__init__(lm.adapter, PruneConfig(method="dense"))
        self.acc = acc

    def observe(self, ctx: WalkCtx, layer: int, block: BlockLike, z: Tensor, d: Decision) -> None:
        self.acc.update(layer, as_block(block).name, z)


def calibrate(lm: LoadedModel, windows: Tensor, batch_size: int, *, cache: bool = True,
              cache_dir: Optional[str | Path] = None, progress: bool = True) -> CalibStats:
    """Dense pass over `windows` (N x L), running statistics at every o_proj / down_proj input.

    The batch size is part of the result: the official FLAP statistics depend on it (docs/algorithm.md §8.1a).
    Cached under `ppcore.cache.calib_key` in `ppcore.cache.calib_path` unless `cache` is False. The result's
    `source` names the windows, so that PP+'s allocation can be fitted on them later (`ppcore.allocation`).
    """
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise DataError(f"calibration windows must be a non-empty (N x L) array, got {tuple(windows.shape)}")
    if batch_size < 1:
        raise DataError(f"calibration batch size must be >= 1, got {batch_size}")
    key = calib_key(lm, windows, batch_size)
    path = calib_path(key, cache_dir)
    meta = {"key": key, "windows": int(windows.shape[0]), "seq_len": int(windows.shape[1]),
            "batch_size": batch_size, "windows_sha256_16": windows_hash(windows), "version": STATS_VERSION}
    source = CalibSource(windows, None if cache_dir is None else str(cache_dir), cache)
    if cache and path.is_file():
        try:
            stats = CalibStats.from_tensors(load_file(str(path)), meta)
        except Exception:
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
        else:
            stats.source = source
            return stats
    acc = StatsAccumulator()
    observer = _Observer(lm, acc)
    starts = range(0, windows.shape[0], batch_size)
    for s in tqdm(starts, desc="calibration", unit="batch", disable=not progress):
        walk(lm.adapter, observer, windows[s:s + batch_size], level="none", timing=False)
    stats = acc.finish(meta)
    stats.source = source
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        save_file(stats.to_tensors(), str(tmp), metadata={"meta": json.dumps(meta)})
        tmp.rename(path)
    return stats
