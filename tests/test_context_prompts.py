"""Context building and prompt rendering (pure stages, no model)."""

from __future__ import annotations

from pathlib import Path

from phi_lsp.completion import context as context_module
from phi_lsp.completion import prompts
from phi_lsp.completion.context import Snippet, Sources, build_context, names_near
from phi_lsp.core import syntax
from phi_lsp.core.documents import Document
from phi_lsp.core.symbols import SymbolIndex
from phi_lsp.core.tokens import TokenCounter
from tests.test_chat_format import golden

COUNTER = TokenCounter.for_model("phi-code-tiny")  # the bundled model's own tokenizer


def snapshot_of(text: str, uri="file:///ws/pkg/app.py"):
    return Document(uri, text, 1, "python").snapshot()


BIG = "import os\nfrom pkg.util import load_config\n\n\nclass Service:\n    def __init__(self):\n        self.x = 1\n\n    def run(self, path):\n" + "".join(
    f"        value_{i} = {i}\n" for i in range(400)
) + "        config = load_config("


def test_counter_is_exact_for_the_bundled_model():
    assert COUNTER.exact
    assert COUNTER.count("import numpy as np") < 10


def test_small_file_fits_whole():
    text = "import os\n\ndef f():\n    return"
    ctx = build_context(snapshot_of(text), len(text), 1000, COUNTER, "pkg/app.py")
    assert ctx.prefix == text and ctx.preamble == [] and ctx.window_start_line == 0


def test_window_keeps_imports_and_scope_headers_outside_it():
    snap = snapshot_of(BIG)
    ctx = build_context(snap, len(BIG.encode()), 300, COUNTER, "pkg/app.py")
    assert ctx.window_start_line > 0
    # The window starts at a statement of the method's body, so header + window read like code.
    assert ctx.prefix.startswith("        value_")
    assert ctx.preamble[:2] == ["import os", "from pkg.util import load_config"]
    assert "class Service:" in ctx.preamble and "    def run(self, path):" in ctx.preamble
    assert {"imports", "scopes"} <= set(ctx.sources_used)
    assert ctx.tokens <= 300


def test_the_preamble_keeps_its_room_at_every_budget():
    """The prefix window may not eat the room the imports and headers need (it did at 1024)."""
    snap = snapshot_of(BIG)
    for budget in (256, 512, 1024, 1536, 2048):
        ctx = build_context(snap, len(BIG.encode()), budget, COUNTER, "pkg/app.py")
        assert ctx.preamble == ["import os", "from pkg.util import load_config", "class Service:",
                                "    def run(self, path):"], budget
        assert ctx.tokens <= budget


def test_window_start_is_stable_while_typing():
    snap1 = snapshot_of(BIG)
    more = BIG + "pa"
    snap2 = snapshot_of(more)
    a = build_context(snap1, len(BIG.encode()), 300, COUNTER, "x")
    b = build_context(snap2, len(more.encode()), 300, COUNTER, "x")
    assert a.window_start_line == b.window_start_line


def _long_methods(count: int, lines: int) -> str:
    body = "".join(f"        total_{j} = compute(\n            value,\n            {j},\n        )\n" for j in range(lines))
    return "".join(f"    def method_{i}(self, value):\n{body}        return total_0\n\n" for i in range(count))


LONG_CLASS = "import os\n\n\nclass Big:\n" + _long_methods(12, 10) + "    def last(self):\n        result = self.method_1(3)\n        "


def test_line_counts_stay_close_to_the_tokenizers_and_never_under():
    """The window is cut by the line-cached count: under it, the prompt would overflow; over it,
    budget is left unused (counting each line with its trailing break was 11% over)."""
    text = Path(context_module.__file__).read_text(encoding="utf-8")
    exact, by_lines = COUNTER.count(text), COUNTER.count_lines(text)
    assert exact <= by_lines <= exact * 1.05


def test_the_window_fills_the_budget_from_where_a_statement_starts():
    """Deep in the last of many long methods, the window reaches back as far as the budget goes
    (into the methods before, not only to the current one's header), and its first line starts
    a statement: not the inside of a call, not between a decorator and its function."""
    for budget in (256, 384, 512, 768):
        for typed in range(0, 40, 7):
            text = LONG_CLASS + "x" * typed
            ctx = build_context(snapshot_of(text), len(text.encode()), budget, COUNTER, "pkg/app.py")
            assert budget * 0.75 <= ctx.tokens <= budget, (budget, typed, ctx.tokens)
            first = ctx.prefix.split("\n", 1)[0]
            assert first.lstrip().startswith(("def ", "total_", "return ")), first


