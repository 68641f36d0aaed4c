"""Review through the server, end to end: the real vLLM (model_client, three editor/encoding
profiles) or a dead backend (client).

The test model is a tiny base model: it rarely states a finding that survives validation, so
these tests check the pipeline (one batched request per save, only changed units re-sent,
well-formed diagnostics for the right version, counted drops, clearing on close, workspace
progress), not what the findings say."""

from __future__ import annotations

import asyncio

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from phi_lsp.review.prompts import CATEGORIES
from tests.conftest import CONFIG, initialize, settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

REVIEW_TIMEOUT_S = 240


def functions(n: int, tag: str = "") -> str:
    parts = ["import os\n"]
    for i in range(n):
        parts.append(
            f"def helper_{i}{tag}(path, items):\n"
            f"    total = 0\n"
            f"    for item in items:\n"
            f"        total += len(item) * {i}\n"
            f"    return os.path.join(path, str(total / len(items)))\n"
        )
    return "\n\n".join(parts)


def open_doc(client: LanguageClient, name: str, text: str, language="python") -> str:
    path = client.workspace / name
    path.write_text(text, encoding="utf-8")
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))
    return uri


def save(client: LanguageClient, uri: str) -> None:
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))


async def stats(client: LanguageClient) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))


async def diagnostics_for(client: LanguageClient, uri: str, accept=lambda p: True) -> types.PublishDiagnosticsParams:
    """The next publishDiagnostics for `uri` that `accept`s (events, never sleeps)."""
    async def wait():
        while True:
            params = await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
            if params.uri == uri and accept(params):
                return params

    return await asyncio.wait_for(wait(), REVIEW_TIMEOUT_S)


def check_diagnostics(params: types.PublishDiagnosticsParams, text: str, encoding: str) -> None:
    lines = text.split("\n")
    for d in params.diagnostics:
        assert d.source == "phi-review"
        assert d.code in CATEGORIES
        assert d.message.strip()
        assert d.severity in (1, 2, 3, 4)
        assert isinstance(d.data, dict) and d.data["findingId"]
        start, end = d.range.start, d.range.end
        assert 0 <= start.line <= end.line < len(lines)
        width = {"utf-8": lambda s: len(s.encode()), "utf-16": lambda s: len(s.encode("utf-16-le")) // 2,
                 "utf-32": len}[encoding]
        assert start.character <= width(lines[start.line]) and end.character <= width(lines[end.line])


def encoding_of(client: LanguageClient) -> str:
    return client.capabilities.general.position_encodings[0]


async def test_save_reviews_all_units_in_one_request_and_resave_sends_one(model_client: LanguageClient):
    text = functions(6)
    uri = open_doc(model_client, "six.py", text)
    before = await stats(model_client)
    waiting = asyncio.ensure_future(diagnostics_for(model_client, uri))
    save(model_client, uri)
    published = await waiting
    assert published.version == 1
    check_diagnostics(published, text, encoding_of(model_client))
    after = await stats(model_client)
    last = after["review"]["last"]
    assert last["units"] == 7 and last["unitsSent"] == 7  # six functions and the module's import
    assert last["requests"] == 1
    http = after["backend"]["byPath"].get("/completions", 0) - (before["backend"] or {}).get("byPath", {}).get("/completions", 0)
    assert http == 1, "all units of a save go out as ONE list-of-prompts request"
    # Every answer became findings or counted drops, never an error of ours.
    assert "internal-error" not in after["review"]["dropped"]

    # Change one function (and move the others down): only that unit is sent again.
    lines = text.split("\n")
    target = next(i for i, line in enumerate(lines) if line.startswith("def helper_3"))
    model_client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[
            types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=target + 1, character=0), end=types.Position(line=target + 1, character=0)),
                text="    items = list(items)\n"),
            types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
                text="# a comment above everything\n"),
        ]))
    new_text = "# a comment above everything\n" + "\n".join(lines[: target + 1] + ["    items = list(items)"] + lines[target + 1 :])
    waiting = asyncio.ensure_future(diagnostics_for(model_client, uri, lambda p: p.version == 2))
    save(model_client, uri)
    published = await waiting
    check_diagnostics(published, new_text, encoding_of(model_client))
    last = (await stats(model_client))["review"]["last"]
    # The module unit changed too (the comment belongs to it): two units, not seven.
    assert last["unitsSent"] == 2 and last["unitsCached"] == 5, last

    # Closing the file clears its diagnostics.
    waiting = asyncio.ensure_future(diagnostics_for(model_client, uri, lambda p: not p.diagnostics))
    model_client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    cleared = await waiting
    assert len(cleared.diagnostics) == 0


