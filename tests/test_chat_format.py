"""Chat prompts in the model's own format: the official Phi templates (tests/golden/chat_templates,
sources noted in each file) rendered byte for byte, learning a template from a vLLM server, and
the built-in fallback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from phi_lsp.completion import prompts
from phi_lsp.completion.context import CompletionContext
from phi_lsp.completion.service import CompletionService, Model
from phi_lsp.core import chat_format as cf
from phi_lsp.core.chat_template import ChatTemplateError, find_chat_template, load_from_dir
from phi_lsp.core.settings import CompletionSettings
from phi_lsp.core.tokens import TokenCounter
from phi_lsp.model.backend import Backend, BackendRequestError
from phi_lsp.model.batching import Batcher
from phi_lsp.model.chat_format_discovery import ChatFormats, LearningFailed, learn

GOLDEN = Path(__file__).parent / "golden" / "chat_templates"
NAMES = ("phi-3-mini-4k-instruct", "phi-3.5-mini-instruct", "phi-4-mini-instruct", "phi-4")
# The special tokens the templates write (each model's added tokens include them).
SPECIAL = {"<|endoftext|>": 0, "<|system|>": 1, "<|user|>": 2, "<|assistant|>": 3, "<|end|>": 4,
           "<|im_start|>": 5, "<|im_end|>": 6, "<|im_sep|>": 7}
# A template without a system turn (Phi-3-medium's: the system message is dropped).
NO_SYSTEM = ("{% for message in messages %}{% if (message['role'] == 'user') %}{{'<|user|>' + '\n' + message['content'] "
             "+ '<|end|>' + '\n' + '<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') %}"
             "{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")
REFUSES_SYSTEM = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                  "{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] "
                  "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")


def golden_data(name: str) -> dict:
    return json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))


def model_dir(tmp: Path, template: str, special=SPECIAL, **config) -> Path:
    """A model directory as Hugging Face ships one (only the files the template needs)."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = {"chat_template": template, "eos_token": "<|endoftext|>", **config}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = {"added_tokens": [{"id": i, "content": t, "special": True} for t, i in special.items()]}
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer))
    return tmp


_GOLDEN_CACHE: dict = {}


def golden(name: str):
    """The ChatTemplate of an official Phi template, read as from its model directory."""
    if name not in _GOLDEN_CACHE:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="phi-lsp-golden-"))
        _GOLDEN_CACHE[name] = load_from_dir(model_dir(directory, golden_data(name)["chat_template"]))
    return _GOLDEN_CACHE[name]


# -- the official templates, byte for byte ----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_official_templates_render_the_known_prompt(name):
    data = golden_data(name)
    template = golden(name)
    assert data["sources"] and template.render("S", "U") == data["expected"]
    assert template.stops[0] == data["end_of_turn"] and template.stop_token_ids[0] == SPECIAL[data["end_of_turn"]]
    assert not template.folds_system


@pytest.mark.parametrize("name", NAMES)
def test_rendering_matches_transformers(name):
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = golden(name)
    system, user = "You are terse.\n  Indented {braces} and {{ jinja }}", "def f():\n    return <FILL_HERE>\n"
    expected, _ = chat_template_utils.render_jinja_template(
        [cf.messages(system, user)], chat_template=template.source, add_generation_prompt=True,
        eos_token="<|endoftext|>",
    )
    assert template.render(system, user) == expected[0]


def test_phi4_mini_is_not_phi3s_shape():
    assert golden("phi-4-mini-instruct").render("S", "U") == "<|system|>S<|end|><|user|>U<|end|><|assistant|>"
    assert golden("phi-3-mini-4k-instruct").render("S", "U") == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n"


def test_chat_template_jinja_wins_over_tokenizer_config_and_named_lists_use_default(tmp_path):
    directory = model_dir(tmp_path / "m", [{"name": "tool_use", "template": "TOOLS"},
                                           {"name": "default", "template": golden_data("phi-4")["chat_template"]}])
    assert load_from_dir(directory).render("S", "U") == golden_data("phi-4")["expected"]
    (directory / "chat_template.jinja").write_text(golden_data("phi-4-mini-instruct")["chat_template"])
    assert load_from_dir(directory).render("S", "U") == golden_data("phi-4-mini-instruct")["expected"]


