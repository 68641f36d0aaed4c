"""The shape of a server feature: a small class with hook methods. The server only wires LSP
methods to these hooks; an exception in one feature is logged and never reaches the others."""

from __future__ import annotations

import typing

from lsprotocol import types

if typing.TYPE_CHECKING:
    from .config import Settings
    from .documents import Document
    from .server import PhiServer


class Feature:
    def __init__(self, server: "PhiServer"):
        self.server = server

    def settings_changed(self, settings: "Settings") -> None: ...

    def document_opened(self, document: "Document") -> None: ...

    def document_changed(
        self, document: "Document", params: types.DidChangeTextDocumentParams
    ) -> None: ...

    def document_saved(self, document: "Document") -> None: ...

    def document_closed(self, uri: str) -> None: ...

    def stats(self) -> dict:
        return {}

    async def shutdown(self) -> None: ...
