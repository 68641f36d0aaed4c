"""Routing against the real vLLM: the one retry of a request that met a dying server (with its
session key), escalation of invoked completions and of review units to a "large" model served
at its own endpoint, escalations in phi.stats, feedback in SQLite.

One vLLM serves one name (phi-code-tiny), so the large model is the same server listed a second
time under an alias: `{"url": <vllm>, "models": ["phi-large=phi-code-tiny"]}`. What is tested is
the routing (which requests go where, what is counted), not which model is better.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from phi_lsp.model.backend import Backend, Sampling
from phi_lsp.core.settings import ReviewSettings
from phi_lsp.core.documents import Document
from phi_lsp.model.endpoints import Endpoints, EndpointSpec
from phi_lsp.model.session import SessionKeys
from phi_lsp.model.escalation import COMPLEX, SKIPPED_BUDGET, Router
from phi_lsp.review import findings as F
from phi_lsp.review.pipeline import Escalation, FileJob, Reviewer, ReviewOptions
from tests.conftest import DEAD_BACKEND, MODEL_NAME, SERVER_COMMAND, initialize, make_client
from tests.fault_proxy import FaultProxy

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.vllm]

LARGE = "phi-large"
STATE_HOME = tempfile.mkdtemp(prefix="phi-lsp-routing-state-")
CONFIG = ClientServerConfig(
    server_command=SERVER_COMMAND, client_factory=make_client,
    server_env={**os.environ, "XDG_STATE_HOME": STATE_HOME},
)


def functions(n: int, tag: str) -> str:
    return "\n\n".join(
        f"def handle_{i}_{tag}(state, event):\n    if event is None:\n        return state\n"
        f"    state[event.name] = event.value * {i}\n    return state\n"
        for i in range(n)
    )


COMPLEX_FUNCTION = "def tangle(rows, limit):\n" + "".join(
    f"{'    ' * (2 * d + 1)}for r{d} in rows:\n{'    ' * (2 * d + 2)}if r{d} and limit or not r{d}:\n" for d in range(3)
) + "    " * 7 + "limit -= 1\n    return limit\n"


# -- the one retry ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "http503", "http500"])
async def test_a_request_broken_by_a_dying_server_is_answered_on_the_retry(vllm_url, fault):
    proxy = FaultProxy(vllm_url).start()
    backend = Backend(proxy.url, sessions=SessionKeys(["/w"]))
    try:
        proxy.fail_next(fault)
        [choices] = await backend.complete(MODEL_NAME, ["def add(a, b):\n    return"], Sampling(max_tokens=4), 30,
                                           document="file:///w/add.py")
        assert choices and isinstance(choices[0].text, str)
        sent = proxy.recorded("/completions")
        assert [r.mode for r in sent] == [fault, "pass"]
        key = SessionKeys(["/w"]).key("file:///w/add.py")
        assert {r.headers.get("x-session-id") for r in sent} == {key}
        assert backend.stats.retries_answered == 1 and not backend.health.down
    finally:
        await backend.aclose()
        proxy.close()


# -- review escalation in the pipeline -----------------------------------------------------------


def job(text: str, name: str) -> FileJob:
    return FileJob(Document(f"file:///w/{name}", text, 1, "python").snapshot(), name)


async def pool_and_escalation(vllm_url, large_url=None, min_confidence=0.0, router=None):
    pool = Endpoints.create([
        EndpointSpec.parse(vllm_url, [MODEL_NAME]),
        EndpointSpec.parse(large_url or vllm_url, [f"{LARGE}={MODEL_NAME}"]),
    ])
    backend = pool.backend()
    small = ReviewOptions.from_settings(ReviewSettings(), MODEL_NAME, backend)
    large = ReviewOptions.from_settings(ReviewSettings(), LARGE, backend)
    router = router or Router()
    return pool, backend, small, Escalation(backend, large, router, min_confidence)


async def test_complex_units_go_straight_to_the_large_model_in_their_own_batch(vllm_url):
    pool, backend, small, escalation = await pool_and_escalation(vllm_url)
    try:
        reviewer = Reviewer()
        text = functions(3, "c") + "\n\n" + COMPLEX_FUNCTION
        [result] = await reviewer.review([job(text, "c.py")], backend, small, escalation=escalation)
        small_ep, large_ep = pool.members
        escalated = reviewer.stats.escalated
        # The complex unit never went to the small model: one batch of 3 there, the complex
        # unit in a batch of its own; small answers that are not answers (cut, unparseable,
        # an error finding that does not anchor) escalate in a second large batch.
        later = sum(escalated.values()) - escalated[COMPLEX]
        assert escalated[COMPLEX] == 1 and result.units_escalated == 1 + later
        assert small_ep.backend.stats.prompts == 3 and small_ep.backend.stats.http_requests == 1
        assert large_ep.backend.stats.prompts == 1 + later and large_ep.backend.stats.http_requests == 1 + (later > 0)
        assert escalation.router.escalations[("review", LARGE, COMPLEX)] == 1
        assert reviewer.stats.answers_by_model == {MODEL_NAME: 3, LARGE: 1 + later}
        assert result.units_sent == 4 and result.units_failed == 0
        assert all(f.finding.model in (MODEL_NAME, LARGE) for f in result.findings)
    finally:
        await pool.aclose()


async def test_doubtful_units_escalate_after_the_small_answer_and_count_every_finding(vllm_url):
    pool, backend, small, escalation = await pool_and_escalation(vllm_url, min_confidence=1.0)
    try:
        reviewer = Reviewer()
        [result] = await reviewer.review([job(functions(4, "d"), "d.py")], backend, small, escalation=escalation)
        assert result.units_sent == 4 and result.units_escalated == 4
        assert sum(reviewer.stats.escalated.values()) == 4 and COMPLEX not in reviewer.stats.escalated
        assert pool.members[1].backend.stats.prompts == 4
        stats = reviewer.stats
        answer_level = {F.TRUNCATED, F.UNPARSEABLE, F.BACKEND_ERROR, F.TOO_LONG, F.FIX_NO_CHANGE, F.FIX_BREAKS_SYNTAX}
        finding_drops = sum(n for reason, n in stats.drops.items() if reason not in answer_level)
        assert stats.findings_stated == stats.findings_valid + finding_drops  # escalated ones included
        # Cached with the routed outcome: nothing is sent again.
        [again] = await reviewer.review([job(functions(4, "d"), "d.py")], backend, small, escalation=escalation)
        assert again.units_cached == 4 and again.units_sent == 0
    finally:
        await pool.aclose()


async def test_over_budget_or_unreachable_the_small_answer_stands(vllm_url):
    router = Router()
    router.configure(10)
    router.note_usage(LARGE, 50, 50)
    pool, backend, small, escalation = await pool_and_escalation(vllm_url, min_confidence=1.0, router=router)
    try:
        reviewer = Reviewer()
        [result] = await reviewer.review([job(functions(2, "b"), "b.py")], backend, small, escalation=escalation)
        assert result.units_escalated == 0 and reviewer.stats.escalation_skipped == 2
        assert router.skipped[("review", LARGE, SKIPPED_BUDGET)] == 2
        assert pool.members[1].backend.stats.prompts == 0
    finally:
        await pool.aclose()

    pool, backend, small, escalation = await pool_and_escalation(vllm_url, large_url=DEAD_BACKEND, min_confidence=1.0)
    try:
        reviewer = Reviewer()
        text = functions(2, "u")
        [result] = await reviewer.review([job(text, "u.py")], backend, small, escalation=escalation)
        assert result.units_failed == 0 and reviewer.stats.escalation_failed == 2
        assert escalation.router.failed[("review", LARGE)] == 2
        # Not cached: the next save asks again.
        [again] = await reviewer.review([job(text, "u.py")], backend, small, escalation=escalation)
        assert again.units_cached == 0
    finally:
        await pool.aclose()


# -- through the server --------------------------------------------------------------------------


def routed_settings(vllm_url: str, **completion) -> dict:
    return {
        "backend": {"endpoints": [
            {"url": vllm_url, "models": [MODEL_NAME]},
            {"url": vllm_url, "models": [f"{LARGE}={MODEL_NAME}"]},
        ]},
        "completion": {"model": MODEL_NAME, "escalationModel": LARGE, "promptMode": "raw", "debounceMs": 0,
                       "minConfidence": 0.999, **completion},
        "review": {"model": MODEL_NAME, "escalationModel": LARGE, "onSave": False},
        "routing": {"reviewMinConfidence": 1.0},
    }


@pytest_lsp.fixture(config=CONFIG)
async def routed_client(lsp_client: LanguageClient, tmp_path, vllm_url):
    await initialize(lsp_client, tmp_path, routed_settings(vllm_url))
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, name: str, text: str) -> tuple[str, types.Position]:
    path = client.workspace / name
    path.write_text(text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text)))
    lines = text.split("\n")
    return path.as_uri(), types.Position(len(lines) - 1, len(lines[-1]))


async def inline(client, uri, position, invoked=True):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=kind)))


async def command(client, name, *arguments):
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=name, arguments=list(arguments) or None))


def feedback_rows(query: str) -> list[tuple]:
    db = sqlite3.connect(Path(STATE_HOME) / "phi-lsp" / "feedback.sqlite3")
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


async def test_invoked_completion_escalates_counted_in_stats_and_feedback_lands_in_sqlite(routed_client: LanguageClient):
    client = routed_client
    uri, position = open_doc(client, "a.py", "def scale(values, factor):\n    result =")
    await inline(client, uri, position, invoked=True)
    stats = await command(client, "phi.stats")
    assert stats["routing"]["escalations"]["completion"][LARGE]["low-confidence"] == 1
    assert stats["completion"]["escalated"] == 1
    members = stats["endpoints"]["members"]
    assert members[1]["models"] == [f"{LARGE}={MODEL_NAME}"] and members[1]["httpRequests"] >= 1

    # Automatic completions never wait for the large model.
    uri2, position2 = open_doc(client, "b.py", "def total(items):\n    count =")
    await inline(client, uri2, position2, invoked=False)
    stats = await command(client, "phi.stats")
    assert stats["routing"]["escalations"]["completion"][LARGE]["low-confidence"] == 1

    # With the gate open, suggestions are shown; accept one, reject another.
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"completion": {"minConfidence": 0.0}}))
    await asyncio.sleep(0.2)
    uri3, position3 = open_doc(client, "c.py", "import os\nimport numpy as")
    first = await inline(client, uri3, position3)
    assert first.items
    accepted = await command(client, "phi.acceptCompletion", {"id": first.items[0].command.arguments[0]["id"], "acceptedChars": 2})
    assert accepted["recorded"] == "partiallyAccepted"
    uri4, position4 = open_doc(client, "d.py", "def add(a, b):\n    return")
    second = await inline(client, uri4, position4)
    assert second.items
    rejected = await command(client, "phi.rejectCompletion", {"id": second.items[0].command.arguments[0]["id"]})
    assert rejected["recorded"] == "rejected"

    # Events are written a moment after the answers (never on the completion path): wait for it.
    query = "SELECT kind, event, model, variant, accepted_chars, text FROM events ORDER BY id"
    for _ in range(100):
        events = feedback_rows(query) if (Path(STATE_HOME) / "phi-lsp" / "feedback.sqlite3").exists() else []
        if any(e[1] == "rejected" for e in events):
            break
        await asyncio.sleep(0.1)
    assert ("routing", "escalated", LARGE, "default", None, None) in events
    completion_events = [e for e in events if e[0] == "completion"]
    assert [e[1] for e in completion_events if e[1] != "shown"] == ["partiallyAccepted", "rejected"]
    assert sum(1 for e in completion_events if e[1] == "shown") >= 2
    assert all(e[2] == MODEL_NAME and e[3] == "default" for e in completion_events)
    assert all(e[5] is None for e in events)  # telemetry.keepText is off: no code stored
    assert [e[4] for e in completion_events if e[1] != "shown"] == [2, 0]  # accepted characters
    summary = (await command(client, "phi.stats"))["feedback"]
    assert summary["completion"]["byModel"][MODEL_NAME]["rejected"] == 1
    assert summary["escalations"]["completion"][LARGE]["low-confidence"] == 1


async def test_review_units_escalate_through_the_server(routed_client: LanguageClient):
    client = routed_client
    uri, _ = open_doc(client, "r.py", functions(3, "r"))
    summary = await asyncio.wait_for(command(client, "phi.review", uri), 240)
    assert summary["reviewed"] and summary["unitsSent"] == 3
    assert summary["unitsEscalated"] == 3  # routing.reviewMinConfidence = 1.0: every answer is doubtful
    stats = await command(client, "phi.stats")
    assert sum(stats["review"]["escalated"].values()) == 3
    assert sum(stats["routing"]["escalations"]["review"][LARGE].values()) == 3
    assert stats["review"]["answersByModel"] == {MODEL_NAME: 3, LARGE: 3}


# -- command line ----------------------------------------------------------------------------------


async def test_doctor_checks_every_endpoint_and_what_it_is_listed_for(vllm_url):
    import io

    from phi_lsp.core.settings import SettingsManager
    from phi_lsp.cli.doctor import run_doctor

    manager = SettingsManager()
    manager.set_source("pyproject.toml", {
        "completion": {"model": MODEL_NAME}, "review": {"model": MODEL_NAME, "escalationModel": LARGE},
        "backend": {"endpoints": [{"url": vllm_url, "models": [MODEL_NAME, f"{LARGE}={MODEL_NAME}"]},
                                  {"url": DEAD_BACKEND, "models": [MODEL_NAME]}]},
    })
    out = io.StringIO()
    assert await run_doctor(manager, out) == 1
    text = out.getvalue()
    assert f"{vllm_url}: reachable; serves {MODEL_NAME}; listed for {MODEL_NAME}, {LARGE}={MODEL_NAME}" in text
    assert f"The endpoint {DEAD_BACKEND} does not answer" in text
    # Two URLs for one model: replicas are the router's, phi-lsp uses the first and says so.
    assert f"backend.endpoints lists '{MODEL_NAME}' at 2 URLs; only the first ({vllm_url}) is used" in text
    assert f"vLLM " in text and "itself (no router in front" in text
    assert f"review.escalationModel '{LARGE}': {vllm_url}" in text
