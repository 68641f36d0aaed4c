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

import re
from dataclasses import dataclass

from .context import CompletionContext

RAW, PHI3, PHI4 = "raw", "phi3", "phi4"
END_OF_TEXT = "<|endoftext|>"
HOLE = "<FILL_HERE>"

SYSTEM = (
    "You are a code completion engine inside an editor. You are shown files from the user's "
    f"workspace and the current file with a {HOLE} marker at the cursor. Reply with exactly the "
    f"code that belongs at {HOLE}: no explanation, no code fences, nothing that is already "
    "written before or after the marker. Keep to the current statement or block."
)


def family(model: str, prompt_mode: str = "auto") -> str:
    """The prompt family for a served model name: raw, phi3 (also 3.5/4-mini) or phi4."""
    if prompt_mode == "raw":
        return RAW
    name = re.sub(r"[^a-z0-9.]", "", model.lower().rsplit("/", 1)[-1])
    chat_family = None
    if re.search(r"phi4mini|phi3", name):
        chat_family = PHI3
    elif "phi4" in name:
        chat_family = PHI4
    if prompt_mode == "chat":
        return chat_family or PHI3
    # auto: instruct/chat Phi models get the chat template; base models continue raw text.
    is_base = "base" in name or chat_family is None
    return RAW if is_base else chat_family


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
    if prompt_family == PHI4:
        text = (
            f"<|im_start|>system<|im_sep|>{SYSTEM}<|im_end|>"
            f"<|im_start|>user<|im_sep|>{body}<|im_end|>"
            "<|im_start|>assistant<|im_sep|>"
        )
        stop = ("<|im_end|>", END_OF_TEXT, "\n```")
    else:
        text = f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{body}<|end|>\n<|assistant|>\n"
        stop = ("<|end|>", END_OF_TEXT, "\n```")
    if single_line:
        stop = stop + ("\n",)
    return Prompt(text, prompt_family, stop, echo=ctx.line_prefix)


def chat_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The same chat prompt as messages, for servers that apply the template themselves
    (backend.kind = openai: Ollama, Azure AI Foundry)."""
    text = prompt.text
    if prompt.family == PHI4:
        system = text.split("<|im_start|>system<|im_sep|>", 1)[1].split("<|im_end|>", 1)[0]
        user = text.split("<|im_start|>user<|im_sep|>", 1)[1].split("<|im_end|>", 1)[0]
    else:
        system = text.split("<|system|>\n", 1)[1].split("<|end|>", 1)[0]
        user = text.split("<|user|>\n", 1)[1].split("<|end|>", 1)[0]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
