"""The model backend: an async client for vLLM's OpenAI-compatible API (or any other
OpenAI-compatible server), with typed errors and outage tracking.

- `backend.kind = vllm`: one /v1/completions request carries a LIST of prompts; `logprobs` and
  `structured_outputs` are used.
- `backend.kind = openai` (Ollama, Azure AI Foundry, ...): one prompt per request (sent
  concurrently), no logprobs, no structured outputs. Callers see `supports_*` and turn the
  features off instead of faking them.

Every model request names its document in the session header (`backend.sessionHeader`,
default `X-Session-ID`: a hash, phi_lsp/model/session.py), so a router in front of several
replicas (vllm-router, `consistent_hash`) keeps each document on one replica's prefix cache.

A request that fails as a dying replica makes it fail (connection refused or broken before an
answer, HTTP 500/502/503) is sent once more after RETRY_DELAY_S, within its deadline: by then
the router has taken the replica out of rotation, and the user sees nothing. Timeouts, refusals
(4xx, 429) and garbage are not retried, and a cancelled request never is.

Failures raise a `BackendError` subclass fast. An outage (refused, reset, timeout, 5xx, 429,
garbage) flips the health to "down" exactly once, which the server turns into one message to
the user; while down, calls fail at once and a probe polls the server every half second, so
service comes back by itself when the server does. Cancelling a call closes its HTTP request,
which makes vLLM abort the sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from phi_lsp.core.positions import valid_text
from phi_lsp.core.privacy import mask
from phi_lsp.model.session import DEFAULT_HEADER, SessionKeys

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.5
# An answer body larger than this is not read on (it would all be held in memory): a malformed
# answer. A completion or review answer is a few kilobytes; /models, a few hundred bytes.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_PROBE_BYTES = 1024 * 1024  # a /models answer larger than this is no health answer
MAX_PROBES = 8  # probe attempts in flight at once (each bounded by 2x the connect timeout)
# One retry of a request that met a dying replica. vllm-router with `--health-check-interval-secs
# 1 --cb-failure-threshold 1` stops sending there after the first failure; a longer wait only
# adds latency.
RETRY_DELAY_S = 0.3
MAX_RETRY_DELAY_S = 1.0  # a 503 asking for a longer pause (Retry-After) is not retried
RETRY_STATUSES = (500, 502, 503)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Generation parameters shared by every prompt of one request (hashable: a batch key)."""

    max_tokens: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    # Token ids that end the answer (vLLM only): a chat template's end-of-turn token is a special
    # token, which vLLM leaves out of the text it matches `stop` strings against.
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    n: int = 1
    # vLLM structured output: ("regex", pattern) | ("grammar", ebnf) | ("json", schema-as-json)
    constraint: tuple[str, str] | None = None


@dataclass
class Choice:
    text: str
    finish_reason: str | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def confidence(self, chars: int | None = None, start: int = 0) -> float | None:
        """Geometric-mean token probability over `chars` characters of the text from `start`
        (the tokens that overlap them).

        None when the backend gave no logprobs (then no confidence gate applies).
        """
        if not self.tokens or self.token_logprobs is None:
            return None
        used: list[float] = []
        seen = 0
        limit = start + (len(self.text) - start if chars is None else chars)
        for token, logprob in zip(self.tokens, self.token_logprobs):
            if seen >= limit and used:
                break
            if seen + len(token) > start and logprob is not None and math.isfinite(logprob):
                used.append(logprob)
            seen += len(token)
        if not used:
            return None
        return math.exp(sum(used) / len(used))


# -- errors ----------------------------------------------------------------------------------


class BackendError(Exception):
    """A model call failed. `outage` says whether the backend itself is unavailable;
    `retry_in` is set (seconds) when sending the same request again that soon may succeed."""

    outage = True

    def __init__(self, reason: str, retry_in: float | None = None):
        # Errors become text everywhere (CLI output, LSP answers, messages, logs), and a
        # backend may echo the request (its Authorization header): masked once, here.
        reason = mask(reason)
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class BackendUnreachable(BackendError):
    pass


