"""The server's own limit bounds every prompt phi-lsp sends.

vLLM says in /v1/models how many tokens a model accepts per request (`max_model_len`, prompt and
answer together). A `completion.contextTokens` set above it must give shorter prompts, not
requests the server refuses (which would show the user nothing at all). The server here is
tests/fake_worker.py, which reports the limit it is given and logs every prompt it receives;
its model name is in no table of phi-lsp's, so only the reported limit can bound the prompts.
"""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from phi_lsp.core.tokens import TokenCounter
from tests.conftest import SERVER_COMMAND, initialize, settings
from tests.router_fleet import FakeWorker
from tests.waiting import make_watching_client, state_since, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "big-coder"
CONTEXT_TOKENS = 1_536
COMPLETION_MAX_TOKENS = 64
REVIEW_MAX_TOKENS = 128
SMALL, UNBOUNDED = 1_024, 100_000
# An unknown model's tokens are estimated; the test counts the same way the server does.
COUNTER = TokenCounter()

LONG_FILE = "".join(
    f"def handler_{i}(request, timeout):\n"
    f"    value = request.get('field_{i}', {i})\n"
    f"    return value * {i} + timeout\n\n\n"
    for i in range(120)
) + "def last(request):\n    return "
# One function whose full review prompt (three worked examples, the file's imports, the
# signatures it calls) is about 1,100 tokens; with less of them it fits in 1,024 with its answer.
REVIEWED = (
    "import os\nimport json\nfrom pathlib import Path\n\n\n"
    "def load(path):\n    return json.loads(Path(path).read_text())\n\n\n"
    "def summarize(folder, limit):\n"
    + "".join(f"    part_{i} = load(os.path.join(folder, 'part_{i}.json')).get('total', {i}) * limit\n" for i in range(22))
    + "    return sum([" + ", ".join(f"part_{i}" for i in range(22)) + "])\n"
)


@pytest.fixture(params=[SMALL, UNBOUNDED], ids=["limit-1024", "no-real-limit"])
def worker(request, tmp_path):
    worker = FakeWorker.start("w", tmp_path / "worker.jsonl", model=MODEL, max_model_len=request.param)
    worker.limit = request.param
    yield worker
    worker.kill()


@pytest.fixture
def prompt_mode() -> str:
    return "raw"  # a test parametrizes it to try both


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_watching_client))
async def client(lsp_client: LanguageClient, worker: FakeWorker, prompt_mode: str, tmp_path):
    options = settings(
        worker.url + "/v1",
        **{
            "completion.model": MODEL,
            "completion.promptMode": prompt_mode,
            "review.model": MODEL,
            "review.onSave": False,
            "completion.contextTokens": CONTEXT_TOKENS,
            "completion.maxTokens": COMPLETION_MAX_TOKENS,
            "review.maxTokens": REVIEW_MAX_TOKENS,
        },
    )
    await initialize(lsp_client, tmp_path, options)
    lsp_client.workspace = tmp_path
    await wait_until(lsp_client, state_since(lsp_client, 0, "ready"), 10, "status ready")
    yield
    await lsp_client.shutdown_session()


def open_document(client: LanguageClient, name: str, text: str) -> str:
    path = client.workspace / name
    path.write_text(text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text)))
    return path.as_uri()


async def invoke_completion(client: LanguageClient, uri: str, text: str):
    lines = text.split("\n")
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(len(lines) - 1, len(lines[-1])),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))


def sent(worker: FakeWorker) -> list[str]:
    """The prompts the server received (a chat prompt rendered by phi-lsp comes as text too)."""
    return [text for record in worker.records() for text in record["texts"]]


@pytest.mark.parametrize("prompt_mode", ["raw", "chat"])
async def test_completion_prompts_fit_what_the_server_accepts(client: LanguageClient, worker: FakeWorker, prompt_mode):
    # The server asks /v1/models when it connects; a first request makes sure that has answered.
    await invoke_completion(client, open_document(client, "warm.py", "x = "), "x = ")
    await invoke_completion(client, open_document(client, "long.py", LONG_FILE), LONG_FILE)
    longest = max(COUNTER.count(text) for text in sent(worker))
    if worker.limit == SMALL:
        # Room for the answer, and the chat template's markers around the messages.
        assert longest <= SMALL - COMPLETION_MAX_TOKENS - 16, longest
    else:
        assert longest > SMALL, f"the file should fill completion.contextTokens when nothing bounds it ({longest})"


async def test_review_prompts_fit_what_the_server_accepts(client: LanguageClient, worker: FakeWorker):
    uri = open_document(client, "reviewed.py", REVIEWED)
    summary = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.review", arguments=[uri]))
    assert summary["unitsSent"] > 0, summary
    prompts = sent(worker)
    assert prompts, "the review sent nothing"
    longest = max(COUNTER.count(text) for text in prompts)
    if worker.limit == SMALL:
        assert longest <= SMALL - REVIEW_MAX_TOKENS, longest
    else:
        assert longest > SMALL - REVIEW_MAX_TOKENS, f"the review's prompts should be larger when nothing bounds them ({longest})"


async def test_doctor_says_what_the_server_accepts_and_what_is_cut(worker: FakeWorker):
    import io

    from phi_lsp.cli.doctor import run_doctor
    from phi_lsp.core.settings import SettingsManager

    manager = SettingsManager()
    manager.set_source("pyproject.toml", settings(worker.url + "/v1", **{
        "completion.model": MODEL, "review.model": MODEL, "completion.contextTokens": CONTEXT_TOKENS,
        "completion.maxTokens": COMPLETION_MAX_TOKENS}))
    out = io.StringIO()
    await run_doctor(manager, out)
    text = out.getvalue()
    accepts = f"{worker.limit:,} tokens per request"
    assert f"completion.model '{MODEL}': served, {accepts}" in text, text
    assert f"review.model '{MODEL}': served, {accepts}" in text, text
    cut = text.count("cut to fit")
    if worker.limit == SMALL:
        assert f"less than completion.contextTokens 1,536 + maxTokens {COMPLETION_MAX_TOKENS}" in text and cut == 2, text
    else:
        assert cut == 0, text
