"""Backend faults injected between phi-lsp and the real vLLM (tests/fault_proxy.py).

For every fault mode, one server goes through two outages of that kind:
- a burst of inline completions (several documents, a request each) hits the fault: every
  request is answered (an empty list or an error) within completion.timeoutMs + 1 s;
- `phi/status` turns "unreachable" and exactly one window/showMessage about the outage is shown
  per outage, not one per request; requests made while it lasts are answered at once;
- a save while it lasts is skipped and publishes nothing;
- the second outage is first met by a review (`phi.review`): it answers within
  review.timeoutMs + 1 s with its units failed and publishes no diagnostics;
- after `heal()` a completion gives the model's answer again within 2 s and the status is
  "ready" again; the process is alive throughout.
A busy server (answers late, /models at once) is no outage: nothing announced, nothing paused.
The healthy path is the real vLLM behind the proxy (`vllm_url`).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from tests.conftest import SERVER_COMMAND, initialize, settings
from tests.fault_proxy import FAULTS, FaultProxy
from tests.waiting import make_watching_client, state_since, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

COMPLETION_TIMEOUT_S = 1.5
REVIEW_TIMEOUT_S = 2.0
HEAL_WITHIN_S = 2.0
BURST = 6
OUTAGE_TEXT = "backend is unavailable"
_names = itertools.count()


CONFIG = ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_watching_client)


def outage_messages(client: LanguageClient) -> list[str]:
    return [m.message for m in client.messages if OUTAGE_TEXT in m.message]


@pytest.fixture
def proxy(vllm_url):
    proxy = FaultProxy(vllm_url).start()
    yield proxy
    proxy.close()


def fault_settings(url: str) -> dict:
    return settings(
        url,
        **{
            "completion.timeoutMs": int(COMPLETION_TIMEOUT_S * 1000),
            "completion.maxTokens": 16,
            "backend.requestTimeoutMs": int(COMPLETION_TIMEOUT_S * 1000),
            "backend.connectTimeoutMs": 500,
            "review.timeoutMs": int(REVIEW_TIMEOUT_S * 1000),
            "review.maxTokens": 48,
            "review.onSave": True,
        },
    )


@pytest_lsp.fixture(config=CONFIG)
async def fault_client(lsp_client: LanguageClient, proxy: FaultProxy, tmp_path):
    await initialize(lsp_client, tmp_path, fault_settings(proxy.url))
    lsp_client.workspace = tmp_path
    await wait_until(lsp_client, state_since(lsp_client, 0, "ready"), 10, "status ready")
    yield
    await lsp_client.shutdown_session()


def open_new(client: LanguageClient, before: str, after: str = "") -> tuple[str, types.Position]:
    """A new document (unique text, so no cache can answer for the model) and the position
    between `before` and `after`."""
    n = next(_names)
    before = f"# document {n}\n{before}"
    path = client.workspace / f"doc{n}.py"
    path.write_text(before + after)
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=before + after)))
    lines = before.split("\n")
    return path.as_uri(), types.Position(len(lines) - 1, len(lines[-1]))


async def timed_inline(client: LanguageClient, uri: str, position: types.Position, limit: float):
    """(elapsed seconds, the result or the error) of one automatic inline completion."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))), limit)
    except TimeoutError:
        raise AssertionError(f"an inline completion was not answered within {limit} s") from None
    except Exception as exc:  # an error response is an answer
        result = exc
    return time.monotonic() - started, result


async def burst(client: LanguageClient, n: int = BURST) -> list:
    docs = [open_new(client, "import numpy as") for _ in range(n)]
    limit = COMPLETION_TIMEOUT_S + 1
    answers = await asyncio.gather(*(timed_inline(client, uri, pos, limit + 1) for uri, pos in docs))
    for elapsed, result in answers:
        assert elapsed <= limit, f"answered after {elapsed:.2f} s (limit {limit} s)"
        if not isinstance(result, Exception):
            assert result is not None and len(result.items) == 0, result
    return answers


async def completion_works(client: LanguageClient) -> bool:
    # Text after the cursor: no next-line prefetch follows, which could meet the next fault
    # before the request under test does.
    uri, position = open_new(client, "import numpy as", "  # the usual alias")
    _, result = await timed_inline(client, uri, position, COMPLETION_TIMEOUT_S + 1)
    return not isinstance(result, Exception) and bool(result.items) and result.items[0].insert_text.startswith(" np")


async def until_service_is_back(client: LanguageClient) -> float:
    """Seconds from now until a completion gives the model's answer again (bounded)."""
    healed = time.monotonic()
    while not await completion_works(client):
        # Nothing announces the end of an outage before a request succeeds: ask as an editor
        # would on the next keystrokes.
        assert time.monotonic() - healed < HEAL_WITHIN_S, f"no completion within {HEAL_WITHIN_S} s of healing"
        await asyncio.sleep(0.1)
    return time.monotonic() - healed


