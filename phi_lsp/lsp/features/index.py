"""Keeps the workspace symbol index (phi_lsp.core.symbols) in step with the editor: built once after
initialize, updated from an open document's tree shortly after it changes, and from disk when
a file is saved or closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from phi_lsp.core.documents import Document
from phi_lsp.lsp.features.base import Feature
from phi_lsp.core.symbols import MAX_FILE_BYTES, SymbolIndex
from phi_lsp.core.syntax import path_of

REINDEX_DELAY_S = 0.5  # after the last keystroke; the index does not need every keystroke


class IndexFeature(Feature):
    def __init__(self, server):
        super().__init__(server)
        self.index = SymbolIndex(exclude=server.privacy.is_excluded)
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._built = False

    def settings_changed(self, settings) -> None:
        self.index.set_exclude(self.server.privacy.is_excluded)
        if not self._built:
            self._built = True
            self.server.run_task(self.index.build(self.server.workspace_roots), "symbol-index")

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
                                "buildSeconds": round(self.index.build_seconds, 3)}}
