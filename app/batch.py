"""Turning the chosen input (examples, pasted text, an upload, a corpus) into one padded token batch.

No streamlit here: every failure is a ppcore DataError with a message the page shows as is.
"""
from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from ppcore import DataError
from ppcore.session import Batch, corpus_windows
from ppcore.token_text import shown

from .state import DEMO_CORPORA, SOURCES, Settings, demo, limits

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples.txt"
UPLOAD_TYPES = (".txt", ".jsonl", ".csv")  # all read as UTF-8 text; nothing else is accepted


__all__ = ["Batch", "LeftOut", "TextBatch", "UPLOAD_TYPES", "build_batch", "check_settings", "left_out_note",
           "read_upload", "split_text", "upload_texts"]

COUNT_SAMPLES = 10_000  # further samples of a text counted for the left-out note; past this it says "more than"
COUNT_CHARS = 100_000  # a cut sample up to this long is tokenized whole to count the tokens left out


@dataclass(frozen=True)
class LeftOut:
    """What a batch built from the user's own text (pasted, or an upload) left out of it.

    used: samples in the batch; more: further samples of the text that did not fit (`more_is_floor`: at least
    that many: the count stopped at COUNT_SAMPLES, or an upload's rows were read up to `limits().rows`); cut:
    samples of the batch longer than `seq_len` tokens, cut there; cut_tokens: the tokens those samples lost
    (None: a sample too long to count, over COUNT_CHARS characters); where: 'your pasted text' or the file."""

    used: int
    more: int
    more_is_floor: bool
    cut: int
    cut_tokens: Optional[int]
    batch_size: int
    seq_len: int
    where: str

    @property
    def any(self) -> bool:
        return bool(self.more or self.cut)

    def short(self) -> str:
        """For the batch's description (the header, the run record's protocol): '12 more samples and 210 tokens
        past 64 left out'."""
        parts = []
        if self.more:
            parts.append(f"{'over ' if self.more_is_floor else ''}{self.more:,} more sample{'s' * (self.more != 1)}")
        if self.cut:
            parts.append(f"{self.cut_tokens:,} tokens past {self.seq_len}" if self.cut_tokens is not None
                         else f"the ends of {self.cut} sample{'s' * (self.cut != 1)} past {self.seq_len} tokens")
        return " and ".join(parts) + " left out"

    def text(self) -> str:
        """The page's note: what was left out and which setting would take it in."""
        out = []
        if self.more:
            count = f"at least {self.more:,}" if self.more_is_floor else f"{self.more:,}"
            out.append(f"The batch takes the first {self.used} samples of {self.where} (batch size "
                       f"{self.batch_size}): {count} more sample{'s were' if self.more != 1 else ' was'} left out.")
        if self.cut:
            lost = (f"{self.cut_tokens:,} tokens left out" if self.cut_tokens is not None
                    else "the rest of each left out")
            many = f"{self.cut} samples of the batch were" if self.cut != 1 else "1 sample of the batch was"
            out.append(f"{many} longer than {self.seq_len} tokens (the sequence length) and cut there ({lost}).")
        what = [w for w, on in (("batch size", self.more), ("sequence length", self.cut)) if on]
        out.append(f"Raise the {' and the '.join(what)} in the sidebar to take in more.")
        return " ".join(out)


@dataclass
class TextBatch(Batch):
    """A batch built from the user's own text, with what it left out of that text (`LeftOut`, None when nothing)."""

    left_out: Optional[LeftOut] = None


def left_out_note(batch: Batch) -> Optional[str]:
    """The page's note on what `batch` left out of the user's text, or None when it took in all of it."""
    lo = getattr(batch, "left_out", None)
    return lo.text() if lo is not None and lo.any else None


def iter_lines(text: str) -> Iterator[str]:
    """The lines of `text` one at a time, without copying it (io.StringIO or splitlines would hold a
    200 MB upload several times over). Lines end at \\n, \\r\\n, or \\r in a file with no \\n."""
    sep = "\n" if "\n" in text or "\r" not in text else "\r"
    pos, n = 0, len(text)
    while pos < n:
        end = text.find(sep, pos)
        end = n if end < 0 else end
        line = text[pos:end]
        yield line[:-1] if line.endswith("\r") else line
        pos = end + 1


