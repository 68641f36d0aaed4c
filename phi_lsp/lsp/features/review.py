"""Review feature: the LSP wiring of the review pipeline (review/).

- didSave (with `review.onSave`), `phi.review [uri]`: the file's changed units go to the model
  as one batched request; a newer save of the same file cancels the older review.
- `phi.reviewWorkspace []`: every source file of the workspace (open ones as the editor has
  them), batched across files, with cancellable `$/progress`; each file's diagnostics are
  published as soon as its units are answered.
- Diagnostics (`source: "phi-review"`, `code: <category>`) are published for the document's
  current version only: findings made for an older version are re-anchored on their quoted code
  or dropped. Closing a file clears them.
- `textDocument/codeAction`: a quickfix per finding with a replacement, checked against the
  current text. Its command `phi.fixApplied` records that the fix was applied; a fix whose
  finding leaves the file's diagnostics without that is recorded as dismissed (feedback store).
- With `review.escalationModel` served by an endpoint, complex and doubtful units go to it
  (review/pipeline.py Escalation, phi_lsp/routing.py).

The model is never waited for: while it starts or is down, reviews are skipped with one message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lsprotocol import types

from phi_lsp.review import diagnostics as review_diagnostics
from phi_lsp.review.anchor import relocate
from phi_lsp.review.files import load_job
from phi_lsp.review.findings import STALE, Placed
from phi_lsp.review.pipeline import Escalation, FileJob, FileReview, Reviewer, ReviewOptions
from phi_lsp.review.prompts import resolve_mode
from phi_lsp.review.units import extract_units

from phi_lsp.core.documents import Document, TextBuffer
from phi_lsp.lsp.context import ServerContext
from phi_lsp.lsp.features.base import Feature
from phi_lsp.lsp.progress import ProgressReporter
from phi_lsp.core.symbols import SymbolIndex, iter_source_files
from phi_lsp.core.syntax import path_of

log = logging.getLogger(__name__)

MAX_WORKSPACE_FILES = 2_000
NOT_READY = (
    "phi-lsp: review skipped: the model is not ready (still starting, or unreachable). "
    "Save again once it answers."
)


@dataclass
class _Published:
    version: int | None  # None: a file that is not open (from a workspace review)
    placed: list[Placed]
    # The fixable findings moved onto a later version (code actions ask often: once per version).
    moved: tuple[int, list[Placed]] | None = None


class ReviewFeature(Feature):
    def __init__(self, server: ServerContext, index: SymbolIndex | None = None):
        super().__init__(server)
        self.index = index
        self.reviewer = Reviewer()
        self._tasks: dict[str, asyncio.Task] = {}
        self._published: dict[str, _Published] = {}
        self._workspace: asyncio.Task | None = None
        self.counters: Counter = Counter()
        # Quick fixes on show, per file: finding id -> model (for applied/dismissed feedback).
        self._fixes: dict[str, dict[str, str | None]] = {}
        self.on_feedback = lambda event, info: None  # fixShown, fixApplied, fixDismissed

    # -- wiring ----------------------------------------------------------------------------

    def register(self) -> None:
        server = self.server
        feature = self

        @server.feature(
            types.TEXT_DOCUMENT_CODE_ACTION,
            types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.QuickFix]),
        )
        def code_action(ls, params: types.CodeActionParams):
            try:
                return feature.code_actions(params)
            except Exception:
                log.exception("codeAction failed")
                return None

        @server.command("phi.review")
        async def review(ls, *args):
            uri = _uri_argument(args)
            if uri is None:
                return {"reviewed": False, "reason": "phi.review takes [uri]"}
            return await feature.review_now(uri)

        @server.command("phi.reviewWorkspace")
        async def review_workspace(ls, *args):
            return await feature.review_workspace()

        @server.command("phi.fixApplied")
        def fix_applied(ls, *args):
            return feature.fix_applied(args)

    # -- hooks -----------------------------------------------------------------------------

    def document_saved(self, document: Document) -> None:
        review = self.server.settings.review
        if not (review.enabled and review.on_save):
            return
        self.counters["saves"] += 1
        self.start(document.uri)

    def document_closed(self, uri: str) -> None:
        task = self._tasks.pop(uri, None)
        if task is not None:
            task.cancel()
        self._published.pop(uri, None)
        self._note_fixes(uri, [])
        self._send(uri, [], None)

    def settings_changed(self, settings) -> None:
        if not settings.review.enabled:
            for task in list(self._tasks.values()):
                task.cancel()
            if self._workspace is not None:
                self._workspace.cancel()
            for uri in list(self._published):
                self._published.pop(uri, None)
                self._send(uri, [], None)

    def stats(self) -> dict:
        cache = self.reviewer.cache
        return {
            "review": {
                **self.reviewer.stats.as_json(),
                "cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
                "events": dict(self.counters),
                "inFlight": len(self._tasks),
            }
        }

    async def shutdown(self) -> None:
        tasks = list(self._tasks.values()) + ([self._workspace] if self._workspace else [])
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- reviewing one file ----------------------------------------------------------------

    def start(self, uri: str) -> asyncio.Task:
        """Review `uri` in the background; a review of it already running is cancelled."""
        previous = self._tasks.pop(uri, None)
        if previous is not None and not previous.done():
            previous.cancel()
            self.counters["cancelledBySave"] += 1
        task = self.server.run_task(self._review_file(uri), f"review {uri}")
        self._tasks[uri] = task

        def done(t: asyncio.Task) -> None:
            if self._tasks.get(uri) is t:
                del self._tasks[uri]

        task.add_done_callback(done)
        return task

    async def review_now(self, uri: str) -> dict:
        """`phi.review`: review now (even with onSave off) and answer with a summary."""
        if not self.server.settings.review.enabled:
            return {"reviewed": False, "reason": "review.enabled is false"}
        task = self.start(uri)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # superseded by a newer save: that one publishes
                return {"reviewed": False, "reason": "superseded by a newer review"}
            raise

    def _skip_reason(self, uri: str, document: Document | None) -> str | None:
        if document is None:
            return "the document is not open"
        if self.server.privacy.is_excluded(uri):
            self.counters["skippedExcluded"] += 1
            return "excluded by privacy settings: never sent to the model"
        if document.language is None:
            self.counters["skippedNoGrammar"] += 1
            return "no tree-sitter grammar for this file"
        if document.too_large is not None:
            self.counters["skippedTooLarge"] += 1
            return f"too large to review: {document.too_large}"
        return None

    def _backend(self):
        backend = self.server.service.routed("review")
        if backend is None:
            self.counters["skippedNotReady"] += 1
            self.server.show_message_once(NOT_READY, types.MessageType.Info)
        return backend

    async def _review_file(self, uri: str) -> dict:
        document = self.server.documents.get(uri)
        reason = self._skip_reason(uri, document)
        if reason is not None:
            return {"reviewed": False, "reason": reason}
        backend = self._backend()
        if backend is None:
            return {"reviewed": False, "reason": "the model is not ready"}
        job = FileJob(document.snapshot(), self._display_path(uri))
        await self._prepare_chat()
        results = await self.reviewer.review(
            [job], backend, self._options(backend), lookup=self._lookup,
            clean=self.server.privacy.clean, sendable=self.server.privacy.sendable, count_tokens=self._count_tokens(),
            escalation=self._escalation(),
        )
        if results[0].units_sent > results[0].units_failed:
            self.server.forget_message(NOT_READY)  # the next outage is worth one message again
        self._publish(results[0], on_disk=False)
        return _summary(results[0])

    # -- workspace -------------------------------------------------------------------------

    async def review_workspace(self) -> dict:
        if not self.server.settings.review.enabled:
            return {"reviewed": False, "reason": "review.enabled is false"}
        backend = self._backend()
        if backend is None:
            return {"reviewed": False, "reason": "the model is not ready"}
        if self._workspace is not None and not self._workspace.done():
            self._workspace.cancel()
        progress = ProgressReporter(self.server, "phi-lsp: reviewing the workspace", cancellable=True)
        await progress.begin("Collecting files", 0)
        task = self.server.run_task(self._review_workspace(backend, progress), "review workspace")
        self._workspace = task
        cancel_future = self.server.work_done_progress.tokens.get(progress.token)
        if cancel_future is not None:
            cancel_future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():  # $/cancelRequest
                task.cancel()
                raise
            self.counters["workspaceCancelled"] += 1
            return {"reviewed": False, "reason": "cancelled"}
        finally:
            progress.end("Cancelled" if task.cancelled() or task.cancelling() else "Done")

    async def _review_workspace(self, backend, progress: ProgressReporter) -> dict:
        await self._prepare_chat()
        jobs: list[FileJob] = []
        on_disk: set[str] = set()
        for number, path in enumerate(iter_source_files(self.server.workspace_roots, self.server.privacy.is_excluded)):
            if number >= MAX_WORKSPACE_FILES:
                break
            uri = path.absolute().as_uri()  # not resolve(): the editor's URI keeps its symlinks
            document = self.server.documents.get(uri)
            if document is not None:
                if self._skip_reason(uri, document) is None:
                    jobs.append(FileJob(document.snapshot(), self._display_path(uri)))
            else:
                job = load_job(path, self.server.documents.limits)
                if job is not None:
                    job = FileJob(_with_encoding(job, self.server.documents.encoding), self._display_path(uri))
                    jobs.append(job)
                    on_disk.add(uri)
            if number % 16 == 15:
                await asyncio.sleep(0)  # reading files: let editor messages through
        self.counters["workspaceReviews"] += 1

        def on_progress(done: int, total: int) -> None:
            percent = int(100 * done / total) if total else 100
            progress.report(f"{done}/{total} units ({len(jobs)} files)", percent)

        results = await self.reviewer.review(
            jobs, backend, self._options(backend), lookup=self._lookup, clean=self.server.privacy.clean,
            sendable=self.server.privacy.sendable,
            count_tokens=self._count_tokens(),
            on_file=lambda r: self._publish(r, on_disk=r.snapshot.uri in on_disk),
            on_progress=on_progress,
            escalation=self._escalation(),
        )
        total = Counter()
        for result in results:
            total.update(result.drops)
        return {
            "reviewed": True,
            "files": len(results),
            "units": sum(len(r.units) for r in results),
            "unitsSent": sum(r.units_sent for r in results),
            "unitsCached": sum(r.units_cached for r in results),
            "unitsEscalated": sum(r.units_escalated for r in results),
            "findings": sum(len(r.findings) for r in results),
            "dropped": dict(total),
        }

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, result: FileReview, on_disk: bool) -> None:
        """Publish a file's findings for the version the editor has now."""
        snapshot = result.snapshot
        uri = snapshot.uri
        if result.units_failed and result.units_failed == result.units_sent and not result.units_cached:
            # Nothing was reviewed (the backend failed): keep what the editor shows.
            self.counters["notPublishedBackendFailed"] += 1
            return
        document = self.server.documents.get(uri)
        if document is None:
            if not on_disk:
                return  # closed while the model answered: its diagnostics were cleared
            placed, buffer, version = result.findings, snapshot.buffer, None
        elif not on_disk and document.version == snapshot.version:
            placed, buffer, version = result.findings, snapshot.buffer, document.version
        else:
            current = document.snapshot()
            placed = self._reanchor([p.finding for p in result.findings], current)
            buffer, version = current.buffer, document.version
        self._published[uri] = _Published(version, placed)
        self.counters["published"] += 1
        self._note_fixes(uri, placed)
        self._send(uri, [review_diagnostics.to_diagnostic(p, buffer) for p in placed], version)

    def _reanchor(self, findings, snapshot, count: bool = True) -> list[Placed]:
        units = extract_units(snapshot)
        placed = []
        for finding in findings:
            p = relocate(finding, units, snapshot.buffer)
            if p is not None:
                placed.append(p)
            elif count:
                self.reviewer.stats.drops[STALE] += 1
                self.counters["staleDropped"] += 1
        return placed

    def _send(self, uri: str, diagnostics: list[types.Diagnostic], version: int | None) -> None:
        self.server.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics, version=version)
        )

    # -- code actions ----------------------------------------------------------------------

    def code_actions(self, params: types.CodeActionParams) -> list[types.CodeAction] | None:
        only = params.context.only
        quickfix = types.CodeActionKind.QuickFix.value
        if only and not any(str(getattr(k, "value", k)).startswith(quickfix) for k in only):
            return None
        uri = params.text_document.uri
        document = self.server.documents.get(uri)
        published = self._published.get(uri)
        if document is None or published is None:
            return None
        candidates = [p for p in published.placed if p.finding.replacement is not None]
        if not candidates:
            return None
        if published.version != document.version:
            if published.moved is None or published.moved[0] != document.version:
                moved = self._reanchor([p.finding for p in candidates], document.snapshot(), count=False)
                published.moved = (document.version, moved)
            candidates = published.moved[1]
        buffer = TextBuffer(document.source, document.encoding)
        start = buffer.offset_at(params.range.start)
        end = buffer.offset_at(params.range.end)
        wanted = {
            d.data.get("findingId")
            for d in params.context.diagnostics
            if d.source == review_diagnostics.SOURCE and isinstance(d.data, dict)
        }
        actions = []
        for placed in candidates:
            if not (review_diagnostics.overlaps(placed, start, end) or placed.id in wanted):
                continue
            action = review_diagnostics.quick_fix(
                placed, buffer, uri, document.version, self._document_changes()
            )
            if action is not None:
                # Run by the editor after the edit: records that the fix was applied.
                action.command = types.Command(
                    title="phi-lsp: fix applied", command="phi.fixApplied",
                    arguments=[{"uri": uri, "findingId": placed.id}],
                )
                actions.append(action)
        return actions or None

    def _document_changes(self) -> bool:
        workspace = self.server.client_capabilities.workspace
        edit = workspace.workspace_edit if workspace else None
        return bool(edit and edit.document_changes)

    # -- quick-fix feedback ----------------------------------------------------------------

    def _note_fixes(self, uri: str, placed: list[Placed]) -> None:
        """Fixes newly on show are recorded as shown; fixes gone without being applied as
        dismissed."""
        before = self._fixes.get(uri, {})
        now = {p.id: p.finding.model for p in placed if p.finding.replacement is not None}
        for finding_id, model in before.items():
            if finding_id not in now:
                self.counters["fixesDismissed"] += 1
                self.on_feedback("fixDismissed", {"findingId": finding_id, "model": model})
        for finding_id, model in now.items():
            if finding_id not in before:
                self.counters["fixesShown"] += 1
                self.on_feedback("fixShown", {"findingId": finding_id, "model": model})
        if now:
            self._fixes[uri] = now
        else:
            self._fixes.pop(uri, None)

    def fix_applied(self, args) -> dict:
        payload = next((a for a in args if isinstance(a, dict)), {})
        finding_id = str(payload.get("findingId", ""))
        uri = payload.get("uri")
        files = [self._fixes.get(uri, {})] if isinstance(uri, str) else list(self._fixes.values())
        for fixes in files:
            if finding_id in fixes:
                model = fixes.pop(finding_id)
                self.counters["fixesApplied"] += 1
                self.on_feedback("fixApplied", {"findingId": finding_id, "model": model})
                return {"recorded": "applied", "known": True}
        return {"recorded": "applied", "known": False}

    # -- helpers ---------------------------------------------------------------------------

    def _options(self, backend) -> ReviewOptions:
        settings = self.server.settings
        name = self.server.service.model_for("review")
        options = ReviewOptions.from_settings(settings.review, name, backend)
        return replace(options, chat=self.server.service.chat_format(name), context_tokens=self._context_tokens(name))

    def _context_tokens(self, name: str) -> int:
        """Tokens the server accepts for `name` per request, when it says; else the default."""
        return self.server.service.context_length(name) or ReviewOptions.context_tokens

    async def _prepare_chat(self) -> None:
        """Find the chat format of the review models that get chat prompts (once each)."""
        service = self.server.service
        for name in filter(None, (service.model_for("review"), service.escalation_model("review"))):
            if resolve_mode("auto", service.served_name(name)) == "chat":
                try:
                    await service.prepare_chat_format(name)
                except Exception:  # a bug of ours must not cost the review
                    log.exception("finding the chat format of %s failed", name)

    def _escalation(self) -> Escalation | None:
        """review.escalationModel, when an endpoint serving it can take requests now."""
        service = self.server.service
        name = service.escalation_model("review")
        if name is None:
            return None
        backend = service.routed("review", name)
        if backend is None:
            service.router.unavailable("review", name)
            return None
        options = ReviewOptions.from_settings(self.server.settings.review, name, backend)
        options = replace(options, mode=resolve_mode("auto", service.served_name(name)), chat=service.chat_format(name),
                          context_tokens=self._context_tokens(name))
        return Escalation(backend, options, service.router, self.server.settings.routing.review_min_confidence)

    def _lookup(self, name: str) -> list:
        return self.index.lookup(name) if self.index is not None else []

    def _count_tokens(self):
        try:
            return self.server.service.token_counter("review").count
        except Exception:  # no tokenizer: the prompt builder estimates
            return None

    def _display_path(self, uri: str) -> str:
        path = Path(path_of(uri))
        for root in self.server.workspace_roots:
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                continue
        return path.name


def _with_encoding(job: FileJob, encoding: str):
    """The job's snapshot, its positions counted in `encoding`."""
    return replace(job.snapshot, encoding=encoding)


def _uri_argument(args: Any) -> str | None:
    for arg in args:
        if isinstance(arg, str):
            return arg
        if isinstance(arg, dict):
            uri = arg.get("uri") or (arg.get("textDocument") or {}).get("uri")
            if isinstance(uri, str):
                return uri
        if isinstance(arg, list):
            found = _uri_argument(arg)
            if found:
                return found
    return None


def _summary(result: FileReview) -> dict:
    return {
        "reviewed": True,
        "uri": result.snapshot.uri,
        "version": result.snapshot.version,
        "units": len(result.units),
        "unitsSent": result.units_sent,
        "unitsCached": result.units_cached,
        "unitsFailed": result.units_failed,
        **({"unitsEscalated": result.units_escalated} if result.units_escalated else {}),
        "findings": len(result.findings),
        "dropped": dict(result.drops),
        **({"error": result.error} if result.error else {}),
    }
