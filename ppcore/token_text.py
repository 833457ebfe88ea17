"""A single token's text as a person can read it, even when the token is part of a character.

Byte-level tokenizers (GPT-2's scheme, SmolLM2) and SentencePiece with byte fallback (Gemma) split a
character outside their vocabulary (emoji, most non-Latin scripts) into tokens of one or a few UTF-8
bytes. Decoded alone such a token gives U+FFFD ("�"), which says nothing; `token_text` shows its bytes
instead, e.g. '<bytes E6 97>'; a token of only invisible characters (U+FE0F after an emoji) shows their code
points, '<U+FE0F>'.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Optional

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback pieces
_INVISIBLE = {"Mn", "Me", "Cf"}  # combining marks and format characters: nothing to see without a base character


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's scheme) inverted: printable character -> the byte it stands for.
    Printable Latin-1 bytes stand for themselves; the other 68 bytes map to code points 256 and up, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alphabet = {chr(b): b for b in printable}
    extra = (b for b in range(256) if b not in alphabet.values())
    alphabet.update({chr(256 + n): b for n, b in enumerate(extra)})
    return alphabet


def token_bytes(tokenizer: Any, token_id: int) -> Optional[bytes]:
    """The UTF-8 bytes one token stands for, or None when the tokenizer's pieces are neither byte-level BPE
    nor SentencePiece byte pieces (the caller then keeps the decoded text)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    m = _BYTE_PIECE.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    alphabet = _byte_level_alphabet()
    if all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    return None


def token_text(tokenizer: Any, token_id: int) -> str:
    """The decoded text of one token, as `shown` makes it readable alone."""
    return shown(tokenizer, token_id, tokenizer.decode([int(token_id)]))


def shown(tokenizer: Any, token_id: int, text: str) -> str:
    """One token's decoded `text` as a person can read it alone: where the token holds only part of a character
    (it decodes to U+FFFD), those bytes in hex, ' <bytes F0 9F 98>' (a space, then three of an emoji's four bytes),
    when the tokenizer's pieces tell them; a token of only invisible characters (combining marks, format
    characters such as the emoji variation selector U+FE0F or the zero-width joiner) as their code points,
    '<U+FE0F>'; any other text unchanged."""
    if "\ufffd" in text:
        raw = token_bytes(tokenizer, token_id)
        text = text if raw is None else readable(raw)
    if text and all(unicodedata.category(c) in _INVISIBLE for c in text):
        return "".join(f"<U+{ord(c):04X}>" for c in text)
    return text


def readable(raw: bytes) -> str:
    """`raw` as text, with each run of bytes that is no whole UTF-8 character written '<bytes E6 97>'."""
    out: list[str] = []
    bad: list[int] = []
    i = 0
    while i < len(raw):
        for n in range(1, 5):  # a UTF-8 character is 1 to 4 bytes
            try:
                char = raw[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if bad:
                out.append("<bytes " + " ".join(f"{b:02X}" for b in bad) + ">")
                bad = []
            out.append(char)
            i += n
            break
        else:
            bad.append(raw[i])
            i += 1
    if bad:
        out.append("<bytes " + " ".join(f"{b:02X}" for b in bad) + ">")
    return "".join(out)