def test_the_bundled_model_has_its_template_on_disk():
    template = find_chat_template("phi-code-tiny")
    assert template is not None and template.origin.endswith("chat_template.jinja")
    assert template.render("S", "U") == "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n"
    assert template.stops == ("<|end|>", "<|endoftext|>") and template.stop_token_ids == (4, 0)


@pytest.mark.parametrize("source", [NO_SYSTEM, REFUSES_SYSTEM])
def test_templates_without_a_system_turn_get_it_in_the_user_turn(tmp_path, source):
    template = load_from_dir(model_dir(tmp_path, source))
    assert template.folds_system
    rendered = template.render("Be brief.", "U")
    assert "Be brief.\n\nU" in rendered and rendered.count("Be brief.") == 1


def test_a_template_is_sandboxed(tmp_path):
    attack = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        load_from_dir(model_dir(tmp_path, attack)).render_messages([{"role": "user", "content": "x"}])


def test_a_broken_template_is_skipped(tmp_path):
    model_dir(tmp_path, "{% for m in messages %}")
    assert find_chat_template(str(tmp_path)) is None


# -- learning a template from a server --------------------------------------------------------


class TemplateServer:
    """Stands in for vLLM's /tokenize and /detokenize with a template the real test server does
    not serve (Phi-4, templates without a system turn): one "token" per character."""

    kind = "vllm"

    def __init__(self, template, url="http://server.test/v1"):
        self.template, self.url, self.root_url = template, url, url[:-3]
        self.calls = 0

    async def tokenize_chat(self, model, messages, add_generation_prompt=True, timeout_s=None):
        self.calls += 1
        try:
            return [ord(c) for c in self.template.render_messages(messages, add_generation_prompt)]
        except ChatTemplateError as exc:
            raise BackendRequestError(f"HTTP 400: {exc}") from exc

    async def detokenize(self, model, tokens, timeout_s=None):
        return "".join(map(chr, tokens))

    async def tokenize_text(self, model, text, timeout_s=None):
        first = cf.first_token(text, SPECIAL) if any(text.startswith(t) for t in SPECIAL) else text[0]
        rest = text[len(first):]
        return [SPECIAL.get(first, 1000)] + [ord(c) for c in rest], [first] + list(rest)


@pytest.mark.parametrize("name", NAMES)
def test_a_learned_shape_renders_like_the_template(name):
    template = golden(name)
    shape = asyncio.run(learn(TemplateServer(template), "m"))
    for system, user in (("S", "U"), ("multi\nline", "code {x}\n\n")):
        assert shape.render(system, user) == template.render(system, user)
    assert shape.stops == (golden_data(name)["end_of_turn"],)
    assert shape.stop_token_ids == (SPECIAL[golden_data(name)["end_of_turn"]],)


@pytest.mark.parametrize("source", [NO_SYSTEM, REFUSES_SYSTEM])
def test_a_server_without_a_system_turn_is_probed_for_it(tmp_path, source):
    template = load_from_dir(model_dir(tmp_path, source))
    shape = asyncio.run(learn(TemplateServer(template), "m"))
    assert shape.folds_system and shape.render("Sys", "U") == template.render("Sys", "U")


def test_a_template_that_is_not_a_shape_is_refused(tmp_path):
    # The content's length changes the text around it: no fixed shape renders it.
    odd = "{% for m in messages %}<{{ m['content'] | length }}>{{ m['content'] }}{% endfor %}"
    with pytest.raises(LearningFailed):
        asyncio.run(learn(TemplateServer(load_from_dir(model_dir(tmp_path, odd))), "m"))


def test_formats_are_learned_once_and_a_fallback_is_said_once(tmp_path):
    told: list[str] = []
    formats = ChatFormats(tell=told.append)
    server = TemplateServer(golden("phi-4"))

    async def run():
        first = await asyncio.gather(*(formats.get(server, "not-on-disk/model") for _ in range(3)))
        calls = server.calls
        again = await formats.get(server, "not-on-disk/model")
        return first, calls, again

    first, calls, again = asyncio.run(run())
    assert all(f is first[0] for f in first) and again is first[0] and server.calls == calls
    assert first[0].render("S", "U") == golden_data("phi-4")["expected"] and told == []

    broken = TemplateServer(load_from_dir(model_dir(tmp_path, "{% for m in messages %}<{{ m['content'] | length }}>{% endfor %}")))

    async def fallback():
        return [await formats.get(broken, "other/model") for _ in range(2)]

    results = asyncio.run(fallback())
    assert all(r is cf.BUILTIN for r in results) and len(told) == 1 and "other/model" in told[0]


