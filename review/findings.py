"""From a model's answer to validated findings, with every rejection counted.

Nothing here raises on model output: a truncated answer, text that is not JSON, a finding of
the wrong shape, lines outside the unit, a quote that is not in the code (a hallucinated
finding), a duplicate, a finding over the per-file limit each end as a counted drop with a
reason. What survives is anchored on the code it quotes, in coordinates of its unit (line
index inside the unit, byte column), so it stays valid while the unit's content does, wherever
the unit moves in the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from phi_lsp.core import syntax

from phi_lsp.review.prompts import CATEGORIES, MAX_CODE_CHARS, MAX_FINDINGS_PER_UNIT, MAX_FIX_CHARS, MAX_MESSAGE_CHARS, SEVERITIES
from phi_lsp.review.units import Unit

# How far (in lines) the quoted code may be from the lines the finding names. Models miscount
# a little; a quote much further away means the finding is about something else.
LINE_TOLERANCE = 2
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

# Drop reasons (the keys of the counters in stats, CLI output and benchmarks).
TRUNCATED = "truncated"  # finish_reason "length": the answer is incomplete, so none of it counts
UNPARSEABLE = "unparseable"  # no JSON list of findings in the answer
BAD_SHAPE = "bad-shape"  # a finding without the fields, or with values of the wrong kind
OUT_OF_RANGE = "out-of-range"  # its lines are not lines of the unit
NO_QUOTE = "no-quote"  # it does not say which code it is about
QUOTE_NOT_FOUND = "quote-not-found"  # the quoted code is not in the unit: hallucinated
QUOTE_ELSEWHERE = "quote-elsewhere"  # the quoted code is in the unit, but not at its lines
DUPLICATE = "duplicate"
OVER_LIMIT = "over-limit"  # more than review.maxFindingsPerFile (or per unit)
STALE = "stale"  # the document changed and the quoted code could not be found again
BACKEND_ERROR = "backend-error"  # the request for the unit failed (not cached: retried next save)
TOO_LONG = "too-long"  # the unit's prompt does not fit the model's context (not sent)
ESCALATED = "escalated"  # the small model's finding, replaced by the escalation model's answer
# Fixes dropped while the finding is kept:
FIX_NO_CHANGE = "fix-no-change"
FIX_BREAKS_SYNTAX = "fix-breaks-syntax"

_CATEGORY_ALIASES = {
    "correctness": "bug", "logic": "bug", "error": "bug", "error-handling": "bug", "bugs": "bug",
    "reliability": "bug", "vulnerability": "security", "perf": "performance", "efficiency": "performance",
    "readability": "style", "naming": "style", "formatting": "style", "documentation": "style",
    "docs": "style", "design": "maintainability", "complexity": "maintainability",
}
_SEVERITY_ALIASES = {
    "critical": "error", "high": "error", "major": "error", "warn": "warning", "medium": "warning",
    "low": "info", "minor": "info", "note": "info", "information": "info", "suggestion": "hint",
}
_LINE_PREFIX = re.compile(rb"^\s*\d+\s?\|\s?")


@dataclass(frozen=True)
class Finding:
    """A validated finding, anchored in its unit: lines are indices into `Unit.lines`, columns
    are byte columns of those lines; `quote` is the exact source text of that span."""

    unit: str  # the unit's digest
    unit_name: str
    start_index: int
    start_col: int
    end_index: int
    end_col: int
    severity: str
    category: str
    message: str
    quote: str
    replacement: str | None = None
    confidence: float | None = None
    model: str | None = None  # the model that stated it (not part of its identity)

    @property
    def id(self) -> str:
        key = f"{self.unit}:{self.start_index}:{self.start_col}:{self.end_index}:{self.end_col}:{self.category}:{self.message}"
        return hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Placed:
    """A finding at byte offsets of one version of a file (what diagnostics are made of)."""

    finding: Finding
    start: int
    end: int

    @property
    def id(self) -> str:
        return self.finding.id


@dataclass
class UnitAnswer:
    """What came of one unit's answer."""

    findings: list[Finding]
    drops: Counter
    raw_count: int = 0  # findings the model stated before validation
    severe_unanchored: int = 0  # error-severity findings that failed validation (routing signal)


