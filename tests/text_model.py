"""A deliberately plain model of LSP text edits, independent of phi_lsp.core.documents: the
document is a str, lines end at \\n, \\r\\n or \\r, and columns count code units of the
negotiated encoding. Property tests compare the real store against it."""

from __future__ import annotations

import re

_LINE_END = re.compile(r"\r\n|\r|\n")


def lines_with_starts(text: str) -> list[tuple[int, str]]:
    """(start offset, content without terminator) for every LSP line."""
    result = []
    start = 0
    for match in _LINE_END.finditer(text):
        result.append((start, text[start : match.start()]))
        start = match.end()
    result.append((start, text[start:]))
    return result


def unit_width(char: str, encoding: str) -> int:
    if encoding == "utf-32":
        return 1
    if encoding == "utf-16":
        return len(char.encode("utf-16-le", "surrogatepass")) // 2
    return len(char.encode("utf-8", "surrogatepass"))


def offset_at(text: str, line: int, character: int, encoding: str) -> int:
    """Code point offset of an LSP position: past the end clamps, inside a character rounds down."""
    lines = lines_with_starts(text)
    if line >= len(lines):
        return len(text)
    start, content = lines[line]
    seen = 0
    for index, char in enumerate(content):
        width = unit_width(char, encoding)
        if seen + width > character:
            return start + index
        seen += width
    return start + len(content)


def apply_edit(text: str, start: tuple[int, int], end: tuple[int, int], new: str, encoding: str) -> str:
    a = offset_at(text, *start, encoding)
    b = offset_at(text, *end, encoding)
    if b < a:
        a, b = b, a
    return text[:a] + new + text[b:]


def position_of(text: str, offset: int, encoding: str) -> tuple[int, int]:
    for number, (start, content) in enumerate(lines_with_starts(text)):
        if start <= offset <= start + len(content):
            return number, sum(unit_width(c, encoding) for c in content[: offset - start])
    raise ValueError(offset)
