"""The review feature in process: publishing for the current version, quick fixes that apply
cleanly in every position encoding, re-anchoring after edits. Findings come from golden answers
(the test model seldom states a valid one), run through the real validation."""

from __future__ import annotations

import pytest
from lsprotocol import types

from phi_lsp.lsp.features.review import ReviewFeature
from phi_lsp.lsp.setup import create_server
from phi_lsp.review.anchor import line_offsets, place_in_unit
from phi_lsp.review.findings import review_answer
from phi_lsp.review.pipeline import FileJob, FileReview
from phi_lsp.review.units import extract_units
from tests.text_model import apply_edit

SOURCE = '''import os

GREETING = "héllo 🌍"


def average(values):
    total = sum(values)
    return total / len(values)
'''
ANSWER = (
    '[{"lines": [8, 8], "severity": "warning", "category": "bug", "message": "Division by zero when values is empty.",'
    ' "code": "total / len(values)", "fix": "total / len(values) if values else 0.0"}]'
)
FIXED = SOURCE.replace("total / len(values)", "total / len(values) if values else 0.0")
URI = "file:///ws/stats.py"


@pytest.fixture(params=["utf-8", "utf-16", "utf-32"])
def setup(request):
    server = create_server()
    server.documents.encoding = request.param
    server.protocol.client_capabilities = types.ClientCapabilities(
        workspace=types.WorkspaceClientCapabilities(
            workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)))
    sent: list[types.PublishDiagnosticsParams] = []
    server.text_document_publish_diagnostics = sent.append  # type: ignore[method-assign]
    feature = next(f for f in server.features if isinstance(f, ReviewFeature))
    document = server.documents.open(URI, SOURCE, 1, "python")
    return server, feature, document, sent, request.param


def review_of(document) -> FileReview:
    snapshot = document.snapshot()
    units = extract_units(snapshot)
    unit = next(u for u in units if u.name == "average")
    answer = review_answer(ANSWER, "stop", unit, "python", snapshot.source, line_offsets(unit, snapshot.buffer))
    placed = [place_in_unit(f, unit, snapshot.buffer) for f in answer.findings]
    return FileReview(FileJob(snapshot, "stats.py"), units, placed, answer.drops, units_sent=len(units))


def code_actions(feature, line_range=(0, 20), diagnostics=()):
    return feature.code_actions(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        range=types.Range(start=types.Position(line=line_range[0], character=0),
                          end=types.Position(line=line_range[1], character=0)),
        context=types.CodeActionContext(diagnostics=list(diagnostics))))


def apply(text: str, action: types.CodeAction, encoding: str) -> str:
    [change] = action.edit.document_changes
    for edit in change.edits:
        r = edit.range
        text = apply_edit(text, (r.start.line, r.start.character), (r.end.line, r.end.character), edit.new_text, encoding)
    return text


def test_publish_and_quick_fix_apply_cleanly(setup):
    server, feature, document, sent, encoding = setup
    feature._publish(review_of(document), on_disk=False)
    [published] = sent
    assert published.version == 1
    [diagnostic] = published.diagnostics
    assert diagnostic.source == "phi-review" and diagnostic.code == "bug"
    assert diagnostic.severity == types.DiagnosticSeverity.Warning
    assert diagnostic.range.start.line == diagnostic.range.end.line == 7
    assert diagnostic.range.start.character == len("    return ")
    assert diagnostic.data["replacement"] == "total / len(values) if values else 0.0"

    [action] = code_actions(feature)
    assert action.kind == types.CodeActionKind.QuickFix
    assert action.edit.document_changes[0].text_document.version == 1
    assert apply(SOURCE, action, encoding) == FIXED
    # Only where the cursor is (or for the diagnostic the editor names).
    assert code_actions(feature, (0, 2)) is None
    [by_id] = code_actions(feature, (0, 0), [diagnostic])
    assert by_id.title == action.title


