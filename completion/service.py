"""The completion scheduler: from "the user is at this position" to suggestions, spending as few
model calls as it can.

- typed-through: a suggestion on screen that the user keeps typing is served from the cache;
- adaptive debounce for automatic triggers: wait a little longer than the user's typing rhythm,
  so no request is sent in the middle of a word;
- superseded requests are cancelled: before dispatch they never reach the model (the batch
  window drops them); in flight, their HTTP request is closed (vLLM aborts the sequence);
- in-flight reuse: when the user types on while a request is in flight and the new position
  extends it, the new request waits for that answer instead of asking again;
- candidates (several for invoked completions) and the next-line prefetch go through the batch
  window, so concurrent prompts share one list-of-prompts request;
- escalation: an invoked completion whose candidates all fell below `completion.minConfidence`
  is asked again of `completion.escalationModel` (phi_lsp/routing.py); automatic ones never are;
- prompt variants: each request gets a variant of `completion.promptVariants` by a hash of its
  document and line, recorded on its suggestions (completion/prompts.py).

No LSP types here: callers pass snapshots and byte offsets, and get texts back.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Callable

from phi_lsp.core import syntax
from phi_lsp.core.chat_format import ChatRenderer
from phi_lsp.model.backend import Backend, BackendError, Choice, Sampling
from phi_lsp.model.batching import Batcher
from phi_lsp.core.settings import DEMO_MODEL, CompletionSettings
from phi_lsp.core.documents import Snapshot
from phi_lsp.model.escalation import Router, completion_reason
from phi_lsp.core.symbols import SymbolIndex
from phi_lsp.core.tokens import TokenCounter

from phi_lsp.completion import postprocess, prompts
from phi_lsp.completion.cache import SuggestionCache
from phi_lsp.completion.context import CompletionContext, Snippet, Sources, build_context, shares_for

log = logging.getLogger(__name__)

AUTO, INVOKED = "automatic", "invoked"
MAX_DEBOUNCE_S = 0.4
CANCEL_GRACE_S = 0.25  # an abandoned in-flight request waits this long for a taker
PREFETCH_CONFIDENCE = 0.5  # automatic completions prefetch the next line only when this sure
PREFETCH_WAIT_STEPS = 20  # x 50 ms: give up a prefetch if the model stays busy this long
MAX_GROUPS = 2_000  # suggestion groups whose model/variant are remembered (for cache hits)
# Prompt tokens a served model completes well with, where that is less than completion.contextTokens.
# The bundled demo model's config says 2,048, but it was trained on shorter sequences: its loss
# per token doubles past position ~1,300 (benchmarks/bench_positions.py), and with prompts of
# 1,536 tokens whole-line exact match fell to 0.0% from 10.5% at 1,152 (bench_quality.py).
PROMPT_TOKEN_LIMITS = {DEMO_MODEL: 1_152}
# Room kept, besides the answer's completion.maxTokens, when the server's context length bounds
# the prompt: the chat template's role markers, and the counting's small error (1.5% over).
TEMPLATE_MARGIN = 32


@dataclass
class Suggestion:
    id: str
    text: str
    confidence: float | None = None
    model: str = ""  # the model that produced it
    variant: str = prompts.DEFAULT_VARIANT  # the prompt variant it was asked with
    escalation: str | None = None  # why the escalation model answered instead, if it did


@dataclass
class Request:
    uri: str
    snapshot: Snapshot
    cursor: int  # byte offset
    trigger: str = AUTO
    file_path: str | None = None  # on disk, to leave the file's own definitions out
    display_path: str = "untitled"


@dataclass
class Result:
    suggestions: list[Suggestion]
    served_from: str  # "cache" | "model" | "in-flight" | "none"
    reason: str = ""
    context: CompletionContext | None = None
    prompt: prompts.Prompt | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Model:
    """How to reach the model right now (None from the provider when it cannot be reached)."""

    backend: Backend
    batcher: Batcher
    name: str
    counter: TokenCounter
    served_name: str = ""  # what the server calls it, when `name` is an alias (prompt family)
    chat: ChatRenderer | None = None  # the model's chat format (None: the built-in shape)
    # Tokens the server accepts for it, prompt and answer together (None: it does not say).
    context_length: int | None = None


@dataclass
class Stats:
    requests: int = 0
    served_from_cache: int = 0
    served_in_flight: int = 0
    model_calls: int = 0
    superseded: int = 0
    debounced_away: int = 0
    prefetches: int = 0
    empty: int = 0
    errors: int = 0
    escalated: int = 0
    escalation_answered: int = 0  # escalations that gave a suggestion
    dropped: dict[str, int] = field(default_factory=dict)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=500))

    def as_json(self) -> dict:
        lat = sorted(self.latencies_ms)
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None  # noqa: E731
        return {
            "requests": self.requests, "servedFromCache": self.served_from_cache,
            "servedInFlight": self.served_in_flight, "modelCalls": self.model_calls,
            "superseded": self.superseded, "debouncedAway": self.debounced_away,
            "prefetches": self.prefetches, "empty": self.empty, "errors": self.errors,
            "escalated": self.escalated, "escalationAnswered": self.escalation_answered,
            "dropped": dict(self.dropped), "latencyMs": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        }


@dataclass
class Plan:
    context: CompletionContext
    prompt: prompts.Prompt
    info: postprocess.CursorInfo
    single_line: bool
    variant: str = prompts.DEFAULT_VARIANT


@dataclass(eq=False)
class _InFlight:
    task: asyncio.Task
    cursor: int
    source: bytes
    waiters: int = 0
    cancel_timer: asyncio.TimerHandle | None = None


class CompletionService:
    def __init__(
        self,
        model: Callable[[], Model | None],
        settings: Callable[[], CompletionSettings],
        index: SymbolIndex | None = None,
        recent: Callable[[str], list[Snippet]] = lambda uri: [],
        clean: Callable[[str], str] = lambda text: text,
        sendable: Callable[[Snapshot], Snapshot] = lambda snapshot: snapshot,
        display: Callable[[str], str] = lambda path: path,
        escalation: Callable[[], Model | None] = lambda: None,
        router: Router | None = None,
        recent_paths: Callable[[str], frozenset[str]] = lambda uri: frozenset(),
    ):
        self._model = model
        self._escalation = escalation
        self.router = router
        self._settings = settings
        self.index = index
        self._recent = recent
        self._recent_paths = recent_paths
        self._clean = clean
        self._sendable = sendable
        self._display = display
        self.cache = SuggestionCache()
        self.stats = Stats()
        self._in_flight: dict[str, _InFlight] = {}
        self._keystrokes: dict[str, deque] = {}
        self._prefetching: dict[asyncio.Task, str] = {}  # task -> the document it is for
        self.last_prompt: dict | None = None
        self._groups: OrderedDict[str, tuple[str, str, str | None]] = OrderedDict()  # group -> model, variant, escalation

    # -- typing rhythm ---------------------------------------------------------------------

    def note_keystroke(self, uri: str) -> None:
        self._keystrokes.setdefault(uri, deque(maxlen=8)).append(time.monotonic())

    def debounce_s(self, uri: str) -> float:
        """The configured debounce, stretched to 1.5x the user's recent typing interval."""
        base = self._settings().debounce_ms / 1000
        times = self._keystrokes.get(uri)
        if not times or len(times) < 3 or base == 0:
            return base
        gaps = [b - a for a, b in zip(times, list(times)[1:]) if b - a < 1.0]
        if not gaps:
            return base
        return min(MAX_DEBOUNCE_S, max(base, 1.5 * statistics.median(gaps)))

    def forget(self, uri: str) -> None:
        self.cache.forget(uri)
        self._keystrokes.pop(uri, None)
        flight = self._in_flight.pop(uri, None)
        if flight is not None:
            flight.task.cancel()
        for task, document in list(self._prefetching.items()):
            if document == uri:
                task.cancel()  # it would fill the cache of a closed document again

    # -- the request -----------------------------------------------------------------------

    async def suggest(self, request: Request) -> Result:
        started = time.monotonic()
        self.stats.requests += 1
        result = await self._suggest(request)
        result.timings["totalMs"] = (time.monotonic() - started) * 1000
        if result.served_from == "model":
            self.stats.latencies_ms.append(result.timings["totalMs"])
        if not result.suggestions:
            self.stats.empty += 1
        return result

    async def _suggest(self, request: Request) -> Result:
        cached = self._from_cache(request)
        if cached is not None:
            return cached
        if request.trigger == AUTO:
            delay = self.debounce_s(request.uri)
            if delay > 0:
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    self.stats.debounced_away += 1
                    raise
                cached = self._from_cache(request)
                if cached is not None:
                    return cached
        flight = self._in_flight.get(request.uri)
        if flight is not None and not flight.task.done():
            if _extends(flight, request):
                reused = await self._wait_for(flight, request)
                if reused is not None:
                    return reused
            else:
                self._abort(request.uri, flight)
        model = self._model()
        if model is None:
            return Result([], "none", "model unavailable")
        return await self._ask(request, model)

    def _from_cache(self, request: Request) -> Result | None:
        hit = self.cache.get(request.uri, request.snapshot.source, request.cursor)
        if hit is None:
            return None
        texts, entry = hit
        self.stats.served_from_cache += 1
        model, variant, escalation = self._groups.get(entry.suggestion_id, ("", prompts.DEFAULT_VARIANT, None))
        return Result(
            [Suggestion(f"{entry.suggestion_id}+{i}", t, None, model, variant, escalation) for i, t in enumerate(texts)],
            "cache",
        )

    async def _wait_for(self, flight: _InFlight, request: Request) -> Result | None:
        """The in-flight answer, typed-through to this position; None if it does not apply."""
        flight.waiters += 1
        if flight.cancel_timer is not None:
            flight.cancel_timer.cancel()
            flight.cancel_timer = None
        try:
            await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            if not _we_are_cancelled():
                return None  # the request we waited for was aborted: ask anew
            self._release(request.uri, flight)
            raise
        except Exception:
            return Result([], "none", "model error")
        finally:
            flight.waiters -= 1
        cached = self._from_cache(request)
        if cached is None:
            return None
        self.stats.served_from_cache -= 1
        self.stats.served_in_flight += 1
        cached.served_from = "in-flight"
        return cached

    def _abort(self, uri: str, flight: _InFlight) -> None:
        self.stats.superseded += 1
        flight.task.cancel()
        if self._in_flight.get(uri) is flight:
            del self._in_flight[uri]

    def _release(self, uri: str, flight: _InFlight) -> None:
        """The last waiter left: abort the request unless a new one takes it up soon."""
        if flight.waiters <= 1 and not flight.task.done():
            loop = asyncio.get_running_loop()
            # The next keystroke's request looks for it only after its debounce: wait that long.
            grace = max(CANCEL_GRACE_S, self.debounce_s(uri) + 0.05)
            flight.cancel_timer = loop.call_later(grace, self._abort_if_unwanted, uri, flight)

    def _abort_if_unwanted(self, uri: str, flight: _InFlight) -> None:
        if flight.waiters == 0 and not flight.task.done():
            self._abort(uri, flight)

    async def _ask(self, request: Request, model: Model) -> Result:
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        settings = self._settings()
        plan = self._plan(request, model, settings, self.variant_of(request, settings))
        timings["contextMs"] = (time.monotonic() - t0) * 1000
        task = asyncio.get_running_loop().create_task(self._call_model(request, model, plan, settings))
        flight = _InFlight(task, request.cursor, request.snapshot.source)
        self._in_flight[request.uri] = flight
        flight.waiters += 1
        try:
            suggestions = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not _we_are_cancelled():
                return Result([], "none", "superseded", plan.context, plan.prompt, timings)
            self._release(request.uri, flight)
            raise
        except BackendError as exc:
            self.stats.errors += 1
            return Result([], "none", exc.reason, plan.context, plan.prompt, timings)
        finally:
            flight.waiters -= 1
            if task.done() and self._in_flight.get(request.uri) is flight:
                del self._in_flight[request.uri]
        timings["modelMs"] = (time.monotonic() - t0) * 1000 - timings["contextMs"]
        if self.last_prompt is not None:
            self.last_prompt.setdefault("timings", {}).update(timings)
        best = suggestions[0] if suggestions else None
        if best is not None and plan.single_line and (request.trigger == INVOKED or (best.confidence or 0) >= PREFETCH_CONFIDENCE):
            self._prefetch_next_line(request, model, best.text)
        return Result(suggestions, "model", "" if suggestions else "nothing worth showing", plan.context, plan.prompt, timings)

    # -- building and sending the prompt ---------------------------------------------------

    @staticmethod
    def variant_of(request: Request, settings: CompletionSettings) -> str:
        """The prompt variant of a request (a hash of its document and line)."""
        if not settings.prompt_variants:
            return prompts.DEFAULT_VARIANT
        line = request.snapshot.source.count(b"\n", 0, request.cursor)
        return prompts.variant_for(settings.prompt_variants, f"{request.uri}\0{line}")

    def _plan(self, request: Request, model: Model, settings: CompletionSettings, variant: str = prompts.DEFAULT_VARIANT) -> "Plan":
        snapshot = request.snapshot
        sources = Sources.named(settings.context_sources)
        family = prompts.family(model.served_name or model.name, settings.prompt_mode)
        budget = _context_budget(model, settings, family)
        template = settings.prompt_variants.get(variant)
        # Windows are cut from the document with its secrets masked as a whole: a key block
        # whose header lies above the window is masked all the same.
        context = build_context(
            self._sendable(snapshot),
            request.cursor,
            budget,
            model.counter,
            request.display_path,
            index=self.index,
            file_path=request.file_path,
            recent=self._recent(request.uri) if sources.recent else None,
            sources=sources,
            display=self._display,
            suffix_in_prompt=family != prompts.RAW or prompts.uses_suffix(template),
            recent_paths=self._recent_paths(request.uri),
            shares=shares_for(family),
        )
        info = _cursor_info(snapshot, request.cursor, context)
        multiline = postprocess.is_multiline_position(info)
        prompt = prompts.render(context, family, single_line=not multiline, template=template, chat=model.chat)
        chat = tuple(self._clean(part) for part in prompt.chat) if prompt.chat is not None else None
        prompt = replace(prompt, text=self._clean(prompt.text), chat=chat)
        return Plan(context, prompt, info, not multiline, variant)

    async def _call_model(self, request: Request, model: Model, plan: "Plan", settings: CompletionSettings) -> list[Suggestion]:
        self.stats.model_calls += 1
        stops = dict(stop=plan.prompt.stop, stop_token_ids=plan.prompt.stop_token_ids)
        samplings = [Sampling(max_tokens=settings.max_tokens, **stops, logprobs=True)]
        if request.trigger == INVOKED:
            # Two more candidates, sampled, in the same batch window.
            samplings.append(Sampling(max_tokens=settings.max_tokens, temperature=0.7, **stops, logprobs=True, n=2))
        timeout = settings.timeout_ms / 1000
        self.last_prompt = {
            "model": model.name,
            "prompt": plan.prompt.text,
            "contextSources": plan.context.sources_used,
            "requests": [model.backend.completion_body(model.name, [plan.prompt.text], s) for s in samplings],
        }
        sent = time.monotonic()
        answers = await asyncio.gather(*(self._complete(model, plan.prompt, s, timeout, request.uri) for s in samplings))
        choices = [c for answer in answers for c in answer]
        group = uuid.uuid4().hex[:12]
        answered = time.monotonic()
        low: list[int] = []
        suggestions = self._postprocess(choices, plan, settings.min_confidence, group, low)
        self.last_prompt["timings"] = {"backendMs": (answered - sent) * 1000, "postprocessMs": (time.monotonic() - answered) * 1000}
        # What came out, with the confidence the gate compared (the quality benchmark chooses
        # completion.minConfidence from these).
        self.last_prompt["suggestions"] = [{"text": s.text, "confidence": s.confidence} for s in suggestions]
        produced_by, escalation = model.name, None
        reason = completion_reason(request.trigger == INVOKED, len(suggestions), len(low))
        if reason is not None:
            escalated = await self._escalate(request, plan, settings, group, reason)
            if escalated is not None:
                suggestions, produced_by, escalation = escalated
        for suggestion in suggestions:
            suggestion.model, suggestion.variant, suggestion.escalation = produced_by, plan.variant, escalation
        self._remember_group(group, (produced_by, plan.variant, escalation))
        self.cache.put(request.uri, request.snapshot.source, request.cursor, [s.text for s in suggestions], group)
        return suggestions

    async def _escalate(self, request: Request, plan: "Plan", settings: CompletionSettings, group: str, reason: str):
        """Ask the escalation model (greedy, one candidate); None when it may not or cannot."""
        large = self._escalation()
        router = self.router
        if router is None or large is None:
            if router is not None and settings.escalation_model:
                router.unavailable("completion", settings.escalation_model)
            return None
        if not router.admit("completion", large.name, reason, plan.variant):
            return None
        self.stats.escalated += 1
        big_plan = self._plan(request, large, settings, plan.variant)
        sampling = Sampling(max_tokens=settings.max_tokens, stop=big_plan.prompt.stop,
                            stop_token_ids=big_plan.prompt.stop_token_ids, logprobs=True)
        self.last_prompt["escalation"] = {
            "model": large.name, "reason": reason,
            "request": large.backend.completion_body(large.name, [big_plan.prompt.text], sampling),
        }
        try:
            choices = await self._complete(large, big_plan.prompt, sampling, settings.timeout_ms / 1000, request.uri)
        except BackendError as exc:
            log.info("escalation to %s failed: %s", large.name, exc.reason)
            router.escalation_failed("completion", large.name)
            return None
        suggestions = self._postprocess(choices, big_plan, settings.min_confidence, group)
        if suggestions:
            self.stats.escalation_answered += 1
        return suggestions, large.name, reason

    async def _complete(self, model: Model, prompt: prompts.Prompt, sampling: Sampling, timeout: float,
                        document: str | None = None) -> list[Choice]:
        backend = model.backend
        if prompt.family != prompts.RAW and not backend.supports_batching:
            # OpenAI-compatible servers apply the chat template themselves.
            return await backend.chat(model.name, prompts.chat_messages(prompt), sampling, timeout, document=document)
        return await model.batcher.complete(model.name, prompt.text, sampling, timeout, document=document)

    def _postprocess(self, choices: list[Choice], plan: "Plan", min_confidence: float, group: str,
                     low_confidence: list[int] | None = None) -> list[Suggestion]:
        kept: list[Suggestion] = []
        for index, choice in enumerate(choices):
            outcome = postprocess.postprocess(choice, plan.info, not plan.single_line, min_confidence, plan.prompt.echo,
                                              plan.prompt.heal)
            if outcome.text is None:
                self.stats.dropped[outcome.reason] = self.stats.dropped.get(outcome.reason, 0) + 1
                if outcome.reason == "low-confidence" and low_confidence is not None:
                    low_confidence.append(index)
                continue
            if any(s.text == outcome.text for s in kept):
                continue
            kept.append(Suggestion(f"{group}+{len(kept)}", outcome.text, outcome.confidence, variant=plan.variant))
        # The greedy answer first, then the others by confidence.
        head, tail = kept[:1], sorted(kept[1:], key=lambda s: -(s.confidence or 0))
        return head + tail

    def _prefetch_next_line(self, request: Request, model: Model, accepted: str) -> None:
        """Ask now for the line after the suggestion, as if the user took it and pressed Enter."""
        snapshot = request.snapshot
        source, cursor = snapshot.source, request.cursor
        if len(source) > postprocess.LARGE_DOCUMENT_BYTES:
            return  # parsing the speculative text would hold up the event loop for seconds
        line_end = source.find(b"\n", cursor)
        if source[cursor : (line_end if line_end >= 0 else len(source))].strip():
            return  # text after the cursor: the suggestion does not end the line
        line_start = source.rfind(b"\n", 0, cursor) + 1
        line = source[line_start:cursor] + accepted.encode()
        indent = line[: len(line) - len(line.lstrip())].decode()
        if line.rstrip().endswith(b":") or line.rstrip().endswith(b"{"):
            indent += "    "
        inserted = (accepted + "\n" + indent).encode()
        new_source = source[:cursor] + inserted + source[cursor:]
        new_snapshot = Snapshot(snapshot.uri, snapshot.version, snapshot.language, new_source,
                                syntax.parse(snapshot.language, new_source), snapshot.encoding)
        ahead = Request(request.uri, new_snapshot, cursor + len(inserted), AUTO, request.file_path, request.display_path)
        settings = self._settings()

        async def run() -> None:
            # Speculative work goes only when the model has nothing else to do.
            for _ in range(PREFETCH_WAIT_STEPS):
                if model.batcher.idle:
                    break
                await asyncio.sleep(0.05)
            else:
                return
            self.stats.prefetches += 1
            plan = self._plan(ahead, model, settings, self.variant_of(ahead, settings))
            sampling = Sampling(max_tokens=settings.max_tokens, stop=plan.prompt.stop,
                                stop_token_ids=plan.prompt.stop_token_ids, logprobs=True)
            try:
                choices = await self._complete(model, plan.prompt, sampling, settings.timeout_ms / 1000, ahead.uri)
            except BackendError:
                return
            group = uuid.uuid4().hex[:12]
            suggestions = self._postprocess(choices, plan, settings.min_confidence, group)
            self._remember_group(group, (model.name, plan.variant, None))
            self.cache.put(ahead.uri, new_source, ahead.cursor, [s.text for s in suggestions], group)

        task = asyncio.get_running_loop().create_task(run())
        self._prefetching[task] = request.uri
        task.add_done_callback(lambda t: self._prefetching.pop(t, None))

    def _remember_group(self, group: str, origin: tuple[str, str, str | None]) -> None:
        """Which model and prompt variant produced a group of suggestions (bounded)."""
        self._groups[group] = origin
        while len(self._groups) > MAX_GROUPS:
            self._groups.popitem(last=False)

    async def aclose(self) -> None:
        for task in list(self._prefetching) + [f.task for f in self._in_flight.values()]:
            task.cancel()