def iter_samples(text: str, mode: str) -> Iterator[str]:
    """One sample per non-empty line, or per paragraph separated by blank lines; lazily, so that taking
    the first few samples of a huge text costs what those samples cost."""
    if mode == "paragraph":
        para: list[str] = []
        for line in iter_lines(text):
            if line.strip():
                para.append(line)
            elif para:
                yield " ".join(" ".join(para).split())
                para = []
        if para:
            yield " ".join(" ".join(para).split())
    else:
        for line in iter_lines(text):
            if line.strip():
                yield line.strip()


def split_text(text: str, mode: str) -> list[str]:
    return list(iter_samples(text, mode))


def decode_upload(name: str, data: bytes) -> str:
    """An upload's bytes as text, or one DataError saying why not (too large, empty, binary, not UTF-8)."""
    lim = limits()
    if len(data) > lim.upload_bytes:
        raise DataError(f"{name} is {len(data) / 2**20:.1f} MB, over the {lim.upload_mb} MB limit for uploads: "
                        "upload a smaller file (only the first samples of a file are used)")
    if not data or data.isspace():
        raise DataError(f"{name} is empty: upload a file holding text, or choose another batch source")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text (byte {e.start} cannot be decoded): if it is text, save it "
                        "again with the UTF-8 encoding (most editors offer it under Save As) and upload that; "
                        "images, PDFs and other binary files cannot be read") from None
    if "\x00" in text:
        raise DataError(f"{name} looks like a binary file (it holds NUL bytes), not text: "
                        "upload a .txt, .jsonl or .csv file")
    return text


_QUOTE_THEN_SPACES = re.compile(r'"[ \t]+$')


def read_upload(name: str, data: bytes, max_rows: Optional[int] = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows) of an uploaded .csv or .jsonl; a .txt is one column 'text' holding the whole file.

    At most `max_rows` rows are read (limits().rows by default): a batch needs only its first samples."""
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise DataError(f"{name}: unsupported file type {suffix or '(none)'}; upload a .txt, .jsonl or .csv file")
    text = decode_upload(name, data)
    max_rows = limits().rows if max_rows is None else max_rows
    if suffix == ".txt":
        return ["text"], [{"text": text}]
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(iter_lines(text), 1):
            if not line.strip():
                continue
            if len(rows) >= max_rows:
                break
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                raise DataError(f"{name}, line {n}: not valid JSON ({why})") from None
            if not isinstance(row, (dict, str)):
                raise DataError(f"{name}, line {n}: {_json_kind(row)}, not a text: each line must be a JSON object "
                                "(such as {\"text\": \"...\"}) or a JSON string")
            rows.append(row if isinstance(row, dict) else {"text": row})
        cols = [c for c in dict.fromkeys(k for r in rows for k in r) if any(isinstance(r.get(c), str) for r in rows)]
    else:
        try:
            # One document may fill a field: allow fields as large as an upload (the csv default is 128 KiB).
            csv.field_size_limit(max(csv.field_size_limit(), limits().upload_bytes))
            # strict: an unclosed quote would otherwise swallow the rest of the file into one field, silently;
            # spaces after a closing quote at a line's end (a common quirk) are dropped first, as strict refuses them
            # (only there: a quoted field's own lines keep their spaces)
            reader = csv.DictReader((_QUOTE_THEN_SPACES.sub('"', line) + "\n" for line in iter_lines(text)),
                                    delimiter=csv_delimiter(text), strict=True)
            rows = []
            for row in itertools.islice(reader, max_rows):
                extra = row.pop(None, None)  # DictReader files the fields past the header's under None
                if extra is not None and any(v.strip() for v in extra):  # they would be lost: say so
                    d = reader.reader.dialect.delimiter
                    raise DataError(f"{name}, line {reader.line_num}: {len(reader.fieldnames) + len(extra)} "
                                    f"fields under a header of {len(reader.fieldnames)}: a text holding "
                                    f"{DELIMITER_NAMES[d]}, this file's delimiter, must be in double quotes")
                rows.append(row)
            cols = [c for c in (reader.fieldnames or []) if c is not None]
            twice = sorted({c for c in cols if cols.count(c) > 1})
            if twice:  # DictReader keeps the last of same-named columns: the others would be lost
                raise DataError(f"{name}: the header names {', '.join(repr(c) for c in twice)} more than once; give "
                                "each column its own name")
        except csv.Error as e:
            why = str(e)
            hint = ("a quote (\") opened there is never closed" if "end of data" in why else
                    "a quoted field must end at its closing quote" if "expected after" in why else "")
            raise DataError(f"{name}, line {reader.line_num + 1}: not a readable CSV file ({why}"
                            + (f": {hint}); fix the quotes" if hint else ")")
                            + ", or upload the text as .txt or .jsonl") from None
    if not rows:
        raise DataError(f"{name} has no rows" + (" under its header" if suffix == ".csv" else "")
                        + ": upload a file with at least one sample")
    if not cols:
        raise DataError(f"{name} holds no text column (no column has a string value)")
    return text_first(cols, rows), rows


CSV_DELIMITERS = ",;\t|"  # what spreadsheets export as "CSV" (a semicolon where the comma is the decimal mark)
DELIMITER_NAMES = {",": "a comma", ";": "a semicolon", "\t": "a tab", "|": "a bar (|)"}
SNIFF_LINES = 200  # the lines a delimiter is judged on


def _fields(row: list[str]) -> int:
    """A CSV row's field count, empty fields at its end aside (some exports end every row with a delimiter)."""
    n = len(row)
    while n > 1 and not row[n - 1].strip():
        n -= 1
    return n


