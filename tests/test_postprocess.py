"""Post-processing rules, pinned by golden cases (tests/golden/completion/cases.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from phi_lsp.completion import postprocess
from phi_lsp.completion.postprocess import CursorInfo
from phi_lsp.core import syntax
from phi_lsp.model.backend import Choice

CASES = tomllib.loads((Path(__file__).parent / "golden" / "completion" / "cases.toml").read_text())["case"]


def info_for(case: dict) -> CursorInfo:
    language = case.get("language", "python")
    before, after = case["before"], case.get("after", "")
    source = (before + after).encode()
    cursor = len(before.encode())
    line_prefix = before.rsplit("\n", 1)[-1]
    line_suffix = after.split("\n", 1)[0]
    next_lines = after.split("\n")[1:]
    return CursorInfo(language, source, syntax.parse(language, source), cursor, line_prefix, line_suffix, next_lines)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden(case):
    info = info_for(case)
    choice = Choice(case["output"], "stop", case.get("tokens"), case.get("logprobs"))
    multiline = postprocess.is_multiline_position(info)
    outcome = postprocess.postprocess(choice, info, multiline, case.get("min_confidence", 0.0), case.get("echo", ""),
                                      case.get("heal", ""))
    assert outcome.text == case.get("expected"), (outcome.reason, outcome.changed_by)


def test_multiline_positions():
    assert postprocess.is_multiline_position(info_for({"before": "def f():\n    "}))
    assert postprocess.is_multiline_position(info_for({"before": "if x:"}))
    assert not postprocess.is_multiline_position(info_for({"before": "x = f(", "after": "a)"}))
    assert not postprocess.is_multiline_position(info_for({"before": "# a comment "}))


@pytest.mark.parametrize("text", [
    "if a:\n            return compute(a)\n        return None",  # 12 spaces of indentation
    "MASK = 0xFFFFFFFFFFFFFFFF",
    "n = 1_000_000_000_000",
    "    # ------------------------",
])
def test_repeated_characters_are_not_a_loop(text):
    assert postprocess.cut_repetition(text, None) == text


def test_a_repeated_phrase_is_cut_to_its_first_occurrence():
    assert postprocess.cut_repetition("foo(foo(foo(foo(foo(x", None) == "foo("


def test_confidence_is_measured_over_the_shown_text_not_a_restated_prefix():
    """A chat model restates the typed line (sure of it) and adds an unsure end: the gate sees
    the unsure end."""
    choice = Choice("    result = compute(x)", tokens=["    result", " =", " compute", "(x)"],
                    token_logprobs=[0.0, 0.0, 0.0, -3.0])
    info = info_for({"before": "def f(x):\n    result = compute("})
    outcome = postprocess.postprocess(choice, info, multiline=False, min_confidence=0.15,
                                      echo="    result = compute(")
    assert outcome.text is None and outcome.reason == "low-confidence", outcome
    assert outcome.confidence < 0.1
