"""The completion scheduler's decisions (debounce, supersede, in-flight reuse, typed-through),
with a model whose answers the test releases by hand. The model's own behaviour is covered
end to end against the real vLLM; here only the scheduling is."""

from __future__ import annotations

import asyncio

import pytest

from phi_lsp.completion.service import AUTO, CompletionService, Model, Request
from phi_lsp.model.backend import Choice
from phi_lsp.core.settings import CompletionSettings
from phi_lsp.core.documents import Document
from phi_lsp.core.tokens import TokenCounter

pytestmark = pytest.mark.asyncio(loop_scope="session")


class HeldBatcher:
    """Answers each prompt with `answer` once the test calls release(); counts calls."""

    def __init__(self, answer: str):
        self.answer = answer
        self.calls = 0
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.idle = True

    async def complete(self, model, prompt, sampling, timeout_s=None, document=None):
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return [Choice(self.answer, "stop")]


class FakeBackend:
    supports_batching = True

    def completion_body(self, model, prompts, sampling):
        return {}


def service_with(batcher: HeldBatcher, debounce_ms: int = 0) -> CompletionService:
    model = Model(FakeBackend(), batcher, "phi-code-tiny", TokenCounter())
    settings = CompletionSettings(debounce_ms=debounce_ms, min_confidence=0.0)
    return CompletionService(model=lambda: model, settings=lambda: settings)


def request_at(text: str, uri: str = "file:///t.py") -> Request:
    doc = Document(uri, text, 1, "python")
    return Request(uri, doc.snapshot(), len(text.encode()), AUTO)


async def test_typing_on_while_in_flight_reuses_the_request():
    batcher = HeldBatcher(" a + b")
    service = service_with(batcher)
    first = asyncio.ensure_future(service.suggest(request_at("def add(a, b):\n    return")))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(service.suggest(request_at("def add(a, b):\n    return a")))
    await asyncio.sleep(0.01)
    batcher.gate.set()
    r1, r2 = await first, await second
    assert batcher.calls == 1
    assert [s.text for s in r1.suggestions] == [" a + b"]
    assert r2.served_from == "in-flight" and [s.text for s in r2.suggestions] == [" + b"]


async def test_a_request_elsewhere_supersedes_the_one_in_flight():
    batcher = HeldBatcher("x")
    service = service_with(batcher)
    first = asyncio.ensure_future(service.suggest(request_at("import os\nvalue = ")))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(service.suggest(request_at("import sys\nother = ")))
    await asyncio.sleep(0.01)
    batcher.gate.set()
    r1, r2 = await first, await second
    assert batcher.cancelled == 1 and service.stats.superseded == 1
    assert r1.suggestions == [] and r1.reason == "superseded"
    assert [s.text for s in r2.suggestions] == ["x"]


async def test_cancelled_during_debounce_never_asks():
    batcher = HeldBatcher("x")
    service = service_with(batcher, debounce_ms=200)
    task = asyncio.ensure_future(service.suggest(request_at("value = ")))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.calls == 0 and service.stats.debounced_away == 1


async def test_abandoned_request_is_aborted_after_the_grace_period():
    batcher = HeldBatcher("x")
    service = service_with(batcher)
    task = asyncio.ensure_future(service.suggest(request_at("value = ")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.4)  # CANCEL_GRACE_S is 0.25 s
    assert batcher.cancelled == 1


async def test_typed_through_answers_from_the_cache():
    batcher = HeldBatcher(" json.load(f)")
    batcher.gate.set()
    service = service_with(batcher)
    base = "import json\nwith open(p) as f:\n    data ="
    await service.suggest(request_at(base))
    for typed in (" ", " j", " js"):
        result = await service.suggest(request_at(base + typed))
        assert result.served_from == "cache"
        assert result.suggestions[0].text == " json.load(f)"[len(typed):]
    result = await service.suggest(request_at(base + " x"))  # typed something else
    assert result.served_from == "model"
    assert batcher.calls == 2