class BackendTimeout(BackendError):
    pass


class BackendOverloaded(BackendError):
    """HTTP 429/503: the server is up but refusing work for now."""


class BackendServerError(BackendError):
    pass


class BackendBadResponse(BackendError):
    """The server answered something that is not a valid completion response."""


class BackendRequestError(BackendError):
    """HTTP 4xx other than 429: our request (model name, prompt length) was refused."""

    outage = False


# -- health ----------------------------------------------------------------------------------


@dataclass
class Health:
    """Up/down state with one notification per outage."""

    on_down: Callable[[str], None] = lambda reason: None
    on_up: Callable[[], None] = lambda: None
    down_since: float | None = None
    reason: str = ""
    retry_after: float = 0.0
    # Set by a successful probe: requests may try again, but the outage only ends when one
    # succeeds (a server that answers /models but not completions is still down).
    probing_ok: bool = False

    @property
    def down(self) -> bool:
        return self.down_since is not None

    @property
    def accepting(self) -> bool:
        """Whether a request may go now: up, or down with a probe that saw it answer."""
        return not self.down or self.probing_ok

    def mark_down(self, reason: str) -> None:
        self.probing_ok = False
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.reason = reason
            self.on_down(reason)

    def mark_up(self) -> None:
        self.probing_ok = False
        if self.down_since is not None:
            self.down_since = None
            self.reason = ""
            self.on_up()


# -- client ----------------------------------------------------------------------------------


@dataclass
class BackendStats:
    http_requests: int = 0
    prompts: int = 0
    failures: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0  # requests sent a second time after a failure that may pass on retry
    retries_answered: int = 0  # of those, answered the second time
    timeouts_while_answering: int = 0  # timed out while /models answered: busy, not down
    by_path: dict[str, int] = field(default_factory=dict)


