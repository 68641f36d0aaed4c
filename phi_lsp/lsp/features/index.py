"""Keeps the workspace symbol index (phi_lsp.core.symbols) in step with the editor and the disk:
built once after initialize (with `$/progress`, never holding up a completion: completions use
what is indexed so far), updated from an open document's tree shortly after it changes, from
disk when a file is saved or closed, and from `workspace/didChangeWatchedFiles` for files changed
outside the editor (git checkout, code generators). The file watcher is registered dynamically
when the client supports that, for the source extensions the index reads and `.gitignore`."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from lsprotocol import types

from phi_lsp.core import syntax
from phi_lsp.core.chunks import ChunkIndex
from phi_lsp.core.documents import Document
from phi_lsp.core.imports import forget_package_cache
from phi_lsp.core.symbols import MAX_FILE_BYTES, SymbolIndex
from phi_lsp.core.syntax import path_of
from phi_lsp.lsp.features.base import Feature
from phi_lsp.lsp.progress import ProgressReporter

log = logging.getLogger(__name__)

REINDEX_DELAY_S = 0.5  # after the last keystroke; the index does not need every keystroke
WATCHER_ID = "phi-lsp/watched-files"


def watched_globs() -> list[str]:
    extensions = syntax.source_extensions()
    return ["**/*.{" + ",".join(extensions) + "}", "**/.gitignore"]


class IndexFeature(Feature):
    def __init__(self, server):
        super().__init__(server)
        self.index = SymbolIndex(exclude=server.privacy.is_excluded)
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._built = False
        self.watching = False  # the client watches files for us (dynamic registration)
        self.watched_changes = 0

    def register(self) -> None:
        @self.server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
        def did_change_watched_files(ls, params: types.DidChangeWatchedFilesParams) -> None:
            self.files_changed(params.changes)

    def settings_changed(self, settings) -> None:
        self.index.set_exclude(self.server.privacy.is_excluded)
        wants_chunks = "chunks" in settings.completion.context_sources
        if wants_chunks != (self.index.chunks is not None):
            # Similar-code retrieval keeps its own index (memory): only while it is asked for.
            self.index.chunks = ChunkIndex() if wants_chunks else None
            if wants_chunks and self._built:
                self.server.run_task(self._build(), "symbol-index")  # fill it
        if not self._built:
            self._built = True
            self.server.run_task(self._build(), "symbol-index")
            self.server.run_task(self._watch(), "watch-files")

    async def _build(self) -> None:
        progress = ProgressReporter(self.server, "phi-lsp: indexing workspace")
        await progress.begin("scanning files", None)

        def report(files: int) -> None:
            progress.report(f"{files} files")

        try:
            await self.index.build(self.server.workspace_roots, report)
        finally:
            progress.end(f"{self.index.files_indexed} files, {len(self.index)} definitions")

    async def _watch(self) -> None:
        workspace = self.server.client_capabilities.workspace
        watched = workspace.did_change_watched_files if workspace is not None else None
        if watched is None or not watched.dynamic_registration or not self.server.workspace_roots:
            return
        options = types.DidChangeWatchedFilesRegistrationOptions(
            watchers=[types.FileSystemWatcher(glob_pattern=glob) for glob in watched_globs()])
        try:
            await self.server.client_register_capability_async(types.RegistrationParams(registrations=[
                types.Registration(id=WATCHER_ID, method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                                   register_options=options)]))
            self.watching = True
        except Exception as exc:  # the index still follows open documents and saves
            log.info("client refused the file watcher: %s", exc)

    def files_changed(self, changes: list[types.FileEvent]) -> None:
        for change in changes:
            path = path_of(change.uri)
            self.watched_changes += 1
            name = os.path.basename(path)
            if name == ".gitignore":
                if self.index.gitignore is not None:
                    self.index.gitignore.forget(path)
                continue  # files it newly ignores leave as they change; a rebuild is not worth it
            if name == "__init__.py":
                forget_package_cache()
            if change.type == types.FileChangeType.Deleted:
                self.index.remove(path)
            elif self.server.documents.get(change.uri) is None:  # an open document is newer than the disk
                self.index.index_file(Path(path))

    def document_opened(self, document: Document) -> None:
        self._reindex(document.uri)

    def document_changed(self, document: Document, params) -> None:
        uri = document.uri
        if uri in self._pending:
            self._pending[uri].cancel()
        loop = asyncio.get_running_loop()
        self._pending[uri] = loop.call_later(REINDEX_DELAY_S, self._reindex, uri)

    def document_saved(self, document: Document) -> None:
        self._reindex(document.uri)

    def document_closed(self, uri: str) -> None:
        handle = self._pending.pop(uri, None)
        if handle is not None:
            handle.cancel()
        self.index.index_file(Path(path_of(uri)))  # back to what is on disk

    def _reindex(self, uri: str) -> None:
        self._pending.pop(uri, None)
        document = self.server.documents.get(uri)
        if document is None:
            return
        if len(document.source) > MAX_FILE_BYTES or document.too_large is not None:
            # The same limit as for files on disk: a huge file's definitions would crowd out
            # the rest, and parsing and walking it blocks the event loop for seconds (10 MB:
            # ~10 s on opening).
            self.index.remove(path_of(uri))
            return
        self.index.update(path_of(uri), document.tree, document.source, document.language)

    def stats(self) -> dict:
        return {"symbolIndex": {"files": self.index.files_indexed, "definitions": len(self.index),
                                "buildSeconds": round(self.index.build_seconds, 3),
                                "watching": self.watching, "watchedChanges": self.watched_changes}}
