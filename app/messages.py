"""Every message the page shows goes through here: one line, no traceback, no server path in demo mode.

`clean()` is applied to errors, warnings, status labels and progress texts; `failure()` turns any
exception into one such message (ppcore's own messages as they are, out-of-memory as advice).
No streamlit here, so it is unit-tested directly.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ppcore import PPCoreError

from .state import demo

PLACEHOLDER = "[server path]"
MAX_CHARS = 600  # a message is a line or two, never a dump
OOM = ("Out of memory during the run: try a smaller batch size or sequence length, or fewer calibration "
       "windows. The loaded model and other sessions are unaffected, and the next run starts clean.")

# An absolute POSIX path (/x/y, ~/x, file:///x) or a Windows one (C:\x), starting at a word boundary so
# that 'tokens/s' or '1/2' are left alone.
_ABS = re.compile(r"""(?:(?<=^)|(?<=[\s'"`(\[{=:,;]))(?:file://)?(?:~|[A-Za-z]:)?[/\\][^\s'"`()\[\]{},;]+""")
# A relative path into the server's files: two or more segments ending in a file name (assets/examples.txt).
_REL = re.compile(r"""(?:(?<=^)|(?<=[\s'"`(\[{=:,;]))(?:[\w.-]+/)+[\w-]+\.[A-Za-z0-9]{1,8}\b""")

_TAIL = re.compile(re.escape(PLACEHOLDER) + r"""[/\\][^\s'"`()\[\]{},;]*""")


@functools.lru_cache(maxsize=1)
def _server_dirs() -> tuple[str, ...]:
    """Directories whose names would tell a visitor about the server, longest first."""
    dirs = {str(Path.home()), str(Path(__file__).resolve().parents[1]), sys.prefix, sys.base_prefix,
            tempfile.gettempdir(), os.getcwd(), os.environ.get("PPCORE_CACHE", ""), os.environ.get("HF_HOME", "")}
    return tuple(sorted((d for d in dirs if d and d not in ("/", ".")), key=len, reverse=True))


def scrub_paths(text: str) -> str:
    """Replace server directories and absolute or file-like relative paths with a placeholder."""
    text = _ABS.sub(PLACEHOLDER, text)
    for d in _server_dirs():  # also where a directory is glued to other text (name=/srv/x, 'C:/x')
        text = text.replace(d, PLACEHOLDER)
    text = _TAIL.sub(PLACEHOLDER, text)
    return _REL.sub(PLACEHOLDER, text)


# What Markdown (GitHub's flavour, as Streamlit renders it) would turn into a link by itself: a URL with any scheme,
# a www. address, an e-mail address.
_AUTOLINK = re.compile(r"(?i)(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)(?:[^\s`'\"]*[^\s`'\".,;:!?)\]])?|\b[\w.+-]+@[\w-]+\.[\w.-]+")
_CODE = re.compile(r"(`[^`]*`)")
# ASCII punctuation but '$' (clean() escapes that one), '.' and '-' (list markers only at a line's start, which a value
# set inside a sentence never is; a www. address keeps its dots so that clean() shows it as code).
_PUNCT = re.compile(r"([!-#%-,/:-@\[-`{-~])")


def _plain(text: str) -> str:
    """Markdown that cannot become a link, an image or formula: st.error and st.warning render markdown,
    and a shared URL's values end up in messages. A URL or address is shown as code (never a link); elsewhere
    '](' and '$' are escaped."""
    out = []
    for n, part in enumerate(_CODE.split(text)):
        if n % 2:  # a code span already (`literal`'s URLs): Markdown links nothing in it
            out.append(part)
            continue
        out.append(_urls_as_code(part, lambda t: t.replace("](", "]\\(").replace("$", "\\$")))
    return "".join(out)


def _urls_as_code(text: str, escape: Callable[[str], str]) -> str:
    """`text` with every URL or address (`_AUTOLINK`) as a code span and `escape` applied to the rest."""
    out, last = [], 0
    for m in _AUTOLINK.finditer(text):
        out += [escape(text[last:m.start()]), f"`{m.group(0)}`"]
        last = m.end()
    out.append(escape(text[last:]))
    return "".join(out)


def literal(value: Any) -> str:
    """A value from outside (a saved record's model name or date, a file name) as Markdown that shows it as it is:
    a URL or address in it as code (a backslash does not stop Streamlit's Markdown from linking 'http\\://x': seen
    in a browser), elsewhere the ASCII punctuation escaped, so that no '**', ':red[...]' or heading takes effect.
    For a value set inside a message that then goes through `clean`."""
    return _urls_as_code(str(value).replace("`", "'"), lambda t: _PUNCT.sub(r"\\\1", t))


def clean(text: Any) -> str:
    """The text of one message as the page shows it."""
    text = str(text)
    if demo():
        text = scrub_paths(text)
    text = " ".join(text.split()) if "\n" in text else text
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS - 1] + "…"
    return _plain(text)


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", MemoryError)):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def release_memory() -> None:
    """After a failed run: drop what it allocated (its tensors are already unreferenced)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# A message's first word is capitalised on the page unless it is a name that keeps its case.
_NAMES = frozenset({"ppcore", "pp", "pp-plus", "flap", "wanda-sp", "fullbatch", "dense", "lm-eval", "model_args"})
_FIRST_WORD = re.compile(r"[a-z][a-z-]*(?=[\s,:;]|$)")


def sentence(text: str) -> str:
    """`text` with its first letter capitalised when it starts with a plain lower-case word: the engine's
    messages are written lower-case for the command line ('the batch is empty: ...'); a file name
    ('notes.csv, line 3: ...') or a method or package name ('pp', 'ppcore') keeps its case."""
    m = _FIRST_WORD.match(text)
    if m is None or m.group() in _NAMES:
        return text
    return text[0].upper() + text[1:]


def failure(e: BaseException) -> str:
    """One clear message for any failure: ppcore's own as it is (its first word capitalised), out-of-memory as
    advice, else its type."""
    if is_oom(e):
        release_memory()
        return clean(OOM)
    if isinstance(e, PPCoreError):
        return clean(sentence(str(e)))
    return clean(f"Unexpected {type(e).__name__}: {e}")


def scrub(obj: Any) -> Any:
    """A JSON-like object or a dataclass of them (the run record's protocol) with server paths removed from
    its strings, in demo mode."""
    if not demo():
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: scrub(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, str):
        return scrub_paths(obj)
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v) for v in obj)
    return obj


def done_text(method: str, ratio: float, shape: tuple[int, ...], padded: bool, seconds: float,
              reused: str | None = None, total: float | None = None) -> str:
    """A finished run's status line, in plain words: 'Done: pruned 8 samples of up to 56 tokens with pp at ratio
    0.20, and ran the unpruned model on them for comparison, in 28.7 s' (`padded`: the samples differ in length).
    `seconds`: the two runs themselves; `total`: the whole wait, when loading the model, its calibration (or a
    method's fits) and the analysis around the runs made it longer (a newcomer read "in 1.9 s" after waiting 45 s
    for the first load), said beside them.
    With `reused` (when an identical earlier run was computed, app/stored.py), 'Shown again: ... (computed on ...)'."""
    B, L = shape[0], shape[1]
    what = f"{B} sample{'s' * (B != 1)} of {'up to ' if padded else ''}{L} tokens"
    took = f" in {seconds:.1f} s"
    if total is not None and total - seconds >= max(1.0, 0.5 * seconds):
        took = f" in {total:.1f} s ({seconds:.1f} s of it the two runs; the rest loading, calibrating and analysing)"
    head, took = ("Shown again", f" ({reused})") if reused else ("Done", took)
    if method == "dense":
        return f"{head}: ran {what} through the unpruned (dense) model{took}"
    if ratio == 0:  # nothing removed: "pruned" would mislead
        return f"{head}: ran {what} through {method} at ratio 0 (nothing pruned) and through the unpruned model{took}"
    return (f"{head}: pruned {what} with {method} at ratio {ratio:.2f}, and ran the unpruned model on them for "
            f"comparison{'' if reused else ','}{took}")
