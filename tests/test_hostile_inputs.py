"""Inputs that used to stall or crash the server (issue 11), on the real server and CLI.

- completion inside a 200,000-character expression line and inside 20,000 nested parentheses
  (climbing the tree with `Node.parent` was quadratic: 99 s, and every other request waited);
- documents over `limits.*`: no tree, window-only completion, no review, said once;
- backend answers that are well-formed HTTP but wrong inside (logprobs holding strings and
  nulls; a 100 MB body), through tests/fault_proxy.py: a malformed answer, never a TypeError
  or a traceback sent to the editor, and the body is not read whole;
- expected conditions (a document never opened, a bad position): a clear error answer and one
  log line at most, no traceback.
Bounds on time are generous (ten times what the fixed code takes on a loaded 2-core machine):
they catch the quadratic walk, not a slow machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from phi_lsp.core import syntax
from phi_lsp.core.documents import Document, Limits
from tests.conftest import DEAD_BACKEND, MODEL_NAME, SERVER_COMMAND, initialize, make_client, settings
from tests.fault_proxy import FaultProxy
from tests.rawlsp import RawServer

ASYNC = pytest.mark.asyncio(loop_scope="session")

LONG_LINE_CHARS = 200_000
NESTED_PARENS = 20_000
BOUND_S = 30.0
TOO_LARGE = "too large for full support"


def long_line_document() -> tuple[str, int, int]:
    """(text, line, column): the cursor after a `+ ` in the middle of a long expression line."""
    body = "x = " + " + ".join(["a"] * (LONG_LINE_CHARS // 4))
    text = "def f():\n    " + body + "\n    return x\n"
    column = text.index(" + ", len(text) // 2) + 3 - text.index("\n") - 1
    return text, 1, column


def nested_document() -> tuple[str, int, int]:
    text = "def f():\n    x = " + "(" * NESTED_PARENS + "a" + ")" * NESTED_PARENS + "\n"
    return text, 1, text.index("a") - text.index("\n") - 1


# -- the tree walk itself --------------------------------------------------------------------


def test_ancestors_are_the_parent_chain_and_bounded():
    source = b"class A:\n    def f(self):\n        return [x for x in (1, (2, 3))]\n"
    tree = syntax.parse("python", source)
    node = tree.root_node.descendant_for_byte_range(source.index(b"3"), source.index(b"3"))
    expected, current = [], node
    while current is not None:
        expected.append(current)
        current = current.parent
    assert syntax.ancestors(tree.root_node, node) == expected
    assert [n.type for n in syntax.enclosing(tree.root_node, node, frozenset({"function_definition", "class_definition"}))] == [
        "function_definition", "class_definition"]
    # Deeper than the cap: the node and the outermost levels, never more.
    capped = syntax.ancestors(tree.root_node, node, max_depth=3)
    assert capped[0] == node and capped[-3:] == expected[-3:] and len(capped) == 4


def test_documents_over_the_limits_have_no_tree_until_they_fit_again():
    limits = Limits(max_document_bytes=10_000, max_line_bytes=300)
    document = Document("file:///a.py", "x = 1\n", 1, "python", limits=limits)
    assert document.too_large is None and document.tree is not None
    grow = types.TextDocumentContentChangePartial(range=types.Range(types.Position(0, 5), types.Position(0, 5)), text=" + 1" * 100)
    document.apply_changes([grow], 2)
    assert "limits.maxLineBytes" in document.too_large and document.tree is None
    assert document.snapshot().too_large == document.too_large
    shrink = types.TextDocumentContentChangePartial(range=types.Range(types.Position(0, 5), types.Position(0, 405)), text="")
    document.apply_changes([shrink], 3)
    assert document.too_large is None and document.tree is not None
    document.apply_changes([types.TextDocumentContentChangeWholeDocument(text="y = 2\n" * 2_000)], 4)
    assert "limits.maxDocumentBytes" in document.too_large and document.tree is None


# -- the real server -------------------------------------------------------------------------


def open_doc(client: LanguageClient, workspace: Path, name: str, text: str) -> str:
    path = workspace / name
    path.write_text(text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text)))
    return path.as_uri()


async def inline(client: LanguageClient, uri: str, line: int, character: int):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))


async def status(client: LanguageClient) -> dict:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.status"))


def too_large_messages(client: LanguageClient) -> list[str]:
    return [m.message for m in client.messages if TOO_LARGE in m.message]


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_client))
async def deep_client(lsp_client: LanguageClient, tmp_path, vllm_url):
    # The long line is under the limits here, so the tree path is what is measured.
    options = settings(vllm_url, **{"limits.maxLineBytes": 1_000_000, "completion.maxTokens": 8})
    await initialize(lsp_client, tmp_path, options)
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


@ASYNC
@pytest.mark.parametrize("make", [long_line_document, nested_document], ids=["long-line", "nested-parens"])
async def test_completion_deep_in_the_tree_answers_and_does_not_block_others(deep_client: LanguageClient, make):
    text, line, column = make()
    uri = open_doc(deep_client, deep_client.workspace, "deep.py", text)
    started = time.monotonic()
    completion = asyncio.ensure_future(inline(deep_client, uri, line, column))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(status(deep_client), BOUND_S)  # another request, meanwhile
    other = time.monotonic() - started
    result = await asyncio.wait_for(completion, BOUND_S)
    assert result is not None, "the completion request failed"
    assert other < BOUND_S
    assert not too_large_messages(deep_client), "limits.maxLineBytes from initializationOptions was ignored"


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_client))
async def limits_client(lsp_client: LanguageClient, tmp_path, vllm_url):
    await initialize(lsp_client, tmp_path, settings(vllm_url, **{"completion.maxTokens": 8}))
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


@ASYNC
async def test_documents_over_the_limits_degrade_and_say_so_once(limits_client: LanguageClient):
    client = limits_client
    minified = "var a = [" + ",".join(str(i) for i in range(6_000)) + "];\nfunction f(x) {\n  return "
    big = "def f(x):\n    return x\n" * 100_000 + "def g(y):\n    return "  # 2.4 MB
    for name, text in (("min.py", minified), ("big.py", big)):
        uri = open_doc(client, client.workspace, name, text)
        lines = text.split("\n")
        result = await asyncio.wait_for(inline(client, uri, len(lines) - 1, len(lines[-1])), BOUND_S)
        assert result is not None  # a window-only completion, or nothing: never an error
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(0, 0), types.Position(0, 0)), text="# edited\n")]))
        review = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.review", arguments=[uri]))
        assert review["reviewed"] is False and "too large" in review["reason"]
        assert len([m for m in too_large_messages(client) if name in m]) == 1, client.messages
    stats = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    assert stats["process"]["rssBytes"] < 400 * 1024 * 1024


@pytest.fixture
def proxy(vllm_url):
    proxy = FaultProxy(vllm_url).start()
    yield proxy
    proxy.close()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_client))
async def proxied_client(lsp_client: LanguageClient, tmp_path, proxy):
    await initialize(lsp_client, tmp_path, settings(proxy.url, **{"completion.maxTokens": 8, "backend.requestTimeoutMs": 20_000}))
    lsp_client.workspace = tmp_path
    lsp_client.proxy = proxy
    yield
    await lsp_client.shutdown_session()


@ASYNC
async def test_bad_answers_are_malformed_answers_not_internal_errors(proxied_client: LanguageClient):
    client = proxied_client
    for n, mode in enumerate(("badlogprobs", "huge")):
        client.proxy.set_mode(mode)
        uri = open_doc(client, client.workspace, f"m{n}.py", f"import os\n\ndef size_{mode}(path):\n    return os.path.")
        before = (await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats")))["process"]["rssBytes"]
        result = await asyncio.wait_for(inline(client, uri, 3, 19), BOUND_S)  # no -32603 error raised
        assert result is not None and not result.items
        assert client.proxy.recorded("/completions")[-1].mode == mode
        after = (await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats")))["process"]["rssBytes"]
        assert after - before < 64 * 1024 * 1024, f"{mode}: the server grew by {(after - before) >> 20} MB"
        client.proxy.heal()
        await asyncio.sleep(1.0)  # the probe sees the server answer again


# -- error answers and logs (a bare client, stderr read) ---------------------------------------


def test_no_traceback_reaches_the_client_and_expected_errors_are_one_line(tmp_path, vllm_url):
    proxy = FaultProxy(vllm_url).start()
    proxy.set_mode("badlogprobs")
    server = RawServer("--backend-url", proxy.url, "--model", MODEL_NAME)
    try:
        server.initialize(tmp_path, {"completion": {"promptMode": "raw", "debounceMs": 0, "maxTokens": 8}})
        never = (tmp_path / "never.py").as_uri()
        position = {"line": 0, "character": 0}
        answer = server.response(server.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": never}, "position": position, "context": {"triggerKind": 1}}))
        assert answer["error"]["code"] == -32602 and "not open" in answer["error"]["message"]
        answer = server.response(server.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": never}, "position": {"line": -1, "character": 0}, "context": {"triggerKind": 1}}))
        assert answer["error"]["code"] == -32602 and "position" in answer["error"]["message"]
        uri = (tmp_path / "a.py").as_uri()
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": "import os\nos.path."}})
        answer = server.response(server.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 99, "character": 0}, "context": {"triggerKind": 1}}), 30)
        assert "error" not in answer, answer  # the malformed answer counted, not a TypeError
        assert answer["result"] == {"items": []}
        server.response(server.request("shutdown"))
        server.notify("exit")
        server.wait()
    finally:
        server.close()
        proxy.close()
    log = b"".join(server.stderr).decode()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def test_internal_errors_keep_their_traceback_in_the_log():
    from pygls.exceptions import JsonRpcInternalError

    from phi_lsp.lsp.setup import create_server

    sent: list[dict] = []
    protocol = create_server().protocol
    protocol._send_data = lambda data: sent.append(protocol._serialize_message(data))
    try:
        raise TypeError("unsupported operand")
    except TypeError:
        error = JsonRpcInternalError.of(sys.exc_info()).to_response_error()
    protocol._send_response(7, error=error)
    assert "traceback" not in json.dumps(sent) and __file__ not in json.dumps(sent)
    assert sent[0]["error"]["code"] == -32603 and "unsupported operand" in sent[0]["error"]["message"]


# -- the command line ------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi_lsp", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_cli_complete_deep_line_and_bad_answers(tmp_path, vllm_url):
    text, line, column = long_line_document()
    (tmp_path / "deep.py").write_text(text)
    started = time.monotonic()
    done = run_cli("complete", f"deep.py:{line + 1}:{column + 1}", "--backend-url", vllm_url, "--model", MODEL_NAME,
                   "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert "too large for full support" in done.stderr  # a 200,000-character line is over maxLineBytes
    proxy = FaultProxy(vllm_url).start()
    try:
        proxy.set_mode("badlogprobs")
        (tmp_path / "a.py").write_text("import os\nos.path.")
        (tmp_path / "slow.toml").write_text("[completion]\ntimeoutMs = 60000\nmaxTokens = 8\n")  # a shared, busy vLLM
        done = run_cli("complete", "a.py:2:9", "--backend-url", proxy.url, "--model", MODEL_NAME,
                       "--config", "slow.toml", cwd=tmp_path)
    finally:
        proxy.close()
    assert "Traceback" not in done.stderr and "TypeError: " not in done.stderr, done.stderr
    assert "(no suggestion: the completion response has an unexpected shape" in done.stderr, done.stderr


def test_cli_review_says_which_files_are_too_large(tmp_path):
    (tmp_path / "min.py").write_text("data = [" + ",".join(["1"] * 20_000) + "]\n")
    (tmp_path / "ok.py").write_text("def add(a, b):\n    return a + b\n")
    done = run_cli("review", "min.py", "ok.py", "--backend-url", DEAD_BACKEND, "--model", MODEL_NAME, cwd=tmp_path)
    assert "min.py: not reviewed: too large to review: a line of" in done.stderr, done.stderr
    assert "ok.py" not in done.stderr.split("too large")[0] and "Traceback" not in done.stderr, done.stderr
    assert "nothing to review" not in done.stderr  # ok.py was a job (its review then meets the dead backend)
