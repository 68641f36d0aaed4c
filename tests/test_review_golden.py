"""Golden cases for parsing and validating review answers (tests/golden/review/).

Hand-written cases cover each rule (truncated, nonsense, hallucinated quote, out of range,
duplicates, bad fixes, ...); recorded_phi_code_tiny.json holds real answers of the test model.
Every answer must end as findings or counted drops, never as an exception."""

from __future__ import annotations

import json
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from phi_lsp.core.documents import Document
from phi_lsp.review.anchor import line_offsets, place_in_unit
from phi_lsp.review.findings import finalize, review_answer
from phi_lsp.review.units import extract_units

GOLDEN = Path(__file__).parent / "golden" / "review"
EXTENSIONS = {"python": "py", "javascript": "js", "typescript": "ts", "go": "go", "rust": "rs"}
CASES = sorted(GOLDEN.glob("*.toml"))


def _document(source: str, language: str, crlf: bool = False) -> Document:
    if crlf:
        source = source.replace("\n", "\r\n")
    return Document(f"file:///golden/case.{EXTENSIONS[language]}", source, 1, language)


def run_case(source: str, language: str, unit_name: str, answer: str, finish_reason: str | None, crlf=False):
    document = _document(source, language, crlf)
    snapshot = document.snapshot()
    units = {u.name: u for u in extract_units(snapshot)}
    assert unit_name in units, f"no unit {unit_name!r}; units: {sorted(units)}"
    unit = units[unit_name]
    result = review_answer(
        answer, finish_reason, unit, language, snapshot.source, line_offsets(unit, snapshot.buffer)
    )
    drops = Counter(result.drops)
    placed = []
    for finding in result.findings:
        p = place_in_unit(finding, unit, snapshot.buffer)
        assert p is not None, "a validated finding must place on its own version"
        placed.append(p)
    kept = finalize(placed, 20, drops)
    return snapshot, kept, drops


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path):
    case = tomllib.loads(path.read_text(encoding="utf-8"))
    snapshot, kept, drops = run_case(
        case["source"], case["language"], case["unit"], case["answer"], case.get("finish_reason"), case.get("crlf", False)
    )
    expect = case["expect"]
    assert dict(drops) == expect.get("drops", {}), case["description"]
    if "findings_count" in expect:
        assert len(kept) == expect["findings_count"]
        return
    wanted = sorted(expect.get("findings", []), key=lambda f: (f["line"], f["quote"]))
    assert len(kept) == len(wanted), [p.finding for p in kept]
    for placed, want in zip(kept, wanted):
        finding = placed.finding
        start = snapshot.buffer.position_at(placed.start)
        end = snapshot.buffer.position_at(placed.end)
        assert (start.line + 1, end.line + 1) == (want["line"], want["end_line"])
        assert finding.quote == want["quote"]
        # The placed span is exactly the quoted code in the file.
        raw = snapshot.source[placed.start : placed.end].replace(b"\r\n", b"\n")
        assert raw.decode() == want["quote"]
        for key in ("severity", "category"):
            if key in want:
                assert getattr(finding, key) == want[key]
        if want.get("replacement") is False:
            assert finding.replacement is None
        elif "replacement" in want:
            assert finding.replacement == want["replacement"]


def test_every_rule_has_a_case():
    reasons = set()
    for path in CASES:
        reasons.update(tomllib.loads(path.read_text(encoding="utf-8"))["expect"].get("drops", {}))
    assert {
        "truncated", "unparseable", "bad-shape", "out-of-range", "quote-not-found", "quote-elsewhere",
        "duplicate", "over-limit", "fix-breaks-syntax", "fix-no-change",
    } <= reasons


def test_recorded_answers_of_the_test_model():
    recorded = json.loads((GOLDEN / "recorded_phi_code_tiny.json").read_text(encoding="utf-8"))
    assert len(recorded["answers"]) >= 20
    for entry in recorded["answers"]:
        source = recorded["files"][entry["file"]]
        _snapshot, kept, drops = run_case(
            source, entry["language"], entry["unit"], entry["text"], entry["finish_reason"]
        )
        assert dict(drops) == entry["expect"]["drops"], entry
        assert len(kept) == entry["expect"]["findings"], entry
