"""The workspace index through the LSP: built with $/progress, a file watcher registered
dynamically, and `workspace/didChangeWatchedFiles` keeping the index in step with the disk
(.gitignore honoured). No model needed: the backend is down."""

from __future__ import annotations

import asyncio
import time

import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.conftest import CONFIG, DEAD_BACKEND, initialize, settings


@pytest_lsp.fixture(config=CONFIG)
async def watch_client(lsp_client: LanguageClient, tmp_path):
    # conftest's client records the server's registrations in `registrations`.
    (tmp_path / ".gitignore").write_text("generated/\n")
    (tmp_path / "lib.py").write_text("def first():\n    pass\n")
    await initialize(lsp_client, tmp_path, settings(DEAD_BACKEND))
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


async def index_stats(client: LanguageClient) -> dict:
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    return stats["symbolIndex"]


async def until(check, timeout: float = 10.0):
    """Poll an async check (the server answers phi.stats at once) until it holds."""
    started = time.monotonic()
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.05)


def changed(client: LanguageClient, *events: tuple[str, types.FileChangeType]) -> None:
    client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(changes=[
        types.FileEvent(uri=(client.workspace / name).as_uri(), type=kind) for name, kind in events]))


async def test_watched_file_changes_update_the_index(watch_client: LanguageClient):
    client = watch_client
    # The watcher is registered dynamically (VS Code's capabilities allow it), for sources and .gitignore.
    await until(lambda: _async(client.registrations), 10)
    registration = client.registrations[0]
    assert registration.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES
    globs = [w["globPattern"] for w in registration.register_options["watchers"]]  # untyped on the wire
    assert "**/.gitignore" in globs and any(".py" in g or "py," in g for g in globs)
    # The build reported progress and finished.
    stats = await until(lambda: _stats_when(client, lambda s: s["definitions"] == 1 and s["watching"]))
    assert stats["files"] == 1
    titles = [r.title for reports in client.progress_reports.values() for r in reports
              if isinstance(r, types.WorkDoneProgressBegin)]
    assert "phi-lsp: indexing workspace" in titles

    # A file created outside the editor: its definitions come in.
    (client.workspace / "new.py").write_text("def second():\n    pass\n\nclass Third:\n    pass\n")
    changed(client, ("new.py", types.FileChangeType.Created))
    await until(lambda: _stats_when(client, lambda s: s["definitions"] == 3))
    # Changed on disk: replaced, not added.
    (client.workspace / "new.py").write_text("def second():\n    pass\n")
    changed(client, ("new.py", types.FileChangeType.Changed))
    await until(lambda: _stats_when(client, lambda s: s["definitions"] == 2))
    # Deleted: gone.
    (client.workspace / "lib.py").unlink()
    changed(client, ("lib.py", types.FileChangeType.Deleted))
    await until(lambda: _stats_when(client, lambda s: s["definitions"] == 1))
    # A file git ignores stays out, even when the watcher reports it.
    (client.workspace / "generated").mkdir()
    (client.workspace / "generated" / "out.py").write_text("def built():\n    pass\n")
    changed(client, ("generated/out.py", types.FileChangeType.Created))
    stats = await until(lambda: _stats_when(client, lambda s: s["watchedChanges"] == 4))
    assert stats["definitions"] == 1


async def _async(value):
    return value


async def _stats_when(client: LanguageClient, predicate):
    stats = await index_stats(client)
    return stats if predicate(stats) else None
