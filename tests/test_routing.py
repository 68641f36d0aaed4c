"""Routing, endpoints, feedback and prompt variants, unit by unit (no model server needed)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter

import pytest

from phi_lsp.completion import prompts
from phi_lsp.completion.context import CompletionContext, Snippet
from phi_lsp.model import escalation as routing
from phi_lsp.model.backend import (
    RETRY_DELAY_S, Backend, BackendError, BackendServerError, BackendUnreachable, Sampling,
)
from phi_lsp.model.batching import Batcher
from phi_lsp.core.documents import Document
from phi_lsp.model.endpoints import Endpoints, EndpointSpec
from phi_lsp.model.session import SessionKeys, session_key
from phi_lsp.cli.stats import run_stats
from phi_lsp.core.telemetry import COMPLETION, ROUTING, FeedbackStore, percentile, summarize, wilson
from phi_lsp.review.complexity import measure
from phi_lsp.review.units import extract_units

# -- decisions -----------------------------------------------------------------------------------


def test_review_reasons_in_order_of_strength():
    signals = routing.AnswerSignals
    assert routing.review_reason(signals(0.95, True), 0.7) is None
    assert routing.review_reason(signals(None, True), 0.7) is None  # no logprobs: no gate
    assert routing.review_reason(signals(0.5, True), 0.7) == routing.LOW_CONFIDENCE
    assert routing.review_reason(signals(0.95, True, severe_unanchored=1), 0.7) == routing.UNANCHORED_SEVERE
    assert routing.review_reason(signals(0.2, False, severe_unanchored=1), 0.7) == routing.NO_ANSWER


def test_only_invoked_completions_with_nothing_left_for_low_confidence_escalate():
    assert routing.completion_reason(True, kept=0, low_confidence_drops=2) == routing.LOW_CONFIDENCE
    assert routing.completion_reason(False, kept=0, low_confidence_drops=2) is None  # automatic: never
    assert routing.completion_reason(True, kept=1, low_confidence_drops=2) is None
    assert routing.completion_reason(True, kept=0, low_confidence_drops=0) is None  # dropped for syntax etc.


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_token_budget_is_a_sliding_minute_per_model():
    clock = Clock()
    budget = routing.TokenBudget(100, clock)
    budget.add("large", 60)
    clock.now += 30
    budget.add("large", 50)
    budget.add("small", 500)
    assert budget.used("large") == 110 and not budget.allows("large")
    assert budget.allows("other")
    clock.now += 31  # the first 60 tokens are more than a minute old
    assert budget.used("large") == 50 and budget.allows("large")
    assert budget.totals["large"] == 110


def test_router_counts_escalations_and_skips_them_over_budget_telling_the_user_once():
    clock = Clock()
    told, events = [], []
    router = routing.Router(tell_user=told.append, on_event=lambda e, i: events.append((e, i)), clock=clock)
    router.configure(1000)
    assert router.admit("review", "large", Counter({"complex": 2, "low-confidence": 3}))
    router.note_usage("large", 900, 200)
    assert not router.admit("review", "large", "low-confidence")
    assert not router.admit("completion", "large", "low-confidence", variant="b")
    assert router.escalations[("review", "large", "complex")] == 2
    assert router.escalations[("review", "large", "low-confidence")] == 3
    assert router.skipped[("review", "large", routing.SKIPPED_BUDGET)] == 1
    assert router.skipped[("completion", "large", routing.SKIPPED_BUDGET)] == 1
    assert len(set(told)) == 1 and "routing.maxTokensPerMinute" in told[0]
    assert [e for e, _ in events] == ["escalated", "escalated", "escalationSkipped", "escalationSkipped"]
    figures = router.as_json()
    assert figures["escalations"]["review"]["large"] == {"complex": 2, "low-confidence": 3}
    assert figures["tokens"]["large"] == {"lastMinute": 1100, "total": 1100}
    clock.now += 61
    assert router.admit("review", "large", "complex")  # the budget frees as the minute passes


# -- endpoints: which URL serves which model ------------------------------------------------------


def test_endpoint_specs_with_aliases_and_which_endpoint_serves_what():
    spec = EndpointSpec.parse("http://a/v1/", ["phi-code-tiny", "phi-large=phi-code-tiny"])
    assert spec.url == "http://a/v1" and spec.serves("phi-large") and not spec.serves("other")
    assert spec.served_name("phi-large") == "phi-code-tiny" and spec.name_for("phi-code-tiny") == "phi-code-tiny"
    endpoints = Endpoints.create([
        EndpointSpec.parse("http://any/v1"),
        EndpointSpec.parse("http://big/v1", ["phi-large=phi-code-tiny"]),
    ])
    try:
        assert endpoints.for_model("phi-large").url == "http://big/v1"
        # backend.url (lists nothing) serves what no entry lists
        assert endpoints.for_model("microsoft/Phi-4-mini-instruct").url == "http://any/v1"
        assert endpoints.served_name("phi-large") == "phi-code-tiny"
        assert endpoints.duplicates() == {}
    finally:
        asyncio.run(endpoints.aclose())


def test_one_url_per_model_replicas_listed_twice_use_the_first_and_are_reported():
    endpoints = Endpoints.create([EndpointSpec.parse(f"http://replica{i}/v1", ["m"]) for i in range(3)])
    try:
        # No balancing here: every request for "m" goes to the first, whatever its load.
        assert {endpoints.for_model("m").url for _ in range(10)} == {"http://replica0/v1"}
        assert endpoints.duplicates() == {"m": [f"http://replica{i}/v1" for i in range(3)]}
        assert not endpoints.serves("other")
        with pytest.raises(BackendUnreachable):
            endpoints.require("other")
        # Its being down is the model's being down: nothing fails over to a "replica".
        endpoints.members[0].backend.health.mark_down("refused")
        assert not endpoints.available("m") and endpoints.for_model("m").url == "http://replica0/v1"
    finally:
        asyncio.run(endpoints.aclose())


# -- session keys ----------------------------------------------------------------------------------


def test_session_keys_are_stable_per_document_and_workspace_and_show_no_path():
    keys = SessionKeys(["/home/alice/project", "/home/alice/project/sub"])
    uri = "file:///home/alice/project/src/secret_plans.py"
    key = keys.key(uri)
    assert key == keys.key(uri) == SessionKeys(["/home/alice/project"]).key(uri)  # stable, across restarts
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    assert not any(part in key for part in ("home", "alice", "secret", "plans", "py"))
    assert key == session_key("/home/alice/project", uri)
    # Different documents, different keys; the same file in another workspace, another key.
    assert len({keys.key(f"file:///home/alice/project/m{i}.py") for i in range(100)}) == 100
    assert SessionKeys(["/elsewhere"]).key(uri) != key
    # The innermost workspace folder, percent-encoded URIs and documents outside any folder.
    assert keys.workspace_of("file:///home/alice/project/sub/a.py") == "/home/alice/project/sub"
    assert keys.workspace_of("file:///home/alice/project/my%20file.py") == "/home/alice/project"
    assert keys.workspace_of("file:///home/alice/projectile/a.py") == ""
    assert keys.workspace_of("untitled:Untitled-1") == ""


# -- the one retry ---------------------------------------------------------------------------------


def _backend_answering(*answers, session_header="X-Session-ID", request_timeout_s=5.0):
    """A Backend whose server answers `answers` in turn (an int: that HTTP status; an exception
    class: raised as the connection's fate; "ok": a completion); the requests are recorded."""
    import httpx

    seen: list = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if queue else "ok"
        if isinstance(answer, type):
            raise answer("simulated", request=request)
        if answer == "ok":
            prompts = json.loads(request.content)["prompt"]
            count = len(prompts) if isinstance(prompts, list) else 1
            return httpx.Response(200, json={"choices": [
                {"index": i, "text": " x", "finish_reason": "stop"} for i in range(count)]})
        if isinstance(answer, tuple):
            status, headers = answer
            return httpx.Response(status, headers=headers, json={"error": {"message": "busy"}})
        return httpx.Response(answer, text="Request failed: error sending request for url")

    backend = Backend("http://fleet/v1", transport=httpx.MockTransport(handle), session_header=session_header,
                      sessions=SessionKeys(["/w"]), request_timeout_s=request_timeout_s)
    return backend, seen


def _complete(backend, document="file:///w/a.py", timeout_s=None):
    return backend.complete("m", ["x ="], Sampling(max_tokens=2), timeout_s, document=document)


@pytest.mark.parametrize("fault", [500, 502, 503, "refused", "reset"])
def test_a_request_that_met_a_dying_replica_is_sent_once_more_with_its_session_key(fault):
    import httpx

    answer = {"refused": httpx.ConnectError, "reset": httpx.RemoteProtocolError}.get(fault, fault)
    backend, seen = _backend_answering(answer)

    async def run():
        started = time.monotonic()
        result = await _complete(backend)
        await backend.aclose()
        return result, time.monotonic() - started

    result, took = asyncio.run(run())
    assert result[0][0].text == " x"
    assert len(seen) == 2 and took >= RETRY_DELAY_S
    key = SessionKeys(["/w"]).key("file:///w/a.py")
    assert [r.headers.get("X-Session-ID") for r in seen] == [key, key]  # the router sees the same document
    assert backend.stats.retries == backend.stats.retries_answered == 1 and backend.stats.failures == 0
    assert not backend.health.down  # a retry that succeeds is no outage


@pytest.mark.parametrize("fault", [400, 404, 429, 504, (503, {"retry-after": "5"}), "timeout"])
def test_refusals_timeouts_and_long_pauses_are_not_retried(fault):
    import httpx

    answer = httpx.ReadTimeout if fault == "timeout" else fault
    backend, seen = _backend_answering(answer, "ok")

    async def run():
        try:
            with pytest.raises(BackendError):
                await _complete(backend)
        finally:
            await backend.aclose()

    asyncio.run(run())
    assert len(seen) == 1 and backend.stats.retries == 0


def test_a_second_failure_is_the_outage_and_the_deadline_bounds_the_retry():
    backend, seen = _backend_answering(502, 502, "ok")

    async def twice():
        try:
            with pytest.raises(BackendServerError):
                await _complete(backend)
        finally:
            await backend.aclose()

    asyncio.run(twice())
    assert len(seen) == 2 and backend.health.down and backend.stats.failures == 1

    backend, seen = _backend_answering(502, "ok")

    async def no_time_left():
        try:
            with pytest.raises(BackendServerError):
                await _complete(backend, timeout_s=RETRY_DELAY_S)  # no room for a second try
        finally:
            await backend.aclose()

    asyncio.run(no_time_left())
    assert len(seen) == 1


def test_a_request_cancelled_while_waiting_to_retry_is_never_sent_again():
    backend, seen = _backend_answering(503, "ok")

    async def run():
        task = asyncio.ensure_future(_complete(backend))
        while not seen:
            await asyncio.sleep(0.01)
        await asyncio.sleep(RETRY_DELAY_S / 3)  # in the retry's wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(RETRY_DELAY_S)
        await backend.aclose()

    asyncio.run(run())
    assert len(seen) == 1 and backend.stats.retries == 1 and backend.stats.retries_answered == 0


def test_no_header_without_a_document_or_with_the_header_turned_off():
    backend, seen = _backend_answering()

    async def run():
        await _complete(backend, document=None)
        await backend.aclose()
        off, seen_off = _backend_answering(session_header="")
        await _complete(off)
        await off.aclose()
        custom, seen_custom = _backend_answering(session_header="X-User-ID")
        await _complete(custom)
        await custom.aclose()
        return seen_off, seen_custom

    seen_off, seen_custom = asyncio.run(run())
    assert "x-session-id" not in seen[0].headers and "x-session-id" not in seen_off[0].headers
    assert seen_custom[0].headers["X-User-ID"] == SessionKeys(["/w"]).key("file:///w/a.py")


def test_batches_are_per_document_when_session_keys_are_sent():
    backend, seen = _backend_answering()

    async def run(batcher):
        sampling = Sampling(max_tokens=2)
        await asyncio.gather(*(batcher.complete("m", f"p{i}", sampling, None, f"file:///w/d{i % 2}.py") for i in range(4)))
        await backend.aclose()

    asyncio.run(run(Batcher(backend, window_s=0.05)))
    bodies = sorted(len(json.loads(r.content)["prompt"]) for r in seen)
    assert bodies == [2, 2] and len({r.headers["X-Session-ID"] for r in seen}) == 2

    backend, seen = _backend_answering(session_header="")
    asyncio.run(run(Batcher(backend, window_s=0.05)))
    assert len(seen) == 1  # no session keys: the documents share one request


# -- feedback ------------------------------------------------------------------------------------


def test_wilson_interval_and_percentiles():
    low, high = wilson(5, 10)
    assert round(low, 4) == 0.2366 and round(high, 4) == 0.7634
    assert wilson(0, 0) is None
    low, high = wilson(0, 20)
    assert low == 0.0 and 0.16 < high < 0.17
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3 and percentile([1.0] * 3, 0.99) == 1.0 and percentile([], 0.5) is None


def test_store_keeps_no_text_unless_asked_and_purges_old_rows(tmp_path):
    clock = Clock()
    clock.now = 1_700_000_000.0
    store = FeedbackStore(tmp_path / "f.sqlite3", keep_text=False, retention_days=7, clock=clock)
    store.record(COMPLETION, "shown", item="g1", model="m", text="secret_code()")
    store.keep_text = True
    store.record(COMPLETION, "shown", item="g2", model="m", text="kept_code()")
    assert not (tmp_path / "f.sqlite3").exists()  # recording never touches disk; flush does
    store.flush()
    assert oct((tmp_path / "f.sqlite3").stat().st_mode & 0o777) == "0o600"
    db = sqlite3.connect(tmp_path / "f.sqlite3")
    assert db.execute("SELECT item, text FROM events").fetchall() == [("g1", None), ("g2", "kept_code()")]
    clock.now += 6 * 86_400
    assert store.purge() == 0
    clock.now += 2 * 86_400
    store.record(COMPLETION, "shown", item="g3", model="m")
    store.flush()  # the hourly purge runs with it
    assert db.execute("SELECT item, text FROM events").fetchall() == [("g3", None)]
    store.close()
    again = FeedbackStore(tmp_path / "g.sqlite3", clock=clock)
    again.record(COMPLETION, "shown", item="x", text="never_stored()")
    again.flush()
    assert sqlite3.connect(tmp_path / "g.sqlite3").execute("SELECT text FROM events").fetchall() == [(None,)]
    again.close()


def _rows(*events):
    base = {c: None for c in ("at", "kind", "event", "item", "model", "variant", "trigger", "language", "latency_ms",
                              "served_from", "confidence", "shown_chars", "accepted_chars", "escalation", "count", "text")}
    return [{**base, "kind": COMPLETION, "count": 1, **e} for e in events]


def test_summary_per_model_and_variant():
    rows = _rows(
        {"event": "shown", "item": "a", "model": "small", "variant": "default", "latency_ms": 100, "served_from": "model", "shown_chars": 10},
        {"event": "shown", "item": "a", "model": "small", "variant": "default", "served_from": "cache"},
        {"event": "accepted", "item": "a", "model": "small", "variant": "default", "accepted_chars": 10},
        {"event": "shown", "item": "b", "model": "small", "variant": "terse", "latency_ms": 300, "served_from": "model", "shown_chars": 8},
        {"event": "rejected", "item": "b", "model": "small", "variant": "terse"},
        {"event": "shown", "item": "c", "model": "large", "variant": "terse", "latency_ms": 900, "served_from": "model",
         "escalation": "low-confidence", "shown_chars": 20},
        {"event": "partiallyAccepted", "item": "c", "model": "large", "variant": "terse", "accepted_chars": 5},
        {"kind": ROUTING, "event": "escalated", "model": "large", "trigger": "completion", "escalation": "low-confidence", "variant": "terse"},
        {"kind": ROUTING, "event": "escalated", "model": "large", "trigger": "review", "escalation": "complex", "count": 4},
    )
    summary = summarize(rows)
    small = summary["completion"]["byModel"]["small"]
    assert (small["shown"], small["accepted"], small["rejected"]) == (2, 1, 1)
    assert small["acceptanceRate"] == 0.5 and small["cacheHitRate"] == round(1 / 3, 4)
    assert small["latencyMs"]["p50"] == 100.0
    terse = summary["completion"]["byVariant"]["terse"]
    assert (terse["shown"], terse["partiallyAccepted"], terse["escalated"]) == (2, 1, 1)
    assert terse["acceptanceCI95"] == [round(x, 4) for x in wilson(1, 2)]
    assert summary["escalations"] == {"completion": {"large": {"low-confidence": 1}}, "review": {"large": {"complex": 4}}}
    assert summary["escalationsByVariant"] == {"terse": {"low-confidence": 1}}


def test_phi_lsp_stats_prints_text_and_json(tmp_path, capsys):
    store = FeedbackStore(tmp_path / "f.sqlite3")
    store.record(COMPLETION, "shown", item="a", model="phi-code-tiny", variant="default", latency_ms=120.0, served_from="model")
    store.record(COMPLETION, "accepted", item="a", model="phi-code-tiny", variant="default", accepted_chars=4)
    store.record(ROUTING, "escalated", model="phi-large", trigger="review", escalation="complex", count=3)
    store.close()
    assert run_stats("text", None, tmp_path / "f.sqlite3") == 0
    text = capsys.readouterr().out
    assert "Completions by model" in text and "phi-code-tiny" in text and "100.0%" in text
    assert "review     -> phi-large: complex 3" in text
    assert run_stats("json", 7, tmp_path / "f.sqlite3") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["days"] == 7 and data["completion"]["total"]["accepted"] == 1
    assert run_stats("text", None, tmp_path / "missing.sqlite3") == 0
    assert "No events recorded yet" in capsys.readouterr().out


# -- prompt variants -----------------------------------------------------------------------------


def test_variant_assignment_is_deterministic_and_spread():
    variants = {"terse": "{prefix}", "verbose": "# {path}\n{prefix}"}
    keys = [f"file:///w/f{i}.py\0{i % 7}" for i in range(600)]
    first = [prompts.variant_for(variants, k) for k in keys]
    assert first == [prompts.variant_for(dict(reversed(list(variants.items()))), k) for k in keys]
    counts = Counter(first)
    assert set(counts) == {"default", "terse", "verbose"} and min(counts.values()) > 150
    assert prompts.variant_for({}, "anything") == "default"


def _context(**changes) -> CompletionContext:
    values = dict(
        path="pkg/app.py", language="python", prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))",
        preamble=["import os"], snippets=[Snippet("pkg/util.py", "def helper(x):\n    return x", "symbols")],
        line_prefix="    return ", line_suffix="", window_start_line=3,
    )
    values.update(changes)
    return CompletionContext(**values)


