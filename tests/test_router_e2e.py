"""phi-lsp behind vLLM's real router (`vllm-router`, `--policy consistent_hash`) in front of two
small OpenAI-compatible workers on loopback (tests/fake_worker.py: no vLLM needed).

Driven through the language server as an editor drives it (pytest-lsp), it checks what the
router needs from phi-lsp and what phi-lsp needs from the router:
- every request of one document (its completions and its review) lands on one worker, keyed by
  the document's session key in X-Session-ID (a hash: no path in it);
- different documents spread over both workers;
- a worker SIGKILLed between health checks costs the editor no answer: the router's circuit
  breaker opens at the first failure (`--cb-failure-threshold 1`) and phi-lsp's one retry goes
  to the worker that is left. The router's own retries are turned off here
  (`--disable-retries`), so that what saves the answer is phi-lsp's retry.

Without `vllm-router` (pip install vllm-router, in the `test` extra) the tests skip with the
reason; with PHI_LSP_REQUIRE_VLLM=1 they fail instead.
"""

from __future__ import annotations

import asyncio
import io
from collections import defaultdict

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from phi_lsp.model.session import SessionKeys
from tests.conftest import MODEL_NAME, REQUIRE_VLLM, SERVER_COMMAND, initialize, make_client, settings
from tests.router_fleet import FakeWorker, Fleet, router_binary

pytestmark = pytest.mark.asyncio(loop_scope="session")

DOCUMENTS = 16  # two workers: all on one by chance is 2 ** -15
FUNCTIONS = 3  # completion points per document
CONFIG = ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_client)


@pytest.fixture
def fleet(tmp_path_factory):
    if router_binary() is None:
        reason = "vllm-router is not installed (pip install vllm-router; it is in the `test` extra)"
        if REQUIRE_VLLM:
            pytest.fail(reason + " and PHI_LSP_REQUIRE_VLLM=1")
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("fleet")
    workers = [FakeWorker.start(name, logs / f"{name}.jsonl") for name in ("a", "b")]
    router = None
    try:
        router = Fleet.start([w.url for w in workers], "consistent_hash", logs / "router.log", extra=["--disable-retries"])
        router.fake_workers = workers
        yield router
    finally:
        if router is not None:
            router.stop()
        for worker in workers:
            worker.kill()


@pytest_lsp.fixture(config=CONFIG)
async def routed_client(lsp_client: LanguageClient, tmp_path, fleet):
    options = settings(fleet.url, **{"review.onSave": False, "completion.maxTokens": 8})

    await initialize(lsp_client, tmp_path, options)
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


def source(n: int) -> str:
    return "".join(f"def handler_{n}_{i}(event):\n    \n\n\n" for i in range(FUNCTIONS))


def open_documents(client: LanguageClient) -> list[str]:
    uris = []
    for n in range(DOCUMENTS):
        path = client.workspace / f"module_{n}.py"
        text = source(n)
        path.write_text(text)
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text)))
        uris.append(path.as_uri())
    return uris


async def complete_at(client: LanguageClient, uri: str, function: int) -> types.InlineCompletionList:
    return await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(4 * function + 1, 4),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))), 30)


def sessions_by_worker(fleet) -> dict[str, set[str]]:
    """session key -> the workers that answered requests carrying it."""
    seen: dict[str, set[str]] = defaultdict(set)
    for worker in fleet.fake_workers:
        for record in worker.records():
            seen[record["session"]].add(record["worker"])
    return seen


async def test_documents_stay_on_one_worker_spread_over_both_and_a_killed_worker_costs_no_answer(
    routed_client: LanguageClient, fleet
):
    client = routed_client
    uris = open_documents(client)
    keys = SessionKeys([client.workspace])
    answers = await asyncio.gather(*(complete_at(client, uri, 0) for uri in uris))
    answers += [await complete_at(client, uri, 1) for uri in uris]  # one after the other, too
    assert all(a.items for a in answers), "every completion is answered through the router"

    seen = sessions_by_worker(fleet)
    assert None not in seen, "every model request carries a session key"
    assert set(seen) == {keys.key(uri) for uri in uris}  # one key per document, the document's
    assert all(len(workers) == 1 for workers in seen.values()), seen  # a document stays on one worker
    placed = {key: next(iter(workers)) for key, workers in seen.items()}
    assert set(placed.values()) == {"a", "b"}, "documents spread over both workers"
    assert not any(str(client.workspace) in key or "module" in key for key in seen)  # the key shows no path

    # A save's review of one document goes where its completions went.
    review = await asyncio.wait_for(client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="phi.review", arguments=[uris[0]])), 60)
    assert review["reviewed"] and review["unitsSent"] > 0
    assert sessions_by_worker(fleet)[keys.key(uris[0])] == {placed[keys.key(uris[0])]}

    # One worker dies (SIGKILL, between two health checks); the editor asks on.
    victim = next(w for w in fleet.fake_workers if w.name == placed[keys.key(uris[0])])
    before = len(victim.records())
    victim.kill()
    after_kill = await asyncio.gather(*(complete_at(client, uri, 2) for uri in uris))
    assert all(a.items for a in after_kill), "a killed worker costs no answer"
    assert len(victim.records()) == before
    survivor = next(w for w in fleet.fake_workers if w is not victim)
    assert {r["session"] for r in survivor.records()} >= {keys.key(uri) for uri in uris}
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    backend = stats["backend"]
    assert backend["retriesAnswered"] >= 1 and backend["retriesAnswered"] == backend["retries"], backend
    assert backend["failures"] == 0, backend
    assert stats["status"]["state"] in ("ready", "busy")


async def test_doctor_recognises_the_router_and_its_workers(fleet):
    from phi_lsp.cli.doctor import run_doctor
    from phi_lsp.core.settings import SettingsManager

    manager = SettingsManager()
    manager.set_source("pyproject.toml", settings(fleet.url))
    out = io.StringIO()
    assert await run_doctor(manager, out) == 0
    text = out.getvalue()
    assert "vllm-router in front of 2 worker(s), 2 healthy" in text
    for worker in fleet.fake_workers:
        assert f"worker {worker.url}: healthy" in text
    assert "X-Session-ID" in text and f"completion.model '{MODEL_NAME}': served" in text

    fleet.fake_workers[1].kill()
    for _ in range(50):  # the router's health check runs every second
        out = io.StringIO()
        await run_doctor(manager, out)
        if "1 healthy" in out.getvalue():
            break
        await asyncio.sleep(0.2)
    assert f"worker {fleet.fake_workers[1].url}: UNHEALTHY" in out.getvalue()