# -- parsing ---------------------------------------------------------------------------------


def parse_answer(text: str, finish_reason: str | None) -> tuple[list[Any] | None, str | None]:
    """The list of raw findings in an answer, or (None, reason)."""
    if finish_reason == "length":
        return None, TRUNCATED
    if not isinstance(text, str):
        return None, UNPARSEABLE
    stripped = text.strip()
    if not stripped:
        return None, UNPARSEABLE
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError):
        value = _find_json(stripped)
    if isinstance(value, dict):
        inner = value.get("findings")
        value = inner if isinstance(inner, list) else [value]
    if not isinstance(value, list):
        return None, UNPARSEABLE
    return value, None


def _find_json(text: str) -> Any:
    """The first JSON list of findings (or finding object) in free text: unconstrained answers
    wrap it in prose or a code fence, or write one object per line."""
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:200]
    for start in starts:
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value)):
            return value
        if isinstance(value, dict):
            if isinstance(value.get("findings"), list):
                return value["findings"]
            objects = [value]
            for line in text[end:].splitlines():
                line = line.strip().rstrip(",")
                if not line:
                    continue
                if not line.startswith("{"):
                    break
                try:
                    objects.append(json.loads(line))
                except (ValueError, RecursionError):
                    break
            return objects
    return None


@dataclass(frozen=True)
class RawFinding:
    first_line: int  # 1-based, as the model saw them
    last_line: int
    severity: str
    category: str
    message: str
    code: str
    fix: str | None


def normalise(item: Any) -> RawFinding | None:
    """A raw finding from one JSON item (tolerant of the key names free models use)."""
    if not isinstance(item, dict):
        return None
    lines = item.get("lines")
    if lines is None and "line" in item:
        lines = [item.get("line"), item.get("endLine", item.get("end_line", item.get("line")))]
    if isinstance(lines, int) and not isinstance(lines, bool):
        lines = [lines, lines]
    if not isinstance(lines, list) or len(lines) != 2:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in lines):
        return None
    first, last = sorted(lines)
    severity = item.get("severity")
    category = item.get("category")
    message = item.get("message")
    code = item.get("code", item.get("quote"))
    fix = item.get("fix", item.get("replacement"))
    if not all(isinstance(v, str) for v in (severity, category, message)):
        return None
    severity = severity.strip().lower()
    severity = _SEVERITY_ALIASES.get(severity, severity)
    category = category.strip().lower()
    category = _CATEGORY_ALIASES.get(category, category)
    if severity not in SEVERITIES or category not in CATEGORIES:
        return None
    if code is not None and not isinstance(code, str):
        return None
    if fix is not None and not isinstance(fix, str):
        fix = None
    if code is not None and len(code) > MAX_CODE_CHARS * 2:
        return None  # a cut quote would anchor on part of the code, and its fix replace part
    if fix is not None and len(fix) > MAX_FIX_CHARS * 2:
        fix = None  # a cut fix would leave broken code behind
    message = _plain(" ".join(message.split()))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return RawFinding(first, last, severity, category, message, code or "", None if fix is None else _plain(fix))


# -- validation ------------------------------------------------------------------------------


def _strip_line_numbers(quote: bytes) -> bytes:
    """Models sometimes copy the prompt's "12 | " prefixes into the quote."""
    lines = quote.split(b"\n")
    if all(_LINE_PREFIX.match(line) for line in lines if line.strip()):
        return b"\n".join(_LINE_PREFIX.sub(b"", line, count=1) for line in lines)
    return quote


