"""The shape of a server feature: a small class with hook methods. The server only wires LSP
methods to these hooks; an exception in one feature is logged and never reaches the others."""

from __future__ import annotations

from lsprotocol import types

from phi_lsp.core.documents import Document
from phi_lsp.core.settings import Settings
from phi_lsp.lsp.context import ServerContext


class Feature:
    def __init__(self, server: ServerContext):
        self.server = server

    def settings_changed(self, settings: Settings) -> None: ...

    def document_opened(self, document: Document) -> None: ...

    def document_changed(
        self, document: Document, params: types.DidChangeTextDocumentParams
    ) -> None: ...

    def document_saved(self, document: Document) -> None: ...

    def document_closed(self, uri: str) -> None: ...

    def stats(self) -> dict:
        return {}

    async def shutdown(self) -> None: ...
