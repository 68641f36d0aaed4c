"""Inline completion through the server, against the real vLLM, in every editor profile."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from phi_lsp.core.tokens import TokenCounter

pytestmark = pytest.mark.asyncio(loop_scope="session")


def open_doc(client: LanguageClient, workspace, name: str, text: str, language="python") -> str:
    path = workspace / name
    path.write_text(text)
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))
    return uri


def end_of(text: str, encoding: str = "utf-16") -> types.Position:
    lines = text.split("\n")
    last = lines[-1]
    units = {"utf-8": len(last.encode()), "utf-16": len(last.encode("utf-16-le")) // 2, "utf-32": len(last)}[encoding]
    return types.Position(line=len(lines) - 1, character=units)


async def inline(client, uri, position, invoked=True):
    kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=kind)))


async def test_inline_completion_gives_the_models_suggestion(model_client: LanguageClient):
    text = "import os\nimport numpy as"
    uri = open_doc(model_client, model_client.workspace, "a.py", text)
    result = await inline(model_client, uri, end_of(text))
    assert result is not None and result.items, "expected a suggestion"
    first = result.items[0]
    assert first.insert_text.startswith(" np")
    assert first.range.start == first.range.end == end_of(text)
    assert first.command.command == "phi.acceptCompletion"
    accepted = await model_client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="phi.acceptCompletion", arguments=first.command.arguments))
    assert accepted["recorded"] == "accepted" and accepted["known"]


async def test_multibyte_line_positions(model_client: LanguageClient):
    # The cursor sits after astral and multibyte characters: every encoding must agree.
    text = 'name = "😀 café"\ndef add(a, b):\n    return'
    uri = open_doc(model_client, model_client.workspace, "b.py", text)
    result = await inline(model_client, uri, end_of(text))
    assert result.items and result.items[0].insert_text.strip().startswith("a + b")


async def test_completion_fallback_for_clients_without_inline(model_client: LanguageClient):
    text = "import numpy as"
    uri = open_doc(model_client, model_client.workspace, "c.py", text)
    result = await model_client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_of(text),
        context=types.CompletionContext(trigger_kind=types.CompletionTriggerKind.Invoked)))
    assert result.items
    item = result.items[0]
    assert item.text_edit.new_text.startswith("as np")  # the word being typed is replaced too
    assert item.text_edit.range.end == end_of(text)


async def test_typing_through_a_suggestion_needs_no_new_model_call(model_client: LanguageClient):
    text = "def add(a, b):\n    return"
    uri = open_doc(model_client, model_client.workspace, "d.py", text)
    result = await inline(model_client, uri, end_of(text))
    suggestion = result.items[0].insert_text
    before = await model_client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    version = 1
    for char in suggestion[:3]:
        version += 1
        position = end_of(text)
        text += char
        model_client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(position, position), text=char)]))
        again = await inline(model_client, uri, end_of(text), invoked=False)
        assert again.items and again.items[0].insert_text == suggestion[len(text) - len("def add(a, b):\n    return"):]
    after = await model_client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    # (a next-line prefetch may go out in the background; the requests themselves asked nothing)
    assert after["completion"]["modelCalls"] == before["completion"]["modelCalls"]
    assert after["completion"]["servedFromCache"] == before["completion"]["servedFromCache"] + 3


async def test_unknown_document_is_an_error(model_client: LanguageClient):
    with pytest.raises(Exception) as info:
        await inline(model_client, "file:///nowhere/never-opened.py", types.Position(0, 0))
    assert "not open" in str(info.value)


async def test_cancel_request_is_answered_once_and_the_server_keeps_serving(model_client: LanguageClient):
    text = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items."
    uri = open_doc(model_client, model_client.workspace, "e.py", text)
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=end_of(text),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
    future = model_client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me")
    model_client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(asyncio.wrap_future(future), 10)
    assert "cancel" in str(info.value).lower()
    result = await inline(model_client, uri, end_of(text))
    assert result.items and result.items[0].insert_text.startswith("append")


async def test_copilot_style_show_and_partial_accept_notifications_are_counted(model_client: LanguageClient):
    """textDocument/didShowCompletion and textDocument/didPartiallyAcceptCompletion (as the
    Copilot language server takes them: the item, and the accepted length) count like
    phi.acceptCompletion with acceptedChars."""
    text = "def add(a, b):\n    return"
    uri = open_doc(model_client, model_client.workspace, "copilot_style.py", text)
    result = await inline(model_client, uri, end_of(text))
    assert result.items
    item = model_client.protocol._converter.unstructure(result.items[0])
    stats = lambda: model_client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))
    before = (await stats())["completion"]
    model_client.protocol.notify("textDocument/didShowCompletion", {"item": item})
    model_client.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"item": item, "acceptedLength": 2})
    # Malformed ones are ignored, never counted, and never break the server.
    model_client.protocol.notify("textDocument/didShowCompletion", {"item": {"command": {"arguments": [{"id": "nope"}]}}})
    model_client.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"item": item, "acceptedLength": "2"})
    model_client.protocol.notify("textDocument/didPartiallyAcceptCompletion", {"nothing": True})
    after = (await stats())["completion"]  # answered after the notifications were handled
    assert after["displayed"] - before["displayed"] == 1
    assert after["partiallyAccepted"] - before["partiallyAccepted"] == 1
    assert after["accepted"] == before["accepted"]


async def test_a_long_file_fills_the_demo_models_prompt_limit_not_more(model_client: LanguageClient):
    """The test model completes well up to about 1,300 prompt tokens (its training length, not
    its configured 2,048): at the default contextTokens (1,536) its prompts stop at 1,152, and
    a long file fills them (the window is counted as the tokenizer counts)."""
    text = "".join(f"def helper_{i}(value):\n    return value + {i}\n\n\n" for i in range(600)) + "def main():\n    return"
    uri = open_doc(model_client, model_client.workspace, "long_demo.py", text)
    await inline(model_client, uri, end_of(text))
    last = await model_client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.debug.lastPrompt"))
    tokens = TokenCounter.for_model("phi-code-tiny").count(last["prompt"])
    assert 1_000 <= tokens <= 1_152, tokens
