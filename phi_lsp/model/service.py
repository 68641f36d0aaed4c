"""Owns the connection to the model: which backend (a configured URL or the managed local vLLM),
its health, and the status the editor shows ("starting", "ready", "busy", "unreachable").

The completion and review features ask it for a backend and a model name; they never block on
it. While the model is starting or down, `routed()` says so at once (None) and the features
answer with nothing instead of making the editor wait.

Behind the backend are the endpoints (phi_lsp/model/endpoints.py): one for `backend.url` or the
managed vLLM (then everything is as with a single Backend), or one per URL of
`backend.endpoints` (the small model here, the escalation model there); `routed(task)` gives the
features a backend that sends each call to the endpoint serving its model. Replicas of one
model sit behind vLLM's router, which balances and fails over; every request carries the
session key of its document (`sessions`, keyed by the editor's workspace folders). The service
is "unreachable" only when the endpoint serving the completion or review model does not answer;
another endpoint going down is said once. The escalation router (phi_lsp/model/escalation.py)
counts escalations and the per-model token budget, fed from every endpoint's `usage` figures.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from phi_lsp.core.chat_format import ChatRenderer
from phi_lsp.model.backend import Backend, BackendError, Health
from phi_lsp.model.chat_format_discovery import ChatFormats
from phi_lsp.model.batching import Batcher
from phi_lsp.core.settings import Settings
from phi_lsp.model.endpoints import Endpoints, EndpointSpec, ModelBackend, ModelBatcher
from phi_lsp.model.managed_vllm import ManagedVllm, ManagedVllmError, ModelChoice
from phi_lsp.model.escalation import Router
from phi_lsp.model.session import SessionKeys
from phi_lsp.core.tokens import TokenCounter

log = logging.getLogger(__name__)

STARTING, READY, BUSY, UNREACHABLE, ERROR, DISABLED = (
    "starting",
    "ready",
    "busy",
    "unreachable",
    "error",
    "disabled",
)


@dataclass
class Status:
    state: str
    message: str = ""
    model: str = ""
    url: str = ""

    def as_json(self) -> dict:
        return {"state": self.state, "message": self.message, "model": self.model, "url": self.url}


class ModelService:
    def __init__(
        self,
        notify_status: Callable[[Status], None],
        warn_user: Callable[[str], None],
        inform_user: Callable[[str], None],
        progress: Callable[[str, int | None, bool], None] | None = None,
    ):
        self._notify_status = notify_status
        self._warn_user = warn_user
        self._inform_user = inform_user
        self._progress = progress or (lambda message, percent, done: None)
        self.settings = Settings()
        self.model_configured = False
        self.backend: Backend | None = None  # the first endpoint's (the only one, usually)
        self.batcher: Batcher | None = None
        self.endpoints: Endpoints | None = None
        self.sessions = SessionKeys()  # the editor's workspace folders key the documents
        self.router = Router(tell_user=inform_user)
        # Each model's chat format, found once; a fallback to the built-in shape is said once.
        self.chat_formats = ChatFormats(tell=inform_user)
        self.managed: ManagedVllm | None = None
        self.managed_choice: ModelChoice | None = None
        self._start_task: asyncio.Task | None = None
        self._backend_key: tuple | None = None
        self.status = Status(DISABLED)
        self._closing: list[asyncio.Task] = []
        self._check_task: asyncio.Task | None = None

    # -- configuration ---------------------------------------------------------------------

    def configure(self, settings: Settings, model_configured: bool) -> None:
        """Apply settings; (re)creates the backend only when its connection settings change."""
        self.settings = settings
        self.model_configured = model_configured
        self.router.configure(settings.routing.max_tokens_per_minute)
        b = settings.backend
        key = (b.url, b.kind, b.api_key, b.connect_timeout_ms, b.request_timeout_ms, b.session_header)
        if b.endpoints:
            key += (b.endpoints,)
        if b.url is None and not b.endpoints:
            key += (settings.completion.model, settings.managed)
        if key == self._backend_key:
            return
        self._backend_key = key
        self._drop_backend()
        if b.url or b.endpoints:
            specs = [EndpointSpec.parse(b.url, (), b.api_key)] if b.url else []
            specs += [EndpointSpec.parse(e.url, e.models, e.api_key) for e in b.endpoints]
            self._use_endpoints(specs)
        else:
            self._start_task = asyncio.get_running_loop().create_task(self._start_managed())

    def _use_backend(self, url: str) -> None:
        """The managed vLLM's endpoint: it serves the one model it was started for."""
        served = self.managed_choice.served_name if self.managed_choice is not None else None
        self._use_endpoints([EndpointSpec.parse(url, [served] if served else [])])

    def _use_endpoints(self, specs: list[EndpointSpec]) -> None:
        b = self.settings.backend
        single = len(specs) == 1

        def health_for(index: int, spec: EndpointSpec) -> Health:
            if single:
                return Health(on_down=self._on_down, on_up=self._on_up)
            return Health(
                on_down=lambda reason: self._endpoint_down(index, reason),
                on_up=lambda: self._endpoint_up(index),
            )

        self.endpoints = Endpoints.create(
            specs,
            kind=b.kind,
            connect_timeout_s=b.connect_timeout_ms / 1000,
            request_timeout_s=b.request_timeout_ms / 1000,
            health_for=health_for,
            session_header=b.session_header,
            sessions=self.sessions,
        )
        for model, urls in self.endpoints.duplicates().items():
            self._warn_user(
                f"phi-lsp: backend.endpoints lists {model!r} at {len(urls)} URLs; only the first, {urls[0]}, "
                "is used. Put vllm-router in front of the replicas and list its URL once (docs/DEPLOY.md)."
            )
        for member in self.endpoints.members:
            member.backend.on_activity = self._on_activity
            member.backend.on_usage = (
                lambda served, prompt, completion, spec=member.spec:
                self.router.note_usage(spec.name_for(served), prompt, completion)
            )
        self.backend = self.endpoints.primary.backend
        self.batcher = self.endpoints.primary.batcher
        if single:
            self._set_status(READY, f"Using {specs[0].url}")
            self._check_task = asyncio.get_running_loop().create_task(self._check(self.backend))
        else:
            self._set_status(READY, f"Using {len(specs)} endpoints: " + ", ".join(s.url for s in specs))
            self._check_task = asyncio.get_running_loop().create_task(self._check_endpoints(self.endpoints))

    async def _check(self, backend: Backend) -> None:
        """Ask the new backend what it serves: an unreachable server or a model it does not
        serve is said at once, not at the first keystroke."""
        try:
            served = await backend.list_models()
        except BackendError:
            return  # an outage: the backend has already said so (once) and probes for recovery
        except Exception:
            log.exception("checking the backend failed")
            return
        for task in ("completion", "review"):
            model = self.model_for(task)
            if served and model not in served:
                self._warn_user(
                    f"phi-lsp: {backend.url} serves {', '.join(served)}, not {model!r} ({task}.model). "
                    f"Set {task}.model to one of those."
                )

    async def _check_endpoints(self, endpoints: Endpoints) -> None:
        """Ask every endpoint what it serves; say once which one lacks a model it is listed
        for (an endpoint that is down says so itself, once)."""
        for member in endpoints.members:
            try:
                served = await member.backend.list_models()
            except BackendError:
                continue
            except Exception:
                log.exception("checking the endpoint %s failed", member.url)
                continue
            wanted = [s for _, s in member.spec.models] or [
                m for m in (self.model_for("completion"), self.model_for("review")) if endpoints.for_model(m) is member
            ]
            missing = [m for m in dict.fromkeys(wanted) if served and m not in served]
            if missing:
                self._warn_user(
                    f"phi-lsp: {member.url} serves {', '.join(served)}, not {', '.join(map(repr, missing))} "
                    "(backend.endpoints). Requests for it there will fail."
                )

    def _drop_backend(self) -> None:
        for task in (self._start_task, self._check_task):
            if task is not None:
                task.cancel()
        self._start_task = self._check_task = None
        closing = []
        if self.endpoints is not None:
            closing.append(self.endpoints.aclose())
        else:
            if self.batcher is not None:
                closing.append(self.batcher.aclose())
            if self.backend is not None:
                closing.append(self.backend.aclose())
        if self.managed is not None:
            closing.append(self.managed.stop())
        self.backend = self.batcher = self.managed = self.endpoints = None
        if closing:
            task = asyncio.get_running_loop().create_task(_gather_quietly(closing))
            self._closing.append(task)
            task.add_done_callback(self._closing.remove)

    async def _start_managed(self) -> None:
        managed = ManagedVllm.from_settings(self.settings, self.model_configured)
        self.managed, self.managed_choice = managed, managed.model
        if managed.model.note:
            self._inform_user(managed.model.note)
        self._set_status(STARTING, f"Starting vLLM for {managed.model.served_name}")
        try:
            url = await managed.start(lambda message, percent: self._progress(message, percent, False))
        except asyncio.CancelledError:
            self._progress("stopped", None, True)  # the settings changed under it: close the bar
            raise
        except Exception as exc:  # ManagedVllmError, or the OS refusing a port or a process
            reason = str(exc) if isinstance(exc, ManagedVllmError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, ManagedVllmError):
                log.exception("starting the managed vLLM failed")
            self._progress(reason, None, True)
            self._set_status(ERROR, reason)
            self._warn_user(f"phi-lsp could not start the local model: {reason}")
            return
        self._progress(f"vLLM is serving {managed.model.served_name}", 100, True)
        self._use_backend(url)

    async def wait_until_started(self) -> None:
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def aclose(self) -> None:
        self._drop_backend()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- what features ask -----------------------------------------------------------------

    def model_for(self, task: str) -> str:
        """The served model name for "completion" or "review"."""
        if self.settings.backend.url is None and self.managed_choice is not None:
            return self.managed_choice.served_name  # the managed server serves one model
        return getattr(self.settings, task).model

    def model_source(self, task: str) -> str:
        """A path or hub id for the model's files (to find its tokenizer)."""
        if self.settings.backend.url is None and self.managed_choice is not None:
            return self.managed_choice.source
        return self.model_for(task)

    def _chat_member(self, model: str):
        endpoint = self.endpoints.for_model(model) if self.endpoints is not None else None
        return endpoint if endpoint is not None and endpoint.available else None

    async def prepare_chat_format(self, model: str) -> ChatRenderer | None:
        """Find `model`'s chat format (its files on disk, else learned from its server) once;
        None while no endpoint serving it can take a request."""
        member = self._chat_member(model)
        if member is None:
            return None
        files = self.managed_choice.source if self.settings.backend.url is None and self.managed_choice else None
        return await self.chat_formats.get(member.backend, member.spec.served_name(model), files)

    def chat_format(self, model: str) -> ChatRenderer | None:
        """`model`'s chat format when it has been found (prepare_chat_format), else None."""
        member = self._chat_member(model)
        return self.chat_formats.known(member.backend, member.spec.served_name(model)) if member else None

    def token_counter(self, task: str) -> TokenCounter:
        return TokenCounter.for_model(self.model_source(task))

    def set_workspace_roots(self, roots) -> None:
        """The editor's workspace folders: part of every document's session key."""
        self.sessions.set_roots(roots)

    def routed(self, task: str, model: str | None = None) -> ModelBackend | None:
        """A backend for `task`'s model (or `model`) that sends each call to the endpoint
        serving it; None while that one cannot take a request (starting, down)."""
        endpoints = self.endpoints
        model = model or self.model_for(task)
        if endpoints is None or not endpoints.available(model):
            return None
        return endpoints.backend()

    def routed_batcher(self) -> ModelBatcher | None:
        return self.endpoints.batcher() if self.endpoints is not None else None

    def escalation_model(self, task: str) -> str | None:
        """`<task>.escalationModel` when some endpoint serves it (never with the managed vLLM,
        which serves one model)."""
        name = getattr(self.settings, task).escalation_model
        if not name or self.endpoints is None or not self.endpoints.serves(name):
            return None
        if name == self.model_for(task):
            return None  # the same model on the same endpoint: nothing to escalate to
        return name

    def served_name(self, model: str) -> str:
        return self.endpoints.served_name(model) if self.endpoints is not None else model

    def context_length(self, model: str) -> int | None:
        """What the server accepts for `model` in tokens, prompt and answer together (None
        until its /models has said, or when it does not say)."""
        return self.endpoints.context_length(model) if self.endpoints is not None else None

    def token_counter_for(self, model: str) -> TokenCounter:
        if model == self.model_for("completion"):
            return self.token_counter("completion")
        return TokenCounter.for_model(self.served_name(model))

    # -- status ----------------------------------------------------------------------------

    def _set_status(self, state: str, message: str = "") -> None:
        model = self.model_for("completion")
        url = self.backend.url if self.backend is not None else ""
        self.status = Status(state, message, model, url)
        self._notify_status(self.status)

    def _on_down(self, reason: str) -> None:
        self._set_status(UNREACHABLE, reason)
        self._warn_user(
            f"phi-lsp: the model backend is unavailable ({reason}). Completions and reviews pause "
            "until it answers again; everything else keeps working."
        )

    def _on_up(self) -> None:
        self._set_status(READY, "The model backend answers again")
        log.info("backend recovered")

    def _endpoint_down(self, index: int, reason: str) -> None:
        endpoints = self.endpoints
        if endpoints is None or index >= len(endpoints.members):
            return
        url = endpoints.members[index].url
        log.warning("endpoint %s is down: %s", url, reason)
        if not any(endpoints.available(self.model_for(task)) for task in ("completion", "review")):
            if self.status.state != UNREACHABLE:
                self._on_down(reason)
            return
        self._inform_user(
            f"phi-lsp: the endpoint {url} is unavailable ({reason}); requests for the models it "
            "serves pause until it answers again."
        )

    def _endpoint_up(self, index: int) -> None:
        endpoints = self.endpoints
        if endpoints is None or index >= len(endpoints.members):
            return
        log.info("endpoint %s answers again", endpoints.members[index].url)
        if self.status.state == UNREACHABLE:
            self._on_up()

    def _on_activity(self, in_flight: int) -> None:
        if self.endpoints is not None and len(self.endpoints.members) > 1:
            in_flight = self.endpoints.in_flight
        if self.status.state in (READY, BUSY):
            state = BUSY if in_flight else READY
            if state != self.status.state:
                self._set_status(state, self.status.message)


async def _gather_quietly(awaitables) -> None:
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.warning("error while closing the backend: %s", result)
