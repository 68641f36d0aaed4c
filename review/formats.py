"""Command-line output of a review: text, JSON, SARIF 2.1.0.

- text: `path:line:col: severity: message [phi-review/category]`, 1-based line and column
  (column in characters), one finding per line, in file order.
- json: the findings with their spans, quoted code and replacement, per-file figures (units
  sent and cached, drops by reason) and a summary.
- sarif: SARIF 2.1.0 as GitHub code scanning takes it: one run, a rule per category
  (`phi-review/<category>`), results with `physicalLocation` (URIs relative to `%SRCROOT%`,
  the current directory), `region` in UTF-16 columns, `partialFingerprints` that survive line
  moves, and `fixes` for findings with a replacement.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

from phi_lsp import __version__
from phi_lsp.core import positions
from phi_lsp.core.documents import TextBuffer
from phi_lsp.core.syntax import path_of

from phi_lsp.review.findings import SEVERITY_RANK, Placed
from phi_lsp.review.pipeline import FileReview
from phi_lsp.review.prompts import CATEGORIES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/microsoft/phi-lsp"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note", "hint": "note"}
_RULE_TEXT = {
    "bug": "Likely bug found by model review",
    "security": "Security issue found by model review",
    "performance": "Performance problem found by model review",
    "style": "Style issue found by model review",
    "maintainability": "Maintainability issue found by model review",
}


def display_path(uri_or_path: str, base: Path | None = None) -> str:
    """A file's path relative to `base` (default: the current directory) where it is inside."""
    path = Path(path_of(uri_or_path))
    base = base or Path.cwd()
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):
        return path.as_posix()


def _span(placed: Placed, buffer: TextBuffer) -> tuple[int, int, int, int]:
    """1-based (line, column, end line, end column) in the buffer's encoding."""
    rng = buffer.range_of(placed.start, placed.end)
    return rng.start.line + 1, rng.start.character + 1, rng.end.line + 1, rng.end.character + 1


def ordered(results: list[FileReview]) -> list[tuple[FileReview, Placed]]:
    rows = [(r, p) for r in results for p in r.findings]
    return sorted(rows, key=lambda rp: (rp[0].job.path, rp[1].start))


def format_text(results: list[FileReview]) -> str:
    lines = []
    for result, placed in ordered(results):
        buffer = TextBuffer(result.snapshot.source, positions.UTF32)
        line, column, _, _ = _span(placed, buffer)
        f = placed.finding
        lines.append(f"{result.job.path}:{line}:{column}: {f.severity}: {f.message} [phi-review/{f.category}]")
    return "\n".join(lines) + ("\n" if lines else "")


def summary(results: list[FileReview], requests: int | None = None, seconds: float | None = None) -> dict[str, Any]:
    drops: Counter = Counter()
    for result in results:
        drops.update(result.drops)
    out: dict[str, Any] = {
        "files": len(results),
        "units": sum(len(r.units) for r in results),
        "unitsSent": sum(r.units_sent for r in results),
        "unitsCached": sum(r.units_cached for r in results),
        "unitsFailed": sum(r.units_failed for r in results),
        "findings": sum(len(r.findings) for r in results),
        "dropped": dict(sorted(drops.items())),
    }
    if requests is not None:
        out["requests"] = requests
    if seconds is not None:
        out["seconds"] = round(seconds, 3)
    return out


def format_json(results: list[FileReview], model: str = "", requests: int | None = None,
                seconds: float | None = None) -> str:
    findings = []
    for result, placed in ordered(results):
        buffer = TextBuffer(result.snapshot.source, positions.UTF32)
        line, column, end_line, end_column = _span(placed, buffer)
        f = placed.finding
        findings.append({
            "path": result.job.path,
            "line": line,
            "column": column,
            "endLine": end_line,
            "endColumn": end_column,
            "severity": f.severity,
            "category": f.category,
            "code": f"phi-review/{f.category}",
            "message": f.message,
            "quote": f.quote,
            "replacement": f.replacement,
            "unit": f.unit_name,
            "id": f.id,
        })
    files = [
        {
            "path": r.job.path,
            "units": len(r.units),
            "unitsSent": r.units_sent,
            "unitsCached": r.units_cached,
            "unitsFailed": r.units_failed,
            "findings": len(r.findings),
            "dropped": dict(sorted(r.drops.items())),
            **({"error": r.error} if r.error else {}),
        }
        for r in results
    ]
    document = {
        "version": 1,
        "tool": {"name": "phi-lsp", "version": __version__, "model": model},
        "findings": findings,
        "files": files,
        "summary": summary(results, requests, seconds),
    }
    return json.dumps(document, indent=2) + "\n"


