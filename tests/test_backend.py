"""The backend client and the batch window against the real vLLM, and its typed failures."""

from __future__ import annotations

import asyncio

import pytest

from phi_lsp.model.backend import Backend, BackendRequestError, BackendUnreachable, Health, Sampling
from phi_lsp.model.batching import Batcher
from tests.conftest import DEAD_BACKEND, MODEL_NAME

pytestmark = pytest.mark.asyncio(loop_scope="session")
GREEDY = Sampling(max_tokens=4, logprobs=True)


async def test_list_of_prompts_is_one_request(vllm_url):
    backend = Backend(vllm_url)
    try:
        prompts = ["import numpy as", "def add(a, b):\n    return", "import os\nimport"]
        results = await backend.complete(MODEL_NAME, prompts, GREEDY)
        assert backend.stats.http_requests == 1 and backend.stats.prompts == 3
        assert len(results) == 3 and all(len(r) == 1 for r in results)
        assert results[0][0].text.startswith(" np")
        confidence = results[0][0].confidence()
        assert confidence is not None and 0.0 < confidence <= 1.0
    finally:
        await backend.aclose()


async def test_batcher_merges_concurrent_prompts(vllm_url):
    backend = Backend(vllm_url)
    batcher = Batcher(backend, window_s=0.02)
    try:
        prompts = [f"def f{i}(x):\n    return" for i in range(8)]
        results = await asyncio.gather(*(batcher.complete(MODEL_NAME, p, GREEDY) for p in prompts))
        assert len(results) == 8
        assert batcher.stats.batches == 1 and backend.stats.http_requests == 1
    finally:
        await backend.aclose()


async def test_cancelled_before_dispatch_never_reaches_the_model(vllm_url):
    backend = Backend(vllm_url)
    batcher = Batcher(backend, window_s=0.05)
    try:
        task = asyncio.ensure_future(batcher.complete(MODEL_NAME, "x =", GREEDY))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        assert backend.stats.http_requests == 0
        assert batcher.stats.cancelled_before_send == 1
    finally:
        await backend.aclose()


async def test_cancelled_in_flight_aborts_the_http_request(vllm_url):
    backend = Backend(vllm_url)
    batcher = Batcher(backend, window_s=0.0)
    try:
        long = Sampling(max_tokens=1500, temperature=1.0)
        task = asyncio.ensure_future(batcher.complete(MODEL_NAME, "def f():\n", long))
        await asyncio.sleep(0.3)
        assert backend.stats.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.stats.aborted_in_flight == 1
        await asyncio.sleep(0.05)
        assert backend.stats.in_flight == 0
    finally:
        await backend.aclose()


async def test_structured_output_regex(vllm_url):
    backend = Backend(vllm_url)
    try:
        sampling = Sampling(max_tokens=12, constraint=("regex", r"(yes|no)\n"))
        [[choice]] = await backend.complete(MODEL_NAME, ["Answer: "], sampling)
        assert choice.text in ("yes\n", "no\n")
    finally:
        await backend.aclose()


async def test_unknown_model_is_a_request_error_not_an_outage(vllm_url):
    downs = []
    backend = Backend(vllm_url, health=Health(on_down=downs.append))
    try:
        with pytest.raises(BackendRequestError) as info:
            await backend.complete("no-such-model", ["x"], GREEDY)
        assert "404" in info.value.reason or "400" in info.value.reason
        assert downs == [] and not backend.health.down
    finally:
        await backend.aclose()


async def test_down_backend_fails_fast_and_reports_once():
    downs = []
    backend = Backend(DEAD_BACKEND, connect_timeout_s=0.5, health=Health(on_down=downs.append))
    try:
        for _ in range(5):
            with pytest.raises(BackendUnreachable):
                await backend.complete(MODEL_NAME, ["x"], GREEDY)
        assert len(downs) == 1
        # The first call and its one retry; the rest failed without touching the network.
        assert backend.stats.http_requests == 2 and backend.stats.retries == 1
    finally:
        await backend.aclose()


async def test_an_answer_of_the_wrong_shape_is_garbage_and_an_outage():
    """HTTP 200 with valid JSON that is no completion: a typed error, the backend marked down
    (the user is told once), and a `usage` of nonsense does not raise on its own."""
    import httpx

    from phi_lsp.model.backend import BackendBadResponse

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": MODEL_NAME}]})
        return httpx.Response(200, json={"choices": "nope", "usage": {"prompt_tokens": "many", "completion_tokens": None}})

    downs = []
    backend = Backend("http://backend.test/v1", transport=httpx.MockTransport(answer))
    backend.health.on_down = downs.append
    try:
        with pytest.raises(BackendBadResponse):
            await backend.complete(MODEL_NAME, ["x ="], GREEDY)
        assert backend.health.down and len(downs) == 1
        assert backend.stats.failures == 1 and backend.stats.prompt_tokens == 0
    finally:
        await backend.aclose()