def test_after_edits_the_fix_is_re_anchored_or_withdrawn(setup):
    server, feature, document, sent, encoding = setup
    feature._publish(review_of(document), on_disk=False)
    # Lines inserted above, with non-ASCII text on the finding's own line before the quote.
    document.apply_changes([
        types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="# ünïcode 🎉 header\n\n"),
    ], 2)
    text = "# ünïcode 🎉 header\n\n" + SOURCE
    [action] = code_actions(feature, (9, 10))
    assert action.edit.document_changes[0].text_document.version == 2
    assert apply(text, action, encoding) == "# ünïcode 🎉 header\n\n" + FIXED

    # The quoted code itself changed: no fix is offered for code that is not there any more.
    line = 9
    document.apply_changes([
        types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=line, character=0), end=types.Position(line=line + 1, character=0)),
            text="    return total / max(len(values), 1)\n"),
    ], 3)
    assert code_actions(feature) is None


def test_a_review_of_an_old_version_is_published_for_the_current_one(setup):
    server, feature, document, sent, encoding = setup
    result = review_of(document)  # made for version 1 ...
    document.apply_changes([  # ... while the user typed
        types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="import sys\n"),
    ], 2)
    feature._publish(result, on_disk=False)
    [published] = sent
    assert published.version == 2
    [diagnostic] = published.diagnostics
    assert diagnostic.range.start.line == 8  # moved down with its code

    # If the quoted code is gone, the finding is dropped, never shown at a wrong place.
    result = review_of(document)
    document.apply_changes([
        types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=8, character=0), end=types.Position(line=9, character=0)),
            text="    return 0\n"),
    ], 3)
    feature._publish(result, on_disk=False)
    assert sent[-1].version == 3 and len(sent[-1].diagnostics) == 0
    assert feature.stats()["review"]["events"]["staleDropped"] == 1


def test_closing_clears_and_a_closed_file_is_not_published(setup):
    server, feature, document, sent, encoding = setup
    result = review_of(document)
    server.documents.close(URI)
    feature.document_closed(URI)
    assert sent[-1].uri == URI and len(sent[-1].diagnostics) == 0
    count = len(sent)
    feature._publish(result, on_disk=False)  # a review that finishes after the close
    assert len(sent) == count
    assert code_actions(feature) is None


def test_workspace_edit_without_document_changes(setup):
    server, feature, document, sent, encoding = setup
    server.protocol.client_capabilities = types.ClientCapabilities()
    feature._publish(review_of(document), on_disk=False)
    [action] = code_actions(feature)
    assert action.edit.document_changes is None
    [edit] = action.edit.changes[URI]
    assert edit.new_text == "total / len(values) if values else 0.0"


def test_a_multi_line_fix_keeps_the_files_crlf():
    from phi_lsp.review.diagnostics import quick_fix

    source = "def average(values):\r\n    total = sum(values)\r\n    return total / len(values)\r\n"
    answer = ('[{"lines": [2, 3], "severity": "warning", "category": "bug", "message": "Empty values.",'
              ' "code": "total = sum(values)\\n    return total / len(values)",'
              ' "fix": "if not values:\\n        return 0.0\\n    return sum(values) / len(values)"}]')
    from phi_lsp.core.documents import Document

    snapshot = Document(URI, source, 1, "python").snapshot()
    [unit] = extract_units(snapshot)
    result = review_answer(answer, "stop", unit, "python", snapshot.source, line_offsets(unit, snapshot.buffer))
    [finding] = result.findings
    action = quick_fix(place_in_unit(finding, unit, snapshot.buffer), snapshot.buffer, URI, 1, False)
    [edit] = action.edit.changes[URI]
    assert edit.new_text == "if not values:\r\n        return 0.0\r\n    return sum(values) / len(values)"
    fixed = apply_edit(source, (edit.range.start.line, edit.range.start.character),
                       (edit.range.end.line, edit.range.end.character), edit.new_text, "utf-16")
    assert "\n" not in fixed.replace("\r\n", "")  # no bare LF: the endings stay uniform
