"""Conversions between LSP character offsets and byte columns.

Documents are stored as UTF-8 bytes (what tree-sitter parses), so every LSP position goes
through here: a column counted in the negotiated encoding (UTF-8 bytes, UTF-16 code units or
code points) becomes a byte column inside one line, and back. Lines are short, so decoding one
line per conversion is cheap; pure-ASCII lines take a shortcut where all encodings agree.
"""

from __future__ import annotations

UTF8 = "utf-8"
UTF16 = "utf-16"
UTF32 = "utf-32"
ENCODINGS = (UTF8, UTF16, UTF32)

# Lone surrogates can arrive in JSON strings; keep them round-trippable instead of crashing.
TEXT_ERRORS = "surrogatepass"


def encode(text: str) -> bytes:
    return text.encode("utf-8", TEXT_ERRORS)


def decode(data: bytes) -> str:
    # "replace" for bytes that were never valid text (binary files opened in the editor).
    try:
        return data.decode("utf-8", TEXT_ERRORS)
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def valid_text(text: str) -> str:
    """`text` as valid Unicode, for what must be real UTF-8 (a tokenizer, a request body):
    lone surrogates (from a client's JSON, or from bytes that were never UTF-8) become U+FFFD;
    the two halves of a pair that arrived as separate code points become the one character."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _units(char: str, encoding: str) -> int:
    if encoding == UTF32:
        return 1
    cp = ord(char)
    if encoding == UTF16:
        return 2 if cp > 0xFFFF else 1
    if cp < 0x80:
        return 1
    if cp < 0x800:
        return 2
    return 4 if cp > 0xFFFF else 3


def text_length(text: str, encoding: str) -> int:
    """Length of `text` in the code units of `encoding`."""
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF16:
        return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)
    return len(encode(text))


def _char_start(line: bytes, col: int) -> int:
    """Round a byte column down to the start of the UTF-8 character it falls in."""
    while 0 < col < len(line) and (line[col] & 0xC0) == 0x80:
        col -= 1
    return col


def units_to_byte_column(line: bytes, units: int, encoding: str) -> int:
    """Byte column in `line` for a column of `units` code units.

    Past the end of the line clamps to the line's length (as the LSP spec says). A column that
    falls inside a character (the middle of a surrogate pair or of a UTF-8 sequence) rounds
    down to that character's start, so an edit never splits a character.
    """
    if units <= 0:
        return 0
    if line.isascii():
        return min(units, len(line))
    if encoding == UTF8:
        return _char_start(line, min(units, len(line)))
    seen = 0
    byte_col = 0
    for char in decode(line):
        width = _units(char, encoding)
        if seen + width > units:
            break
        seen += width
        byte_col += len(encode(char))
    return byte_col


def byte_column_to_units(line: bytes, byte_col: int, encoding: str) -> int:
    """Column in code units of `encoding` for byte column `byte_col` of `line`."""
    byte_col = _char_start(line, max(0, min(byte_col, len(line))))
    if encoding == UTF8 or line.isascii():
        return byte_col
    return text_length(decode(line[:byte_col]), encoding)
