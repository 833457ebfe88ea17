"""What cached results depend on besides their inputs: installed package versions and our own code.

Cache keys (`ppcore.cache`: converted models, tokenised corpora, calibration statistics) include these,
so a new library release or an edit to the code that computed an entry never reuses it.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """The installed version of distribution `name`, or "absent"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def source_hash(*objects: Any) -> str:
    """sha256 (hex) of the source of modules, classes or functions, in order; compiled code stands in
    where no source ships."""
    h = hashlib.sha256()
    for obj in objects:
        try:
            text = inspect.getsource(obj)
        except (OSError, TypeError):
            code = getattr(obj, "__code__", None)
            text = repr((code.co_code, code.co_consts)) if code is not None else repr(obj)
        h.update(text.encode() + b"\0")
    return h.hexdigest()