async def test_newer_save_cancels_the_older_review_and_stale_versions_are_not_published(model_client: LanguageClient):
    text = functions(4, "_c")
    uri = open_doc(model_client, "cancel.py", text)
    seen: list[int | None] = []

    def record(p):
        seen.append(p.version)
        return p.version == 3

    waiting = asyncio.ensure_future(diagnostics_for(model_client, uri, record))
    save(model_client, uri)  # version 1
    # Typing while the model answers, then saving again: the review of version 1 is cancelled.
    model_client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="import sys\n")]))
    save(model_client, uri)
    # ... and typing again before that review is back: it is published for version 3, re-anchored.
    model_client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="\n\n")]))
    published = await waiting
    assert seen == [3], "nothing is published for a version that has moved on"
    check_diagnostics(published, "\n\nimport sys\n" + text, encoding_of(model_client))
    events = (await stats(model_client))["review"]["events"]
    assert events.get("cancelledBySave", 0) >= 1


async def test_review_command_code_actions_and_workspace_progress(model_client: LanguageClient):
    text = functions(2, "_w")
    uri = open_doc(model_client, "cmd.py", text)
    (model_client.workspace / "other.py").write_text(functions(3, "_o"), encoding="utf-8")
    (model_client.workspace / ".env").write_text("SECRET=1\n", encoding="utf-8")
    result = await model_client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="phi.review", arguments=[uri]))
    assert result["reviewed"] is True and result["units"] == 3 and result["version"] == 1
    assert result["unitsSent"] + result["unitsCached"] == 3

    actions = await model_client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=20, character=0)),
        context=types.CodeActionContext(diagnostics=list(model_client.diagnostics.get(uri, [])))))
    for action in actions or []:
        assert action.kind == types.CodeActionKind.QuickFix and action.edit is not None

    summary = await model_client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="phi.reviewWorkspace", arguments=[]))
    assert summary["reviewed"] is True
    assert summary["files"] == 2  # cmd.py (open: reviewed as the editor has it) and other.py; never .env
    assert summary["unitsCached"] >= 3  # cmd.py did not change since phi.review
    reports = [r for token, rs in model_client.progress_reports.items() for r in rs]
    kinds = [type(r).__name__ for r in reports]
    assert "WorkDoneProgressBegin" in kinds and "WorkDoneProgressEnd" in kinds
    begin = next(r for r in reports if isinstance(r, types.WorkDoneProgressBegin) and "reviewing the workspace" in r.title)
    assert begin.cancellable is True
    other = (model_client.workspace / "other.py").as_uri()
    assert other in model_client.diagnostics  # published for a file that is not open


async def test_dead_backend_never_crashes_and_says_so_once(client: LanguageClient, tmp_path):
    client.workspace = tmp_path
    uri = open_doc(client, "dead.py", functions(2))
    results = []
    for _ in range(3):
        results.append(await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="phi.review", arguments=[uri])))
    review = (await stats(client))["review"]
    for result in results:
        # Either the request failed (counted, not cached) or, once the backend is known to be
        # down (the server checks it at start), the review is skipped at once.
        assert result["reviewed"] is False and result["reason"] == "the model is not ready" or (
            result["unitsFailed"] == result["unitsSent"] > 0 and result["error"])
    assert review["dropped"].get("backend-error", 0) == sum(r.get("unitsFailed", 0) for r in results)
    assert review["events"].get("skippedNotReady", 0) >= 2
    skipped = [m for m in client.messages if "review skipped" in m.message]
    assert len(skipped) == 1, "said once, not at every save"
    # The server still answers everything else.
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=1, character=0)),
        context=types.CodeActionContext(diagnostics=[])))
    assert not actions


@pytest_lsp.fixture(config=CONFIG)
async def vscode_client(lsp_client: LanguageClient, tmp_path, vllm_url):
    """One editor profile is enough for what does not depend on the position encoding."""
    await initialize(lsp_client, tmp_path, settings(vllm_url, **{"review.batchSize": 8}))
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


async def test_cancelling_the_workspace_progress_stops_the_review(vscode_client: LanguageClient):
    for i in range(6):
        (vscode_client.workspace / f"mod_{i}.py").write_text(functions(6, f"_m{i}"), encoding="utf-8")
    running = asyncio.ensure_future(vscode_client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="phi.reviewWorkspace", arguments=[])))

    async def progress_token():
        while True:
            await vscode_client.wait_for_notification("$/progress")
            for token, reports in vscode_client.progress_reports.items():
                if any(isinstance(r, types.WorkDoneProgressReport) for r in reports) and any(
                        isinstance(r, types.WorkDoneProgressBegin) and "reviewing the workspace" in r.title for r in reports):
                    return token

    token = await asyncio.wait_for(progress_token(), REVIEW_TIMEOUT_S)
    vscode_client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))
    result = await asyncio.wait_for(running, REVIEW_TIMEOUT_S)
    assert result == {"reviewed": False, "reason": "cancelled"}
    assert isinstance(vscode_client.progress_reports[token][-1], types.WorkDoneProgressEnd)
    review = (await stats(vscode_client))["review"]
    assert review["events"]["workspaceCancelled"] == 1
    assert review["unitsSent"] < 42  # 6 files of 7 units, in requests of 8: it stopped early