def test_definitions_from_other_files_are_in_the_context(tmp_path):
    index = SymbolIndex()
    util = b'def load_config(path: str, strict: bool = False) -> dict:\n    """Read a TOML config."""\n    return {}\n'
    index.update("/ws/pkg/util.py", syntax.parse("python", util), util, "python")
    snap = snapshot_of(BIG)
    assert "load_config" in names_near(snap, len(BIG.encode()))
    ctx = build_context(snap, len(BIG.encode()), 600, COUNTER, "pkg/app.py", index=index, file_path="/ws/pkg/app.py",
                        display=lambda p: p.replace("/ws/", ""))
    assert "symbols" in ctx.sources_used
    [snippet] = [s for s in ctx.snippets if s.kind == "definitions"]
    assert snippet.path == "pkg/util.py"
    assert "def load_config(path: str, strict: bool = False) -> dict:" in snippet.text
    off = build_context(snap, len(BIG.encode()), 600, COUNTER, "pkg/app.py", index=index,
                        file_path="/ws/pkg/app.py", sources=Sources.only_prefix())
    assert off.snippets == [] and off.preamble == []


def test_raw_prompt_uses_the_training_format():
    ctx = build_context(snapshot_of("def add(a, b):\n    return"), 26, 500, COUNTER, "m.py",
                        recent=[Snippet("other.py", "x = 1", "recent")])
    p = prompts.render(ctx, prompts.RAW, single_line=True)
    assert p.text == "# file: other.py\nx = 1\n<|endoftext|>\n# file: m.py\ndef add(a, b):\n    return"
    assert "\n" in p.stop and "<|endoftext|>" in p.stop


def test_raw_prompts_leave_the_space_before_a_word_to_the_model():
    """Token healing: the prompt ends on the token the model was trained on (a line break and
    all the indentation but its last space, which belongs to the next word)."""
    fresh_line = "def add(a, b):\n    "
    ctx = build_context(snapshot_of(fresh_line), len(fresh_line), 500, COUNTER, "m.py")
    for single_line in (False, True):
        p = prompts.render(ctx, prompts.RAW, single_line=single_line)
        assert p.text.endswith("def add(a, b):\n   ") and p.heal == " "
    after_code = "total = "
    ctx = build_context(snapshot_of(after_code), len(after_code), 500, COUNTER, "m.py")
    p = prompts.render(ctx, prompts.RAW, single_line=True)
    assert p.text.endswith("total =") and p.heal == " "
    # Nothing to heal after a word, or with tabs (a tab is a token of its own).
    for text in ("total", "if x:\n\t"):
        ctx = build_context(snapshot_of(text), len(text), 500, COUNTER, "m.py")
        assert prompts.render(ctx, prompts.RAW, single_line=False).heal == ""
    # A prompt variant that ends at the cursor is healed the same way; chat prompts never are.
    ctx = build_context(snapshot_of(after_code), len(after_code), 500, COUNTER, "m.py")
    assert prompts.render(ctx, prompts.RAW, True, template="{comment} file: {path}\n{prefix}").heal == " "
    assert prompts.render(ctx, prompts.CHAT, True).heal == ""


def test_chat_prompts_are_in_the_models_own_format():
    ctx = build_context(snapshot_of("x = 1\ny = "), 10, 500, COUNTER, "m.py")
    phi3 = prompts.render(ctx, prompts.CHAT, single_line=True, chat=golden("phi-3-mini-4k-instruct"))
    assert phi3.text.startswith("<|system|>\n") and phi3.text.endswith("<|end|>\n<|assistant|>\n")
    assert "y = <FILL_HERE>" in phi3.text and phi3.stop[0] == "<|end|>" and "\n" in phi3.stop
    phi4 = prompts.render(ctx, prompts.CHAT, single_line=False, chat=golden("phi-4"))
    assert phi4.text.startswith("<|im_start|>system<|im_sep|>") and phi4.text.endswith("<|im_start|>assistant<|im_sep|>")
    assert phi4.stop[0] == "<|im_end|>" and "\n" not in phi4.stop
    messages = prompts.chat_messages(phi4)
    assert [m["role"] for m in messages] == ["system", "user"] and "<FILL_HERE>" in messages[1]["content"]
    assert golden("phi-4").render(messages[0]["content"], messages[1]["content"]) == phi4.text
    # Without a format, the documented built-in shape (Phi-4-mini's).
    builtin = prompts.render(ctx, prompts.CHAT, single_line=True)
    assert builtin.text.startswith("<|system|>You are") and builtin.text.endswith("<|end|><|assistant|>")


def test_family_by_model_name():
    assert prompts.family("microsoft/Phi-4-mini-instruct") == prompts.CHAT
    assert prompts.family("microsoft/Phi-3.5-mini-instruct") == prompts.CHAT
    assert prompts.family("microsoft/Phi-3-mini-4k-instruct") == prompts.CHAT
    assert prompts.family("microsoft/phi-4") == prompts.CHAT
    assert prompts.family("phi4-mini") == prompts.CHAT  # Ollama's name
    assert prompts.family("phi-code-tiny") == prompts.RAW
    assert prompts.family("phi-code-tiny", "chat") == prompts.CHAT
    assert prompts.family("microsoft/Phi-4-mini-instruct", "raw") == prompts.RAW
