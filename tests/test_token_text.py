"""A single token's text (ppcore/token_text.py): part of a character shows its bytes, never U+FFFD."""
from __future__ import annotations

import pytest

from ppcore.token_text import readable, shown, token_bytes, token_text

LINES = ["שלום עולם, hello 😀 again", "日本語のテキストです。", "plain English text"]


@pytest.fixture(scope="module")
def default_tokenizer():
    from transformers import AutoTokenizer

    from ppcore.cache import cache_root
    from ppcore.loading import convert_gguf, find_default_gguf

    tok_dir, _ = convert_gguf(find_default_gguf(cache_root()), cache_root())
    return AutoTokenizer.from_pretrained(tok_dir)


def test_readable_writes_partial_characters_as_bytes():
    assert readable("日".encode()) == "日"
    assert readable(b" \xf0\x9f\x98") == " <bytes F0 9F 98>"
    assert readable(b"ab\xe6\x97c") == "ab<bytes E6 97>c"
    assert readable(b"\xa5") == "<bytes A5>"
    assert readable(b"") == ""


def test_byte_level_tokens_give_back_the_texts_bytes(default_tokenizer):
    """SmolLM2's byte-level BPE: each token's bytes, joined, are the text's UTF-8; no token shows U+FFFD."""
    tok = default_tokenizer
    for line in LINES:
        ids = tok(line, add_special_tokens=False)["input_ids"]
        assert b"".join(token_bytes(tok, i) for i in ids) == line.encode()
        shown = [token_text(tok, i) for i in ids]
        assert not any("\ufffd" in t for t in shown)
        whole = [t for i, t in zip(ids, shown) if "\ufffd" not in tok.decode([i])]
        assert whole == [tok.decode([i]) for i in ids if "\ufffd" not in tok.decode([i])]  # the rest unchanged
    assert any(t.startswith("<bytes ") for t in (token_text(tok, i) for i in tok("😀")["input_ids"]))


class BytePieces:
    """A SentencePiece-like tokenizer with byte fallback (Gemma's scheme): '<0xE6>' pieces."""

    pieces = {0: "▁hi", 1: "<0xE6>", 2: "<0x97>", 3: "<0xA5>"}

    def convert_ids_to_tokens(self, i):
        return self.pieces[i]

    def decode(self, ids):
        if all(self.pieces[i].startswith("<0x") for i in ids):
            return bytes(int(self.pieces[i][3:5], 16) for i in ids).decode("utf-8", errors="replace")
        return "".join(self.pieces[i].replace("▁", " ") for i in ids)


def test_byte_fallback_pieces_show_their_byte():
    tok = BytePieces()
    assert token_text(tok, 0) == " hi"
    assert [token_text(tok, i) for i in (1, 2, 3)] == ["<bytes E6>", "<bytes 97>", "<bytes A5>"]
    assert tok.decode([1, 2, 3]) == "日"  # the three together are one character


def test_invisible_tokens_show_their_code_points(default_tokenizer):
    """A token of only a variation selector, joiner or combining mark would show as nothing: its code points."""
    tok = BytePieces()
    assert token_text(tok, 0) == " hi"
    for text, want in (("\ufe0f", "<U+FE0F>"), ("\u200d", "<U+200D>"), ("\u05b8\u05b8", "<U+05B8><U+05B8>"),
                       ("a\ufe0f", "a\ufe0f"), (" ", " "), ("\n", "\n"), ("", "")):
        assert shown(tok, 0, text) == want, text
    ids = [i for i in default_tokenizer("☺️")["input_ids"] if default_tokenizer.decode([i]) == "\ufe0f"]
    assert ids and token_text(default_tokenizer, ids[0]) == "<U+FE0F>"  # SmolLM2 has U+FE0F as a token of its own
