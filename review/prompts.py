"""Review prompts and the constraint on the answer.

The answer to every prompt is one JSON list of findings on one line, in a fixed shape:

    [{"lines": [5, 5], "severity": "warning", "category": "bug", "message": "...",
      "code": "<the exact code the finding is about>", "fix": "<replacement>" | null}]

On vLLM the answer is constrained by a regular expression (vLLM structured outputs, "regex")
that pins every space, the key order, the allowed severities and categories, and bounds the
number of findings (3): whatever the model does, the text parses. Its length is bounded by
`review.maxTokens`; an answer cut there ("length") is no answer and counted as truncated.
(A JSON-schema constraint would let a weak model fill the whitespace the schema allows until
max_tokens; a regex leaves none.) Backends without structured outputs
(`backend.kind = openai`) get the same prompt unconstrained; the parser then looks for the
list in whatever came back, and validation does the rest.

Prompt modes:
- "raw" (base models such as the demo model): a few-shot "code review notes" document; the
  model continues it after "Review:" with the list.
- "chat" (Phi instruct models): a system and a user turn in the model's own chat format (a
  `ChatRenderer`: its template on disk or learned from its server, phi_lsp/core/chat_format.py).
Chat prompts are rendered here and sent to /v1/completions like raw ones, so all units of a
save still go out as one list-of-prompts request; on `backend.kind = openai` they go as
messages to /v1/chat/completions (the server applies the model's template).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from phi_lsp.core import chat_format as models
from phi_lsp.core.chat_format import BUILTIN, ChatRenderer, ChatShape

from phi_lsp.review.units import Unit

SEVERITIES = ("error", "warning", "info", "hint")
CATEGORIES = ("bug", "security", "performance", "style", "maintainability")
MAX_FINDINGS_PER_UNIT = 3
# Longer strings from unconstrained answers are cut (messages) or refused (quotes, fixes).
MAX_MESSAGE_CHARS = 200
MAX_CODE_CHARS = 400
MAX_FIX_CHARS = 600

# The smallest context of the models phi-lsp runs (the demo model's 2,048 tokens): every
# prompt plus its answer budget fits in it, so one oversized prompt never fails a whole batch.
CONTEXT_TOKENS = 2_048
CHARS_PER_TOKEN = 3.2  # estimate when the model's tokenizer is not at hand (errs long)
MAX_IMPORT_LINES = 24
MAX_SIGNATURES = 8
MAX_CONTEXT_CHARS = 900

_FENCE = {"python": "python", "javascript": "javascript", "typescript": "typescript", "tsx": "tsx",
          "go": "go", "rust": "rust", "java": "java", "c": "c", "cpp": "cpp"}


# -- the constraint --------------------------------------------------------------------------


def _string(non_empty: bool = False) -> str:
    # A JSON string: no raw control characters, only simple escapes. Its length is NOT bounded
    # in the regex: with bounded repetitions ({0,120}) vLLM's structured-output masks cost ~6x
    # more per step at a batch of 32 (measured: 62 s vs 10.5 s for the same 620 tokens).
    # max_tokens bounds the answer instead, and an answer cut there counts as truncated.
    return r'"(?:[^"\\\x00-\x1f]|\\["\\/nt])' + ("+" if non_empty else "*") + '"'


def answer_regex(max_findings: int = MAX_FINDINGS_PER_UNIT) -> str:
    number = r"[1-9][0-9]{0,5}"
    finding = (
        r'\{"lines": \[' + number + ", " + number + r'\], '
        r'"severity": "(?:' + "|".join(SEVERITIES) + r')", '
        r'"category": "(?:' + "|".join(CATEGORIES) + r')", '
        r'"message": ' + _string(non_empty=True) + ", "
        r'"code": ' + _string(non_empty=True) + ", "
        r'"fix": (?:null|' + _string() + r")\}"
    )
    more = r"(?:, " + finding + r"){0,%d}" % (max_findings - 1)
    return r"\[(?:" + finding + more + r")?\]"


def constraint() -> tuple[str, str]:
    return ("regex", answer_regex())


# -- prompt modes ----------------------------------------------------------------------------


def resolve_mode(mode: str, model: str) -> str:
    """"raw" or "chat" for a promptMode setting and a served model name."""
    return models.prompt_family(model, mode)


def stop_sequences(mode: str, chat: ChatRenderer | None = None) -> tuple[str, ...]:
    """Where an unconstrained answer ends (constrained answers end with the regex)."""
    if mode == "raw":
        return ("\n## ", "\nReview:")
    return (chat or BUILTIN).stops


# -- context ---------------------------------------------------------------------------------


@dataclass
class PromptContext:
    path: str  # as shown to the model (workspace-relative where possible)
    language: str | None
    imports: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)


def file_imports(snapshot) -> list[str]:
    """The file's import statements (one entry per line), bounded."""
    from phi_lsp.core import syntax

    if snapshot.tree is None:
        return []
    kinds = syntax.spec_for(snapshot.language).imports
    lines: list[str] = []
    for node in snapshot.tree.root_node.named_children:
        if node.type in kinds:
            text = snapshot.source[node.start_byte : node.end_byte].decode("utf-8", "replace")
            lines.extend(line.rstrip() for line in text.splitlines() if line.strip())
            if len(lines) >= MAX_IMPORT_LINES:
                return lines[:MAX_IMPORT_LINES]
    return lines