@pytest.mark.parametrize("family", [prompts.RAW, prompts.CHAT])
def test_the_default_template_renders_the_built_in_prompt(family):
    ctx = _context()
    template = prompts.DEFAULT_TEMPLATES[prompts.RAW if family == prompts.RAW else "chat"]
    for single_line in (True, False):
        assert prompts.render(ctx, family, single_line, template) == prompts.render(ctx, family, single_line)


def test_a_template_fills_named_placeholders_and_leaves_other_braces():
    ctx = _context()
    prompt = prompts.render(ctx, prompts.RAW, True, "{comment} {language} file {path} {{x}} {unknown}\n{prefix}")
    assert prompt.text.startswith("# python file pkg/app.py {{x}} {unknown}\nimport os\n# ...\ndef add(a, b):")
    # The space after `return` is left to the model (token healing), as in the built-in prompt.
    assert prompt.text.endswith("    return") and prompt.heal == " " and "\n" in prompt.stop


# -- complexity ----------------------------------------------------------------------------------


def test_complexity_counts_decisions_nesting_and_lines():
    simple = "def f(x):\n    return x + 1\n"
    nested = "def g(items, flag):\n" + "".join(
        f"{'    ' * (2 * d + 1)}for i{d} in items:\n{'    ' * (2 * d + 2)}if i{d} and flag or not i{d}:\n" for d in range(3)
    ) + "    " * 7 + "pass\n"
    doc = Document("file:///w/c.py", simple + "\n" + nested, 1, "python").snapshot()
    units = {u.name: u for u in extract_units(doc)}
    f, g = measure(doc, units["f"]), measure(doc, units["g"])
    assert (f.branches, f.nesting, f.lines) == (0, 0, 2) and not f.is_complex()
    # 3 for + 3 if + 3 boolean operators x 2 (and, or) = 12 decisions; 6 nested statements
    assert g.branches == 12 and g.nesting == 6 and g.is_complex()