def _occurrences(unit_text: bytes, quote: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, exact) of each place the quote occurs in the unit's joined text: exact
    matches, or else matches that differ only in whitespace (re-indented quotes)."""
    found = []
    start = unit_text.find(quote)
    while start >= 0:
        found.append((start, start + len(quote), True))
        start = unit_text.find(quote, start + 1)
    if found:
        return found
    tokens = quote.split()
    if not tokens:
        return []
    pattern = re.compile(rb"\s+".join(re.escape(t) for t in tokens))
    return [(m.start(), m.end(), False) for m in pattern.finditer(unit_text)]


def _index_col(unit_text: bytes, offset: int) -> tuple[int, int]:
    index = unit_text.count(b"\n", 0, offset)
    line_start = unit_text.rfind(b"\n", 0, offset) + 1
    return index, offset - line_start


def validate(
    raw: RawFinding,
    unit: Unit,
    language: str | None = None,
    file_source: bytes | None = None,
    line_offsets: list[int] | None = None,
    drops: Counter | None = None,
) -> Finding | None:
    """A Finding when `raw` is about code really in `unit`, else None (reason added to drops).

    With `file_source` and `line_offsets` (byte offset of each unit line in the file) a fix is
    checked by parsing the file with it applied: a fix that adds syntax errors is dropped (the
    finding stays)."""
    drops = drops if drops is not None else Counter()
    first, last = raw.first_line - 1, raw.last_line - 1
    if not unit.owns(first) or not unit.owns(last):
        drops[OUT_OF_RANGE] += 1
        return None
    quote = _strip_line_numbers(raw.code.encode("utf-8", "surrogatepass").replace(b"\r\n", b"\n").strip(b"\n"))
    if not quote.strip():
        drops[NO_QUOTE] += 1
        return None
    if not raw.message.strip():
        drops[BAD_SHAPE] += 1
        return None
    text = unit.joined()
    candidates = []
    for start, end, exact in _occurrences(text, quote):
        if exact:  # a whole-line quote may carry the line's indentation or not: keep it tight
            while start < end and text[start : start + 1] in (b" ", b"\t"):
                start += 1
        s_index, s_col = _index_col(text, start)
        e_index, e_col = _index_col(text, end)
        if not unit.contiguous(s_index, e_index):
            continue  # spans a gap in the unit (elided methods)
        s_line, e_line = unit.lines[s_index], unit.lines[e_index]
        distance = max(0, first - e_line, s_line - last)
        candidates.append((distance, s_index, s_col, e_index, e_col, exact))
    if not candidates:
        drops[QUOTE_NOT_FOUND] += 1
        return None
    candidates.sort()
    distance, s_index, s_col, e_index, e_col, exact = candidates[0]
    if distance > LINE_TOLERANCE:
        drops[QUOTE_ELSEWHERE] += 1
        return None
    matched = _slice(text, s_index, s_col, e_index, e_col)
    replacement = raw.fix
    if replacement is not None:
        replacement = replacement.replace("\r\n", "\n")
        if not exact:
            replacement = _reindent(quote.decode("utf-8", "replace"), matched, replacement)
        if replacement.strip() == matched.strip():
            drops[FIX_NO_CHANGE] += 1
            replacement = None
        elif file_source is not None and line_offsets is not None and language:
            start = line_offsets[s_index] + s_col
            end = line_offsets[e_index] + e_col
            if _breaks_syntax(file_source, start, end, replacement, language):
                drops[FIX_BREAKS_SYNTAX] += 1
                replacement = None
    return Finding(
        unit=unit.digest,
        unit_name=unit.name,
        start_index=s_index,
        start_col=s_col,
        end_index=e_index,
        end_col=e_col,
        severity=raw.severity,
        category=raw.category,
        message=raw.message,
        quote=matched,
        replacement=replacement,
    )


def _slice(text: bytes, s_index: int, s_col: int, e_index: int, e_col: int) -> str:
    lines = text.split(b"\n")
    if s_index == e_index:
        return source_text(lines[s_index][s_col:e_col])
    parts = [lines[s_index][s_col:], *lines[s_index + 1 : e_index], lines[e_index][:e_col]]
    return source_text(b"\n".join(parts))


def source_text(data: bytes) -> str:
    """Source bytes as str, reversibly (bytes that are not UTF-8 survive the round trip)."""
    return data.decode("utf-8", "surrogateescape")


def source_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _plain(text: str) -> str:
    """Model text made safe to send anywhere (lone surrogates replaced)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _reindent(quote: str, matched: str, replacement: str) -> str:
    """Re-indent a multi-line fix when the model re-indented the quote: continuation lines
    get the indentation the code really has."""
    q_lines, m_lines, r_lines = quote.split("\n"), matched.split("\n"), replacement.split("\n")
    if len(q_lines) < 2 or len(m_lines) < 2 or len(r_lines) < 2:
        return replacement
    q_indent = _common_indent(q_lines[1:])
    m_indent = _common_indent(m_lines[1:])
    if q_indent == m_indent:
        return replacement
    fixed = [r_lines[0]]
    for line in r_lines[1:]:
        fixed.append(m_indent + line[len(q_indent):] if line.startswith(q_indent) else line)
    return "\n".join(fixed)


