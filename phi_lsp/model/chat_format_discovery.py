"""Which chat format a served model uses, found once per (server, model):

1. its chat template on disk (the managed vLLM's model directory, the bundled model, a model in
   the Hugging Face cache): rendered locally with jinja2 (phi_lsp/core/chat_template.py);
2. else learned from its vLLM server: /tokenize renders a probe conversation of sentinels with
   the server's template (`messages`, `add_generation_prompt`), /detokenize gives the text, and
   the text around the sentinels is the shape; a second probe with other contents must render
   exactly as the shape says. A server that refuses or drops the system turn is probed with the
   system text folded into the user turn. The end-of-turn stop is the first token the template
   writes after an assistant answer (/tokenize of that text with `return_token_strs`);
3. else the built-in shape (phi_lsp/core/chat_format.py BUILTIN), said once in the log and to
   the user.
backend.kind = openai servers apply their own template to `messages`: nothing is learned.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from phi_lsp.core import chat_format as cf
from phi_lsp.core.chat_format import BUILTIN, ChatRenderer, ChatShape
from phi_lsp.core.chat_template import find_chat_template
from phi_lsp.model.backend import Backend, BackendError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0
SERVER_APPLIES = ChatShape(
    head=BUILTIN.head, between=BUILTIN.between, tail=BUILTIN.tail, stops=(),
    source_note="the server's own template (backend.kind = openai: messages go to /v1/chat/completions)",
)


class LearningFailed(Exception):
    """The server answered, but its template could not be learned."""


async def _render(backend: Backend, model: str, messages: list[dict[str, str]]) -> str:
    tokens = await backend.tokenize_chat(model, messages, True, PROBE_TIMEOUT_S)
    return await backend.detokenize(model, tokens, PROBE_TIMEOUT_S)


async def _shape(backend: Backend, model: str) -> tuple[tuple[str, str, str], bool]:
    """(head, between, tail) and whether the system text is folded into the user turn."""
    try:
        rendered = await _render(backend, model, cf.probe(cf.PROBE_SYSTEM, cf.PROBE_USER))
        shape = cf.shape_from(rendered, cf.PROBE_SYSTEM, cf.PROBE_USER)
        if shape is not None:
            return shape, False
    except BackendError as exc:
        if exc.outage:
            raise
        # a template that refuses a system turn (raise_exception): probe without one
    rendered = await _render(backend, model, cf.probe(cf.PROBE_SYSTEM, cf.PROBE_USER, folded=True))
    shape = cf.shape_from(rendered, cf.PROBE_SYSTEM, cf.PROBE_USER, folded=True)
    if shape is None:
        raise LearningFailed(f"the server's rendering of a probe does not contain it: {rendered[:200]!r}")
    return shape, True


async def learn(backend: Backend, model: str) -> ChatShape:
    """The chat shape of `model` as its vLLM server renders it. Raises BackendError (the server
    failed or lacks /tokenize) or LearningFailed (its template does not render as a shape)."""
    (head, between, tail), folded = await _shape(backend, model)
    shape = ChatShape(head, between, tail, folds_system=folded)
    verify = await _render(backend, model, cf.probe(cf.VERIFY_SYSTEM, cf.VERIFY_USER, folded))
    if verify != shape.render(cf.VERIFY_SYSTEM, cf.VERIFY_USER):
        raise LearningFailed(f"the learned shape does not reproduce a second probe: {verify[:200]!r}")
    stops: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()
    try:
        after = cf.after_answer(await _render(backend, model, cf.probe_with_answer(folded)))
    except BackendError as exc:
        if exc.outage:
            raise
        after = None
    if after and after.strip():
        tokens, strs = await backend.tokenize_text(model, after, PROBE_TIMEOUT_S)
        if tokens and strs and strs[0].strip() and after.startswith(strs[0]):
            stops, ids = (strs[0],), (tokens[0],)  # one token: the template's end-of-turn marker
        else:
            stops = (cf.first_token(after, ()),)
    note = f"the chat template learned from {backend.root_url} for {model}"
    return ChatShape(head, between, tail, stops, ids, note, folded)


class ChatFormats:
    """The chat format per (server URL, served model), in memory for the life of the process.
    `tell` is called once per model that falls back to the built-in shape."""

    def __init__(self, tell: Callable[[str], None] | None = None):
        self._known: dict[tuple[str, str], ChatRenderer] = {}
        self._pending: dict[tuple[str, str], asyncio.Task] = {}
        self._tell = tell or (lambda message: None)

    def describe(self) -> dict[str, dict]:
        """Per served model (and server): where its chat format came from (for phi.stats)."""
        return {
            f"{model} @ {url}": {"source": chat.source_note, "fallback": chat.fallback, "stops": list(chat.stops)}
            for (url, model), chat in self._known.items()
        }

    def known(self, backend: Backend, model: str) -> ChatRenderer | None:
        return self._known.get((backend.url, model))

    async def get(self, backend: Backend, model: str, files: str | None = None) -> ChatRenderer:
        """The format of `model` served by `backend`; `files` names where its files may be on
        disk (a directory or hub id; the served name is tried too)."""
        key = (backend.url, model)
        if key in self._known:
            return self._known[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._find(backend, model, files))
            self._pending[key] = task
            task.add_done_callback(lambda _t: self._pending.pop(key, None))
        return await asyncio.shield(task)

    async def _find(self, backend: Backend, model: str, files: str | None) -> ChatRenderer:
        key = (backend.url, model)
        if backend.kind != "vllm":
            self._known[key] = SERVER_APPLIES
            return SERVER_APPLIES
        for name in dict.fromkeys(n for n in (files, model) if n):
            template = await asyncio.to_thread(find_chat_template, name)
            if template is not None:
                log.info("chat prompts for %s: %s", model, template.source_note)
                self._known[key] = template
                return template
        try:
            shape = await learn(backend, model)
        except BackendError as exc:
            if exc.outage:  # the server is down: try again next time, the built-in shape meanwhile
                log.info("could not learn the chat template of %s yet: %s", model, exc.reason)
                return BUILTIN
            reason = exc.reason
        except LearningFailed as exc:
            reason = str(exc)
        else:
            log.info("chat prompts for %s: %s", model, shape.source_note)
            self._known[key] = shape
            return shape
        message = (
            f"phi-lsp: the chat template of {model} could not be read from its files or learned from "
            f"{backend.root_url} ({reason}); chat prompts use {BUILTIN.source_note.split(' (')[0]}."
        )
        log.warning("%s", message)
        self._tell(message)
        self._known[key] = BUILTIN
        return BUILTIN
