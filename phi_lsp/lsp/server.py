"""The language server: pygls wiring of documents, settings, the model service and features.

Handlers stay thin. Document sync mutates documents synchronously on the event loop (in
PhiProtocol); everything that talks to the model runs as async tasks over immutable snapshots,
so the editor is never blocked and a result computed for an older version is never shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.capabilities import ServerCapabilitiesBuilder
from pygls.io_ import StdinAsyncReader, StdoutWriter

from phi_lsp import __version__
from phi_lsp.core import settings as config, positions
from phi_lsp.core.documents import Document, DocumentStore, Limits
from phi_lsp.lsp.features.base import Feature
from phi_lsp.model.service import UNREACHABLE, ModelService, Status
from phi_lsp.core.privacy import PrivacyFilter, mask_known, remember_configured_secrets
from phi_lsp.lsp.progress import ProgressReporter
from phi_lsp.lsp.pygls_overrides import PhiProtocol, QuietLanguageServer, StreamReader, read_messages
from phi_lsp.lsp.tcp_auth import check_client
from phi_lsp.core.syntax import path_of

log = logging.getLogger(__name__)

STATUS_NOTIFICATION = "phi/status"
PARENT_POLL_S = 2.0


class PhiServer(QuietLanguageServer):
    protocol: PhiProtocol

    def __init__(self, config_file: str | None = None, flags: dict[str, Any] | None = None):
        super().__init__("phi-lsp", __version__, protocol_cls=PhiProtocol, max_workers=4)
        self.documents = DocumentStore()
        self.settings_manager = config.SettingsManager()
        # What the process was started with (--config FILE, --backend-url, --model); read with
        # the workspace's own settings at initialize (config.load_settings).
        self.config_file = config_file
        self.flags = flags or {}
        self.editor_trust: bool | None = None  # initializationOptions.workspaceTrusted
        self.privacy = PrivacyFilter()
        self.workspace_roots: list[Path] = []
        self.service = ModelService(
            notify_status=self._send_status,
            warn_user=self._warn_from_service,
            inform_user=lambda text: self.show_message_once(text, types.MessageType.Info),
            progress=self._model_progress,
        )
        self.features: list[Feature] = []
        self._shown: set[str] = set()
        self._told_too_large: set[str] = set()
        self._outage_messages: set[str] = set()
        self._startup_progress: ProgressReporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self.client_ready = False  # set by the `initialized` notification
        self.started_at = time.monotonic()

    @property
    def settings(self) -> config.Settings:
        return self.settings_manager.settings

    # -- running ---------------------------------------------------------------------------

    def start_io(self, stdin=None, stdout=None) -> int:  # type: ignore[override]
        reader = StdinAsyncReader(stdin or sys.stdin.buffer, self.thread_pool)
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        return self._run(read_messages(reader, self.protocol))

    def start_tcp(self, host: str, port: int, token: str, on_listening=None) -> int:  # type: ignore[override]
        """Serve one editor on TCP: the first connection that presents `token` (tcp_auth);
        connections without it are closed before any message of theirs is handled."""

        async def serve() -> None:
            connected = asyncio.Event()

            async def on_connection(reader, writer):
                peer = writer.get_extra_info("peername")
                if connected.is_set():  # one editor per server process
                    writer.close()
                    return
                verdict = await check_client(reader, token)
                if not verdict.accepted or connected.is_set():
                    log.warning("TCP connection from %s refused: %s", peer, verdict.reason or "an editor is connected")
                    if verdict.reply:
                        writer.write(verdict.reply)
                    writer.close()
                    return
                connected.set()
                log.info("editor connected from %s", peer)
                self.protocol.set_writer(writer)
                try:
                    await read_messages(StreamReader(reader, verdict.replay), self.protocol)
                finally:
                    self.stop_serving()

            server = await asyncio.start_server(on_connection, host, port)
            bound = server.sockets[0].getsockname()
            log.info("listening on %s:%s", bound[0], bound[1])
            if on_listening is not None:
                on_listening(bound[0], bound[1])
            async with server:
                await self._stopped.wait()

        return self._run(serve())

    def _run(self, main) -> int:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            reading = asyncio.ensure_future(main)
            stopped = asyncio.ensure_future(self._stopped.wait())
            await asyncio.wait([reading, stopped], return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and not reading.cancelled() and reading.exception() is not None:
                log.error("reading the editor's messages failed", exc_info=reading.exception())
            for task in (reading, stopped):
                task.cancel()
            await self._cleanup()

        try:
            asyncio.run(run())
        except BrokenPipeError:
            log.error("the editor closed the connection")
        if self.protocol.exit_code is not None:
            return self.protocol.exit_code
        return 0 if self.protocol._shutdown else 1

    def stop_serving(self) -> None:
        if self._loop is not None and hasattr(self, "_stopped"):
            self._loop.call_soon_threadsafe(self._stopped.set)

    async def _cleanup(self) -> None:
        for feature in self.features:
            try:
                await asyncio.wait_for(feature.shutdown(), timeout=5)
            except Exception:
                log.exception("feature %s failed to shut down", type(feature).__name__)
        await self.service.aclose()
        for task in list(self._tasks):
            # Between shutdown and exit the editor may still die: keep watching it.
            if task.get_name() != "watch-parent":
                task.cancel()

    def run_task(self, coro, name: str = "") -> asyncio.Task:
        """Start background work, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("background task %s failed", name, exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # -- talking to the user ---------------------------------------------------------------

    def show_message_once(self, text: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        """window/showMessage, but never the same text twice in a session (plus a log line)."""
        text = mask_known(text)
        self.window_log_message(types.LogMessageParams(type=kind, message=text))
        if text in self._shown:
            return
        self._shown.add(text)
        self.window_show_message(types.ShowMessageParams(type=kind, message=text))

    def tell_if_too_large(self, document: Document) -> None:
        """Say once per open document that it is over the limits and what that turns off."""
        if document.too_large is None or document.uri in self._told_too_large:
            return
        self._told_too_large.add(document.uri)
        name = Path(path_of(document.uri)).name or document.uri
        log.info("%s is over the size limits (%s)", document.uri, document.too_large)
        self.show_message_once(
            f"phi-lsp: {name} is too large for full support ({document.too_large}): no syntax tree, "
            "completion sees only the text around the cursor, no review. The limits are settings.",
            types.MessageType.Info,
        )

    def forget_message(self, text: str) -> None:
        self._shown.discard(text)

    def _warn_from_service(self, text: str) -> None:
        # The model service warns about an outage right after the status turns "unreachable".
        # Such a message is worth showing again in the next outage (the same reason often
        # comes back: "cannot connect ..."), so it is forgotten when the outage ends.
        if self.service.status.state == UNREACHABLE:
            self._outage_messages.add(text)
        self.show_message_once(text, types.MessageType.Warning)

    def _send_status(self, status: Status) -> None:
        if status.state != UNREACHABLE and self._outage_messages:
            for text in self._outage_messages:
                self.forget_message(text)
            self._outage_messages.clear()
        if self.protocol.writer is not None and self.client_ready:
            self.protocol.notify(STATUS_NOTIFICATION, status.as_json())

    def _model_progress(self, message: str, percent: int | None, done: bool) -> None:
        if self._startup_progress is None:
            if done:
                return  # it ended (or failed) before it began: no bar to open and never close
            self._startup_progress = ProgressReporter(self, "phi-lsp: starting the model")
            self.run_task(self._startup_progress.begin(message, percent or 0), "progress")
            return
        if done:
            self._startup_progress.end(message)
            self._startup_progress = None
        else:
            self._startup_progress.report(message, percent)

    # -- settings --------------------------------------------------------------------------

    def apply_settings_source(self, source: str, raw: Any) -> None:
        problems = self.settings_manager.set_source(source, raw)
        for problem in problems:
            self.show_message_once(problem, types.MessageType.Warning)
        self.settings_changed()

    def settings_changed(self) -> None:
        """Push the settings in effect to the model service and the features."""
        if not self.client_ready:
            return  # until `initialized`: the initialize answer must not wait for any of this
        settings = self.settings
        origins = self.settings_manager.origins()
        model_configured = any(k in origins for k in ("completion.model", "review.model"))
        self.privacy.configure(settings.privacy, self.workspace_roots)
        for problem in self.privacy.problems:
            self.show_message_once(problem, types.MessageType.Warning)
        remember_configured_secrets(settings)
        limits = Limits(settings.limits.max_document_bytes, settings.limits.max_line_bytes)
        for document in self.documents.set_limits(limits):
            self.tell_if_too_large(document)
        self.service.configure(settings, model_configured)
        for feature in self.features:
            _isolated(feature.settings_changed, settings)

    def load_initial_settings(self, initialization_options: Any) -> None:
        options, self.editor_trust = config.split_client_options(initialization_options)
        self._load_lower_sources()
        self.apply_settings_source("initializationOptions", options)

    def _load_lower_sources(self) -> None:
        """The workspace's pyproject.toml (or --config), environment and flags."""
        problems = config.load_settings(
            self.settings_manager,
            self.workspace_roots[0] if self.workspace_roots else None,
            config_file=self.config_file,
            flags=self.flags,
            workspace_trusted=self.editor_trust,
        )
        for problem in problems:
            self.show_message_once(problem, types.MessageType.Warning)

    def editor_settings_changed(self, raw: Any) -> None:
        """workspace/didChangeConfiguration: the editor's settings, and maybe its trust."""
        settings, trusted = config.split_client_options(raw)
        if trusted is not None and trusted != self.editor_trust:
            self.editor_trust = trusted  # e.g. VS Code: the user trusted the workspace just now
            self._load_lower_sources()
        if settings is not None:
            self.apply_settings_source("workspace/didChangeConfiguration", settings)

    # -- editor lifetime -------------------------------------------------------------------

    def watch_parent(self, pid: int | None) -> None:
        """Exit when the editor process is gone (it may die without closing our stdin)."""
        if not pid or pid == os.getpid():
            return

        async def poll() -> None:
            while True:
                await asyncio.sleep(PARENT_POLL_S)
                if not _process_alive(pid):
                    log.warning("editor process %s is gone; exiting", pid)
                    self.stop_serving()
                    return

        self.run_task(poll(), "watch-parent")


def _process_alive(pid: int) -> bool:
    if os.name == "nt":
        return _windows_process_alive(pid)  # os.kill(pid, 0) would terminate it there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _isolated(hook, *args) -> Any:
    try:
        return hook(*args)
    except Exception:
        log.exception("feature hook %s failed", getattr(hook, "__qualname__", hook))
        return None


def register_core_handlers(server: PhiServer) -> None:
    """The handlers the server owns itself: lifecycle, settings, document events fanned out to
    the features, and the status/stats commands."""
    @server.feature(types.INITIALIZE)
    def initialize(ls: PhiServer, params: types.InitializeParams) -> None:
        encoding = ServerCapabilitiesBuilder.choose_position_encoding(params.capabilities)
        ls.documents.encoding = str(getattr(encoding, "value", encoding))
        if ls.documents.encoding not in positions.ENCODINGS:
            ls.documents.encoding = positions.UTF16
        roots = [f.uri for f in params.workspace_folders or []] or (
            [params.root_uri] if params.root_uri else []
        )
        if not roots and params.root_path:
            roots = [params.root_path]
        ls.workspace_roots = [Path(path_of(uri)) for uri in roots]
        ls.service.set_workspace_roots(ls.workspace_roots)  # part of each document's session key
        ls.load_initial_settings(params.initialization_options)
        ls.watch_parent(params.process_id)

    @server.feature(types.INITIALIZED)
    def initialized(ls: PhiServer, params: types.InitializedParams) -> None:
        ls.client_ready = True
        ls.settings_changed()  # starts the backend, which reports its status

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: PhiServer, params: types.DidChangeConfigurationParams) -> None:
        settings = params.settings
        if not config.unwrap_client_settings(settings) and _supports_configuration_pull(ls):
            # Pull model: the notification only says "something changed".
            try:
                answer = await ls.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section="phiLsp")])
                )
                settings = answer[0] if answer else None
            except Exception as exc:
                log.warning("workspace/configuration failed: %s", exc)
                return
        if settings is None:
            return
        ls.editor_settings_changed(settings)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: PhiServer, params: types.DidOpenTextDocumentParams) -> None:
        document = ls.documents.get(params.text_document.uri)
        if document is not None:
            ls.tell_if_too_large(document)
            for feature in ls.features:
                _isolated(feature.document_opened, document)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: PhiServer, params: types.DidChangeTextDocumentParams) -> None:
        document = ls.documents.get(params.text_document.uri)
        if document is not None:
            ls.tell_if_too_large(document)
            for feature in ls.features:
                _isolated(feature.document_changed, document, params)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))
    def did_save(ls: PhiServer, params: types.DidSaveTextDocumentParams) -> None:
        document = ls.documents.get(params.text_document.uri)
        if document is None:
            log.warning("didSave for %s, which is not open", params.text_document.uri)
            return
        for feature in ls.features:
            _isolated(feature.document_saved, document)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: PhiServer, params: types.DidCloseTextDocumentParams) -> None:
        ls._told_too_large.discard(params.text_document.uri)
        for feature in ls.features:
            _isolated(feature.document_closed, params.text_document.uri)

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: PhiServer, *args) -> None:
        await ls._cleanup()

    @server.command("phi.stats")
    def stats(ls: PhiServer, *args) -> dict:
        return collect_stats(ls)

    @server.command("phi.status")
    def status(ls: PhiServer, *args) -> dict:
        return ls.service.status.as_json()


