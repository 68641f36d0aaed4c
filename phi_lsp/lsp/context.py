"""What features may use of the server: a narrow interface, so that no feature imports the
server module (and the server module imports no feature). `phi_lsp.lsp.setup` is the one place
that knows both."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Coroutine, Protocol

from lsprotocol import types
from pygls.progress import Progress

from phi_lsp.core.documents import DocumentStore
from phi_lsp.core.privacy import PrivacyFilter
from phi_lsp.core.settings import Settings
from phi_lsp.model.service import ModelService


class ServerContext(Protocol):
    """The running server as a feature sees it."""

    documents: DocumentStore
    service: ModelService
    privacy: PrivacyFilter
    workspace_roots: list[Path]

    @property
    def settings(self) -> Settings: ...

    @property
    def client_capabilities(self) -> types.ClientCapabilities: ...

    @property
    def work_done_progress(self) -> Progress: ...

    def run_task(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task: ...

    def show_message_once(self, text: str, kind: types.MessageType = types.MessageType.Warning) -> None: ...

    def forget_message(self, text: str) -> None: ...

    def text_document_publish_diagnostics(self, params: types.PublishDiagnosticsParams) -> None: ...

    def feature(self, feature_name: str, options: Any = None) -> Callable: ...

    def command(self, command_name: str) -> Callable: ...

    async def client_register_capability_async(self, params: types.RegistrationParams) -> None: ...


class DocumentHost(Protocol):
    """What the protocol layer (pygls_overrides) needs of the server."""

    documents: DocumentStore

    def stop_serving(self) -> None: ...