def _fingerprint(result: FileReview, placed: Placed) -> str:
    f = placed.finding
    key = f"{result.job.path}\0{f.unit_name}\0{f.category}\0{' '.join(f.quote.split())}"
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _artifact(result: FileReview) -> dict[str, str]:
    path = result.job.path
    if os.path.isabs(path) or path.startswith("../"):
        return {"uri": Path(path_of(result.snapshot.uri)).resolve().as_uri()}
    return {"uri": urllib.parse.quote(path), "uriBaseId": "%SRCROOT%"}  # a URI reference: "my file.py" -> my%20file.py


def format_sarif(results: list[FileReview], model: str = "", base: Path | None = None) -> str:
    base = (base or Path.cwd()).resolve()
    rule_ids = [f"phi-review/{c}" for c in CATEGORIES]
    rules = []
    for category in CATEGORIES:
        rule: dict[str, Any] = {
            "id": f"phi-review/{category}",
            "name": category.title().replace("-", ""),
            "shortDescription": {"text": _RULE_TEXT[category]},
            "fullDescription": {"text": _RULE_TEXT[category] + f" ({model or 'Phi'}); quoted code checked against the file."},
            "defaultConfiguration": {"level": "warning"},
            "help": {
                "text": f"{_RULE_TEXT[category]}. The finding quotes the code it is about; read it and "
                        "apply the suggested fix where one is given.",
            },
            "helpUri": INFORMATION_URI,
            "properties": {"tags": ["phi-review", category] + (["security"] if category == "security" else []),
                           "precision": "low"},
        }
        if category == "security":
            rule["properties"]["security-severity"] = "7.0"
        rules.append(rule)
    sarif_results = []
    for result, placed in ordered(results):
        buffer = TextBuffer(result.snapshot.source, positions.UTF16)
        line, column, end_line, end_column = _span(placed, buffer)
        f = placed.finding
        region = {"startLine": line, "startColumn": column, "endLine": end_line, "endColumn": end_column,
                  "snippet": {"text": f.quote}}
        location = {"physicalLocation": {"artifactLocation": _artifact(result), "region": region}}
        item: dict[str, Any] = {
            "ruleId": f"phi-review/{f.category}",
            "ruleIndex": rule_ids.index(f"phi-review/{f.category}"),
            "level": _SARIF_LEVEL[f.severity],
            "message": {"text": f.message},
            "locations": [location],
            "partialFingerprints": {"phiReviewFinding/v1": _fingerprint(result, placed)},
            "properties": {"severity": f.severity, "unit": f.unit_name},
        }
        if f.replacement is not None:
            item["fixes"] = [{
                "description": {"text": f"Replace with the suggested code ({f.category})"},
                "artifactChanges": [{
                    "artifactLocation": _artifact(result),
                    "replacements": [{
                        "deletedRegion": {k: v for k, v in region.items() if k != "snippet"},
                        "insertedContent": {"text": f.replacement},
                    }],
                }],
            }]
        sarif_results.append(item)
    run = {
        "tool": {"driver": {"name": "phi-lsp", "version": __version__, "semanticVersion": __version__,
                            "informationUri": INFORMATION_URI, "rules": rules}},
        "originalUriBaseIds": {"%SRCROOT%": {"uri": base.as_uri() + "/"}},
        "columnKind": "utf16CodeUnits",
        "results": sarif_results,
        "properties": {"model": model, "summary": summary(results)},
    }
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"


def fails(results: list[FileReview], fail_on: str) -> bool:
    """Whether a finding at or above `fail_on` severity exists ("never": never)."""
    if fail_on not in SEVERITY_RANK:
        return False
    threshold = SEVERITY_RANK[fail_on]
    return any(SEVERITY_RANK[p.finding.severity] <= threshold for r in results for p in r.findings)