def _common_indent(lines: list[str]) -> str:
    indents = [line[: len(line) - len(line.lstrip())] for line in lines if line.strip()]
    if not indents:
        return ""
    prefix = indents[0]
    for indent in indents[1:]:
        while not indent.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def _breaks_syntax(source: bytes, start: int, end: int, replacement: str, language: str) -> bool:
    before = syntax.parse(language, source)
    after = syntax.parse(language, source[:start] + replacement.encode("utf-8", "surrogatepass") + source[end:])
    if before is None or after is None:
        return False
    return syntax.error_count(after.root_node) > syntax.error_count(before.root_node)


def review_answer(
    text: str,
    finish_reason: str | None,
    unit: Unit,
    language: str | None = None,
    file_source: bytes | None = None,
    line_offsets: list[int] | None = None,
    confidence: float | None = None,
) -> UnitAnswer:
    """Parse and validate one unit's answer. Never raises on model output."""
    drops: Counter = Counter()
    items, reason = parse_answer(text, finish_reason)
    if items is None:
        drops[reason or UNPARSEABLE] += 1
        return UnitAnswer([], drops)
    findings: list[Finding] = []
    severe_unanchored = 0
    for item in items:
        raw = normalise(item)
        if raw is None:
            drops[BAD_SHAPE] += 1
            continue
        if len(findings) >= MAX_FINDINGS_PER_UNIT:
            drops[OVER_LIMIT] += 1
            continue
        finding = validate(raw, unit, language, file_source, line_offsets, drops)
        if finding is None:
            if raw.severity == "error":
                severe_unanchored += 1
            continue
        if any(_same(finding, other) for other in findings):
            drops[DUPLICATE] += 1
            continue
        findings.append(replace(finding, confidence=confidence))
    return UnitAnswer(findings, drops, len(items), severe_unanchored)


def _same(a: Finding, b: Finding) -> bool:
    if (a.start_index, a.start_col, a.end_index, a.end_col) != (b.start_index, b.start_col, b.end_index, b.end_col):
        return False
    return a.category == b.category or _norm(a.message) == _norm(b.message)


def _norm(message: str) -> str:
    return " ".join(message.casefold().split()).rstrip(".")


def finalize(placed: list[Placed], max_findings: int, drops: Counter) -> list[Placed]:
    """One file's findings: duplicates (same span and category or message) dropped, the most
    severe kept up to max_findings, in file order."""
    unique: list[Placed] = []
    seen: set[tuple] = set()
    for p in sorted(placed, key=lambda p: (p.start, p.end, SEVERITY_RANK[p.finding.severity])):
        by_category = (p.start, p.end, p.finding.category)
        by_message = (p.start, p.end, _norm(p.finding.message))
        if by_category in seen or by_message in seen:
            drops[DUPLICATE] += 1
            continue
        seen.update((by_category, by_message))
        unique.append(p)
    if len(unique) > max_findings:
        ranked = sorted(unique, key=lambda p: (SEVERITY_RANK[p.finding.severity], p.start))
        kept = set(map(id, ranked[:max_findings]))
        drops[OVER_LIMIT] += len(unique) - max_findings
        unique = [p for p in unique if id(p) in kept]
    return unique
