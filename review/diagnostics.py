"""Findings as LSP diagnostics and quick fixes.

Ranges are computed from byte offsets with the TextBuffer of the version they are published
for, so they are right in whichever position encoding the editor negotiated. A quick fix
replaces exactly the quoted code; it is only offered after checking that the document's current
text still has that code there, so the WorkspaceEdit applies cleanly.
"""

from __future__ import annotations

from lsprotocol import types

from phi_lsp.core.documents import TextBuffer

from phi_lsp.review.findings import Placed

SOURCE = "phi-review"
SEVERITY = {
    "error": types.DiagnosticSeverity.Error,
    "warning": types.DiagnosticSeverity.Warning,
    "info": types.DiagnosticSeverity.Information,
    "hint": types.DiagnosticSeverity.Hint,
}
MAX_TITLE = 80


def to_diagnostic(placed: Placed, buffer: TextBuffer) -> types.Diagnostic:
    finding = placed.finding
    data: dict = {"findingId": finding.id}
    if finding.replacement is not None:
        data["replacement"] = finding.replacement
    if finding.confidence is not None:
        data["confidence"] = round(finding.confidence, 3)
    return types.Diagnostic(
        range=buffer.range_of(placed.start, placed.end),
        message=finding.message,
        severity=SEVERITY[finding.severity],
        code=finding.category,
        source=SOURCE,
        data=data,
    )


def overlaps(placed: Placed, start: int, end: int) -> bool:
    """Whether the finding's span touches the byte range [start, end] (a cursor touches it
    at either edge)."""
    return placed.start <= end and start <= placed.end


def quick_fix(
    placed: Placed,
    buffer: TextBuffer,
    uri: str,
    version: int | None,
    document_changes: bool,
) -> types.CodeAction | None:
    """A quickfix CodeAction replacing the quoted code, or None without a replacement."""
    finding = placed.finding
    if finding.replacement is None:
        return None
    replacement = finding.replacement
    line_end = buffer.source.find(b"\n", placed.start)
    if line_end > 0 and buffer.source[line_end - 1 : line_end] == b"\r":  # keep the file's CRLF
        replacement = replacement.replace("\r\n", "\n").replace("\n", "\r\n")
    edit = types.TextEdit(range=buffer.range_of(placed.start, placed.end), new_text=replacement)
    if document_changes:
        workspace_edit = types.WorkspaceEdit(
            document_changes=[
                types.TextDocumentEdit(
                    text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version),
                    edits=[edit],
                )
            ]
        )
    else:
        workspace_edit = types.WorkspaceEdit(changes={uri: [edit]})
    message = finding.message
    title = "phi-review: " + (message if len(message) <= MAX_TITLE else message[: MAX_TITLE - 1] + "…")
    return types.CodeAction(
        title=title,
        kind=types.CodeActionKind.QuickFix,
        diagnostics=[to_diagnostic(placed, buffer)],
        edit=workspace_edit,
        is_preferred=True,
    )
