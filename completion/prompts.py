"""Prompts per model family.

Phi models are not FIM-trained and vLLM rejects `suffix`, so the prompt is rendered here:
- `raw`: prefix continuation for base models (like the test model). Other files come first, each
  introduced by a `# file: <path>` header and separated by `<|endoftext|>` — exactly the shape
  phi-code-tiny was trained on (its MODEL.md) — then the current file.
- `chat`: a hole-filler for Phi instruct models with the model's own template:
  Phi-3/3.5/4-mini `<|system|>…<|end|><|user|>…<|end|><|assistant|>`,
  Phi-4 ChatML `<|im_start|>system<|im_sep|>…<|im_end|>…<|im_start|>assistant<|im_sep|>`.
`auto` picks by the served model's name.

Order matters for vLLM's prefix cache: what changes least comes first (instructions, other files'
definitions, recent edits, then the current file), so consecutive prompts share a long prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi_lsp import models
from phi_lsp.models import END_OF_TEXT, PHI3, PHI4, RAW  # noqa: F401 (re-exported)

from .context import CompletionContext

HOLE = "<FILL_HERE>"

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


def render(ctx: CompletionContext, prompt_family: str, single_line: bool) -> Prompt:
    if prompt_family == RAW:
        return _render_raw(ctx, single_line)
    return _render_chat(ctx, prompt_family, single_line)


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
    stop = [END_OF_TEXT, f"\n{ctx.comment} file:"]
    if single_line:
        stop.append("\n")
    return Prompt("".join(pieces), RAW, tuple(stop))


def _render_chat(ctx: CompletionContext, prompt_family: str, single_line: bool) -> Prompt:
    fence = "```" + (ctx.language or "")
    user = []
    if ctx.snippets:
        user.append("Relevant code from other files:\n")
        for snippet in ctx.snippets:
            user.append(f"{fence}\n{_file_header(ctx.comment, snippet.path)}{snippet.text.rstrip()}\n```\n")
    user.append(f"Current file {ctx.path}:\n{fence}\n{_current_file_head(ctx)}{HOLE}{ctx.suffix}\n```\n")
    scope = "the rest of the current line only" if single_line else "the current statement or block"
    user.append(f"Write the code for {HOLE} ({scope}).")
    body = "".join(user)
    text = models.chat_prompt(prompt_family, SYSTEM, body)
    stop = models.chat_stops(prompt_family) + ("\n```",)
    if single_line:
        stop = stop + ("\n",)
    return Prompt(text, prompt_family, stop, echo=ctx.line_prefix)


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The same chat prompt as messages, for servers that apply the template themselves
    (backend.kind = openai: Ollama, Azure AI Foundry)."""
    system, user = models.split_chat_prompt(prompt.family, prompt.text)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
