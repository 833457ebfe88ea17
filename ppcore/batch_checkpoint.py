"""Per-batch checkpoints of interleaved scored runs, so a long run (`python -m ppcore ablate ... --resume`) that is
stopped loses at most the batch in flight, not its seed.

A checkpoint holds, after batch k, every run's `ScoredRun.checkpoint()` (accumulators and PP's history) and what the
caller carries beside them (JSON-able values), under a key saying which run it belongs to and the engine source it
was computed by. It is written with `torch.save` beside the result file and read back with `weights_only=True`
(tensors and plain containers only, never code). Resuming gives the rows an uninterrupted run gives, times apart.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .cache import engine_source_hash
from .errors import DataError
from . import scoring
from .scoring import ScoredRun
from .versions import source_hash


def _engine() -> str:
    """The source a checkpoint's numbers depend on: the engine's (as the calibration cache keys it) and the loop's."""
    return f"{engine_source_hash()}-{source_hash(scoring)[:8]}"


@dataclass(frozen=True)
class BatchCheckpoint:
    """The checkpoint file of one run of interleaved configs on one seed's windows.

    path: where it lives (`*.partial.pt`, ignored by git); key: what the run is, JSON-able (name, configs, setup,
    seed): a file under another key is refused, one from another engine source is started over.
    """

    path: Path
    key: dict[str, Any]

    def _key(self) -> str:
        return json.dumps(self.key, sort_keys=True, default=str)

    def save(self, done: int, runs: list[ScoredRun], extra: dict[str, Any]) -> None:
        """Write the state after `done` scored batches, atomically (a copy beside it, then renamed over it)."""
        obj = {"key": self._key(), "engine": _engine(), "done": done,
               "runs": [r.checkpoint() for r in runs], "extra": extra}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(obj, tmp)
        os.replace(tmp, self.path)

    def load(self, runs: list[ScoredRun]) -> Optional[tuple[int, dict[str, Any]]]:
        """Restore `runs` from the file and return (batches done, extra), or None where there is no file or it was
        written by another engine source (the run then starts over, and says so on stderr). Raises DataError for
        a file that cannot be read as a checkpoint or belongs to another run."""
        if not self.path.is_file():
            return None
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: torch raises several kinds
            raise DataError(f"{self.path} cannot be read as a checkpoint ({e}): delete it to start the seed over")
        if not isinstance(obj, dict) or obj.get("key") != self._key() or len(obj.get("runs", ())) != len(runs):
            raise DataError(f"{self.path} is the checkpoint of another run (name, configs, setup or seed): delete it "
                            "or write to another folder")
        if obj.get("engine") != _engine():
            print(f"{self.path}: written by another version of the engine; this seed starts over", file=sys.stderr)
            return None
        for run, saved in zip(runs, obj["runs"]):
            run.restore(saved)
        return int(obj["done"]), obj["extra"]

    def drop(self) -> None:
        """Delete the file (its seed's rows are in the result file)."""
        self.path.unlink(missing_ok=True)
