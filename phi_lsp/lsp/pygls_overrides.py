"""Every place phi-lsp overrides pygls internals, each with its reason (and the upstream pygls
issue where one exists). Nothing else in phi-lsp reaches into pygls' private parts.

- Document sync (PhiProtocol.lsp_text_document__did_*): didOpen/didChange/didClose go to our
  own store (UTF-8 bytes plus an incrementally edited tree-sitter tree). pygls applies edits to
  its own text first and splits lines with str.splitlines (form feed, U+2028 ... are not LSP
  line ends), so a tree kept beside it would drift.
- Lifecycle (handle_message, _lifecycle_error): requests before `initialize` get
  ServerNotInitialized (-32002), after `shutdown` InvalidRequest (-32600), as the spec says;
  pygls runs them.
- Exit (lsp_exit): pygls calls sys.exit() inside the event loop, so async cleanup (stopping the
  managed vLLM) never runs and the exit code is lost (openlawlibrary/pygls#433, #118); we end the
  loop instead and exit 0 after shutdown, 1 without.
- Notification futures (_execute_handler): pygls files a future per notification and per step
  of a generator handler under a made-up id in _request_futures and never removes it (about
  30 MB per 5,000 keystrokes; the same family as openlawlibrary/pygls#607 and #608). Dropped
  once done. The same override cancels an async command's step when its request is cancelled
  (pygls answered RequestCancelled but let phi.reviewWorkspace run on).
- Cancellation (_handle_cancel_notification): a $/cancelRequest for an answered request is an
  ordinary race; pygls warns on stderr for each (thousands per typing session). Ignored quietly.
- Positions (_normalize_position): a position past the end of a line or the document, or inside
  a character, becomes the position it means before any handler sees it.
- Message reading (read_messages, receive, StreamReader): malformed JSON gets ParseError
  (-32700), a request that cannot be decoded InvalidParams (-32602) or InvalidRequest, a wrong
  Content-Length costs one message instead of the session, and an absurd one is never read
  into memory; pygls' reader drops the connection or raises.
- Error reports (QuietLanguageServer.report_server_error): pygls pops up a window message for
  every failed notification handler; we log it (an error answer such as MethodNotFound, the
  client's mistake, at INFO).
- Tracebacks (_send_response): pygls answers an uncaught exception with -32603 and the Python
  traceback (file paths, code) in `error.data` (JsonRpcInternalError.of); the editor gets the
  message only, the traceback stays in the log (issue 11; no upstream issue found, the nearest
  is openlawlibrary/pygls#548 on the message's wording).
- Expected error answers (_send_handler_result, structure_message): a handler raising a
  JsonRpcException (a document that is not open) and a message a client got wrong (a negative
  line) are logged by pygls at ERROR with a full traceback; here one INFO/WARNING line, and the
  InvalidParams answer says what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from typing import Any

from lsprotocol import types
from cattrs import ClassValidationError, transform_error
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import (
    JsonRPCNotification,
    JsonRPCProtocol,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
)
from pygls.protocol.language_server import lsp_method

from phi_lsp.lsp.context import DocumentHost

log = logging.getLogger(__name__)

SERVER_NOT_INITIALIZED = -32002
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
INVALID_PARAMS = -32602

_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class PhiProtocol(LanguageServerProtocol):
    _server: DocumentHost  # type: ignore[assignment]

    def __init__(self, server, converter):
        super().__init__(server, converter)
        self.initialized = False
        self.exit_code: int | None = None
        self.stop_event = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def handle_message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        is_request = hasattr(message, "id") and method is not None
        if method == types.EXIT:
            return super().handle_message(message)
        refused = self._lifecycle_error(method)
        if refused is not None:
            if is_request:
                self.send_error(message.id, *refused)
            return
        if method == types.INITIALIZE:
            if self.initialized:
                self.send_error(message.id, INVALID_REQUEST, "initialize was already called")
                return
            self.initialized = True
        if is_request:
            self._normalize_position(getattr(message, "params", None))
        super().handle_message(message)

    def _lifecycle_error(self, method: str | None) -> tuple[int, str] | None:
        """The error for a request that the lifecycle forbids now (before its params matter)."""
        if method == types.EXIT:
            return None
        if self._shutdown:
            return INVALID_REQUEST, f"{method}: the server is shut down"
        if not self.initialized and method not in (types.INITIALIZE, None):
            return SERVER_NOT_INITIALIZED, f"{method}: initialize first"
        return None

    def _normalize_position(self, params: Any) -> None:
        """A position past the end of its line or document, or inside a character (the middle
        of a surrogate pair or of a UTF-8 sequence), becomes the position it means (the line's
        end, the document's end, the character's start) before any handler sees it, so what
        the server answers with (an inline completion's range, a text edit) is never a place
        the client cannot insert at."""
        position = getattr(params, "position", None)
        document_id = getattr(params, "text_document", None)
        if not isinstance(position, types.Position) or document_id is None:
            return
        document = self._server.documents.get(getattr(document_id, "uri", None))
        if document is not None:
            params.position = document.position_at(document.offset_at(position))

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args):
        # pygls would sys.exit() from inside the loop; end the loop instead so the server can
        # stop its managed vLLM and report the right exit code.
        self.exit_code = 0 if self._shutdown else 1
        self.stop_event.set()
        self._server.stop_serving()
        yield from ()

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        if getattr(callback, "func", None) == self._send_handler_result:
            return  # a request: sending its answer removes its future
        # A notification, or a step of a generator handler: pygls files its future in
        # _request_futures under a made-up id and never removes it, one per didChange (a
        # leak that grew the server by ~30 MB per 5,000 keystrokes). Drop it once done.
        future = self._request_futures.get(msg_id)
        if future is None:
            return
        future.add_done_callback(lambda _done: self._request_futures.pop(msg_id, None))
        # A step of a generator handler (pygls runs workspace/executeCommand so): when its
        # request is cancelled, pygls answers RequestCancelled but lets the step, an async
        # command such as phi.reviewWorkspace, run on and keep the model busy. Cancel it too.
        if getattr(callback, "func", None) == self._run_generator:
            request = callback.keywords.get("result_future")
            if request is not None:
                request.add_done_callback(lambda done: future.cancel() if done.cancelled() else None)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        # Cancelling a request that was answered a moment ago is an ordinary race, to be
        # ignored (LSP); pygls warns on stderr for each one (thousands in a typing session).
        if msg_id not in self._request_futures:
            log.debug("$/cancelRequest for %r, which is not pending: ignored", msg_id)
            return
        super()._handle_cancel_notification(msg_id)

    # -- document sync (our store, not pygls' workspace text) ------------------------------

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        doc = params.text_document
        self._server.documents.open(doc.uri, doc.text, doc.version, doc.language_id)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        document = self._server.documents.get(params.text_document.uri)
        if document is None:
            log.warning("didChange for %s, which is not open; ignored", params.text_document.uri)
            return
        document.apply_changes(params.content_changes, params.text_document.version)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        if self._server.documents.close(params.text_document.uri) is None:
            log.warning("didClose for %s, which is not open", params.text_document.uri)
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None

    # -- replies ---------------------------------------------------------------------------

    def _send_handler_result(self, future, *, msg_id):
        # A handler that raises a JsonRpcException answers the request with that error on
        # purpose (a document that is not open, say): an expected condition, worth one log
        # line. pygls logs it at ERROR with a full traceback and reports it as a server error.
        if not future.cancelled() and isinstance(error := future.exception(), JsonRpcException):
            self._request_futures.pop(msg_id, None)
            log.info("request %s answered with error %s: %s", msg_id, error.code, error.message)
            self._send_response(msg_id, error=error.to_response_error())
            return
        super()._send_handler_result(future, msg_id=msg_id)

    def structure_message(self, data: dict[str, Any]):
        """pygls' decoding of a message, but a message a client got wrong (a negative line,
        a missing field) is one WARNING line, not an ERROR with cattrs' whole traceback. The
        error raised is answered by `receive`."""
        if "jsonrpc" not in data:
            return data
        try:
            return self._converter.structure(data, self._message_type(data))
        except ClassValidationError as exc:
            detail = "; ".join(transform_error(exc))[:500]
            log.warning("invalid %s message: %s", data.get("method") or "response", detail)
            raise JsonRpcInvalidParams(detail) from exc
        except Exception as exc:
            log.warning("undecodable %s message: %s", data.get("method") or "response", str(exc)[:500])
            raise JsonRpcInternalError() from exc

    def _message_type(self, data: dict[str, Any]) -> Any:
        """The lsprotocol type to decode `data` as (the choice pygls' structure_message makes)."""
        if "id" not in data:
            return self.get_message_type(data.get("method", "")) or JsonRPCNotification
        if "error" in data:
            return types.ResponseErrorMessage
        if "method" in data:
            return self.get_message_type(data["method"]) or JsonRPCRequestMessage
        return self._result_types.pop(data["id"], None) or JsonRPCResponseMessage

    def _send_response(self, msg_id: Any, result: Any = None, error: types.ResponseError | None = None) -> None:
        # pygls answers a handler's uncaught exception with -32603 and the Python traceback
        # (file paths, code lines) in `error.data` (JsonRpcInternalError.of). No upstream issue
        # asks for another behaviour (pygls#548 is about the message's wording). pygls has
        # already logged the traceback (logger.exception); the editor gets the one-line message.
        if error is not None and isinstance(error.data, dict) and "traceback" in error.data:
            rest = {k: v for k, v in error.data.items() if k != "traceback"}
            error = types.ResponseError(
                code=error.code, message=f"{error.message} (details are in phi-lsp's log)", data=rest or None
            )
        super()._send_response(msg_id, result, error)

    def send_error(self, msg_id: Any, code: int, message: str) -> None:
        self._send_response(msg_id, error=types.ResponseError(code=code, message=message))

    def receive(self, body: bytes) -> None:
        """Decode one message body and hand it on; bad bodies get the right JSON-RPC error."""
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("malformed JSON message (%d bytes) ignored", len(body))
            self._send_raw_error(None, PARSE_ERROR, "Parse error: the message is not valid JSON")
            return
        if not isinstance(data, dict) or data.get("jsonrpc") != JsonRPCProtocol.VERSION:
            msg_id = data.get("id") if isinstance(data, dict) else None
            self._send_raw_error(msg_id, INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 message")
            return
        try:
            message = self.structure_message(data)
        except Exception as exc:
            if "id" in data and "method" in data:
                code = INVALID_PARAMS if isinstance(exc, JsonRpcInvalidParams) else INVALID_REQUEST
                message_text = f"Invalid params for {data['method']}"
                if isinstance(exc, JsonRpcInvalidParams) and exc.message != exc.MESSAGE:
                    message_text += f" ({exc.message})"
                refused = self._lifecycle_error(data["method"])
                if refused is not None:  # the lifecycle answers first, whatever the params
                    code, message_text = refused
                self._send_raw_error(data["id"], code, message_text)
            else:
                log.warning("undecodable %s notification ignored", data.get("method"))
            return
        self.handle_message(message)

    def _send_raw_error(self, msg_id: Any, code: int, message: str) -> None:
        if msg_id is not None and not isinstance(msg_id, (int, str)):
            msg_id = None
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


async def read_messages(reader: Any, protocol: PhiProtocol) -> None:
    """Read LSP-framed messages until EOF or `exit`.

    Headers are matched case-insensitively; lines that are not headers are skipped, so after a
    wrong Content-Length the reader finds the next message's header and carries on.
    """
    while not protocol.stop_event.is_set():
        length: int | None = None
        while True:
            line = await reader.readline()
            if not line:
                return
            if line in (b"\r\n", b"\n"):
                if length is not None:
                    break
                continue
            match = _CONTENT_LENGTH.search(line)
            if match:
                length = int(match.group(1))
        if length > MAX_MESSAGE_BYTES:
            # Never read (or allocate) that much: treat it as a framing error and resynchronise
            # on the next header, as after any wrong Content-Length.
            log.error("a message announced as %d bytes is too large; skipping to the next header", length)
            continue
        body = await reader.readexactly(length) if length else b""
        if length and len(body) < length:
            return  # EOF in the middle of a message
        if length:
            try:
                protocol.receive(body)
            except Exception:  # one bad message must not end the session
                log.exception("failed to handle a message")
        await asyncio.sleep(0)  # let handlers scheduled by this message start


class StreamReader:
    """asyncio.StreamReader with pygls' reader interface (for --tcp), EOF as empty bytes;
    `replay`: lines already read (the first header block, to check the token) that come first."""

    def __init__(self, reader: asyncio.StreamReader, replay: list[bytes] | None = None):
        self._reader = reader
        self._replay = list(replay or [])

    async def readline(self) -> bytes:
        if self._replay:
            return self._replay.pop(0)
        return await self._reader.readline()

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            return exc.partial


class QuietLanguageServer(LanguageServer):
    def report_server_error(self, error: Exception, source: Any) -> None:
        # pygls would pop up a message for every failed notification; log it instead. An error
        # answer such as MethodNotFound is the client's mistake, not ours: one INFO line.
        level = logging.INFO if isinstance(error, JsonRpcException) and error.code != -32603 else logging.ERROR
        log.log(level, "%s (%s): %s", "internal error" if level == logging.ERROR else "error answer",
                getattr(source, "__name__", source), error)