def signatures_for(unit: Unit, lookup: Callable[[str], list]) -> list[str]:
    """Signatures of what the unit calls, from the workspace index (`lookup(name)` gives
    Definitions). Its own name is skipped; each signature appears once."""
    own = unit.name.split(" (part")[0].rsplit(".", 1)[-1]
    found: list[str] = []
    for name in unit.calls:
        if name == own:
            continue
        for definition in lookup(name)[:2]:
            signature = definition.signature
            if definition.container:
                signature = f"{signature}  # in class {definition.container}"
            if signature not in found:
                found.append(signature)
        if len(found) >= MAX_SIGNATURES:
            break
    return found[:MAX_SIGNATURES]


# -- rendering -------------------------------------------------------------------------------

_INSTRUCTIONS = (
    "Each snippet below is followed by its review: a JSON list of findings on one line, [] when "
    "the code is fine. A finding has \"lines\": [first, last] (the snippet's line numbers), a "
    "\"severity\" (error, warning, info, hint), a \"category\" (bug, security, performance, style, "
    "maintainability), a \"message\", \"code\": the exact code it is about, copied from the snippet "
    "without line numbers, and \"fix\": the code that replaces that code, or null. Only real "
    "problems are reported, at most three per snippet."
)

_EXAMPLES = [
    (
        "stats.py, function average",
        [],
        "python",
        3,
        ["def average(values):", "    total = sum(values)", "    return total / len(values)"],
        '[{"lines": [5, 5], "severity": "warning", "category": "bug", "message": "Division by zero '
        'when values is empty.", "code": "total / len(values)", "fix": "total / len(values) if values '
        'else 0.0"}]',
    ),
    (
        "files.py, function read_text",
        [],
        "python",
        10,
        ["def read_text(path):", '    with open(path, encoding="utf-8") as f:', "        return f.read()"],
        "[]",
    ),
    (
        "users.py, method Users.find",
        ["class Users:"],
        "python",
        21,
        [
            "    def find(self, name):",
            "        query = \"SELECT * FROM users WHERE name = '%s'\" % name",
            "        return self.db.execute(query).fetchall()",
        ],
        '[{"lines": [22, 22], "severity": "error", "category": "security", "message": "SQL injection: '
        'name is formatted into the query; pass it as a parameter.", "code": "query = \\"SELECT * FROM '
        "users WHERE name = '%s'\\\" % name\", \"fix\": null}]",
    ),
]


def numbered(unit: Unit) -> str:
    """The unit's lines with 1-based file line numbers; a gap (elided methods) shows as "...".
    The text is decoded leniently: prompts are text, the bytes stay with the unit."""
    width = len(str(unit.last_line + 1))
    out: list[str] = []
    previous: int | None = None
    for line, text in zip(unit.lines, unit.text):
        if previous is not None and line != previous + 1:
            out.append(f"{'':>{width}} | ...")
        out.append(f"{line + 1:>{width}} | {text.decode('utf-8', 'replace')}")
        previous = line
    return "\n".join(out)


def _numbered_plain(first: int, lines: list[str]) -> str:
    width = len(str(first + len(lines)))
    return "\n".join(f"{first + i:>{width}} | {text}" for i, text in enumerate(lines))


def _context_block(context_lines: list[str]) -> str:
    if not context_lines:
        return ""
    return "Context:\n" + "\n".join("  " + line for line in context_lines) + "\n"


