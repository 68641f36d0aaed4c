"""Prompts per model family.

Phi models are not FIM-trained and vLLM rejects `suffix`, so the prompt is rendered here:
- `raw`: prefix continuation for base models (like the test model). Other files come first, each
  introduced by a `# file: <path>` header and separated by `<|endoftext|>` — exactly the shape
  phi-code-tiny was trained on (its MODEL.md) — then the current file.
- `chat`: a hole-filler for Phi instruct models, rendered by the model's own chat format (a
  `ChatRenderer` the caller gives: its template on disk or learned from its server; see
  phi_lsp/core/chat_format.py), stopping at its end-of-turn token.
`auto` picks by the served model's name.

Token healing (raw prompts): tokenizers of the GPT-2 lineage (Phi-4's tiktoken, this project's
test model) and SentencePiece ones (Phi-3's) join a word to the one space before it: a line
`        return x` is a line break with 7 spaces, then ` return`. A prompt that ends after the
8th space ends in a token the model has rarely seen there, and what it writes next is poor (raw
prefix continuation got none of 200 fresh lines right: benchmarks/bench_quality.py). So one trailing space
is left out of the prompt (`Prompt.heal`): the prompt ends on the token the model was trained
on, the model writes ` return x`, and post-processing takes the space off again
(`postprocess.unheal`).

Order matters for vLLM's prefix cache: what changes least comes first (instructions, other files'
definitions, recent edits, then the current file), so consecutive prompts share a long prefix.

Prompt variants (`completion.promptVariants`, for A/B comparison) are templates with named
placeholders: `{files}` (the other files' code, as the family shows it), `{path}`, `{language}`,
`{comment}` (the line-comment marker), `{prefix}` (the current file up to the cursor), `{suffix}`
(the text after it), `{hole}` (the cursor marker of chat prompts). For base models (raw) the
template is the whole prompt and should end with `{prefix}`; for chat models it is the user
message (the system prompt and the model's template stay). Any other brace is literal text.
Each request is assigned a variant by a hash of its document and line (`variant_for`), the
built-in prompt taking part as the variant "default".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

from phi_lsp.core import chat_format as models
from phi_lsp.core.chat_format import BUILTIN, CHAT, END_OF_TEXT, RAW, ChatRenderer  # noqa: F401 (re-exported)

from phi_lsp.completion.context import CompletionContext

HOLE = "<FILL_HERE>"
DEFAULT_VARIANT = "default"
PLACEHOLDERS = ("files", "path", "language", "comment", "prefix", "suffix", "hole")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# What the built-in prompts are, as templates (rendering these gives the built-in prompts).
DEFAULT_TEMPLATES = {
    RAW: "{files}{comment} file: {path}\n{prefix}",
    "chat": "{files}Current file {path}:\n```{language}\n{prefix}{hole}{suffix}\n```\n",
}

SYSTEM = (
    "You are a code completion engine inside an editor. You are shown files from the user's "
    f"workspace and the current file with a {HOLE} marker at the cursor. Reply with exactly the "
    f"code that belongs at {HOLE}: no explanation, no code fences, nothing that is already "
    "written before or after the marker. Keep to the current statement or block."
)


def family(model: str, prompt_mode: str = "auto") -> str:
    return models.prompt_family(model, prompt_mode)


@dataclass(frozen=True)
class Prompt:
    text: str
    family: str
    stop: tuple[str, ...]
    # Text the answer is expected to repeat before the real continuation (chat models like to
    # restate the cursor's line); post-processing strips it.
    echo: str = ""
    stop_token_ids: tuple[int, ...] = ()
    chat: tuple[str, str] | None = None  # (system, user) of a chat prompt
    # A space before the cursor left out of the prompt's end (token healing): the answer is
    # expected to start with it.
    heal: str = ""


def variant_for(variants: Mapping[str, str], key: str) -> str:
    """The prompt variant of a request: the same key (document and line) always gets the
    same one; keys spread evenly over "default" and the configured variants."""
    names = sorted(set(variants) | {DEFAULT_VARIANT})
    if len(names) == 1:
        return DEFAULT_VARIANT
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return names[int.from_bytes(digest[:8], "big") % len(names)]


def uses_suffix(template: str | None) -> bool:
    return template is not None and "{suffix}" in template


def render(ctx: CompletionContext, prompt_family: str, single_line: bool, template: str | None = None,
           chat: ChatRenderer | None = None) -> Prompt:
    """The prompt; a chat prompt in `chat`'s format (the built-in shape when none is given)."""
    if template is not None:
        return _render_template(ctx, prompt_family, single_line, template, chat or BUILTIN)
    if prompt_family == RAW:
        return _render_raw(ctx, single_line)
    return _render_chat(ctx, single_line, chat or BUILTIN)