def test_openai_servers_apply_their_own_template():
    server = TemplateServer(golden("phi-4"))
    server.kind = "openai"
    chat = asyncio.run(ChatFormats().get(server, "m"))
    assert server.calls == 0 and chat.stops == () and not chat.fallback


# -- against the real vLLM --------------------------------------------------------------------


def _context() -> CompletionContext:
    return CompletionContext(
        path="m.py", language="python", prefix="def add(a, b):\n    return ", suffix="\n",
        preamble=[], snippets=[], line_prefix="    return ", line_suffix="", window_start_line=0,
    )


def test_the_real_server_teaches_the_bundled_models_template_and_prompts_use_it(vllm_url):
    on_disk = find_chat_template("phi-code-tiny")

    async def run():
        backend = Backend(vllm_url)
        try:
            learned = await learn(backend, "phi-code-tiny")
            model = Model(backend, Batcher(backend), "phi-code-tiny", TokenCounter(), chat=learned)
            service = CompletionService(model=lambda: model, settings=lambda: CompletionSettings(prompt_mode="chat"))
            prompt = prompts.render(_context(), prompts.CHAT, True, chat=learned)
            choices = await service._complete(model, prompt, prompts_sampling(prompt), 30.0)
            return learned, prompt, choices, backend.completion_body("phi-code-tiny", [prompt.text], prompts_sampling(prompt))
        finally:
            await backend.aclose()

    learned, prompt, choices, body = asyncio.run(run())
    assert learned.source_note.startswith("the chat template learned from") and not learned.fallback
    for system, user in (("S", "U"), (prompts.SYSTEM, "code\n    x = {y}\n")):
        assert learned.render(system, user) == on_disk.render(system, user)
    assert prompt.text == on_disk.render(*prompt.chat)
    assert learned.stops == ("<|end|>",) and body["stop_token_ids"] == [4]
    assert len(choices) == 1  # the server took the prompt and its stops


def prompts_sampling(prompt):
    from phi_lsp.model.backend import Sampling

    return Sampling(max_tokens=8, stop=prompt.stop, stop_token_ids=prompt.stop_token_ids)


def test_a_model_the_server_cannot_render_falls_back_once(vllm_url):
    told: list[str] = []

    async def run():
        backend = Backend(vllm_url)
        try:
            formats = ChatFormats(tell=told.append)
            return [await formats.get(backend, "no-such/model") for _ in range(2)]
        finally:
            await backend.aclose()

    assert all(r is cf.BUILTIN for r in asyncio.run(run())) and len(told) == 1


def test_review_on_an_openai_kind_server_sends_messages_to_chat_completions(vllm_url):
    # vLLM serves /v1/chat/completions too: as backend.kind = openai it stands for Ollama & co.
    from dataclasses import replace

    from phi_lsp.core.documents import Document
    from phi_lsp.core.settings import ReviewSettings
    from phi_lsp.review.pipeline import FileJob, Reviewer, ReviewOptions

    text = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"

    async def run():
        backend = Backend(vllm_url, kind="openai")
        try:
            chat = await ChatFormats().get(backend, "phi-code-tiny")
            options = ReviewOptions.from_settings(ReviewSettings(max_tokens=16), "phi-code-tiny", backend)
            options = replace(options, mode="chat", chat=chat)
            job = FileJob(Document("file:///w/m.py", text, 1, "python").snapshot(), "m.py")
            [result] = await Reviewer().review([job], backend, options)
            return result, dict(backend.stats.by_path)
        finally:
            await backend.aclose()

    result, paths = asyncio.run(run())
    assert result.units_sent == 2 and result.units_failed == 0
    assert paths == {"/chat/completions": 2}


def test_a_served_name_never_reads_a_template_from_the_working_directory(tmp_path, monkeypatch):
    model_dir(tmp_path / "org" / "model", golden_data("phi-4")["chat_template"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    assert find_chat_template("org/model") is None
    assert find_chat_template(str(tmp_path / "org" / "model")).render("S", "U") == golden_data("phi-4")["expected"]
