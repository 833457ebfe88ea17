"""JSON result files that long runs write as they go and resume from (`zeroshot --resume`, `ablate --resume`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import DataError


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically: a copy beside the file, then renamed over it, so an interrupted
    write leaves the previous file whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def read_json_object(path: str | Path, keys: tuple[str, ...], what: str,
                     hint: str = "write to another file, or drop --resume") -> dict[str, Any]:
    """The JSON object in `path`, which must hold `keys`. Raises DataError naming the file and `what` it should
    be (then `hint`, what to do) when it cannot be read, is not JSON, or is not such an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} cannot be read as {what} ({e})" + (f": {hint}" if hint else "")) from None
    missing = list(keys) if not isinstance(obj, dict) else [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path} is not {what} (it lacks {', '.join(missing)})" + (f": {hint}" if hint else ""))
    return obj


def run_seeds(results: dict[str, Any], rows: str, seeds: list[int], run_seed: Callable[[int], list[dict[str, Any]]],
              *, json_path: Optional[str], label: str, progress: bool,
              written: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Run `run_seed(seed)` for every seed of `seeds` not yet in `results["seeds"]` (those a resumed file already
    holds are kept, with a line saying so), appending its rows to `results[rows]` and the seed to
    `results["seeds"]`, and writing `results` to `json_path` after every seed, so a run stopped in its third seed
    keeps its first two. `label` starts the progress lines ("bench", "ablate history"); `written(seed)`, where
    given, is called once a seed's rows are written. Returns `results`."""
    for seed in seeds:
        if seed in results["seeds"]:
            if progress:
                print(f"{label} seed {seed}: kept from {json_path}", flush=True)
            continue
        results[rows] += run_seed(seed)
        results["seeds"].append(seed)
        if json_path:
            write_json(json_path, results)
        if written is not None:
            written(seed)
    return results