class Backend:
    def __init__(
        self,
        url: str,
        kind: str = "vllm",
        api_key: str | None = None,
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 60.0,
        health: Health | None = None,
        transport: "httpx.AsyncBaseTransport | None" = None,
        session_header: str = DEFAULT_HEADER,
        sessions: SessionKeys | None = None,
    ):
        import httpx  # imported when first needed: it costs ~0.1 s of server start-up

        self.url = url.rstrip("/")
        self.kind = kind
        self.session_header = session_header  # "": no session header
        self.sessions = sessions or SessionKeys()
        self.health = health or Health()
        self.stats = BackendStats()
        self._connect_timeout = connect_timeout_s
        self._request_timeout = request_timeout_s
        headers = {"User-Agent": "phi-lsp"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
            if ".azure.com" in self.url:
                headers["api-key"] = api_key
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=32),
            transport=transport,
        )
        self._probe_task: asyncio.Task | None = None
        self._timeout_check: asyncio.Task | None = None
        # Served model -> the tokens it accepts (prompt and answer), as /models last said; empty
        # for servers that do not say (Ollama, most gateways).
        self.context_lengths: dict[str, int] = {}
        self.on_activity: Callable[[int], None] = lambda in_flight: None
        # (served model name, prompt tokens, completion tokens) of each answered request
        self.on_usage: Callable[[str, int, int], None] = lambda model, prompt, completion: None

    @property
    def supports_batching(self) -> bool:
        return self.kind == "vllm"

    @property
    def supports_logprobs(self) -> bool:
        return self.kind == "vllm"

    @property
    def supports_constraints(self) -> bool:
        return self.kind == "vllm"

    def __repr__(self) -> str:  # never shows the API key
        return f"Backend({self.url!r}, kind={self.kind!r})"

    async def aclose(self) -> None:
        for task in (self._probe_task, self._timeout_check):
            if task is not None:
                task.cancel()
        await self._client.aclose()

    # -- public calls ----------------------------------------------------------------------

    async def complete(
        self,
        model: str,
        prompts: Sequence[str],
        sampling: Sampling,
        timeout_s: float | None = None,
        document: str | None = None,
    ) -> list[list[Choice]]:
        """Complete each prompt; returns `sampling.n` choices per prompt, in prompt order.
        `document` (a URI) is the document the prompts are for: its session key goes along."""
        if not prompts:
            return []
        if not self.supports_batching and len(prompts) > 1:
            results = await asyncio.gather(
                *(self.complete(model, [p], sampling, timeout_s, document) for p in prompts)
            )
            return [r[0] for r in results]
        body = self.completion_body(model, prompts, sampling)
        data = await self._post("/completions", body, timeout_s, prompts=len(prompts), document=document)
        return self._parsed(_parse_completions, data, len(prompts), sampling.n)

    def completion_body(self, model: str, prompts: Sequence[str], sampling: Sampling) -> dict[str, Any]:
        """The JSON body of a /completions request (the benchmarks replay it verbatim)."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": [valid_text(p) for p in prompts] if len(prompts) > 1 else valid_text(prompts[0]),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "n": sampling.n,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.stop_token_ids and self.kind == "vllm":
            body["stop_token_ids"] = list(sampling.stop_token_ids)
        if sampling.logprobs and self.supports_logprobs:
            body["logprobs"] = 1
        if sampling.constraint and self.supports_constraints:
            kind, value = sampling.constraint
            body["structured_outputs"] = {kind: json.loads(value) if kind == "json" else value}
        return body

    async def chat(
        self,
        model: str,
        messages: list[dict[str, str]],
        sampling: Sampling,
        timeout_s: float | None = None,
        document: str | None = None,
    ) -> list[Choice]:
        """One chat completion (the server applies the model's chat template)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{**m, "content": valid_text(m["content"])} if isinstance(m.get("content"), str) else m for m in messages],
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "n": sampling.n,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        data = await self._post("/chat/completions", body, timeout_s, prompts=1, document=document)
        return self._parsed(_parse_chat, data)

    # -- vLLM's tokenizer endpoints (at the server's root, beside /v1) ----------------------

    @property
    def root_url(self) -> str:
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    async def tokenize_chat(
        self, model: str, messages: list[dict[str, str]], add_generation_prompt: bool = True,
        timeout_s: float | None = None,
    ) -> list[int]:
        """The token ids of `messages` rendered with the served model's chat template."""
        body = {"model": model, "messages": messages, "add_generation_prompt": add_generation_prompt}
        data = await self._request("POST", "/tokenize", body, timeout_s, root=True)
        return self._parsed(_parse_tokens, data)[0]

    async def tokenize_text(self, model: str, text: str, timeout_s: float | None = None) -> tuple[list[int], list[str]]:
        """The token ids and token strings of plain text (no special tokens added)."""
        body = {"model": model, "prompt": text, "add_special_tokens": False, "return_token_strs": True}
        data = await self._request("POST", "/tokenize", body, timeout_s, root=True)
        return self._parsed(_parse_tokens, data)

    async def detokenize(self, model: str, tokens: list[int], timeout_s: float | None = None) -> str:
        data = await self._request("POST", "/detokenize", {"model": model, "tokens": tokens}, timeout_s, root=True)
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise BackendBadResponse(f"{self.root_url}/detokenize answered an unexpected shape")
        return data["prompt"]

    async def list_models(self, timeout_s: float | None = None) -> list[str]:
        """The served model names; what each accepts in tokens (vLLM's `max_model_len`,
        prompt and answer together) is kept in `context_lengths`."""
        data = await self._request("GET", "/models", None, timeout_s or self._connect_timeout * 2)
        try:
            return self._note_models(data)
        except (KeyError, TypeError, AttributeError) as exc:
            raise BackendBadResponse(f"/models answered an unexpected shape: {exc!r}") from exc

    def _note_models(self, data: Any) -> list[str]:
        """The model names in a /models answer, keeping what each accepts in `context_lengths`
        (raises on an answer of another shape)."""
        entries = [(str(m["id"]), m.get("max_model_len")) for m in data["data"]]
        self.context_lengths = {name: length for name, length in entries if _plausible_length(length)}
        return [name for name, _ in entries]

    # -- plumbing --------------------------------------------------------------------------

    def session_headers(self, document: str | None) -> dict[str, str]:
        if not document or not self.session_header:
            return {}
        return {self.session_header: self.sessions.key(document)}

    async def _post(
        self, path: str, body: dict, timeout_s: float | None, prompts: int, document: str | None = None
    ) -> Any:
        if not self.health.accepting:
            raise BackendUnreachable(self.health.reason)
        if self.health.retry_after > time.monotonic():
            raise BackendOverloaded("the backend asked to retry later (HTTP 429)")
        self.stats.prompts += prompts
        data = await self._request("POST", path, body, timeout_s, self.session_headers(document), retry=True)
        self.health.mark_up()
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            prompt_tokens = _count(usage.get("prompt_tokens"))
            completion_tokens = _count(usage.get("completion_tokens"))
            self.stats.prompt_tokens += prompt_tokens
            self.stats.completion_tokens += completion_tokens
            self.on_usage(str(body.get("model", "")), prompt_tokens, completion_tokens)
        return data

    async def _request(
        self, method: str, path: str, body: dict | None, timeout_s: float | None,
        headers: dict[str, str] | None = None, retry: bool = False, root: bool = False,
    ) -> Any:
        """Send one request; with `retry`, once more after a failure that a retry may cure,
        if the deadline leaves room. The outage is declared only when the last try failed."""
        self.stats.in_flight += 1
        self.on_activity(self.stats.in_flight)
        total = timeout_s or self._request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        try:
            try:
                return await self._send(method, path, body, total, headers, root)
            except BackendError as exc:
                wait = exc.retry_in
                if not retry or wait is None or deadline - loop.time() < wait + RETRY_DELAY_S:
                    raise
                self.stats.retries += 1
                log.info("retrying a request to %s in %.1f s after: %s", self.url, wait, exc.reason)
            await asyncio.sleep(wait)  # a cancellation ends it here: never retried
            data = await self._send(method, path, body, deadline - loop.time(), headers, root)
            self.stats.retries_answered += 1
            self.health.retry_after = 0.0  # the 503 that asked for a pause is answered
            return data
        except BackendError as exc:
            self.stats.failures += 1
            if isinstance(exc, BackendTimeout) and not self.health.down:
                self._check_after_timeout(exc)
            elif exc.outage:
                self._outage(exc)
            raise
        finally:
            self.stats.in_flight -= 1
            self.on_activity(self.stats.in_flight)

    async def _read_capped(self, response: "httpx.Response") -> bytes:
        """The body, read in chunks and given up past MAX_RESPONSE_BYTES (never held whole)."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
            raise BackendBadResponse(f"{self.url} answered {int(declared)} bytes, more than the {_mib(MAX_RESPONSE_BYTES)} allowed")
        content = await _read_up_to(response, MAX_RESPONSE_BYTES)
        if content is None:
            raise BackendBadResponse(f"{self.url} answered more than the {_mib(MAX_RESPONSE_BYTES)} allowed")
        return content

    async def _send(
        self, method: str, path: str, body: dict | None, total: float, headers: dict[str, str] | None,
        root: bool = False,
    ) -> Any:
        """One HTTP exchange within `total` seconds, decoded; failures as BackendError."""
        import httpx

        self.stats.http_requests += 1
        self.stats.by_path[path] = self.stats.by_path.get(path, 0) + 1
        timeout = httpx.Timeout(total, connect=self._connect_timeout)
        try:
            # httpx's read timeout is per read; the deadline bounds a slow drip as well.
            async with asyncio.timeout(total):
                async with self._client.stream(
                    method, (self.root_url if root else self.url) + path, json=body, timeout=timeout, headers=headers
                ) as response:
                    content = await self._read_capped(response)
        except httpx.ConnectError as exc:
            raise BackendUnreachable(f"cannot connect to {self.url} ({_short(exc)})", RETRY_DELAY_S) from exc
        except (httpx.TimeoutException, TimeoutError) as exc:
            # Not retried: the deadline is spent, and a server that is slow stays slow.
            raise BackendTimeout(f"{self.url} did not answer within {total:.1f} s") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # The connection closed or reset before a whole answer: the server (a replica
            # without a router in front) died under the request.
            raise BackendServerError(
                f"the connection to {self.url} broke ({_short(exc)})", RETRY_DELAY_S
            ) from exc
        return self._decode(response, content)

    def _decode(self, response: "httpx.Response", content: bytes) -> Any:
        status = response.status_code
        # 500/502/503 is what a router answers when the replica it chose died under the
        # request (vllm-router says 500): worth one more try, which it sends elsewhere.
        again = RETRY_DELAY_S if status in RETRY_STATUSES else None
        if status == 429 or status == 503:
            header = response.headers.get("retry-after")
            retry = _retry_after(header)
            self.health.retry_after = time.monotonic() + retry
            if status == 503 and header is not None:
                again = max(RETRY_DELAY_S, retry) if retry <= MAX_RETRY_DELAY_S else None
            raise BackendOverloaded(f"{self.url} is overloaded (HTTP {status})", again)
        if status >= 500:
            raise BackendServerError(f"{self.url} failed (HTTP {status}: {_body_hint(response, content)})", again)
        if status >= 400:
            raise BackendRequestError(f"{self.url} refused the request (HTTP {status}: {_body_hint(response, content)})")
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BackendBadResponse(f"{self.url} answered with malformed JSON") from exc

    def _parsed(self, parse: Callable[..., Any], data: Any, *args: Any) -> Any:
        """`parse(data, *args)`; an answer of the wrong shape counts as garbage, like bad JSON."""
        try:
            return parse(data, *args)
        except BackendBadResponse as exc:
            self.stats.failures += 1
            self._outage(exc)
            raise

    def _outage(self, exc: BackendError) -> None:
        self.health.mark_down(exc.reason)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """While down: ask /models every half second until the server answers, then let
        requests through. Attempts overlap, each with its own deadline, so one that hangs or
        trickles never holds up the next: recovery is seen within an interval of it."""
        attempts: set[asyncio.Task] = set()
        try:
            while self.health.down:
                await asyncio.sleep(PROBE_INTERVAL_S)
                if self.health.probing_ok or len(attempts) >= MAX_PROBES:
                    continue
                attempt = asyncio.get_running_loop().create_task(self._probe_once())
                attempts.add(attempt)
                attempt.add_done_callback(attempts.discard)
        finally:
            for attempt in attempts:
                attempt.cancel()

    def _check_after_timeout(self, exc: BackendTimeout) -> None:
        """A request ran out of time: the server is down, or only busy (a review batch on a
        CPU, many editors on one GPU). A busy vLLM still answers /models at once, so only when
        that fails too is it an outage. Announcing a busy server as unavailable, and refusing
        every request until a probe, made a slow moment worse. One check at a time."""
        if self._timeout_check is not None and not self._timeout_check.done():
            return

        async def check() -> None:
            if await self._answers_now():
                self.stats.timeouts_while_answering += 1
                log.info("%s is slow but answers (%s)", self.url, exc.reason)
            else:
                self._outage(exc)

        self._timeout_check = asyncio.get_running_loop().create_task(check())

    async def _probe_once(self) -> None:
        if await self._answers_now() and self.health.down:
            if not self.health.probing_ok:
                log.info("backend %s answers again", self.url)
            self.health.probing_ok = True
            self.health.retry_after = 0.0

    async def _answers_now(self) -> bool:
        """Whether GET /models answers whole within twice the connect timeout (noting what the
        models accept: a server restarted in between may accept another length now)."""
        import httpx

        deadline = self._connect_timeout * 2
        try:
            # httpx's read timeout is per read: the deadline also bounds a slow drip.
            async with asyncio.timeout(deadline):
                async with self._client.stream(
                    "GET", self.url + "/models", timeout=httpx.Timeout(deadline, connect=self._connect_timeout)
                ) as response:
                    content = await _read_up_to(response, MAX_PROBE_BYTES)
        except (httpx.HTTPError, OSError, TimeoutError):
            return False
        # The whole body must arrive: a server whose answers break off halfway (or turn to
        # garbage) is still down, and letting requests through to it would only make the
        # editor wait for each one to fail.
        status = response.status_code
        if status >= 500 or status == 429 or content is None:
            return False
        if status >= 300:
            return True  # a gateway with no /models still answers
        try:
            data = json.loads(content)  # a 2xx must be JSON
        except ValueError:
            return False
        try:
            self._note_models(data)
        except (KeyError, TypeError, AttributeError):
            pass  # no listing: what was known stays
        return True


async def _read_up_to(response: "httpx.Response", limit: int) -> bytes | None:
    """The whole body, or None past `limit` bytes (given up there, never held whole)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _plausible_length(value: Any) -> bool:
    # Untrusted JSON: a bool is an int in Python, and a tiny or absurd figure is nobody's model.
    return type(value) is int and 256 <= value <= 10_000_000


def _short(exc: Exception) -> str:
    text = mask(str(exc)) or type(exc).__name__  # before the cut, which could halve a key
    return text if len(text) < 120 else text[:117] + "..."


def _body_hint(response: "httpx.Response", content: bytes) -> str:
    try:
        data = json.loads(content)
        message = data.get("message") or data.get("error", {}).get("message") or data.get("detail")
        if message:
            return _short(Exception(str(message)))
    except Exception:
        pass
    return _short(Exception(content[:1000].decode("utf-8", "replace").strip() or response.reason_phrase))


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), 30.0) if value else 1.0
    except ValueError:
        return 1.0


