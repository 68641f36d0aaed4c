"""The batch window: prompts that arrive within a few milliseconds of each other and share a
model and sampling parameters go to the backend as ONE list-of-prompts request.

The window adapts: an isolated prompt waits only `window_s` (a few ms: the latency of a lone
completion barely changes), but while prompts keep arriving (several documents, candidates,
prefetches) the window stretches to `busy_window_s`, so a burst of requests that the server reads
and prepares one after the other still leaves as one request.

Completion requests from several documents, several candidates and the next-line prefetch all
pass through here. A batch holds the prompts of one document when the backend sends session
keys (`backend.sessionHeader`, the default): the request carries that document's key, and a
router in front of several replicas sends it to the replica holding the document's prefix cache.
Prompts of different documents then go as separate requests, which vLLM batches itself
(continuous batching); in an editor, the prompts that meet within a window are nearly always of
the one document being typed in. With `backend.sessionHeader = ""` documents share batches. A prompt cancelled before its batch is sent never reaches the model; a batch
whose prompts were all cancelled in flight is aborted (its HTTP request is closed, and vLLM
frees the sequences).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from phi_lsp.model.backend import Backend, Choice, Sampling

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Entry:
    prompt: str
    future: asyncio.Future
    cancelled: bool = False


@dataclass(eq=False)
class _Batch:
    model: str
    sampling: Sampling
    timeout_s: float | None
    document: str | None = None  # the document of every prompt (when batches are per document)
    entries: list[_Entry] = field(default_factory=list)
    task: asyncio.Task | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass
class BatchStats:
    batches: int = 0
    prompts_sent: int = 0
    cancelled_before_send: int = 0
    aborted_in_flight: int = 0
    largest_batch: int = 0


BUSY_AFTER_S = 0.15  # a prompt this soon after the previous one means a burst is under way
SAME_INSTANT_S = 0.001


class Batcher:
    def __init__(
        self,
        backend: Backend,
        window_s: float = 0.003,
        busy_window_s: float = 0.025,
        max_batch: int = 32,
    ):
        self.backend = backend
        self.window_s = window_s
        self.busy_window_s = busy_window_s
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._open: dict[tuple, _Batch] = {}
        self._in_flight: set[_Batch] = set()
        self._last_arrival = float("-inf")

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight (speculative work may go now)."""
        return not self._open and not self._in_flight

    async def complete(
        self, model: str, prompt: str, sampling: Sampling, timeout_s: float | None = None,
        document: str | None = None,
    ) -> list[Choice]:
        """The `sampling.n` choices for one prompt (of `document`, a URI), sent together with
        its neighbours."""
        loop = asyncio.get_running_loop()
        entry = _Entry(prompt, loop.create_future())
        if not getattr(self.backend, "session_header", ""):
            document = None  # no session keys: documents may share a request
        key = (model, sampling, timeout_s, document)
        now = loop.time()
        # Prompts of one caller (a request's candidates) arrive in the same instant: that is
        # not a burst of separate requests.
        busy = SAME_INSTANT_S < now - self._last_arrival < BUSY_AFTER_S
        self._last_arrival = now
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(model, sampling, timeout_s, document)
            window = self.busy_window_s if busy else self.window_s
            batch.timer = loop.call_later(window, self._send, key)
        batch.entries.append(entry)
        if len(batch.entries) >= self.max_batch:
            self._send(key)
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._cancel(batch, entry)
            raise

    def _cancel(self, batch: _Batch, entry: _Entry) -> None:
        entry.cancelled = True
        if batch.task is None:  # not sent yet: it never reaches the model
            batch.entries.remove(entry)
            self.stats.cancelled_before_send += 1
            return
        if all(e.cancelled for e in batch.entries) and not batch.task.done():
            batch.task.cancel()
            self.stats.aborted_in_flight += 1

    def _send(self, key: tuple) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        if not batch.entries:
            return
        self.stats.batches += 1
        self.stats.prompts_sent += len(batch.entries)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch.entries))
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        self._in_flight.add(batch)
        batch.task.add_done_callback(lambda _t: self._in_flight.discard(batch))

    async def _run(self, batch: _Batch) -> None:
        prompts = [e.prompt for e in batch.entries]
        try:
            results = await self.backend.complete(
                batch.model, prompts, batch.sampling, batch.timeout_s, document=batch.document
            )
        except asyncio.CancelledError:
            for entry in batch.entries:
                if not entry.future.done():
                    entry.future.cancel()
            raise
        except Exception as exc:
            for entry in batch.entries:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        for entry, choices in zip(batch.entries, results):
            if not entry.future.done():
                entry.future.set_result(choices)

    async def aclose(self) -> None:
        for key in list(self._open):
            self._send(key)
        for batch in list(self._in_flight):
            if batch.task is not None:
                batch.task.cancel()