def alive(client: LanguageClient) -> bool:
    return client._server is not None and client._server.returncode is None


@pytest.mark.parametrize("mode", FAULTS)
async def test_backend_fault(fault_client: LanguageClient, proxy: FaultProxy, mode: str):
    client = fault_client
    assert await completion_works(client), "the healthy path through the proxy must work first"
    review_source = "import os\n\n\ndef size(path):\n    return os.path.getsize(path)\n\n\ndef twice(x):\n    return x * 2\n"
    for outage in (1, 2):
        mark = len(client.statuses)
        diagnostics_before = len(client.diagnostics)
        proxy.set_mode(mode)
        if outage == 2:
            # The review path meets the fault first: answered in time, nothing published.
            uri, _ = open_new(client, review_source)
            started = time.monotonic()
            summary = await asyncio.wait_for(client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="phi.review", arguments=[uri])), REVIEW_TIMEOUT_S + 2)
            assert time.monotonic() - started <= REVIEW_TIMEOUT_S + 1
            assert summary["reviewed"] and summary["unitsSent"] > 0, summary
            assert summary["unitsFailed"] == summary["unitsSent"] and summary["findings"] == 0, summary
            assert uri not in client.diagnostics
        await burst(client)
        await wait_until(client, state_since(client, mark, "unreachable"), COMPLETION_TIMEOUT_S + 1, "status unreachable")
        assert alive(client)
        # While the outage lasts: answered at once, and no further message.
        started = time.monotonic()
        await burst(client, 3)
        assert time.monotonic() - started < 1.0
        # A save while it lasts: skipped, nothing published, no second message.
        uri, _ = open_new(client, review_source)
        client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
        stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
        assert stats["review"]["events"].get("skippedNotReady", 0) >= outage, stats["review"]
        assert len(outage_messages(client)) == outage, client.messages
        # Besides it, at most the review's one-time note that this save was not reviewed.
        others = [m.message for m in client.messages if OUTAGE_TEXT not in m.message]
        assert all("review skipped" in m for m in others) and len(others) <= outage, others
        assert len(client.diagnostics) == diagnostics_before

        mark = len(client.statuses)
        proxy.heal()
        took = await until_service_is_back(client)
        assert took <= HEAL_WITHIN_S
        await wait_until(client, state_since(client, mark, "ready"), 1, "status ready")
    assert len(outage_messages(client)) == 2
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    assert stats["status"]["state"] in ("ready", "busy")
    assert alive(client)


async def test_cancelling_a_workspace_review_stops_its_requests(fault_client: LanguageClient, proxy: FaultProxy):
    """$/cancelRequest of phi.reviewWorkspace answers RequestCancelled and stops the work: its
    request in flight is closed (vLLM frees the sequences) and no other one is sent."""
    client = fault_client
    for i in range(4):
        (client.workspace / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n\n" for j in range(6)))
    proxy.set_mode("hang")
    proxy.clear()
    future = client.protocol.send_request(types.WORKSPACE_EXECUTE_COMMAND, types.ExecuteCommandParams(
        command="phi.reviewWorkspace", arguments=[]), msg_id="review-all")
    started = time.monotonic()
    while not proxy.recorded("/completions"):
        assert time.monotonic() - started < 10, "the workspace review sent nothing"
        await asyncio.sleep(0.05)  # the proxy is not an LSP peer: nothing to wait on but its record
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="review-all"))
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(asyncio.wrap_future(future), 5)
    assert "cancel" in str(info.value).lower()
    while proxy.hangups < 1:
        assert time.monotonic() - started < 10, "the cancelled review kept its request open"
        await asyncio.sleep(0.05)
    sent = len(proxy.recorded("/completions"))
    proxy.heal()
    assert await completion_works(client)
    assert len([r for r in proxy.recorded("/completions") if r.mode == "hang"]) == sent == 1
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    assert stats["process"]["pendingMessages"] <= 1, stats["process"]


async def test_a_busy_server_is_no_outage(fault_client: LanguageClient, proxy: FaultProxy):
    """Completions that run out of time on a server that still answers /models (busy, not
    down): each is answered empty within its deadline, nothing is announced, the status never
    says "unreachable", and the first request after the rush is answered by the model without
    waiting for a probe."""
    client = fault_client
    assert await completion_works(client), "the healthy path through the proxy must work first"
    mark = len(client.statuses)
    proxy.set_mode("slow")
    await burst(client)

    async def busy_timeouts() -> int:
        stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
        return stats["backend"].get("timeoutsWhileAnswering", 0)

    for _ in range(50):  # the check after a timeout takes up to twice the connect timeout
        if await busy_timeouts() or outage_messages(client):
            break
        await asyncio.sleep(0.1)
    assert outage_messages(client) == [] and not state_since(client, mark, "unreachable")(), client.messages
    assert await busy_timeouts() >= 1
    proxy.set_mode("pass")
    assert await completion_works(client), "the request after the rush was not sent"