def csv_delimiter(text: str) -> str:
    """The delimiter of a CSV file, of `CSV_DELIMITERS`: the one under which most of its first rows (up to
    SNIFF_LINES lines) have as many fields as its header, the header split at least once; on a tie the comma, then
    the one the header holds most often. A comma when none splits the header (one column)."""
    lines = [_QUOTE_THEN_SPACES.sub('"', line) + "\n"
             for line in itertools.islice((x for x in iter_lines(text) if x.strip()), SNIFF_LINES)]
    best, best_key = ",", None
    for d in CSV_DELIMITERS:
        try:
            rows = list(csv.reader(lines, delimiter=d))
        except csv.Error:
            continue
        if not rows or _fields(rows[0]) < 2:
            continue
        width = _fields(rows[0])
        agree = sum(_fields(r) == width for r in rows[1:]) / max(len(rows) - 1, 1)
        key = (agree, d == ",", width)
        if best_key is None or key > best_key:
            best, best_key = d, key
    return best


def _json_kind(v: Any) -> str:
    """How a JSON value that is not text is named in a message: 'a number (42)', 'a list ([1, 2, 3])'."""
    kind = ("true/false" if isinstance(v, bool) else "a number" if isinstance(v, (int, float)) else
            "a list" if isinstance(v, list) else "an object" if isinstance(v, dict) else "null" if v is None else
            "a value")
    shown = json.dumps(v)
    return f"{kind} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