def _count(value: Any) -> int:
    """A token count from `usage`; whatever else a server puts there counts as 0."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _parse_completions(data: Any, prompts: int, n: int) -> list[list[Choice]]:
    try:
        raw_choices = data["choices"]
        results: list[list[Choice]] = [[] for _ in range(prompts)]
        for position, raw in enumerate(raw_choices):
            index = int(raw.get("index", position))
            text = raw["text"]
            if not isinstance(text, str):
                raise TypeError("choice text is not a string")
            logprobs = raw.get("logprobs") or {}
            finish_reason = raw.get("finish_reason")
            if finish_reason is not None and not isinstance(finish_reason, str):
                raise TypeError("finish_reason is not a string")
            choice = Choice(
                text=text,
                finish_reason=finish_reason,
                tokens=_strings(logprobs.get("tokens")),
                token_logprobs=_logprobs(logprobs.get("token_logprobs")),
            )
            results[index // n].append(choice)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise BackendBadResponse(f"the completion response has an unexpected shape ({exc!r})") from exc
    if any(len(r) != n for r in results):
        raise BackendBadResponse("the completion response is missing choices")
    return results


def _parse_tokens(data: Any) -> tuple[list[int], list[str]]:
    try:
        tokens = [int(t) for t in data["tokens"]]
        strs = data.get("token_strs") or []
    except (KeyError, TypeError, ValueError) as exc:
        raise BackendBadResponse(f"/tokenize answered an unexpected shape: {exc!r}") from exc
    return tokens, [str(s) for s in strs]


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("logprobs.tokens is not a list of strings")
    return value


def _logprobs(value: Any) -> list[float | None] | None:
    """Token log-probabilities: numbers or null (the OpenAI API's "no logprob for this token",
    skipped by `Choice.confidence`). Strings, booleans or NaN in them make the answer malformed
    (they used to fail later, inside post-processing, as a TypeError sent to the editor)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)) for v in value
    ):
        raise TypeError("logprobs.token_logprobs is not a list of numbers")
    return [None if v is None else float(v) for v in value]


def _parse_chat(data: Any) -> list[Choice]:
    try:
        choices = []
        for raw in data["choices"]:
            content = raw["message"].get("content") or ""
            if not isinstance(content, str):
                raise TypeError("message content is not a string")
            choices.append(Choice(text=content, finish_reason=raw.get("finish_reason")))
        return choices
    except (KeyError, TypeError, AttributeError) as exc:
        raise BackendBadResponse(f"the chat response has an unexpected shape ({exc!r})") from exc

