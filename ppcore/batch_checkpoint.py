"""Per-batch checkpoints of interleaved scored runs, so a long run (`python -m ppcore ablate ... --resume`) that is
stopped loses at most the batch in flight, not its seed.

A checkpoint holds, after batch k, every run's `ScoredRun.checkpoint()` (accumulators and PP's history) and what the
caller carries beside them (JSON-able values), under a key saying which run it belongs to, and a note of what its
numbers were computed with (the engine's and the loop's source, torch and transformers, the fp32 matmul settings,
the model's weights, dtype and device). It is written with `torch.save` beside the result file and read back with
`weights_only=True` (tensors and plain containers only, never code). Resuming gives the rows an uninterrupted run
gives, batch times apart.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from . import analysis, scoring
from .cache import engine_source_hash, numerics_key
from .errors import DataError
from .scoring import ScoredRun
from .versions import package_version, source_hash

if TYPE_CHECKING:
    from .loading import LoadedModel


def computed_with(lm: "LoadedModel") -> str:
    """What a checkpoint's numbers depend on beyond its key: the engine's source (as the calibration cache keys it),
    the scoring loop's and the keep-set agreement's, torch and transformers, the fp32 matmul settings, and the
    model's weights (fingerprint), dtype and device type."""
    return "|".join([engine_source_hash(), source_hash(scoring, analysis)[:16], f"torch={torch.__version__}",
                     f"transformers={package_version('transformers')}", numerics_key(lm.device.type),
                     str(lm.fingerprint), str(lm.dtype), lm.device.type])


@dataclass(frozen=True)
class BatchCheckpoint:
    """The checkpoint file of one run of interleaved configs on one seed's windows.

    path: where it lives (`*.partial.pt`, ignored by git); key: what the run is, JSON-able (name, configs, setup,
    seed): a file under another key is refused; `computed_with`'s note for the loaded model: a file with another
    note (another engine version, torch, model revision...) is started over.
    """

    path: Path
    key: dict[str, Any]

    def _key(self) -> str:
        return json.dumps(self.key, sort_keys=True, default=str)

    def save(self, lm: "LoadedModel", done: int, runs: list[ScoredRun], extra: dict[str, Any]) -> None:
        """Write the state after `done` scored batches, atomically (a copy beside it, then renamed over it). A write
        that fails (a full disk) leaves no partial file and only warns on stderr: the run goes on without it."""
        obj = {"key": self._key(), "computed_with": computed_with(lm), "done": done,
               "runs": [r.checkpoint() for r in runs], "extra": extra}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            torch.save(obj, tmp)
            os.replace(tmp, self.path)
        except OSError as e:
            print(f"{self.path}: the checkpoint after batch {done} could not be written ({e.strerror or e}); the run "
                  "goes on, but a stop now loses this seed", file=sys.stderr)
        finally:
            tmp.unlink(missing_ok=True)  # interrupted or failed: no stray copy

    def load(self, lm: "LoadedModel", runs: list[ScoredRun]) -> Optional[tuple[int, dict[str, Any]]]:
        """Restore `runs` from the file and return (batches done, extra), or None where there is no file or its
        numbers were computed otherwise (`computed_with`: the seed then starts over, and says so on stderr). Raises
        DataError for a file that cannot be read as a checkpoint or belongs to another run."""
        if not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: torch raises several kinds
            raise DataError(f"{self.path} cannot be read as a checkpoint ({e}): delete it to start the seed "
                            "over") from None
        if not isinstance(obj, dict) or "runs" not in obj:
            raise DataError(f"{self.path} is not a checkpoint of `ppcore ablate`: delete it or write to another "
                            "folder")
        # First: an upgrade may change the key's settings too. A checkpoint without the note is an older version's.
        if obj.get("computed_with") != computed_with(lm):
            print(f"{self.path}: computed with another version of the engine, torch or the model; this seed starts "
                  "over", file=sys.stderr)
            return None
        if obj.get("key") != self._key() or len(obj.get("runs", ())) != len(runs):
            raise DataError(f"{self.path} is the checkpoint of another run (name, configs, setup or seed): delete it "
                            "or write to another folder")
        for run, saved in zip(runs, obj["runs"]):
            run.restore(saved)
        return int(obj["done"]), obj["extra"]

    def stored_key(self) -> Optional[dict[str, Any]]:
        """The key the file was saved under, or None where there is no readable checkpoint (read memory-mapped:
        cheap even for a large file). For a caller whose set of runs may differ from the stored one's."""
        if not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            key = json.loads(obj["key"])
        except Exception:  # unreadable: `load` says so
            return None
        return key if isinstance(key, dict) else None

    def drop(self) -> None:
        """Delete the file (its seed's rows are in the result file)."""
        self.path.unlink(missing_ok=True)
