"""$/progress for long work (model start-up, workspace review), cancellable from the editor."""

from __future__ import annotations

import logging
import typing
import uuid

from lsprotocol import types

if typing.TYPE_CHECKING:
    from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)


class ProgressReporter:
    """One work-done progress. Silently does nothing for clients without progress support."""

    def __init__(self, server: "LanguageServer", title: str, cancellable: bool = False):
        self._server = server
        self.title = title
        self.cancellable = cancellable
        self.token = f"phi-lsp/{uuid.uuid4()}"
        self._active = False
        self._ended: str | None = None  # end() came while begin() waited for the client

    @property
    def supported(self) -> bool:
        window = self._server.client_capabilities.window
        return bool(window and window.work_done_progress)

    @property
    def cancelled(self) -> bool:
        future = self._server.work_done_progress.tokens.get(self.token)
        return bool(future is not None and future.cancelled())

    async def begin(self, message: str = "", percentage: int | None = 0) -> None:
        if not self.supported:
            return
        try:
            await self._server.work_done_progress.create_async(self.token)
        except Exception as exc:  # a client may refuse; the work goes on without a bar
            log.info("client refused progress %s: %s", self.title, exc)
            return
        self._active = True
        self._server.work_done_progress.begin(
            self.token,
            types.WorkDoneProgressBegin(
                title=self.title,
                message=message or None,
                percentage=percentage,
                cancellable=self.cancellable,
            ),
        )
        if self._ended is not None:  # the work finished before the bar could open
            self.end(self._ended)

    def report(self, message: str, percentage: int | None = None) -> None:
        if self._active:
            self._server.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=message, percentage=percentage)
            )

    def end(self, message: str = "") -> None:
        if not self._active:
            self._ended = message
            return
        self._active = False
        self._server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message or None))
        self._server.work_done_progress.tokens.pop(self.token, None)