def _context_budget(model: Model, settings: CompletionSettings, family: str) -> int:
    """The tokens the prompt's context may take: completion.contextTokens, within what the
    model completes well (PROMPT_TOKEN_LIMITS) and what its server accepts with the answer
    (a prompt past that is refused, so a contextTokens set too high would show nothing)."""
    budget = min(settings.context_tokens, PROMPT_TOKEN_LIMITS.get(model.served_name or model.name, settings.context_tokens))
    if model.context_length is not None:
        fixed = settings.max_tokens + TEMPLATE_MARGIN
        if family != prompts.RAW:
            fixed += model.counter.count(prompts.SYSTEM)  # the system message is outside the budget
        budget = min(budget, model.context_length - fixed)
    return max(64, budget)


def _we_are_cancelled() -> bool:
    """Whether the CancelledError at hand is for the current task (not for a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _extends(flight: _InFlight, request: Request) -> bool:
    """The new position is the in-flight one plus typed characters (nothing else changed)."""
    source = request.snapshot.source
    if request.cursor < flight.cursor:
        return False
    before = flight.source[max(0, flight.cursor - 2048) : flight.cursor]
    after = flight.source[flight.cursor : flight.cursor + 2048]
    return (
        source[max(0, flight.cursor - len(before)) : flight.cursor] == before
        and source[request.cursor : request.cursor + len(after)] == after
        and b"\n" not in source[flight.cursor : request.cursor]
    )


def _cursor_info(snapshot: Snapshot, cursor: int, context: CompletionContext) -> postprocess.CursorInfo:
    following = context.suffix.split("\n")[1:] if context.suffix else []
    if not following:
        line_end = snapshot.source.find(b"\n", cursor)
        if line_end >= 0:
            following = snapshot.source[line_end + 1 : line_end + 2048].decode("utf-8", "replace").split("\n")
    return postprocess.CursorInfo(
        language=snapshot.language,
        source=snapshot.source,
        tree=snapshot.tree,
        cursor=cursor,
        line_prefix=context.line_prefix,
        line_suffix=context.line_suffix,
        next_lines=following[:20],
    )