def collect_stats(ls: PhiServer) -> dict:
    backend = ls.service.backend
    batcher = ls.service.batcher
    result: dict[str, Any] = {
        "status": ls.service.status.as_json(),
        # What `phi-lsp doctor` prints: the settings in effect (secrets hidden) and their sources.
        "settings": config.redacted(ls.settings),
        "settingsSources": ls.settings_manager.origins(),
        "untrustedKeys": ls.settings_manager.untrusted_keys(),
        "documents": len(ls.documents),
        "uptimeSeconds": round(time.monotonic() - ls.started_at, 1),
        "backend": None
        if backend is None
        else {
            "url": backend.url,
            "kind": backend.kind,
            "httpRequests": backend.stats.http_requests,
            "inFlight": backend.stats.in_flight,
            "prompts": backend.stats.prompts,
            "failures": backend.stats.failures,
            "retries": backend.stats.retries,  # sent again after a dying replica's failure
            "retriesAnswered": backend.stats.retries_answered,
            "timeoutsWhileAnswering": backend.stats.timeouts_while_answering,  # busy, not down
            "promptTokens": backend.stats.prompt_tokens,
            "completionTokens": backend.stats.completion_tokens,
            "byPath": dict(backend.stats.by_path),
        },
        "batching": None if batcher is None else vars(batcher.stats).copy(),
        # Which chat format each model's prompts are in (its template, learned, or the fallback).
        "chatFormats": ls.service.chat_formats.describe(),
        # Cheap health figures for soak runs: live asyncio tasks, resident memory.
        "process": {"pid": os.getpid(), "asyncioTasks": _task_count(), "rssBytes": _rss_bytes(),
                    "backgroundTasks": len(ls._tasks), "pendingMessages": len(ls.protocol._request_futures)},
    }
    for feature in ls.features:
        stats = _isolated(feature.stats)
        if stats:
            result.update(stats)
    return result


def _task_count() -> int | None:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (stats collected from outside the server)
        return None


def _rss_bytes() -> int | None:
    """Resident memory of this process now (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _supports_configuration_pull(ls: PhiServer) -> bool:
    workspace = ls.client_capabilities.workspace
    return bool(workspace and workspace.configuration)


def _windows_process_alive(pid: int) -> bool:
    import ctypes

    synchronize, wait_timeout = 0x00100000, 0x102
    kernel32 = ctypes.windll.kernel32
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return False
    try:
        return kernel32.WaitForSingleObject(handle, 0) == wait_timeout
    finally:
        kernel32.CloseHandle(handle)