def _context_lines(unit: Unit, ctx: PromptContext, keep_imports: bool, keep_signatures: bool) -> list[str]:
    lines: list[str] = []
    budget = MAX_CONTEXT_CHARS
    if keep_imports:
        for line in ctx.imports:
            if budget - len(line) < 0:
                break
            lines.append(line)
            budget -= len(line)
    if unit.header:
        lines.append(unit.header)
    if keep_signatures and ctx.signatures:
        calls = [s for s in ctx.signatures if len(s) <= budget]
        if calls:
            lines.append("Calls (defined elsewhere):")
            for signature in calls:
                if budget - len(signature) < 0:
                    break
                lines.append("  " + signature)
                budget -= len(signature)
    return lines


def _title(unit: Unit, path: str) -> str:
    return f"{path}, {unit.kind} {unit.name}" if unit.kind != "module" else f"{path}, module-level code"


def render_raw(unit: Unit, ctx: PromptContext, examples: int, keep_imports=True, keep_signatures=True) -> str:
    parts = ["# Code review notes\n\n", _INSTRUCTIONS, "\n"]
    for number, (title, context, language, first, lines, answer) in enumerate(_EXAMPLES[:examples], 1):
        parts.append(
            f"\n## Snippet {number}: {title}\n{_context_block(context)}```{language}\n"
            f"{_numbered_plain(first, lines)}\n```\nReview:\n{answer}\n"
        )
    fence = _FENCE.get(ctx.language or "", "")
    parts.append(
        f"\n## Snippet {examples + 1}: {_title(unit, ctx.path)}\n"
        f"{_context_block(_context_lines(unit, ctx, keep_imports, keep_signatures))}"
        f"```{fence}\n{numbered(unit)}\n```\nReview:\n"
    )
    return "".join(parts)


_SYSTEM = (
    "You are a careful senior code reviewer. You review one snippet of a file at a time and "
    "report only real problems: bugs, security issues, performance problems, and clear style or "
    "maintainability issues. " + _INSTRUCTIONS.replace("Each snippet below is followed by its review",
                                                       "Answer with only the review")
    + " Example answer: " + _EXAMPLES[0][5]
)


def render_chat(unit: Unit, ctx: PromptContext, chat: ChatRenderer | None = None, keep_imports=True,
                keep_signatures=True) -> str:
    fence = _FENCE.get(ctx.language or "", "")
    user = (
        f"Review this snippet ({_title(unit, ctx.path)}).\n"
        f"{_context_block(_context_lines(unit, ctx, keep_imports, keep_signatures))}"
        f"```{fence}\n{numbered(unit)}\n```"
    )
    return (chat or BUILTIN).render(_SYSTEM, user)


def chat_messages(prompt: str, chat: ChatRenderer | None) -> list[dict[str, str]] | None:
    """A rendered chat prompt as messages again, for servers that apply the template themselves
    (backend.kind = openai renders with a plain shape); None when it cannot be split."""
    chat = chat or BUILTIN
    user = chat.user_of(_SYSTEM, prompt) if isinstance(chat, ChatShape) else None
    return None if user is None else chat.messages(_SYSTEM, user)


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def render(
    unit: Unit,
    ctx: PromptContext,
    mode: str,
    max_tokens: int,
    count_tokens: Callable[[str], int] | None = None,
    clean: Callable[[str], str] = lambda text: text,
    chat: ChatRenderer | None = None,
    context_tokens: int = CONTEXT_TOKENS,
) -> str | None:
    """The prompt for one unit, made to fit `context_tokens` (CONTEXT_TOKENS, or less where
    the server accepts less) with room for the answer: context is dropped first (signatures,
    then imports), then few-shot examples. None when even the bare prompt does not fit (the
    unit is then counted as too long, never sent)."""
    count = count_tokens or estimate_tokens
    # A review.maxTokens above ~1,770 leaves a prompt no room in 2,048 tokens: it still gets 256
    # (models with larger contexts take it; the demo model then refuses the request).
    budget = max(256, min(context_tokens, CONTEXT_TOKENS) - max_tokens - 16)
    ladder = [(True, True, 3), (True, False, 3), (False, False, 3), (False, False, 1)]
    for keep_imports, keep_signatures, examples in ladder:
        if mode == "raw":
            prompt = render_raw(unit, ctx, examples, keep_imports, keep_signatures)
        else:
            prompt = render_chat(unit, ctx, chat, keep_imports, keep_signatures)
        prompt = clean(prompt)
        if count(prompt) <= budget:
            return prompt
    return None
