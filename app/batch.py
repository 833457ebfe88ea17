"""Turning the chosen input (examples, pasted text, an upload, a corpus) into one padded token batch.

No streamlit here: every failure is a ppcore DataError with a message the page shows as is.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from ppcore import DataError
from ppcore.data import corpus_text, sample_windows, tokenize_text

from .state import MAX_BATCH, MAX_SEQ, SOURCES, Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples.txt"


@dataclass
class Batch:
    ids: Tensor  # (B, L) long, right-padded
    mask: Optional[Tensor]  # (B, L) 0/1, None when nothing is padded
    description: str  # where the samples came from, for the protocol and captions
    tokens: list[list[str]]  # per sample, the text of each position ('' for pads)

    @property
    def lengths(self) -> list[int]:
        return [int(r.sum()) for r in self.mask] if self.mask is not None else [self.ids.shape[1]] * self.ids.shape[0]


def split_text(text: str, mode: str) -> list[str]:
    """One sample per non-empty line, or per paragraph separated by blank lines."""
    if mode == "paragraph":
        parts = [" ".join(p.split()) for p in text.replace("\r\n", "\n").split("\n\n")]
    else:
        parts = [line.strip() for line in text.splitlines()]
    return [p for p in parts if p]


def read_upload(name: str, data: bytes) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of an uploaded .csv or .jsonl; a .txt is one column 'text' holding the whole file."""
    suffix = Path(name).suffix.lower()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{name} is not UTF-8 text; upload a .txt, .jsonl or .csv file") from None
    if suffix == ".txt":
        return ["text"], [{"text": text}]
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{name}, line {n}: not valid JSON ({e.msg})") from None
            rows.append(row if isinstance(row, dict) else {"text": row})
        cols = [c for c in dict.fromkeys(k for r in rows for k in r) if any(isinstance(r.get(c), str) for r in rows)]
    elif suffix == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text))
            rows = list(reader)
            cols = list(reader.fieldnames or [])
        except csv.Error as e:
            raise DataError(f"{name}: not a readable CSV file ({e})") from None
    else:
        raise DataError(f"{name}: unsupported file type {suffix or '(none)'}; upload a .txt, .jsonl or .csv file")
    if not rows or not cols:
        raise DataError(f"{name} holds no text column (no rows, or no string values)")
    return cols, rows


def upload_texts(name: str, data: bytes, column: str, split: str) -> list[str]:
    cols, rows = read_upload(name, data)
    if Path(name).suffix.lower() == ".txt":
        return split_text(rows[0]["text"], split)
    col = column if column in cols else cols[0]
    return [str(r.get(col) or "").strip() for r in rows if str(r.get(col) or "").strip()]


def check_sizes(batch_size: int, seq_len: int) -> None:
    if not 1 <= batch_size <= MAX_BATCH:
        raise DataError(f"batch size {batch_size} is out of range: use 1 to {MAX_BATCH} samples")
    if not 2 <= seq_len <= MAX_SEQ:
        raise DataError(f"sequence length {seq_len} is out of range: use 2 to {MAX_SEQ} tokens")


def texts_for(s: Settings, upload: Optional[tuple[str, bytes]]) -> tuple[list[str], str]:
    """The raw sample texts of a text source, and a description."""
    if s.source == "examples":
        return split_text(EXAMPLES.read_text(encoding="utf-8"), "line"), "example prompts (assets/examples.txt)"
    if s.source == "paste":
        return split_text(s.text, s.split), f"pasted text (one sample per {s.split})"
    if s.source == "upload":
        if upload is None:
            raise DataError("no file uploaded: choose a .txt, .jsonl or .csv file, or another batch source")
        return upload_texts(upload[0], upload[1], s.column, s.split), f"uploaded {upload[0]}"
    raise DataError(f"unknown batch source {s.source!r}; choose one of {', '.join(SOURCES)}")


def build_batch(tokenizer: Any, vocab: int, s: Settings, upload: Optional[tuple[str, bytes]] = None) -> Batch:
    check_sizes(s.batch_size, s.seq_len)
    if s.source == "corpus":
        ids = tokenize_text(tokenizer, corpus_text(s.corpus, "eval"))
        windows = sample_windows(ids, s.batch_size, s.seq_len, s.seed)
        return _finish(tokenizer, windows, None, f"{s.batch_size} windows of {s.seq_len} tokens from {s.corpus} (eval split, seed {s.seed})")
    texts, desc = texts_for(s, upload)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][: s.seq_len] for t in texts]
    encoded = [e for e in encoded if e][: s.batch_size]
    if not encoded:
        raise DataError(f"the batch is empty: {desc} holds no text")
    L = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), L), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), L, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    if int(ids.max()) >= vocab:
        raise DataError(f"the tokenizer produced ids beyond the model's vocabulary of {vocab}")
    return _finish(tokenizer, ids, None if bool(mask.all()) else mask, f"{len(encoded)} samples from {desc}, up to {s.seq_len} tokens")


def _finish(tokenizer: Any, ids: Tensor, mask: Optional[Tensor], desc: str) -> Batch:
    tokens = []
    for r, row in enumerate(ids.tolist()):
        n = len(row) if mask is None else int(mask[r].sum())
        tokens.append(tokenizer.batch_decode([[t] for t in row[:n]]) + [""] * (len(row) - n))
    return Batch(ids, mask, desc, tokens)
