"""Review prompts, the answer constraint, and the promise that any answer ends as findings or
counted drops (property tests)."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phi_lsp.core.documents import Document
from phi_lsp.core.privacy import PrivacyFilter
from phi_lsp.core.symbols import Definition
from phi_lsp.core.tokens import TokenCounter
from phi_lsp.review import prompts
from phi_lsp.review.anchor import line_offsets
from phi_lsp.review.findings import TRUNCATED, UNPARSEABLE, parse_answer, review_answer
from phi_lsp.review.units import extract_units
from tests.test_chat_format import golden

SOURCE = '''import os
import requests

API_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


class Client:
    def fetch(self, url):
        return requests.get(url, headers={"k": API_KEY}).json()


def average(values):
    total = sum(values)
    return total / len(values)
'''


def snapshot():
    return Document("file:///w/client.py", SOURCE, 1, "python").snapshot()


def unit(name: str):
    return next(u for u in extract_units(snapshot()) if u.name == name)


def test_the_regex_accepts_the_few_shot_answers_and_pins_whitespace():
    regex = re.compile(prompts.answer_regex())
    for example in prompts._EXAMPLES:
        assert regex.fullmatch(example[5]), example[5]
    assert regex.fullmatch("[]")
    assert not regex.fullmatch("[ ]") and not regex.fullmatch("[]\n") and not regex.fullmatch(" []")
    one = json.loads(prompts._EXAMPLES[0][5])[0]
    four = "[" + ", ".join(json.dumps(one) for _ in range(4)) + "]"
    assert not regex.fullmatch(four)  # at most three findings per unit
    assert not regex.fullmatch(json.dumps([{**one, "severity": "fatal"}]))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.from_regex(prompts.answer_regex(), fullmatch=True))
def test_every_answer_the_constraint_allows_parses(answer):
    items, reason = parse_answer(answer, "stop")
    assert reason is None and isinstance(items, list)
    result = review_answer(answer, "stop", unit("average"), "python", snapshot().source,
                           line_offsets(unit("average"), snapshot().buffer))
    stated = sum(result.drops.values()) - sum(v for k, v in result.drops.items() if k.startswith("fix-"))
    assert len(result.findings) + stated == len(items)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.sampled_from(["stop", "length", None]))
def test_any_text_ends_as_findings_or_counted_drops(text, finish_reason):
    u = unit("average")
    result = review_answer(text, finish_reason, u, "python", snapshot().source, line_offsets(u, snapshot().buffer))
    assert result.findings or sum(result.drops.values()) >= 0
    if finish_reason == "length":
        assert dict(result.drops) == {TRUNCATED: 1}


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["lines", "line", "severity", "category", "message", "code", "fix", "quote"]), children, max_size=7),
    max_leaves=20))
def test_any_json_ends_as_findings_or_counted_drops(value):
    u = unit("average")
    result = review_answer(json.dumps(value), "stop", u, "python", snapshot().source, line_offsets(u, snapshot().buffer))
    for finding in result.findings:
        assert finding.quote in SOURCE


def test_unparseable_is_counted():
    assert parse_answer("no list here", "stop") == (None, UNPARSEABLE)
    assert parse_answer("", "stop") == (None, UNPARSEABLE)


def test_modes_by_model_name():
    assert prompts.resolve_mode("auto", "phi-code-tiny") == "raw"
    assert prompts.resolve_mode("auto", "microsoft/Phi-4-mini-instruct") == "chat"
    assert prompts.resolve_mode("auto", "microsoft/Phi-3.5-mini-instruct") == "chat"
    assert prompts.resolve_mode("auto", "microsoft/phi-4") == "chat"
    assert prompts.resolve_mode("auto", "some-base-model") == "raw"
    assert prompts.resolve_mode("chat", "phi-code-tiny") == "chat"
    assert prompts.resolve_mode("raw", "microsoft/phi-4") == "raw"


def test_raw_prompt_shows_context_numbered_code_and_ends_where_the_answer_starts():
    privacy = PrivacyFilter()
    definitions = {"get": [Definition("get", "function", "def get(url, params=None, **kwargs) -> Response:", "/x/api.py", 3)]}
    u = unit("Client.fetch")
    ctx = prompts.PromptContext("client.py", "python", prompts.file_imports(snapshot()),
                                prompts.signatures_for(u, lambda name: definitions.get(name, [])))
    prompt = prompts.render(u, ctx, "raw", 320, clean=privacy.clean)
    assert prompt.endswith("```\nReview:\n")
    assert "## Snippet 4: client.py, method Client.fetch" in prompt
    assert "  import requests" in prompt and "  class Client:" in prompt
    assert "def get(url, params=None, **kwargs) -> Response:" in prompt
    assert "\n8 |     def fetch(self, url):\n9 |         return" in prompt
    module = prompts.render(unit("<module>"), ctx, "raw", 320, clean=privacy.clean)
    assert "sk-proj-" not in module and "<redacted>" in module  # secrets never reach a prompt


def test_chat_prompts_use_the_models_template():
    u = unit("average")
    ctx = prompts.PromptContext("client.py", "python")
    phi3 = prompts.render(u, ctx, "chat", 320, chat=golden("phi-3.5-mini-instruct"))
    assert phi3.startswith("<|system|>\n") and phi3.endswith("<|end|>\n<|assistant|>\n") and "<|user|>\n" in phi3
    chatml = prompts.render(u, ctx, "chat", 320, chat=golden("phi-4"))
    assert chatml.startswith("<|im_start|>system<|im_sep|>") and chatml.endswith("<|im_start|>assistant<|im_sep|>")
    assert "13 |     total = sum(values)" in chatml
    assert prompts.stop_sequences("chat", golden("phi-4"))[0] == "<|im_end|>"


def test_prompts_fit_the_context_by_dropping_context_first():
    counter = TokenCounter.for_model("phi-code-tiny")
    u = unit("Client.fetch")
    many = [f"def helper_{i}(argument_{i}: int, other_{i}: str = 'x') -> dict[str, int]: ..." for i in range(8)]
    ctx = prompts.PromptContext("client.py", "python", [f"import module_{i}" for i in range(24)], many)
    full = prompts.render(u, ctx, "raw", 320, counter.count)
    assert counter.count(full) <= prompts.CONTEXT_TOKENS - 320
    assert "helper_0" in full
    tight = prompts.render(u, ctx, "raw", 1500, counter.count)
    assert tight is not None and counter.count(tight) <= prompts.CONTEXT_TOKENS - 1500
    assert "helper_0" not in tight
    assert prompts.render(u, ctx, "raw", 2000, counter.count) is None  # counted too-long, never sent