def text_first(cols: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The columns with the likeliest text column first (the picker's default): one named 'text' (any case), else
    the one whose string values are longest on average (a document, not an id or a label); the rest by the same
    measure."""
    def length(c: str) -> float:
        vals = [v for r in rows if isinstance(v := r.get(c), str)]
        return sum(map(len, vals)) / len(vals) if vals else 0.0

    return sorted(cols, key=lambda c: (c.strip().lower() != "text", -length(c)))


def iter_upload(name: str, data: bytes, column: str, split: str) -> Iterator[str]:
    cols, rows = read_upload(name, data)
    if Path(name).suffix.lower() == ".txt":
        yield from iter_samples(rows[0]["text"], split)
        return
    col = column if column in cols else cols[0]
    for n, r in enumerate(rows, 1):
        v = r.get(col)
        if v is None:  # a row without this column, or null there: no sample, as an empty cell
            continue
        if not isinstance(v, str):  # only JSON has such values: its records are its non-blank lines
            fix = "choose another text column, or make that value a string" if len(cols) > 1 else (
                "make that value a string")
            raise DataError(f"{name}, record {n} (blank lines not counted): {col!r} holds {_json_kind(v)}, not a "
                            f"text: {fix}")
        if v.strip():
            yield v.strip()


def upload_texts(name: str, data: bytes, column: str, split: str, limit: Optional[int] = None) -> list[str]:
    return list(itertools.islice(iter_upload(name, data, column, split), limit))


RANGE_MESSAGES = {  # how an out-of-range size is named, and its unit
    "batch_size": ("batch size", "samples"), "seq_len": ("sequence length", "tokens"),
    "calib_windows": ("calibration windows", "windows"), "calib_seq_len": ("calibration length", "tokens"),
    "calib_batch_size": ("calibration batch size", "windows per batch"), "seed": ("seed", ""),
}


def check_sizes(s: Settings) -> None:
    """Every whole-number setting within `limits().ranges()`, or one DataError naming it and its range."""
    for name, (lo, hi) in limits().ranges().items():
        value = getattr(s, name)
        if not lo <= value <= hi:
            what, unit = RANGE_MESSAGES[name]
            raise DataError(f"{what} {value} is out of range: use {lo} to {hi}" + (f" {unit}" if unit else ""))


def check_settings(s: Settings) -> None:
    """Every cheap check on the settings, before any model work (the engine checks the rest)."""
    lim = limits()
    check_sizes(s)
    if s.source == "paste" and len(s.text) > lim.text_chars:
        raise DataError(f"the pasted text has {len(s.text):,} characters, over the limit of {lim.text_chars:,}: "
                        "paste less (only the first samples are used), or upload a file")
    if s.source not in SOURCES:
        raise DataError(f"unknown batch source {s.source!r}; choose one of {', '.join(SOURCES)}")
    used = (("corpus", s.corpus, s.source == "corpus"), ("calibration dataset", s.calib_dataset, True))
    for what, corpus, read in used:
        if read and demo() and corpus not in DEMO_CORPORA:
            raise DataError(f"{what} {corpus!r} is not available in the demo: use {', '.join(DEMO_CORPORA)}")


def texts_for(s: Settings, upload: Optional[tuple[str, bytes]]) -> tuple[Iterator[str], str]:
    """The raw sample texts of a text source (lazily), and a description."""
    if s.source == "examples":
        return iter_samples(EXAMPLES.read_text(encoding="utf-8"), "line"), "the example prompts"
    if s.source == "paste":
        return iter_samples(s.text, s.split), f"pasted text (one sample per {s.split})"
    if s.source == "upload":
        if upload is None:
            raise DataError("no file uploaded: choose a .txt, .jsonl or .csv file, or another batch source")
        return iter_upload(upload[0], upload[1], s.column, s.split), f"uploaded {upload[0]}"
    raise DataError(f"unknown batch source {s.source!r}; choose one of {', '.join(SOURCES)}")


def encode_prefix(tokenizer: Any, text: str, n: int) -> list[int]:
    """The first n token ids of `text`, tokenizing only a prefix of it: a 200 MB line costs what n tokens
    cost. The cut can change only the last few tokens of the prefix, so it keeps a margin past n."""
    size = 32 * n + 256
    while True:
        part = text[:size]
        ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        if len(part) == len(text) or len(ids) > n + 16:
            return ids[:n]
        size *= 4


def build_batch(tokenizer: Any, vocab: int, s: Settings, upload: Optional[tuple[str, bytes]] = None,
                bos: Optional[int] = None) -> Batch:
    """The batch the settings describe: corpus windows, or the first `s.batch_size` texts cut to `s.seq_len`
    tokens (right-padded, with a mask when uneven), each starting with `bos` when given (`LoadedModel.bos_id`:
    Gemma 3). A batch of pasted or uploaded text is a `TextBatch`, saying what it left out of that text (its
    description says it too). Raises DataError for an empty or unusable batch."""
    check_settings(s)  # also here, for callers that skip run_analysis: the demo lock holds for every batch
    if s.source == "corpus":
        windows = corpus_windows(tokenizer, s.corpus, s.batch_size, s.seq_len, s.seed, bos)
        return _finish(tokenizer, windows, None,
                       f"{s.batch_size} windows of {s.seq_len} tokens from {s.corpus} (eval split, seed {s.seed})")
    texts, desc = texts_for(s, upload)
    encoded: list[list[int]] = []
    n = s.seq_len - (bos is not None)
    cut, cut_tokens = 0, 0
    for t in texts:  # only as many texts as the batch needs are tokenized
        e = encode_prefix(tokenizer, t, n + 1)  # one token more: whether the sample is cut at n
        if len(e) > n:
            e = e[:n]
            cut += 1
            if cut_tokens is not None:  # a long sample is not tokenized whole just to count what it lost
                cut_tokens = (cut_tokens + len(tokenizer(t, add_special_tokens=False)["input_ids"]) - n
                              if len(t) <= COUNT_CHARS else None)
        if e:
            encoded.append(e if bos is None else [bos, *e])
            if len(encoded) == s.batch_size:
                break
    if not encoded:
        raise DataError(f"the batch is empty: {desc} holds no text")
    left_out = None
    if s.source in ("paste", "upload"):  # the user's own text: say what did not fit
        more = sum(1 for _ in itertools.islice(texts, COUNT_SAMPLES))
        rows_read = upload is not None and Path(upload[0]).suffix.lower() != ".txt" and (
            len(encoded) + more >= limits().rows)
        left_out = LeftOut(len(encoded), more, more >= COUNT_SAMPLES or rows_read, cut, cut_tokens, s.batch_size,
                           s.seq_len, "your pasted text" if s.source == "paste" else str(upload[0]) if upload else "")
    L = max(len(e) for e in encoded)
    if L < 2:  # perplexity scores each next token: a batch of one-token samples has nothing to score
        raise DataError("every sample is a single token, so there is no next token to score: give samples of at "
                        "least two tokens (a few words each)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), L), pad, dtype=torch.long)
    mask = torch.zeros(len(encoded), L, dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    if int(ids.max()) >= vocab:
        raise DataError(f"the tokenizer produced ids beyond the model's vocabulary of {vocab}")
    desc = f"{len(encoded)} sample{'' if len(encoded) == 1 else 's'} from {desc}, up to {s.seq_len} tokens"
    if left_out is not None and left_out.any:
        desc += f" ({left_out.short()})"
    return _finish(tokenizer, ids, None if bool(mask.all()) else mask, desc, left_out)


UTF8_MAX = 4  # bytes in one UTF-8 character: the most tokens a byte-level tokenizer splits one character into


def token_texts(tokenizer: Any, row: list[int]) -> tuple[list[str], list[str]]:
    """Each token's text and its label, one string per id of `row` in each list.

    Texts: joined they give the row's text. A character a byte-level tokenizer splits over several tokens (emoji,
    most non-Latin scripts) decodes to U+FFFD token by token: the token that completes it gets the whole character
    and the ones before it an empty text, as a streaming decoder would show them. A U+FFFD that no following token
    completes (one in the text itself) stays.
    Labels: each token as it reads alone (`ppcore.token_text.shown`): the same as its text except at such a split,
    where every part shows its bytes (' <bytes F0 9F 98>', '<bytes 80>'), and for a token of only invisible
    characters ('<U+FE0F>'), as the next-token candidates do."""
    alone = tokenizer.batch_decode([[t] for t in row])
    out = list(alone)
    labels = [shown(tokenizer, t, a) for t, a in zip(row, alone)]
    i = 0
    while i < len(row):
        if "\ufffd" in out[i]:
            for j in range(i + 1, min(i + UTF8_MAX, len(row))):
                joint = tokenizer.decode(row[i:j + 1])
                if "\ufffd" not in joint:
                    out[i:j + 1] = [""] * (j - i) + [joint]
                    i = j
                    break
        i += 1
    return out, labels


def _finish(tokenizer: Any, ids: Tensor, mask: Optional[Tensor], desc: str,
            left_out: Optional[LeftOut] = None) -> Batch:
    tokens, labels = [], []
    for r, row in enumerate(ids.tolist()):
        n = len(row) if mask is None else int(mask[r].sum())
        texts, alone = token_texts(tokenizer, row[:n])
        pads = [""] * (len(row) - n)
        tokens.append(texts + pads)
        labels.append(alone + pads)
    if left_out is None:
        return Batch(ids, mask, desc, tokens, labels=labels)
    return TextBatch(ids, mask, desc, tokens, left_out, labels=labels)