def fill(template: str, values: Mapping[str, str]) -> str:
    """The template with its placeholders replaced (other braces stay as they are)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template)


def _template_values(ctx: CompletionContext, prompt_family: str) -> dict[str, str]:
    if prompt_family == RAW:
        files = "".join(
            _file_header(ctx.comment, s.path) + s.text.rstrip("\n") + f"\n{END_OF_TEXT}\n" for s in ctx.snippets
        )
    else:
        fence = "```" + (ctx.language or "")
        files = ""
        if ctx.snippets:
            files = "Relevant code from other files:\n" + "".join(
                f"{fence}\n{_file_header(ctx.comment, s.path)}{s.text.rstrip()}\n```\n" for s in ctx.snippets
            )
    return {
        "files": files,
        "path": ctx.path,
        "language": ctx.language or "",
        "comment": ctx.comment,
        "prefix": _current_file_head(ctx),
        "suffix": ctx.suffix,
        "hole": HOLE,
    }


def _render_template(ctx: CompletionContext, prompt_family: str, single_line: bool, template: str,
                     chat: ChatRenderer) -> Prompt:
    values = _template_values(ctx, prompt_family)
    body = fill(template, values)
    if prompt_family == RAW:
        heal = ""
        if values["prefix"] and body.endswith(values["prefix"]):  # the template ends at the cursor
            body, heal = _healed(body)
        return Prompt(body, RAW, _raw_stops(ctx, single_line), heal=heal)
    scope = "the rest of the current line only" if single_line else "the current statement or block"
    return _chat_prompt(ctx, single_line, chat, body + f"Write the code for {HOLE} ({scope}).")


def _file_header(comment: str, path: str) -> str:
    return f"{comment} file: {path}\n"


def _current_file_head(ctx: CompletionContext) -> str:
    """The current file's text up to the cursor, with elided parts marked."""
    parts = []
    if ctx.preamble:
        # Imports, an elision mark, then the headers of the scopes the window is in: with the
        # window starting at a statement boundary this reads like the real file with some
        # statements left out.
        parts.append("\n".join(ctx.preamble) + "\n")
        parts.append(f"{ctx.comment} ...\n")
    parts.append(ctx.prefix)
    return "".join(parts)


def _render_raw(ctx: CompletionContext, single_line: bool) -> Prompt:
    pieces = []
    for snippet in ctx.snippets:
        pieces.append(_file_header(ctx.comment, snippet.path) + snippet.text.rstrip("\n") + f"\n{END_OF_TEXT}\n")
    pieces.append(_file_header(ctx.comment, ctx.path))
    pieces.append(_current_file_head(ctx))
    text, heal = _healed("".join(pieces))
    return Prompt(text, RAW, _raw_stops(ctx, single_line), heal=heal)


def _raw_stops(ctx: CompletionContext, single_line: bool) -> tuple[str, ...]:
    stop = [END_OF_TEXT, f"\n{ctx.comment} file:"]
    if single_line:
        stop.append("\n")
    return tuple(stop)


def _healed(text: str) -> tuple[str, str]:
    """(the prompt, less a trailing space that belongs to the next word; that space)."""
    if text.endswith(" "):
        return text[:-1], " "
    return text, ""


def _render_chat(ctx: CompletionContext, single_line: bool, chat: ChatRenderer) -> Prompt:
    fence = "```" + (ctx.language or "")
    user = []
    if ctx.snippets:
        user.append("Relevant code from other files:\n")
        for snippet in ctx.snippets:
            user.append(f"{fence}\n{_file_header(ctx.comment, snippet.path)}{snippet.text.rstrip()}\n```\n")
    user.append(f"Current file {ctx.path}:\n{fence}\n{_current_file_head(ctx)}{HOLE}{ctx.suffix}\n```\n")
    scope = "the rest of the current line only" if single_line else "the current statement or block"
    user.append(f"Write the code for {HOLE} ({scope}).")
    return _chat_prompt(ctx, single_line, chat, "".join(user))


def _chat_prompt(ctx: CompletionContext, single_line: bool, chat: ChatRenderer, user: str) -> Prompt:
    stop = chat.stops + ("\n```",)
    if single_line:
        stop = stop + ("\n",)
    return Prompt(chat.render(SYSTEM, user), CHAT, stop, echo=ctx.line_prefix,
                  stop_token_ids=chat.stop_token_ids, chat=(SYSTEM, user))


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The same chat prompt as messages, for servers that apply the template themselves
    (backend.kind = openai: Ollama, Azure AI Foundry)."""
    assert prompt.chat is not None, "not a chat prompt"
    return models.messages(*prompt.chat)
