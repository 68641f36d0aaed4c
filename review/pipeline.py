"""The review pipeline: files -> units -> prompts -> ONE batched request -> validated findings.

Used by the language server (on save, `phi.review`, `phi.reviewWorkspace`) and by
`phi-lsp review`. For every file it extracts the units, takes the answers of units whose content
was reviewed before from the cache, renders a prompt for each of the others, and sends all of
those prompts (of every file given) as one list-of-prompts request, chunked only above
`review.batchSize`. Each answer is parsed and validated on its own; nothing a model says can
raise out of here: it becomes findings or counted drops. A backend failure becomes a counted
drop for the units of that request (they are not cached, so the next save retries them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from phi_lsp.core.chat_format import ChatRenderer
from phi_lsp.model.backend import Backend, BackendError, Choice, Sampling
from phi_lsp.core.settings import ReviewSettings
from phi_lsp.core.documents import Snapshot
from phi_lsp.model.escalation import COMPLEX, AnswerSignals, Router, review_reason

from phi_lsp.review import findings as F
from phi_lsp.review.anchor import line_offsets, place_in_unit
from phi_lsp.review.complexity import measure
from phi_lsp.review.findings import Finding, Placed
from phi_lsp.review.prompts import CONTEXT_TOKENS, PromptContext, chat_messages, constraint, file_imports, render, resolve_mode, signatures_for, stop_sequences
from phi_lsp.review.units import Unit, extract_units

log = logging.getLogger(__name__)

CACHE_ENTRIES = 8_192
INTERNAL_ERROR = "internal-error"  # a bug of ours while validating one answer (logged)


@dataclass(frozen=True)
class ReviewOptions:
    model: str
    mode: str  # "raw" | "chat" (resolved)
    constrained: bool  # vLLM structured outputs available
    batch_size: int = 32
    max_tokens: int = 320
    timeout_s: float = 180.0
    max_findings_per_file: int = 20
    chat: ChatRenderer | None = None  # the model's chat format (None: the built-in shape)
    # Tokens the server accepts per request, prompt and answer (prompts stay within the
    # smaller of this and prompts.CONTEXT_TOKENS).
    context_tokens: int = CONTEXT_TOKENS

    @classmethod
    def from_settings(
        cls, settings: ReviewSettings, model: str, backend: Backend, prompt_mode: str = "auto"
    ) -> "ReviewOptions":
        return cls(
            model=model,
            mode=resolve_mode(prompt_mode, model),
            constrained=backend.supports_constraints,
            batch_size=settings.batch_size,
            max_tokens=settings.max_tokens,
            timeout_s=settings.timeout_ms / 1000,
            max_findings_per_file=settings.max_findings_per_file,
        )

    def sampling(self, logprobs: bool) -> Sampling:
        return Sampling(
            max_tokens=self.max_tokens,
            temperature=0.0,
            stop=() if self.constrained else stop_sequences(self.mode, self.chat),
            stop_token_ids=self.chat.stop_token_ids if self.chat and self.mode != "raw" and not self.constrained else (),
            logprobs=logprobs,
            constraint=constraint() if self.constrained else None,
        )


@dataclass
class FileJob:
    snapshot: Snapshot
    path: str  # shown to the model and in CLI output (workspace-relative where possible)


@dataclass
class FileReview:
    job: FileJob
    units: list[Unit]
    findings: list[Placed]
    drops: Counter
    units_sent: int = 0
    units_cached: int = 0
    units_failed: int = 0
    error: str | None = None
    units_escalated: int = 0

    @property
    def snapshot(self) -> Snapshot:
        return self.job.snapshot


@dataclass
class ReviewStats:
    reviews: int = 0
    files: int = 0
    units: int = 0
    units_sent: int = 0
    units_cached: int = 0
    units_failed: int = 0
    requests: int = 0  # backend calls (one list-of-prompts request each on vLLM)
    findings_stated: int = 0  # what the model claimed, before validation
    findings_valid: int = 0
    answers: Counter = field(default_factory=Counter)  # outcome of each answer: parsed, truncated, ...
    drops: Counter = field(default_factory=Counter)
    last: dict[str, Any] = field(default_factory=dict)
    answers_by_model: Counter = field(default_factory=Counter)
    escalated: Counter = field(default_factory=Counter)  # units sent to the escalation model, by reason
    escalation_failed: int = 0  # of those, units whose request failed (the small answer stood)
    escalation_skipped: int = 0  # units a rule sent up that the budget kept with the small model

    def as_json(self) -> dict[str, Any]:
        return {
            "reviews": self.reviews,
            "files": self.files,
            "units": self.units,
            "unitsSent": self.units_sent,
            "unitsCached": self.units_cached,
            "unitsFailed": self.units_failed,
            "requests": self.requests,
            "findingsStated": self.findings_stated,
            "findingsValid": self.findings_valid,
            "answers": dict(self.answers),
            "dropped": dict(self.drops),
            "last": dict(self.last),
            "answersByModel": dict(self.answers_by_model),
            "escalated": dict(self.escalated),
            "escalationFailed": self.escalation_failed,
            "escalationSkipped": self.escalation_skipped,
        }


class ReviewCache:
    """Findings per (file, model, prompt mode, unit digest): a unit whose content did not
    change is not sent again, wherever it moved. Bounded, least recently used out first."""

    def __init__(self, entries: int = CACHE_ENTRIES):
        self.entries = entries
        self._data: OrderedDict[tuple, list[Finding]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> list[Finding] | None:
        found = self._data.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._data.move_to_end(key)
        return found

    def put(self, key: tuple, value: list[Finding]) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)

    def forget(self, uri: str) -> None:
        for key in [k for k in self._data if k[0] == uri]:
            del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


@dataclass(eq=False)
class _FileState:
    job: FileJob
    units: list[Unit]
    drops: Counter = field(default_factory=Counter)
    found: dict[str, list[Finding]] = field(default_factory=dict)
    waiting: int = 0
    sent: int = 0
    cached: int = 0
    failed: int = 0
    error: str | None = None
    offsets: dict[str, list[int]] = field(default_factory=dict)
    escalated: int = 0


async def _first(call) -> list[Choice]:
    """The choices of the one prompt of a completion call."""
    return (await call)[0]


def _identity(text: str) -> str:
    return text


@dataclass(eq=False)
class _Item:
    """One unit to be answered: its prompt for the small model and what re-renders it."""

    state: _FileState
    unit: Unit
    prompt: str
    ctx: PromptContext
    small: F.UnitAnswer | None = None  # the small model's answer while the large one is asked
    reason: str | None = None  # why it escalates
    sent: bool = False


@dataclass
class Escalation:
    """The review escalation model and the rules that send units to it
    (phi_lsp/model/escalation.py, docs/ROUTING.md). Its prompts form their own batches, sent to
    the endpoint serving it."""

    backend: Any  # a Backend, or the endpoints' ModelBackend
    options: ReviewOptions  # the large model's (its name and prompt mode)
    router: Router
    min_confidence: float = 0.7
    complex_units: bool = True

    @property
    def model(self) -> str:
        return self.options.model


class Reviewer:
    def __init__(self, cache: ReviewCache | None = None):
        self.cache = cache or ReviewCache()
        self.stats = ReviewStats()

    async def review(
        self,
        jobs: Sequence[FileJob],
        backend: Backend,
        options: ReviewOptions,
        lookup: Callable[[str], list] = lambda name: [],
        clean: Callable[[str], str] = _identity,
        sendable: Callable[[Snapshot], Snapshot] = _identity,
        count_tokens: Callable[[str], int] | None = None,
        on_file: Callable[[FileReview], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        escalation: Escalation | None = None,
    ) -> list[FileReview]:
        """Review `jobs`; `on_file` gets each file's result as soon as its units are done,
        `on_progress(done, total)` the units answered so far. With `escalation`, complex units
        go to the large model at once (in their own batch, alongside the small model's), and
        units whose small-model answer is doubtful go to it afterwards."""
        started = time.monotonic()
        requests_before = self.stats.requests
        results: dict[int, FileReview] = {}
        states: list[_FileState] = []
        pending: list[_Item] = []

        def finish(state: _FileState) -> None:
            result = self._finish(state, options)
            results[id(state)] = result
            if on_file is not None:
                on_file(result)

        for job in jobs:
            # Units are cut from the document with its secrets masked as a whole (a unit, or a
            # part of a long one, may start inside a key block); offsets stay those of the file.
            masked = sendable(job.snapshot)
            state = _FileState(job, extract_units(masked))
            states.append(state)
            imports = file_imports(masked)
            for unit in state.units:
                cached = self.cache.get(self._key(job, options, unit, escalation))
                if cached is not None:
                    state.found[unit.digest] = cached
                    state.cached += 1
                    continue
                ctx = PromptContext(job.path, job.snapshot.language, imports, signatures_for(unit, lookup))
                prompt = render(unit, ctx, options.mode, options.max_tokens, count_tokens, clean, options.chat,
                                options.context_tokens)
                if prompt is None:
                    state.drops[F.TOO_LONG] += 1
                    continue
                pending.append(_Item(state, unit, prompt, ctx))
                state.waiting += 1
        self.stats.reviews += 1
        self.stats.files += len(states)
        self.stats.units += sum(len(s.units) for s in states)
        for state in states:
            if state.waiting == 0:
                finish(state)

        total = len(pending)
        done = 0
        if on_progress is not None:
            on_progress(0, total)

        def settled(item: _Item) -> None:
            nonlocal done
            item.state.waiting -= 1
            if item.state.waiting == 0:
                finish(item.state)
            done += 1
            if on_progress is not None:
                on_progress(done, total)

        def render_large(item: _Item) -> str | None:
            large = escalation.options
            same = (large.mode, large.max_tokens, large.context_tokens) == (options.mode, options.max_tokens, options.context_tokens)
            if same and large.chat is options.chat:
                return item.prompt
            return render(item.unit, item.ctx, large.mode, large.max_tokens, count_tokens, clean, large.chat,
                          large.context_tokens)

        async def ask_small(items: list[_Item], may_escalate: bool) -> list[_Item]:
            """The small model's answers; returns the items that should escalate."""
            later: list[_Item] = []
            sampling = options.sampling(logprobs=backend.supports_logprobs)
            for begin in range(0, len(items), max(1, options.batch_size)):
                chunk = items[begin : begin + options.batch_size]
                answers = await self._ask(backend, options, sampling, chunk)
                for item, answer in zip(chunk, answers):
                    if isinstance(answer, BackendError):
                        self._failed(item, answer)
                        settled(item)
                        continue
                    judged = self._judge(item, answer, options)
                    if may_escalate and escalation is not None:
                        item.reason = review_reason(
                            AnswerSignals(_confidence(answer), _answered(judged), judged.severe_unanchored),
                            escalation.min_confidence,
                        )
                    if item.reason is not None:
                        item.small = judged
                        later.append(item)
                    else:
                        self._accept(item, judged, options, escalation)
                        settled(item)
            return later

        async def ask_large(items: list[_Item]) -> list[_Item]:
            """The large model's answers; returns the items it could not answer."""
            failed: list[_Item] = []
            prompts = [(item, render_large(item)) for item in items]
            failed += [item for item, prompt in prompts if prompt is None]
            ready = [(item, prompt) for item, prompt in prompts if prompt is not None]
            large = escalation.options
            sampling = large.sampling(logprobs=escalation.backend.supports_logprobs)
            for begin in range(0, len(ready), max(1, large.batch_size)):
                chunk = ready[begin : begin + large.batch_size]
                for item, _ in chunk:
                    item.state.escalated += 1
                answers = await self._ask(
                    escalation.backend, large, sampling, [item for item, _ in chunk], [prompt for _, prompt in chunk]
                )
                for (item, _), answer in zip(chunk, answers):
                    if isinstance(answer, BackendError):
                        escalation.router.escalation_failed("review", escalation.model)
                        self.stats.escalation_failed += 1
                        failed.append(item)
                        continue
                    judged = self._judge(item, answer, large)
                    if item.small is not None:  # the large model's answer replaces the small one's
                        item.state.drops.update(item.small.drops)
                        if item.small.findings:
                            item.state.drops[F.ESCALATED] += len(item.small.findings)
                    self._accept(item, judged, large, escalation, key_options=options)
                    settled(item)
            return failed

        if escalation is None:
            await ask_small(pending, may_escalate=False)
        else:
            direct: list[_Item] = []
            if escalation.complex_units:
                for item in pending:
                    if measure(item.state.job.snapshot, item.unit).is_complex():
                        item.reason = COMPLEX
                        direct.append(item)
            if direct and not escalation.router.admit("review", escalation.model, {COMPLEX: len(direct)}):
                self.stats.escalation_skipped += len(direct)
                for item in direct:
                    item.reason = None
                direct = []
            if direct:
                self.stats.escalated[COMPLEX] += len(direct)
            first = [item for item in pending if item.reason is None]
            later, direct_failed = await asyncio.gather(ask_small(first, True), ask_large(direct))
            for item in direct_failed:
                item.reason = None
            second: list = [ask_small(direct_failed, False)]
            if later:
                reasons = Counter(item.reason for item in later)
                if escalation.router.admit("review", escalation.model, reasons):
                    self.stats.escalated.update(reasons)
                    second.append(ask_large(later))
                else:
                    self.stats.escalation_skipped += len(later)
                    for item in later:  # the small model's answers stand
                        self._accept(item, item.small, options, escalation)
                        settled(item)
            outcomes = await asyncio.gather(*second)
            for item in (outcomes[1] if len(outcomes) > 1 else []):
                # The large model failed: the small model's answer stands (not cached: the
                # next save asks again).
                self._accept(item, item.small, options, escalation, cache=False)
                settled(item)

        for state in states:  # defensive: a short answer list must not lose a file
            if id(state) not in results:
                state.drops[INTERNAL_ERROR] += state.waiting
                finish(state)
        ordered = [results[id(s)] for s in states]
        self.stats.last = {
            "files": len(states),
            "units": sum(len(s.units) for s in states),
            "unitsSent": sum(s.sent for s in states),
            "unitsCached": sum(s.cached for s in states),
            "requests": self.stats.requests - requests_before,
            "findings": sum(len(r.findings) for r in ordered),
            "dropped": dict(sum((r.drops for r in ordered), Counter())),
            "seconds": round(time.monotonic() - started, 3),
        }
        if escalation is not None:
            self.stats.last["unitsEscalated"] = sum(s.escalated for s in states)
        return ordered

    @staticmethod
    def _key(job: FileJob, options: ReviewOptions, unit: Unit, escalation: Escalation | None = None) -> tuple:
        key = (job.snapshot.uri, options.model, options.mode, unit.digest)
        return key if escalation is None else key + (escalation.model,)

    async def _ask(
        self, backend: Backend, options: ReviewOptions, sampling: Sampling, chunk: list[_Item],
        prompts: list[str] | None = None,
    ) -> list[Choice | BackendError]:
        """One request for the chunk's prompts: a Choice per prompt, or the error for all."""
        prompts = prompts if prompts is not None else [item.prompt for item in chunk]
        for item in chunk:  # units sent (to any model) count once
            if not item.sent:
                item.sent = True
                item.state.sent += 1
                self.stats.units_sent += 1
        self.stats.requests += 1 if backend.supports_batching else len(prompts)
        try:
            # The request carries its file's session key (a save reviews one file; a batch of
            # several files is keyed by its first, so a workspace review's batches spread over
            # a router's replicas).
            document = chunk[0].state.job.snapshot.uri if chunk else None
            if options.mode == "chat" and not backend.supports_batching:
                # An OpenAI-compatible server applies the model's template to messages itself.
                answers = await self._chat(backend, options, sampling, chunk, prompts, document)
            else:
                answers = await backend.complete(
                    options.model, prompts, sampling, timeout_s=options.timeout_s, document=document
                )
        except BackendError as exc:
            log.warning("review request for %d units failed: %s", len(prompts), exc.reason)
            return [exc] * len(prompts)
        self.stats.answers_by_model[options.model] += len(prompts)
        return [choices[0] if choices else Choice("", None) for choices in answers]

    @staticmethod
    async def _chat(backend, options: ReviewOptions, sampling: Sampling, chunk: list[_Item], prompts: list[str],
                    document: str | None = None):
        calls = []
        for prompt in prompts:
            messages = chat_messages(prompt, options.chat)
            if messages is None:  # not a prompt of ours: send it as it is
                calls.append(_first(backend.complete(options.model, [prompt], sampling, timeout_s=options.timeout_s,
                                                     document=document)))
                continue
            calls.append(backend.chat(options.model, messages, sampling, timeout_s=options.timeout_s, document=document))
        return await asyncio.gather(*calls)

    def _failed(self, item: _Item, error: BackendError) -> None:
        state = item.state
        state.failed += 1
        state.error = error.reason
        state.drops[F.BACKEND_ERROR] += 1
        self.stats.units_failed += 1

    def _judge(self, item: _Item, choice: Choice, options: ReviewOptions) -> F.UnitAnswer:
        """Parse and validate one answer (nothing is stored yet)."""
        unit = item.unit
        snapshot = item.state.job.snapshot
        try:
            offsets = line_offsets(unit, snapshot.buffer)
            answer = F.review_answer(
                choice.text, choice.finish_reason, unit, snapshot.language, snapshot.source, offsets,
                _confidence(choice),
            )
            answer.findings = [replace(f, model=options.model) for f in answer.findings]
        except Exception:  # a bug of ours must not lose the other units
            log.exception("validating the answer for %s failed", unit.name)
            answer = F.UnitAnswer([], Counter({INTERNAL_ERROR: 1}))
        outcome = next((r for r in (F.TRUNCATED, F.UNPARSEABLE, INTERNAL_ERROR) if r in answer.drops), "parsed")
        self.stats.answers[outcome] += 1
        self.stats.findings_stated += answer.raw_count
        return answer

    def _accept(
        self, item: _Item, answer: F.UnitAnswer, options: ReviewOptions, escalation: Escalation | None,
        cache: bool = True, key_options: ReviewOptions | None = None,
    ) -> None:
        state = item.state
        state.found[item.unit.digest] = answer.findings
        state.drops.update(answer.drops)
        if cache and INTERNAL_ERROR not in answer.drops:
            self.cache.put(self._key(state.job, key_options or options, item.unit, escalation), answer.findings)

    def _finish(self, state: _FileState, options: ReviewOptions) -> FileReview:
        buffer = state.job.snapshot.buffer
        placed: list[Placed] = []
        for unit in state.units:
            for finding in state.found.get(unit.digest, ()):
                p = place_in_unit(finding, unit, buffer)
                if p is None:
                    state.drops[F.STALE] += 1
                else:
                    placed.append(p)
        kept = F.finalize(placed, options.max_findings_per_file, state.drops)
        self.stats.units_cached += state.cached
        self.stats.findings_valid += len(kept)
        self.stats.drops.update(state.drops)
        return FileReview(
            job=state.job,
            units=state.units,
            findings=kept,
            drops=state.drops,
            units_sent=state.sent,
            units_cached=state.cached,
            units_failed=state.failed,
            error=state.error,
            units_escalated=state.escalated,
        )


def _confidence(choice: Choice) -> float | None:
    try:
        return choice.confidence()
    except Exception:
        return None


def _answered(answer: F.UnitAnswer) -> bool:
    return not any(r in answer.drops for r in (F.TRUNCATED, F.UNPARSEABLE, INTERNAL_ERROR))
