"""The review pipeline against the real vLLM (in process): batching, chunking, the unit cache,
the unconstrained path (backend.kind = openai), backend failures."""

from __future__ import annotations

import pytest

from phi_lsp.model.backend import Backend
from phi_lsp.core.settings import ReviewSettings
from phi_lsp.core.documents import Document
from phi_lsp.review import findings as F
from phi_lsp.review.pipeline import FileJob, Reviewer, ReviewOptions
from tests.conftest import DEAD_BACKEND, MODEL_NAME

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.vllm]

ANSWER_LEVEL = {F.TRUNCATED, F.UNPARSEABLE, F.BACKEND_ERROR, F.TOO_LONG, F.FIX_NO_CHANGE, F.FIX_BREAKS_SYNTAX}


def source(n: int, tag: str = "") -> str:
    return "\n\n".join(
        f"def step_{i}{tag}(state, event):\n    if event is None:\n        return state\n"
        f"    state[event.name] = event.value * {i}\n    return state\n"
        for i in range(n)
    )


def job(text: str, name: str = "steps.py") -> FileJob:
    return FileJob(Document(f"file:///w/{name}", text, 1, "python").snapshot(), name)


def options(backend: Backend, **changes) -> ReviewOptions:
    return ReviewOptions.from_settings(ReviewSettings(**changes), MODEL_NAME, backend)


@pytest.fixture
async def backend(vllm_url):
    b = Backend(vllm_url)
    yield b
    await b.aclose()


async def test_one_request_for_all_units_and_every_answer_accounted_for(backend):
    reviewer = Reviewer()
    [result] = await reviewer.review([job(source(12))], backend, options(backend))
    assert backend.stats.by_path["/completions"] == 1 and backend.stats.prompts == 12
    assert result.units_sent == 12 and result.units_failed == 0
    stats = reviewer.stats
    finding_drops = sum(n for reason, n in stats.drops.items() if reason not in ANSWER_LEVEL)
    assert stats.findings_stated == stats.findings_valid + finding_drops
    assert F.STALE not in result.drops and "internal-error" not in result.drops


async def test_chunks_above_batch_size_and_unchanged_units_are_not_sent_again(backend):
    reviewer = Reviewer()
    text = source(7, "_b")
    [first] = await reviewer.review([job(text)], backend, options(backend, batch_size=3))
    assert backend.stats.by_path["/completions"] == 3  # 3 + 3 + 1
    changed = text.replace("event.value * 4", "event.value * 40")
    [second] = await reviewer.review([job(changed)], backend, options(backend, batch_size=3))
    assert (second.units_sent, second.units_cached) == (1, 6)
    assert backend.stats.by_path["/completions"] == 4
    assert reviewer.stats.last["unitsSent"] == 1


async def test_several_files_share_requests(backend):
    reviewer = Reviewer()
    done = []
    results = await reviewer.review(
        [job(source(2, "_x"), "a.py"), job(source(3, "_y"), "b.py")], backend, options(backend),
        on_file=lambda r: done.append(r.job.path), on_progress=lambda d, t: done.append((d, t)))
    assert backend.stats.by_path["/completions"] == 1
    assert [r.units_sent for r in results] == [2, 3]
    assert done[0] == (0, 5) and done[-1] == (5, 5) and {"a.py", "b.py"} <= set(done)


async def test_unconstrained_backend_kind_openai(vllm_url):
    backend = Backend(vllm_url, kind="openai")
    try:
        reviewer = Reviewer()
        [result] = await reviewer.review([job(source(3, "_o"))], backend, options(backend, max_tokens=96))
        assert backend.stats.by_path["/completions"] == 3  # one prompt per request, no list prompts
        assert result.units_failed == 0
        stats = reviewer.stats
        finding_drops = sum(n for reason, n in stats.drops.items() if reason not in ANSWER_LEVEL)
        assert stats.findings_stated == stats.findings_valid + finding_drops
    finally:
        await backend.aclose()


async def test_backend_failure_is_counted_and_not_cached():
    backend = Backend(DEAD_BACKEND, connect_timeout_s=0.5)
    try:
        reviewer = Reviewer()
        [result] = await reviewer.review([job(source(3))], backend, options(backend))
        assert result.units_failed == 3 and result.drops[F.BACKEND_ERROR] == 3 and result.error
        assert len(reviewer.cache) == 0  # the next save tries these units again
    finally:
        await backend.aclose()
