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

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from phi_lsp.backend import Backend, BackendError, Choice, Sampling
from phi_lsp.config import ReviewSettings
from phi_lsp.documents import Snapshot

from . import findings as F
from .anchor import line_offsets, place_in_unit
from .findings import Finding, Placed
from .prompts import PromptContext, constraint, file_imports, render, resolve_mode, signatures_for, stop_sequences
from .units import Unit, extract_units

log = logging.getLogger(__name__)

CACHE_ENTRIES = 8_192
INTERNAL_ERROR = "internal-error"  # a bug of ours while validating one answer (logged)


@dataclass(frozen=True)
class ReviewOptions:
    model: str
    mode: str  # "raw" | "phi3" | "chatml" (resolved)
    constrained: bool  # vLLM structured outputs available
    batch_size: int = 32
    max_tokens: int = 320
    timeout_s: float = 180.0
    max_findings_per_file: int = 20

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
            stop=() if self.constrained else stop_sequences(self.mode),
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


def _identity(text: str) -> str:
    return text


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
        count_tokens: Callable[[str], int] | None = None,
        on_file: Callable[[FileReview], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[FileReview]:
        """Review `jobs`; `on_file` gets each file's result as soon as its units are done,
        `on_progress(done, total)` the units answered so far."""
        started = time.monotonic()
        requests_before = self.stats.requests
        results: dict[int, FileReview] = {}
        states: list[_FileState] = []
        pending: list[tuple[_FileState, Unit, str]] = []

        def finish(state: _FileState) -> None:
            result = self._finish(state, options)
            results[id(state)] = result
            if on_file is not None:
                on_file(result)

        for job in jobs:
            state = _FileState(job, extract_units(job.snapshot))
            states.append(state)
            imports = file_imports(job.snapshot)
            for unit in state.units:
                cached = self.cache.get(self._key(job, options, unit))
                if cached is not None:
                    state.found[unit.digest] = cached
                    state.cached += 1
                    continue
                ctx = PromptContext(job.path, job.snapshot.language, imports, signatures_for(unit, lookup))
                prompt = render(unit, ctx, options.mode, options.max_tokens, count_tokens, clean)
                if prompt is None:
                    state.drops[F.TOO_LONG] += 1
                    continue
                pending.append((state, unit, prompt))
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
        sampling = options.sampling(logprobs=backend.supports_logprobs)
        for begin in range(0, total, max(1, options.batch_size)):
            chunk = pending[begin : begin + options.batch_size]
            choices = await self._ask(backend, options, sampling, chunk)
            for (state, unit, _prompt), answer in zip(chunk, choices):
                state.waiting -= 1
                if isinstance(answer, BackendError):
                    state.failed += 1
                    state.error = answer.reason
                    state.drops[F.BACKEND_ERROR] += 1
                else:
                    self._take(state, unit, answer, options)
                if state.waiting == 0:
                    finish(state)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)

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
        return ordered

    @staticmethod
    def _key(job: FileJob, options: ReviewOptions, unit: Unit) -> tuple:
        return (job.snapshot.uri, options.model, options.mode, unit.digest)

    async def _ask(
        self, backend: Backend, options: ReviewOptions, sampling: Sampling, chunk: list
    ) -> list[Choice | BackendError]:
        """One request for the chunk's prompts: a Choice per prompt, or the error for all."""
        prompts = [prompt for _state, _unit, prompt in chunk]
        for state, _unit, _prompt in chunk:
            state.sent += 1
        self.stats.units_sent += len(prompts)
        self.stats.requests += 1 if backend.supports_batching else len(prompts)
        try:
            answers = await backend.complete(options.model, prompts, sampling, timeout_s=options.timeout_s)
        except BackendError as exc:
            log.warning("review request for %d units failed: %s", len(prompts), exc.reason)
            self.stats.units_failed += len(prompts)
            return [exc] * len(prompts)
        return [choices[0] if choices else Choice("", None) for choices in answers]

    def _take(self, state: _FileState, unit: Unit, choice: Choice, options: ReviewOptions) -> None:
        snapshot = state.job.snapshot
        try:
            offsets = line_offsets(unit, snapshot.buffer)
            try:
                confidence = choice.confidence()
            except Exception:
                confidence = None
            answer = F.review_answer(
                choice.text, choice.finish_reason, unit, snapshot.language, snapshot.source, offsets, confidence
            )
        except Exception:  # a bug of ours must not lose the other units
            log.exception("validating the answer for %s failed", unit.name)
            answer = F.UnitAnswer([], Counter({INTERNAL_ERROR: 1}))
        state.found[unit.digest] = answer.findings
        state.drops.update(answer.drops)
        outcome = next((r for r in (F.TRUNCATED, F.UNPARSEABLE, INTERNAL_ERROR) if r in answer.drops), "parsed")
        self.stats.answers[outcome] += 1
        self.stats.findings_stated += answer.raw_count
        if INTERNAL_ERROR not in answer.drops:
            self.cache.put(self._key(state.job, options, unit), answer.findings)

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
        )
