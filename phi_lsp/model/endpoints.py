"""Several model servers behind one interface: which endpoint takes a request.

An endpoint is a Backend (with its own Health and probe loop) and its own Batcher. Each
serves some models: a `backend.endpoints` entry serves the models it lists; `backend.url`
(which lists none) serves every model that no entry lists. A listed model may carry an alias, `"NAME=SERVED"`: phi-lsp asks
for NAME (in `completion.model`, `review.escalationModel`, ...) and the request to that endpoint
says SERVED. That lets two servers serving the same weights under the same name stand for two
tiers, and a team give its deployment names of its own.

Picking (`EndpointPool.pick`): among the healthy endpoints serving the model, a document keeps
the endpoint it was given first (affinity: vLLM's prefix cache there already holds its
context) unless that endpoint is much busier than the least-loaded one (more than twice its
outstanding prompts and AFFINITY_SLACK more); a new document goes to the least-loaded endpoint
(ties broken by a hash of the document, so documents spread). Load is the number of prompts
sent to the endpoint and not yet answered.

Failover: a request that fails with an outage error (refused, reset, timeout, 5xx, 429) is
retried once on another healthy endpoint serving the model. The failed endpoint's Health has
already marked it down; it takes no requests until its probe sees it answer again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from phi_lsp.model.backend import Backend, BackendError, BackendUnreachable, Choice, Health, Sampling
from phi_lsp.model.batching import Batcher

log = logging.getLogger(__name__)

T = TypeVar("T")

AFFINITY, LEAST_LOADED, ROUND_ROBIN = "affinity", "least-loaded", "round-robin"
AFFINITY_SLACK = 4
MAX_AFFINITY_KEYS = 4_096


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


class Member:
    """One endpoint of the pool."""

    def __init__(self, spec: EndpointSpec, backend: Backend, batcher: Batcher):
        self.spec = spec
        self.backend = backend
        self.batcher = batcher
        self.outstanding = 0  # prompts sent here and not answered yet
        self.requests = 0  # calls routed here
        self.failed_over = 0  # calls that failed here and were retried elsewhere

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def available(self) -> bool:
        return self.backend.health.accepting

    def __repr__(self) -> str:
        return f"Member({self.url!r}, outstanding={self.outstanding})"


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class EndpointPool:
    def __init__(self, members: list[Member], policy: str = AFFINITY):
        if not members:
            raise ValueError("an endpoint pool needs at least one endpoint")
        self.members = members
        self.policy = policy
        self._affinity: OrderedDict[tuple[str, str], Member] = OrderedDict()
        self._turn = 0
        self.retries = 0  # calls retried on another endpoint after an outage error
        self.moved = 0  # documents moved off their endpoint (down or much busier)

    @classmethod
    def create(
        cls,
        specs: Sequence[EndpointSpec],
        kind: str = "vllm",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 60.0,
        health_for: Callable[[int, EndpointSpec], Health] | None = None,
        policy: str = AFFINITY,
        transport=None,
    ) -> "EndpointPool":
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
            )
            members.append(Member(spec, backend, Batcher(backend)))
        return cls(members, policy)

    # -- what serves what ------------------------------------------------------------------

    @property
    def primary(self) -> Member:
        return self.members[0]

    def serving(self, model: str) -> list[Member]:
        """The endpoints that list `model`; if none does, those that list nothing (backend.url)."""
        listed = [m for m in self.members if m.spec.models and m.spec.serves(model)]
        return listed or [m for m in self.members if not m.spec.models]

    def serves(self, model: str) -> bool:
        return bool(self.serving(model))

    def available(self, model: str) -> bool:
        """Some endpoint serving `model` can take a request now."""
        return any(m.available for m in self.serving(model))

    def served_name(self, model: str) -> str:
        """The name the endpoints serving `model` know it by (for tokenizers and templates)."""
        serving = self.serving(model)
        return serving[0].spec.served_name(model) if serving else model

    @property
    def in_flight(self) -> int:
        return sum(m.backend.stats.in_flight for m in self.members)

    # -- picking ---------------------------------------------------------------------------

    def pick(self, model: str, key: str | None = None, exclude: Sequence[Member] = ()) -> Member | None:
        """The endpoint for a request for `model` from document `key` (None: none can take it)."""
        healthy = [m for m in self.serving(model) if m.available and m not in exclude]
        if not healthy:
            return None
        if len(healthy) == 1:
            choice = healthy[0]
        elif self.policy == ROUND_ROBIN:
            self._turn += 1
            choice = healthy[self._turn % len(healthy)]
        else:
            least = min(m.outstanding for m in healthy)
            if key is not None and self.policy == AFFINITY:
                mine = self._affinity.get((model, key))
                if mine is not None:
                    if mine in healthy and mine.outstanding <= max(2 * least, least + AFFINITY_SLACK):
                        self._affinity.move_to_end((model, key))
                        return mine
                    self.moved += 1
            tied = [m for m in healthy if m.outstanding == least]
            if key is not None:
                choice = tied[_hash(key) % len(tied)]
            else:
                self._turn += 1
                choice = tied[self._turn % len(tied)]
        if key is not None and self.policy == AFFINITY:
            self._affinity[(model, key)] = choice
            self._affinity.move_to_end((model, key))
            while len(self._affinity) > MAX_AFFINITY_KEYS:
                self._affinity.popitem(last=False)
        return choice

    async def call(
        self, model: str, key: str | None, fn: Callable[[Member, str], Awaitable[T]], prompts: int = 1
    ) -> T:
        """fn(endpoint, served name) on the endpoint picked for (model, key); on an outage
        error, once more on another healthy endpoint serving the model."""
        tried: list[Member] = []
        error: BackendError | None = None
        for _attempt in range(2):
            member = self.pick(model, key, exclude=tried)
            if member is None:
                break
            if tried:
                self.retries += 1
                tried[-1].failed_over += 1
                log.info("retrying a request for %s on %s after: %s", model, member.url, error.reason if error else "")
            tried.append(member)
            member.outstanding += prompts
            member.requests += 1
            try:
                return await fn(member, member.spec.served_name(model))
            except BackendError as exc:
                if not exc.outage:
                    raise
                error = exc
            finally:
                member.outstanding -= prompts
        if error is not None:
            raise error
        raise BackendUnreachable(f"no endpoint serving {model} can take requests now")

    # -- facades ---------------------------------------------------------------------------

    def backend(self, affinity: str | None = None) -> "RoutedBackend":
        return RoutedBackend(self, affinity)

    def batcher(self) -> "RoutedBatcher":
        return RoutedBatcher(self)

    def stats(self) -> list[dict[str, Any]]:
        return [
            {
                "url": m.url,
                "models": [n if n == s else f"{n}={s}" for n, s in m.spec.models] or ["*"],
                "state": "up" if m.available else "down",
                "requests": m.requests,
                "outstanding": m.outstanding,
                "failedOver": m.failed_over,
                "httpRequests": m.backend.stats.http_requests,
                "prompts": m.backend.stats.prompts,
                "failures": m.backend.stats.failures,
                "promptTokens": m.backend.stats.prompt_tokens,
                "completionTokens": m.backend.stats.completion_tokens,
            }
            for m in self.members
        ]

    async def aclose(self) -> None:
        for m in self.members:
            await m.batcher.aclose()
            await m.backend.aclose()


class RoutedBackend:
    """What the features see of a Backend (complete, chat, capabilities), routed per call
    through the pool; `affinity` is the document the calls are for."""

    def __init__(self, pool: EndpointPool, affinity: str | None = None):
        self.pool = pool
        self.affinity = affinity

    @property
    def _first(self) -> Backend:
        return self.pool.primary.backend

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
    def supports_batching(self) -> bool:
        return self._first.supports_batching

    @property
    def supports_logprobs(self) -> bool:
        return self._first.supports_logprobs

    @property
    def supports_constraints(self) -> bool:
        return self._first.supports_constraints

    def completion_body(self, model: str, prompts: Sequence[str], sampling: Sampling) -> dict[str, Any]:
        return self._first.completion_body(self.pool.served_name(model), prompts, sampling)

    async def complete(
        self, model: str, prompts: Sequence[str], sampling: Sampling, timeout_s: float | None = None,
        affinity: str | None = None,
    ) -> list[list[Choice]]:
        if not prompts:
            return []
        return await self.pool.call(
            model, affinity or self.affinity,
            lambda m, served: m.backend.complete(served, prompts, sampling, timeout_s), len(prompts),
        )

    async def chat(
        self, model: str, messages: list[dict[str, str]], sampling: Sampling, timeout_s: float | None = None,
        affinity: str | None = None,
    ) -> list[Choice]:
        return await self.pool.call(
            model, affinity or self.affinity, lambda m, served: m.backend.chat(served, messages, sampling, timeout_s)
        )


class RoutedBatcher:
    """The batch window per endpoint: prompts for one endpoint share its requests."""

    def __init__(self, pool: EndpointPool):
        self.pool = pool

    @property
    def idle(self) -> bool:
        return all(m.batcher.idle for m in self.pool.members)

    async def complete(
        self, model: str, prompt: str, sampling: Sampling, timeout_s: float | None = None, affinity: str | None = None
    ) -> list[Choice]:
        return await self.pool.call(
            model, affinity, lambda m, served: m.batcher.complete(served, prompt, sampling, timeout_s)
        )
