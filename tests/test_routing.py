"""Routing, endpoints, feedback and prompt variants, unit by unit (no model server needed)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter

import pytest

from phi_lsp.completion import prompts
from phi_lsp.completion.context import CompletionContext, Snippet
from phi_lsp.model import escalation as routing
from phi_lsp.model.backend import BackendRequestError, BackendServerError
from phi_lsp.core.documents import Document
from phi_lsp.model.endpoints import AFFINITY, ROUND_ROBIN, EndpointPool, EndpointSpec
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


# -- endpoints -----------------------------------------------------------------------------------


def test_endpoint_specs_with_aliases_and_which_endpoint_serves_what():
    spec = EndpointSpec.parse("http://a/v1/", ["phi-code-tiny", "phi-large=phi-code-tiny"])
    assert spec.url == "http://a/v1" and spec.serves("phi-large") and not spec.serves("other")
    assert spec.served_name("phi-large") == "phi-code-tiny" and spec.name_for("phi-code-tiny") == "phi-code-tiny"
    pool = EndpointPool.create([
        EndpointSpec.parse("http://any/v1"),
        EndpointSpec.parse("http://big/v1", ["phi-large=phi-code-tiny"]),
    ])
    try:
        assert [m.url for m in pool.serving("phi-large")] == ["http://big/v1"]
        # backend.url (lists nothing) serves what no entry lists
        assert [m.url for m in pool.serving("microsoft/Phi-4-mini-instruct")] == ["http://any/v1"]
        assert pool.served_name("phi-large") == "phi-code-tiny"
    finally:
        asyncio.run(pool.aclose())


@pytest.fixture
def pool():
    pool = EndpointPool.create([EndpointSpec.parse(f"http://replica{i}/v1", ["m"]) for i in range(3)])
    yield pool
    asyncio.run(pool.aclose())


def test_documents_keep_their_endpoint_and_new_ones_go_to_the_least_loaded(pool):
    first = pool.pick("m", "doc1")
    first.outstanding = 3
    assert pool.pick("m", "doc1") is first  # affinity: 3 <= max(2*0, 0 + 4)
    second = pool.pick("m", "doc2")
    assert second is not first
    second.outstanding = 1
    third = pool.pick("m", "doc3")
    assert third not in (first, second)  # the only idle one
    # Spread: with all idle, many documents land on every endpoint.
    for m in pool.members:
        m.outstanding = 0
    fresh = EndpointPool(pool.members)
    assert {fresh.pick("m", f"file{i}").url for i in range(30)} == {m.url for m in pool.members}


def test_a_much_busier_or_down_endpoint_loses_the_document(pool):
    mine = pool.pick("m", "doc")
    mine.outstanding = 9  # > max(2*0, 0 + 4): much busier than the idle ones
    moved = pool.pick("m", "doc")
    assert moved is not mine and pool.moved == 1
    assert pool.pick("m", "doc") is moved  # and stays on the new one
    moved.backend.health.mark_down("refused")
    again = pool.pick("m", "doc")
    assert again is not moved and again.available
    for m in pool.members:
        m.backend.health.mark_down("refused")
    assert pool.pick("m", "doc") is None and not pool.available("m")


def test_round_robin_ignores_documents(pool):
    pool.policy = ROUND_ROBIN
    assert len({pool.pick("m", "same-doc").url for _ in range(3)}) == 3
    pool.policy = AFFINITY


def test_an_outage_error_is_retried_once_on_another_endpoint(pool):
    calls = []

    async def fn(member, served):
        calls.append(member.url)
        if len(calls) == 1:
            member.backend.health.mark_down("reset")
            raise BackendServerError("reset")
        return served

    assert asyncio.run(pool.call("m", "doc", fn)) == "m"
    assert len(calls) == 2 and calls[0] != calls[1] and pool.retries == 1
    assert all(m.outstanding == 0 for m in pool.members)


def test_a_refused_request_is_not_retried_and_two_outages_give_up(pool):
    async def refused(member, served):
        raise BackendRequestError("HTTP 400")

    with pytest.raises(BackendRequestError):
        asyncio.run(pool.call("m", "doc", refused))
    assert pool.retries == 0

    calls = []

    async def broken(member, served):
        calls.append(member.url)
        raise BackendServerError("HTTP 500")

    with pytest.raises(BackendServerError):
        asyncio.run(pool.call("m", "doc", broken))
    assert len(calls) == 2  # once more, not a third time


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
    assert prompt.text.endswith("    return ") and "\n" in prompt.stop


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
