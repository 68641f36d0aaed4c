"""Which URL serves which model: the one thing about a fleet that a router cannot know.

An endpoint is a Backend (with its own Health and probe loop) and its own Batcher. Each serves
some models: a `backend.endpoints` entry serves the models it lists; `backend.url` (which lists
none) serves every model that no entry lists. So the small model can be served here and the
escalation model there. A listed model may carry an alias, `"NAME=SERVED"`: phi-lsp asks for
NAME (in `completion.model`, `review.escalationModel`, ...) and the request to that endpoint
says SERVED. That lets one server stand for two tiers, and a team give its deployments names of
its own.

One model, one URL. Replicas of a model belong behind vLLM's router (`vllm-router`,
docs/DEPLOY.md), which sees the whole fleet's load and health: balancing, failover and circuit
breaking are its job. phi-lsp helps it with a session key per document on every request
(phi_lsp/model/session.py) and retries a request that met a dying replica once (backend.py).
When several entries list the same model, the first is used and the others are reported
(`duplicates`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from phi_lsp.model.backend import Backend, BackendUnreachable, Choice, Health, Sampling
from phi_lsp.model.batching import Batcher
from phi_lsp.model.session import DEFAULT_HEADER, SessionKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    models: tuple[tuple[str, str], ...] = ()  # (name asked for, name served); empty: any model
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, models: Sequence[str] = (), api_key: str | None = None) -> "EndpointSpec":
        pairs = []
        for entry in models:
            name, _, served = entry.partition("=")
            name, served = name.strip(), served.strip()
            if name:
                pairs.append((name, served or name))
        return cls(url.rstrip("/"), tuple(pairs), api_key)

    def serves(self, model: str) -> bool:
        return not self.models or any(name == model for name, _ in self.models)

    def served_name(self, model: str) -> str:
        return next((served for name, served in self.models if name == model), model)

    def name_for(self, served: str) -> str:
        """The name phi-lsp uses for what this endpoint reports as `served`."""
        return next((name for name, s in self.models if s == served), served)

    def listed(self) -> list[str]:
        return [n if n == s else f"{n}={s}" for n, s in self.models]


class Endpoint:
    """One URL: its client (with its health) and its batch window."""

    def __init__(self, spec: EndpointSpec, backend: Backend, batcher: Batcher):
        self.spec = spec
        self.backend = backend
        self.batcher = batcher

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def available(self) -> bool:
        return self.backend.health.accepting

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r})"


class Endpoints:
    def __init__(self, members: list[Endpoint]):
        if not members:
            raise ValueError("at least one endpoint is needed")
        self.members = members

    @classmethod
    def create(
        cls,
        specs: Sequence[EndpointSpec],
        kind: str = "vllm",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 60.0,
        health_for: Callable[[int, EndpointSpec], Health] | None = None,
        session_header: str = DEFAULT_HEADER,
        sessions: SessionKeys | None = None,
        transport=None,
    ) -> "Endpoints":
        sessions = sessions or SessionKeys()
        members = []
        for index, spec in enumerate(specs):
            backend = Backend(
                spec.url,
                kind=kind,
                api_key=spec.api_key,
                connect_timeout_s=connect_timeout_s,
                request_timeout_s=request_timeout_s,
                health=health_for(index, spec) if health_for is not None else None,
                transport=transport,
                session_header=session_header,
                sessions=sessions,
            )
            members.append(Endpoint(spec, backend, Batcher(backend)))
        return cls(members)

    # -- what serves what ------------------------------------------------------------------

    @property
    def primary(self) -> Endpoint:
        return self.members[0]

    def for_model(self, model: str) -> Endpoint | None:
        """The endpoint serving `model`: the first entry listing it, else the one listing
        nothing (backend.url); None if neither."""
        listed = next((m for m in self.members if m.spec.models and m.spec.serves(model)), None)
        return listed or next((m for m in self.members if not m.spec.models), None)

    def serves(self, model: str) -> bool:
        return self.for_model(model) is not None

    def available(self, model: str) -> bool:
        """The endpoint serving `model` can take a request now."""
        endpoint = self.for_model(model)
        return endpoint is not None and endpoint.available

    def served_name(self, model: str) -> str:
        """The name the endpoint serving `model` knows it by (for tokenizers and templates)."""
        endpoint = self.for_model(model)
        return endpoint.spec.served_name(model) if endpoint is not None else model

    def context_length(self, model: str) -> int | None:
        """The tokens (prompt and answer) the endpoint serving `model` accepts for it, when
        its /models says so."""
        endpoint = self.for_model(model)
        if endpoint is None:
            return None
        return endpoint.backend.context_lengths.get(endpoint.spec.served_name(model))

    def duplicates(self) -> dict[str, list[str]]:
        """Models listed by more than one entry -> their URLs (the first is the one used)."""
        urls: dict[str, list[str]] = {}
        for member in self.members:
            for name, _ in member.spec.models:
                urls.setdefault(name, []).append(member.url)
        return {name: found for name, found in urls.items() if len(found) > 1}

    @property
    def in_flight(self) -> int:
        return sum(m.backend.stats.in_flight for m in self.members)

    # -- facades ---------------------------------------------------------------------------

    def backend(self) -> "ModelBackend":
        return ModelBackend(self)

    def batcher(self) -> "ModelBatcher":
        return ModelBatcher(self)

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "url": m.url,
                "models": m.spec.listed() or ["*"],
                "state": "up" if m.available else "down",
                "httpRequests": m.backend.stats.http_requests,
                "prompts": m.backend.stats.prompts,
                "failures": m.backend.stats.failures,
                "retries": m.backend.stats.retries,
                "retriesAnswered": m.backend.stats.retries_answered,
                "timeoutsWhileAnswering": m.backend.stats.timeouts_while_answering,
                "promptTokens": m.backend.stats.prompt_tokens,
                "completionTokens": m.backend.stats.completion_tokens,
            }
            for m in self.members
        ]

    async def aclose(self) -> None:
        for m in self.members:
            await m.batcher.aclose()
            await m.backend.aclose()

    def require(self, model: str) -> Endpoint:
        endpoint = self.for_model(model)
        if endpoint is None:
            raise BackendUnreachable(f"no endpoint serves {model} (backend.endpoints)")
        return endpoint


class ModelBackend:
    """What the features see of a Backend (complete, chat, capabilities): each call goes to the
    endpoint serving its model, under the name that endpoint serves it by."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints

    @property
    def _first(self) -> Backend:
        return self.endpoints.primary.backend

    @property
    def url(self) -> str:
        return self._first.url

    @property
    def kind(self) -> str:
        return self._first.kind

    @property
    def health(self) -> Health:
        return self._first.health

    @property
    def stats(self):
        return self._first.stats

    @property
    def session_header(self) -> str:
        return self._first.session_header

    @property
    def supports_batching(self) -> bool:
        return self._first.supports_batching

    @property
    def supports_logprobs(self) -> bool:
        return self._first.supports_logprobs

    @property
    def supports_constraints(self) -> bool:
        return self._first.supports_constraints

    def completion_body(self, model: str, prompts: Sequence[str], sampling: Sampling) -> dict[str, Any]:
        return self._first.completion_body(self.endpoints.served_name(model), prompts, sampling)

    async def complete(
        self, model: str, prompts: Sequence[str], sampling: Sampling, timeout_s: float | None = None,
        document: str | None = None,
    ) -> list[list[Choice]]:
        if not prompts:
            return []
        endpoint = self.endpoints.require(model)
        return await endpoint.backend.complete(endpoint.spec.served_name(model), prompts, sampling, timeout_s, document)

    async def chat(
        self, model: str, messages: list[dict[str, str]], sampling: Sampling, timeout_s: float | None = None,
        document: str | None = None,
    ) -> list[Choice]:
        endpoint = self.endpoints.require(model)
        return await endpoint.backend.chat(endpoint.spec.served_name(model), messages, sampling, timeout_s, document)


class ModelBatcher:
    """The batch window of the endpoint serving each prompt's model."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints

    @property
    def idle(self) -> bool:
        return all(m.batcher.idle for m in self.endpoints.members)

    async def complete(
        self, model: str, prompt: str, sampling: Sampling, timeout_s: float | None = None, document: str | None = None
    ) -> list[Choice]:
        endpoint = self.endpoints.require(model)
        return await endpoint.batcher.complete(endpoint.spec.served_name(model), prompt, sampling, timeout_s, document)
