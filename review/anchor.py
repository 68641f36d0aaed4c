"""Placing findings on a version of a file, and finding them again after it changed.

A finding is anchored in its unit (unit digest, line index in the unit, byte column) and
carries the exact code it quotes. On the version it was made for, it is placed through its
unit. On a later version (the user typed while the model answered, or a cached finding whose
unit moved) it is placed, in this order:
1. through a unit with the same digest (content unchanged, maybe moved): exact;
2. in the unit of the same name, where the quoted code occurs exactly once;
3. anywhere in the file, where the quoted code occurs exactly once;
otherwise it is dropped as stale. A placed finding always spans exactly its quoted code.
"""

from __future__ import annotations

from phi_lsp.core.documents import TextBuffer

from phi_lsp.review.findings import Finding, Placed, source_bytes
from phi_lsp.review.units import Unit


def line_offsets(unit: Unit, buffer: TextBuffer) -> list[int]:
    """Byte offset in the file where each of the unit's lines starts."""
    return [buffer.lines.line_start(line) or 0 for line in unit.lines]


def place_in_unit(finding: Finding, unit: Unit, buffer: TextBuffer) -> Placed | None:
    """The finding at byte offsets of `buffer`, through a unit of the same content."""
    if finding.end_index >= len(unit.lines):
        return None
    starts = line_offsets(unit, buffer)
    start = starts[finding.start_index] + finding.start_col
    end = starts[finding.end_index] + finding.end_col
    if not _quote_at(buffer.source, start, end, finding.quote):
        return None
    return Placed(finding, start, end)


def _quote_at(source: bytes, start: int, end: int, quote: str) -> bool:
    """Whether source[start:end] is the quote (line endings may be "\\r\\n" in the file)."""
    actual = source[start:end]
    expected = source_bytes(quote)
    return actual == expected or actual.replace(b"\r\n", b"\n").replace(b"\r", b"\n") == expected


def _in_unit(finding: Finding, unit: Unit, buffer: TextBuffer) -> list[Placed]:
    text = unit.joined()
    quote = source_bytes(finding.quote)
    found: list[Placed] = []
    if not quote:
        return found
    starts: list[int] | None = None
    at = text.find(quote)
    while at >= 0 and len(found) < 2:
        s_index = text.count(b"\n", 0, at)
        e_index = s_index + quote.count(b"\n")
        if unit.contiguous(s_index, e_index):
            if starts is None:
                starts = line_offsets(unit, buffer)
            s_col = at - (text.rfind(b"\n", 0, at) + 1)
            end_at = at + len(quote)
            e_col = end_at - (text.rfind(b"\n", 0, end_at) + 1)
            start, end = starts[s_index] + s_col, starts[e_index] + e_col
            if _quote_at(buffer.source, start, end, finding.quote):
                found.append(Placed(finding, start, end))
        at = text.find(quote, at + 1)
    return found


def relocate(finding: Finding, units: list[Unit], buffer: TextBuffer) -> Placed | None:
    """The finding on the text in `buffer` (whose units are `units`), or None when stale."""
    for unit in units:
        if unit.digest == finding.unit:
            placed = place_in_unit(finding, unit, buffer)
            if placed is not None:
                return placed
    same_name = [u for u in units if u.name == finding.unit_name]
    for unit in same_name:
        found = _in_unit(finding, unit, buffer)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None  # ambiguous in its own unit: do not guess
    found = []
    for unit in units:
        found.extend(_in_unit(finding, unit, buffer))
        if len(found) > 1:
            return None
    return found[0] if found else None
