"""Chat prompts through the language server, against the real vLLM: promptMode chat renders the
served model's own template and stops at its end-of-turn token."""

from __future__ import annotations

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import LanguageClient

from phi_lsp.completion.prompts import SYSTEM
from phi_lsp.core.chat_template import find_chat_template
from tests.conftest import CONFIG, initialize, settings
from tests.test_completion_e2e import end_of, inline, open_doc

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_lsp.fixture(config=CONFIG)
async def chat_client(lsp_client: LanguageClient, tmp_path, vllm_url):
    await initialize(lsp_client, tmp_path, settings(vllm_url, **{"completion.promptMode": "chat"}))
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()


async def command(client: LanguageClient, name: str):
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command=name))


async def test_chat_prompts_use_the_models_template_and_its_end_of_turn(chat_client: LanguageClient):
    text = "def add(a, b):\n    return"
    uri = open_doc(chat_client, chat_client.workspace, "a.py", text)
    await inline(chat_client, uri, end_of(text))
    last = await command(chat_client, "phi.debug.lastPrompt")
    template = find_chat_template("phi-code-tiny")
    prompt = last["prompt"]
    head = template.render(SYSTEM, "\0").split("\0")[0]
    assert prompt.startswith(head) and prompt.endswith("<|end|>\n<|assistant|>\n")
    user = prompt[len(head) : -len("<|end|>\n<|assistant|>\n")]
    assert "<FILL_HERE>" in user and template.render(SYSTEM, user) == prompt
    body = last["requests"][0]
    assert body["stop"][:2] == ["<|end|>", "<|endoftext|>"] and body["stop_token_ids"] == [4, 0]
    stats = await command(chat_client, "phi.stats")
    [(key, chat)] = stats["chatFormats"].items()
    assert key.startswith("phi-code-tiny @ ") and "chat_template.jinja" in chat["source"] and not chat["fallback"]
