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



async def _serve_models(answer: bytes, gets: list) -> asyncio.Server:
    """A server on a free port that answers every GET with `answer` (raw HTTP bytes, then it
    closes; each is counted in `gets`) and closes every other request without a word."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET"):
            gets.append(head)
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("models_answer", ["broken off", "not json", "fine"])
async def test_a_probe_lets_requests_through_only_when_the_whole_answer_arrives(monkeypatch, models_answer):
    """While down, a /models answer that breaks off halfway or is not JSON does not end the
    outage: requests keep failing at once instead of each going to a server that will break
    off under it too (seen in CI as a 1 s wait for a burst during the `half` fault)."""
    from phi_lsp.model import backend as backend_module
    from phi_lsp.model.backend import BackendError

    monkeypatch.setattr(backend_module, "PROBE_INTERVAL_S", 0.01)
    listing = b'{"object": "list", "data": [{"id": "' + MODEL_NAME.encode() + b'", "max_model_len": 4096}]}'
    body = {"broken off": listing[:20], "not json": b"<html>oops</html>", "fine": listing}[models_answer]
    length = len(listing) if models_answer == "broken off" else len(body)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    probes: list = []
    server = await _serve_models(head.encode() + body, probes)
    port = server.sockets[0].getsockname()[1]
    backend = Backend(f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.5)
    try:
        with pytest.raises(BackendError):
            await backend.complete(MODEL_NAME, ["x ="], GREEDY)
        assert backend.health.down
        for _ in range(500):  # the outage ends within a few probes, or never
            if backend.health.accepting or len(probes) >= 4:
                break
            await asyncio.sleep(0.01)
        assert backend.health.accepting == (models_answer == "fine")
        # A server restarted during the outage may accept another length: the probe notes it.
        assert backend.context_lengths == ({MODEL_NAME: 4096} if models_answer == "fine" else {})
    finally:
        await backend.aclose()
        server.close()


async def test_the_served_context_length_is_read_from_models(vllm_url):
    backend = Backend(vllm_url)
    try:
        assert MODEL_NAME in await backend.list_models()
        assert backend.context_lengths == {MODEL_NAME: 2048}  # conftest starts it so
    finally:
        await backend.aclose()


async def test_a_context_length_that_is_no_number_is_ignored():
    """/models is untrusted JSON: only a plausible whole number is taken as a limit."""
    import json

    models = [{"id": "a", "max_model_len": 4096}, {"id": "b", "max_model_len": True}, {"id": "c", "max_model_len": "8192"},
              {"id": "d", "max_model_len": -1}, {"id": "e", "max_model_len": 10**30}, {"id": "f"}]
    body = json.dumps({"data": models}).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    server = await _serve_models(head.encode() + body, [])
    backend = Backend(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
    try:
        assert await backend.list_models() == ["a", "b", "c", "d", "e", "f"]
        assert backend.context_lengths == {"a": 4096}
    finally:
        await backend.aclose()
        server.close()


async def _slow_server(models_hang: bool, posts: list) -> asyncio.Server:
    """A server whose completions never come (a busy or a hung server); its /models answers at
    once (busy) or never (hung). Each POST is counted in `posts`."""
    listing = b'{"object": "list", "data": [{"id": "' + MODEL_NAME.encode() + b'"}]}'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET") and not models_hang:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(listing)).encode() + b"\r\nConnection: close\r\n\r\n" + listing)
                await writer.drain()
            else:
                if head.startswith(b"POST"):
                    posts.append(head)
                await reader.read()  # until the client gives up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize("server_state", ["busy", "hung"])
async def test_a_timeout_is_an_outage_only_when_the_server_does_not_answer_either(server_state):
    """A completion that runs out of time on a server that still answers /models (busy with a
    review, say) is no outage: nothing is announced and the next request is sent. When /models
    does not answer either, it is the one outage, said once."""
    from phi_lsp.model.backend import BackendTimeout

    posts: list = []
    server = await _slow_server(server_state == "hung", posts)
    downs: list = []
    backend = Backend(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", connect_timeout_s=0.25,
                      request_timeout_s=0.3, health=Health(on_down=downs.append))
    try:
        with pytest.raises(BackendTimeout):
            await backend.complete(MODEL_NAME, ["x ="], GREEDY)
        for _ in range(200):  # the check takes at most twice the connect timeout
            if downs or backend.stats.timeouts_while_answering:
                break
            await asyncio.sleep(0.01)
        if server_state == "busy":
            assert downs == [] and backend.stats.timeouts_while_answering == 1 and backend.health.accepting
            with pytest.raises(BackendTimeout):
                await backend.complete(MODEL_NAME, ["y ="], GREEDY)
            assert len(posts) == 2, "the next request was not sent"
        else:
            assert len(downs) == 1 and "did not answer within" in downs[0] and not backend.health.accepting
    finally:
        await backend.aclose()
        server.close()
