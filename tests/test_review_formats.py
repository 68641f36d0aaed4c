"""`phi-lsp review` output formats and exit status; the command itself against the real vLLM
and against a dead backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from phi_lsp.core.documents import Document
from phi_lsp.review import formats
from phi_lsp.review.anchor import line_offsets, place_in_unit
from phi_lsp.review.findings import review_answer
from phi_lsp.review.pipeline import FileJob, FileReview
from phi_lsp.review.units import extract_units
from tests.conftest import DEAD_BACKEND, MODEL_NAME, ROOT

SOURCE = 'NAME = "naïve 🌍"\n\n\ndef average(values):\n    total = sum(values)\n    return "🌍" + total / len(values)\n'
ANSWER = (
    '[{"lines": [6, 6], "severity": "error", "category": "bug", "message": "Division by zero.", '
    '"code": "total / len(values)", "fix": "total / max(len(values), 1)"}, '
    '{"lines": [5, 5], "severity": "info", "category": "style", "message": "Use fmean.", "code": "sum(values)", "fix": null}]'
)


def result(path="src/stats.py") -> FileReview:
    snapshot = Document("file:///repo/src/stats.py", SOURCE, 1, "python").snapshot()
    units = extract_units(snapshot)
    unit = next(u for u in units if u.name == "average")
    answer = review_answer(ANSWER, "stop", unit, "python", snapshot.source, line_offsets(unit, snapshot.buffer))
    placed = [place_in_unit(f, unit, snapshot.buffer) for f in answer.findings]
    return FileReview(FileJob(snapshot, path), units, placed, Counter({"quote-not-found": 2}), units_sent=2)


def test_text_format():
    lines = formats.format_text([result()]).splitlines()
    # Columns count characters: the emoji before the quote is one column.
    assert lines == [
        "src/stats.py:5:13: info: Use fmean. [phi-review/style]",
        "src/stats.py:6:18: error: Division by zero. [phi-review/bug]",
    ]
    assert formats.format_text([]) == ""


def test_json_format():
    data = json.loads(formats.format_json([result()], MODEL_NAME, requests=1, seconds=0.5))
    first, second = data["findings"]
    assert (first["line"], first["column"], first["category"]) == (5, 13, "style")
    assert second["replacement"] == "total / max(len(values), 1)" and second["quote"] == "total / len(values)"
    assert second["endColumn"] - second["column"] == len("total / len(values)")
    assert data["files"][0]["dropped"] == {"quote-not-found": 2}
    assert data["summary"]["requests"] == 1 and data["tool"]["model"] == MODEL_NAME


def test_sarif_format_is_what_github_code_scanning_takes():
    data = json.loads(formats.format_sarif([result()], MODEL_NAME, base=Path("/repo")))
    assert data["version"] == "2.1.0" and data["$schema"].endswith("sarif-2.1.0.json")
    [run] = data["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "phi-lsp" and driver["rules"]
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(set(rule_ids)) == len(rule_ids)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"] and rule["help"]["text"]
        if "security-severity" in rule["properties"]:
            assert 0 <= float(rule["properties"]["security-severity"]) <= 10
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == "file:///repo/"
    assert len(run["results"]) == 2
    for item in run["results"]:
        assert rule_ids[item["ruleIndex"]] == item["ruleId"]
        assert item["level"] in ("error", "warning", "note")
        assert item["message"]["text"]
        [location] = item["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"] == {"uri": "src/stats.py", "uriBaseId": "%SRCROOT%"}
        region = physical["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1
        assert (region["endLine"], region["endColumn"]) >= (region["startLine"], region["startColumn"])
        assert item["partialFingerprints"]
    bug = next(r for r in run["results"] if r["ruleId"] == "phi-review/bug")
    assert bug["level"] == "error"
    assert bug["locations"][0]["physicalLocation"]["region"]["startColumn"] == 19  # UTF-16: the emoji is 2 units
    [fix] = bug["fixes"]
    assert fix["artifactChanges"][0]["replacements"][0]["insertedContent"]["text"] == "total / max(len(values), 1)"
    assert json.loads(formats.format_sarif([], MODEL_NAME))["runs"][0]["results"] == []


def test_fail_on():
    results = [result()]
    assert formats.fails(results, "error") and formats.fails(results, "info") and formats.fails(results, "hint")
    assert not formats.fails(results, "never")
    only_style = result()
    only_style.findings = [p for p in only_style.findings if p.finding.category == "style"]
    assert not formats.fails([only_style], "warning") and formats.fails([only_style], "info")


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_LSP_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "phi_lsp", "review", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.vllm
@pytest.mark.asyncio(loop_scope="session")
async def test_cli_review_against_the_real_model(vllm_url, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(SOURCE, encoding="utf-8")
    (tmp_path / "pkg" / "b.js").write_text("function f(x) {\n  return x * 2;\n}\n", encoding="utf-8")
    (tmp_path / "pkg" / ".env").write_text("TOKEN=abc\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not code\n", encoding="utf-8")
    done = run_cli(["pkg", "notes.txt", "--format", "sarif", "--fail-on", "error", "--backend-url", vllm_url,
                    "--model", MODEL_NAME], tmp_path)
    assert done.returncode in (0, 1), done.stderr
    sarif = json.loads(done.stdout)
    summary = sarif["runs"][0]["properties"]["summary"]
    assert summary["files"] == 2 and summary["unitsSent"] == summary["units"] == 3
    assert "\x1b[" not in done.stderr  # no progress bar when stderr is not a terminal
    for item in sarif["runs"][0]["results"]:
        assert item["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("pkg/")
    assert done.returncode == (1 if any(r["level"] == "error" for r in sarif["runs"][0]["results"]) else 0)

    text = run_cli(["pkg/a.py", "--backend-url", vllm_url, "--model", MODEL_NAME], tmp_path)
    assert text.returncode == 0, text.stderr
    for line in text.stdout.splitlines():
        assert line.startswith("pkg/a.py:") and "[phi-review/" in line
    secret = run_cli(["pkg/.env", "--backend-url", vllm_url, "--model", MODEL_NAME], tmp_path)
    assert "excluded by privacy settings" in secret.stderr


def test_cli_with_a_dead_backend_and_a_missing_path(tmp_path):
    (tmp_path / "a.py").write_text(SOURCE, encoding="utf-8")
    done = run_cli(["a.py", "missing.py", "--format", "json", "--backend-url", DEAD_BACKEND, "--model", MODEL_NAME], tmp_path)
    assert done.returncode == 2
    data = json.loads(done.stdout)
    assert data["summary"]["unitsFailed"] == data["summary"]["unitsSent"] == 2
    assert data["summary"]["dropped"]["backend-error"] == 2
    assert "missing.py: no such file" in done.stderr and "not reviewed" in done.stderr


def test_progress_bar_only_when_enabled():
    import io

    from phi_lsp.cli.review import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(True, stream)
    bar.update(0, 32)
    bar.update(16, 32)
    bar.close()
    out = stream.getvalue()
    assert "16/32 units" in out and "[" + "#" * 15 + "." * 15 + "]" in out and out.endswith("\r\x1b[K")
    quiet = io.StringIO()
    bar = ProgressBar(False, quiet)
    bar.update(1, 2)
    bar.close()
    assert quiet.getvalue() == ""
