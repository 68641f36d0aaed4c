"""LSP wiring of the completion pipeline: `textDocument/inlineCompletion` (LSP 3.18),
`textDocument/completion` for clients without inline completion, and the accept/reject commands.

The pipeline itself (context, prompts, scheduling, post-processing) lives in the `completion`
package and sees snapshots and byte offsets only. Here: positions in the negotiated encoding,
superseding (a newer request for a document cancels the older one), and the rule that a
suggestion computed for one version of a document is never delivered for another.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from phi_lsp.completion.context import Snippet
from phi_lsp.completion.service import AUTO, INVOKED, CompletionService, Model, Request

from phi_lsp.core.chat_format import CHAT, prompt_family
from phi_lsp.core.symbols import SymbolIndex
from phi_lsp.lsp.context import ServerContext
from phi_lsp.lsp.features.base import Feature
from phi_lsp.core.syntax import path_of

log = logging.getLogger(__name__)

RECENT_FILES = 3
RECENT_WINDOW_S = 600
RECENT_LINES = 6  # each side of the last edit
RECENT_PATHS = 8  # documents whose definitions get the "recently viewed or edited" bonus
MAX_SHOWN = 500


class CompletionFeature(Feature):
    def __init__(self, server: ServerContext, index: SymbolIndex | None = None):
        super().__init__(server)
        self.service = CompletionService(
            model=self._model,
            settings=lambda: server.settings.completion,
            index=index,
            recent=self._recent_snippets,
            clean=server.privacy.clean,
            sendable=server.privacy.sendable,
            display=self.display_path,
            escalation=self._escalation_model,
            router=server.service.router,
            recent_paths=self._recent_paths,
        )
        self._viewed: OrderedDict[str, float] = OrderedDict()  # documents opened or edited, latest last
        self._edits: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._latest: dict[tuple[str, str], asyncio.Task] = {}
        self._shown: OrderedDict[str, dict] = OrderedDict()
        self.counts = {"shown": 0, "shownRequests": 0, "displayed": 0, "accepted": 0, "partiallyAccepted": 0,
                       "rejected": 0, "stale": 0}
        # The feedback store hooks in here (phi_lsp/feedback_feature.py): "shown" once per
        # request that showed something, then "accepted", "partiallyAccepted", "rejected".
        self.on_feedback = lambda event, info: None

    def register(self) -> None:
        server = self.server

        @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
        async def inline_completion(ls, params: types.InlineCompletionParams):
            return await self.inline_completion(params)

        @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))
        async def completion(ls, params: types.CompletionParams):
            return await self.completion(params)

        @server.command("phi.acceptCompletion")
        def accept(ls, *args):
            return self.record("accepted", args)

        @server.command("phi.rejectCompletion")
        def reject(ls, *args):
            return self.record("rejected", args)

        # Copilot-style clients say what they showed and how much of it was taken, with the
        # item they got (its command carries our { id }); counted like phi.acceptCompletion.
        @server.feature("textDocument/didShowCompletion")
        def did_show(ls, params):
            suggestion_id = _item_id(params)
            if suggestion_id is not None and suggestion_id in self._shown:
                self.counts["displayed"] += 1

        @server.feature("textDocument/didPartiallyAcceptCompletion")
        def did_partially_accept(ls, params):
            suggestion_id, length = _item_id(params), _field(params, "acceptedLength")
            if suggestion_id is not None and isinstance(length, int) and not isinstance(length, bool):
                self.record("accepted", ({"id": suggestion_id, "acceptedChars": length},))

        @server.command("phi.debug.lastPrompt")
        def last_prompt(ls, *args):
            return self.service.last_prompt

    # -- model access ----------------------------------------------------------------------

    def _model(self) -> Model | None:
        return self._model_named(self.server.service.model_for("completion"))

    def _escalation_model(self) -> Model | None:
        """completion.escalationModel, when an endpoint serving it can take a request now."""
        name = self.server.service.escalation_model("completion")
        return self._model_named(name) if name is not None else None

    def _model_named(self, name: str) -> Model | None:
        """`name`, routed to an endpoint serving it; None while none can take a request."""
        service = self.server.service
        backend = service.routed("completion", name)
        batcher = service.routed_batcher()
        if backend is None or batcher is None:
            return None
        return Model(backend, batcher, name, service.token_counter_for(name), service.served_name(name),
                     service.chat_format(name), service.context_length(name))

    async def _prepare_chat(self) -> None:
        """Find the chat format of the models that get chat prompts (once each; after that a
        lookup), so that the first prompt is already in the model's own format."""
        service = self.server.service
        mode = self.server.settings.completion.prompt_mode
        for name in filter(None, (service.model_for("completion"), service.escalation_model("completion"))):
            if prompt_family(service.served_name(name), mode) == CHAT:
                try:
                    await service.prepare_chat_format(name)
                except Exception:  # a bug of ours must not cost the completion
                    log.exception("finding the chat format of %s failed", name)

    def display_path(self, path: str) -> str:
        candidate = Path(path)
        for root in self.server.workspace_roots:
            try:
                return candidate.relative_to(root).as_posix()
            except ValueError:
                continue
        return candidate.name or path

    # -- requests --------------------------------------------------------------------------

    async def inline_completion(self, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        trigger = INVOKED if params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked else AUTO
        result = await self._suggest(params.text_document.uri, params.position, trigger, "inline")
        if result is None:
            return types.InlineCompletionList(items=[])
        _, suggestions = result
        here = types.Range(start=params.position, end=params.position)
        return types.InlineCompletionList(
            items=[
                types.InlineCompletionItem(insert_text=s.text, range=here, command=_accept_command(s.id))
                for s in suggestions
            ]
        )

    async def completion(self, params: types.CompletionParams) -> types.CompletionList | None:
        trigger = AUTO
        if params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked:
            trigger = INVOKED
        result = await self._suggest(params.text_document.uri, params.position, trigger, "completion")
        if result is None:
            return types.CompletionList(is_incomplete=True, items=[])
        document, suggestions = result
        # Replace the word being typed, so clients that filter by it keep the item.
        line = document.line_bytes(params.position.line)
        cursor_col = document.offset_at(params.position) - (document.offset_at(types.Position(params.position.line, 0)))
        word = re.search(rb"[A-Za-z0-9_]*$", line[:cursor_col]).group(0).decode()
        start = document.position_at(document.offset_at(params.position) - len(word))
        items = []
        for index, s in enumerate(suggestions):
            full = word + s.text
            first_line = full.split("\n", 1)[0]
            items.append(
                types.CompletionItem(
                    label=(first_line if len(first_line) <= 80 else first_line[:77] + "...") or s.text.strip()[:80],
                    kind=types.CompletionItemKind.Text,
                    detail="phi-lsp",
                    documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```{document.language or ''}\n{full}\n```"),
                    filter_text=full,
                    sort_text=f"0{index}",
                    preselect=index == 0,
                    insert_text_format=types.InsertTextFormat.PlainText,
                    text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=full),
                    command=_accept_command(s.id),
                )
            )
        return types.CompletionList(is_incomplete=True, items=items)

    async def _suggest(self, uri: str, position: types.Position, trigger: str, method: str):
        document = self.server.documents.get(uri)
        if document is None:
            raise JsonRpcInvalidParams(f"{uri} is not open (send textDocument/didOpen first)")
        if not self.server.settings.completion.enabled or self.server.privacy.is_excluded(uri):
            return None
        # A newer request of the same kind for the same document supersedes this one (ghost
        # text and a completion menu asking side by side do not cancel each other).
        slot = (uri, method)
        previous = self._latest.get(slot)
        if previous is not None and not previous.done():
            previous.cancel()
        # A cancelled task keeps its frames (in its CancelledError's traceback): holding the
        # superseded task here chained every superseded request, snapshot and tree included,
        # to the newest one (2,000 tasks, ~100 MB after 5,000 keystrokes).
        previous = None
        me = asyncio.current_task()
        if me is not None:
            self._latest[slot] = me
        me = None
        snapshot = document.snapshot()
        path = path_of(uri)
        request = Request(uri, snapshot, document.offset_at(position), trigger, path, self.display_path(path))
        await self._prepare_chat()
        result = await self.service.suggest(request)
        current = self.server.documents.get(uri)
        if current is None or current.version != snapshot.version:
            self.counts["stale"] += 1  # never deliver a suggestion for a position that moved on
            return None
        for s in result.suggestions:
            self._remember(s, uri, trigger, result.served_from, snapshot.language)
        if result.suggestions:
            first = result.suggestions[0]
            self.counts["shownRequests"] += 1
            self.on_feedback("shown", {
                "id": first.id, **self._shown[first.id], "candidates": len(result.suggestions),
                "latencyMs": result.timings.get("totalMs"),
            })
        return current, result.suggestions

    # -- feedback --------------------------------------------------------------------------

    def _remember(self, suggestion, uri: str, trigger: str, served_from: str, language: str | None) -> None:
        self.counts["shown"] += 1
        self._shown[suggestion.id] = {
            "uri": uri, "text": suggestion.text, "trigger": trigger, "servedFrom": served_from, "at": time.time(),
            "model": suggestion.model, "variant": suggestion.variant, "escalation": suggestion.escalation,
            "confidence": suggestion.confidence, "language": language,
        }
        while len(self._shown) > MAX_SHOWN:
            self._shown.popitem(last=False)

    def record(self, event: str, args: tuple) -> dict:
        payload = args[0] if args and isinstance(args[0], dict) else {}
        suggestion_id = str(payload.get("id", ""))
        shown = self._shown.get(suggestion_id)
        if event == "accepted" and shown is not None:
            accepted_chars = payload.get("acceptedChars")
            if isinstance(accepted_chars, int) and 0 <= accepted_chars < len(shown["text"]):
                event = "partiallyAccepted"
        self.counts[event] += 1
        self.on_feedback(event, {"id": suggestion_id, **(shown or {}), **payload})
        return {"recorded": event, "known": shown is not None}

    # -- document hooks --------------------------------------------------------------------

    def document_opened(self, document) -> None:
        self._touch(document.uri)

    def _touch(self, uri: str) -> None:
        self._viewed[uri] = time.monotonic()
        self._viewed.move_to_end(uri)
        while len(self._viewed) > RECENT_PATHS:
            self._viewed.popitem(last=False)

    def _recent_paths(self, uri: str) -> frozenset[str]:
        """Files the user recently opened or edited (their definitions rank higher)."""
        now = time.monotonic()
        return frozenset(path_of(u) for u, at in self._viewed.items() if u != uri and now - at <= RECENT_WINDOW_S)

    def document_changed(self, document, params: types.DidChangeTextDocumentParams) -> None:
        self._touch(document.uri)
        self.service.note_keystroke(document.uri)
        last = params.content_changes[-1] if params.content_changes else None
        line = last.range.start.line if isinstance(last, types.TextDocumentContentChangePartial) else 0
        self._edits[document.uri] = (line, time.monotonic())
        self._edits.move_to_end(document.uri)

    def document_closed(self, uri: str) -> None:
        self.service.forget(uri)
        self._edits.pop(uri, None)
        self._viewed.pop(uri, None)
        for slot in [s for s in self._latest if s[0] == uri]:
            task = self._latest.pop(slot)
            if not task.done():
                task.cancel()

    def _recent_snippets(self, uri: str) -> list[Snippet]:
        """Lines around the latest edit of the most recently edited other open files."""
        snippets = []
        now = time.monotonic()
        for other, (line, at) in reversed(self._edits.items()):
            if other == uri or now - at > RECENT_WINDOW_S or self.server.privacy.is_excluded(other):
                continue
            document = self.server.documents.get(other)
            if document is None:
                continue
            first = max(0, line - RECENT_LINES)
            start = document.lines.line_start(first) or 0
            end = document.lines.line_start(line + RECENT_LINES + 1)
            masked = self.server.privacy.masked_source(other, document.source)  # the whole file's secrets
            text = masked[start:end].decode("utf-8", "replace").replace("\r\n", "\n").strip("\n")
            if text.strip():
                snippets.append(Snippet(self.display_path(path_of(other)), text, "recent"))
            if len(snippets) >= RECENT_FILES:
                break
        return snippets

    def stats(self) -> dict:
        return {
            "completion": {
                **self.service.stats.as_json(),
                **self.counts,
                "cache": {"hits": self.service.cache.hits, "misses": self.service.cache.misses},
            }
        }

    async def shutdown(self) -> None:
        await self.service.aclose()


def _field(value, name: str):
    """A field of untyped notification params (a dict, or an object from the JSON-RPC layer)."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _item_id(params) -> str | None:
    """The suggestion id in `{ item: { command: { arguments: [ { id } ] } } }`."""
    arguments = _field(_field(_field(params, "item"), "command"), "arguments")
    if not isinstance(arguments, (list, tuple)) or not arguments:
        return None
    first = arguments[0]
    suggestion_id = first if isinstance(first, str) else _field(first, "id")
    return str(suggestion_id) if suggestion_id else None


def _accept_command(suggestion_id: str) -> types.Command:
    return types.Command(title="phi-lsp: accept suggestion", command="phi.acceptCompletion", arguments=[{"id": suggestion_id}])
