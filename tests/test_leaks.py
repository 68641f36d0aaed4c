"""Leaks found by the soak benchmark (benchmarks/bench_soak.py), kept from coming back."""

from __future__ import annotations

import asyncio
import gc

from lsprotocol import types

from phi_lsp.lsp.setup import create_server
from tests.conftest import DEAD_BACKEND, settings
from tests.rawlsp import RawServer


def test_messages_leave_no_futures_behind(tmp_path):
    """pygls filed a future per notification (and per step of a generator handler) and never
    removed it: one per didChange."""
    raw = RawServer()
    try:
        raw.initialize(tmp_path, settings(DEAD_BACKEND))
        uri = (tmp_path / "a.py").as_uri()
        raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": ""}})
        for i in range(500):
            raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": i + 2}, "contentChanges": [
                {"range": {"start": {"line": 0, "character": i}, "end": {"line": 0, "character": i}}, "text": "x"}]})
        for _ in range(20):
            raw.request("workspace/executeCommand", {"command": "phi.review", "arguments": [uri]})
        stats = raw.response(raw.request("workspace/executeCommand", {"command": "phi.stats"}))["result"]
        assert stats["process"]["pendingMessages"] <= 2, stats["process"]
    finally:
        raw.close()


def _ours(task: asyncio.Task) -> bool:
    """A task running this project's code (completion/ or phi_lsp/), or this test's own."""
    code = getattr(task.get_coro(), "cr_code", None)
    filename = code.co_filename if code else ""
    return any(part in filename for part in ("/completion/", "/phi_lsp/", "test_leaks"))


async def test_superseded_completions_are_freed():
    """Each keystroke's request cancels the one before; the cancelled ones (and their
    snapshots) must not stay chained to the newest."""
    server = create_server()
    server.settings_manager.set_source("test", {"completion": {"debounceMs": 5000}})
    feature = next(f for f in server.features if type(f).__name__ == "CompletionFeature")
    uri = "file:///ws/typing.py"
    document = server.documents.open(uri, "x = 1\n" * 200, 1, "python")

    def params() -> types.InlineCompletionParams:
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(200, 0),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))

    tasks = []
    for version in range(2, 202):
        document.apply_changes([types.TextDocumentContentChangePartial(
            range=types.Range(types.Position(200, 0), types.Position(200, 0)), text="y")], version)
        tasks.append(asyncio.ensure_future(feature.inline_completion(params())))
        await asyncio.sleep(0)  # it starts (and supersedes the previous one)
    last = tasks.pop()
    await asyncio.wait(tasks)
    assert all(t.cancelled() for t in tasks)
    del tasks
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and o.done() and o is not last
             and _ours(o)]  # other tests' finished tasks (pytest-lsp's, pygls') may still be garbage
    snapshots = [o for o in gc.get_objects() if type(o).__name__ == "Snapshot" and o.uri == uri]
    last.cancel()
    assert len(alive) < 5, len(alive)
    assert len(snapshots) <= 2, len(snapshots)
