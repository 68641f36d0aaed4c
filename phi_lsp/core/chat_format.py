"""Chat prompts in the served model's own format (pure: no files, no network).

phi-lsp renders chat prompts itself so that many of them share one list-of-prompts request to
/v1/completions. The format is the model's own, found once per model (phi_lsp/model/chat_format_discovery.py):
- its chat template on disk (phi_lsp/core/chat_template.py renders it with jinja2 as transformers does);
- else the shape learned from its vLLM server: the server renders a probe conversation whose
  contents are sentinels (/tokenize with `messages`, then /detokenize), and the text around them
  is the shape (`ChatShape`: head + system + between + user + tail), checked on a second probe;
- else the built-in shape below, said once (`phi-lsp doctor`, the server's log and status).
A template without a system turn (it refuses one or drops it) gets the system text at the start
of the user turn (`fold`). Stops are the template's end-of-turn token (what it writes after an
assistant's answer) and the model's end-of-text tokens.

`promptMode = auto` picks raw continuation or chat by the served model's name; `chat` forces
chat, `raw` never uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

RAW, CHAT = "raw", "chat"
END_OF_TEXT = "<|endoftext|>"

# Probe conversations: sentinels the template copies verbatim, so the text around them is the
# template's own. The verifying probe has other lengths and inner newlines.
PROBE_SYSTEM, PROBE_USER = "PhiLspProbeSystemAlpha", "PhiLspProbeUserBravo"
PROBE_ANSWER, PROBE_NEXT_USER = "PhiLspProbeAnswerCharlie", "PhiLspProbeUserDelta"
VERIFY_SYSTEM, VERIFY_USER = "PhiLsp verify\nsystem text", "PhiLsp verify user\n\ntext two"
FOLD_SEPARATOR = "\n\n"


def prompt_family(model: str, prompt_mode: str = "auto") -> str:
    """RAW or CHAT for a served model name and promptMode: with `auto`, instruct/chat Phi models
    get their chat template and base models (such as the demo model) continue raw text."""
    if prompt_mode == "raw":
        return RAW
    if prompt_mode == "chat":
        return CHAT
    # "microsoft/Phi-4-mini-instruct" -> "phi4miniinstruct"; Ollama's "phi4-mini" -> "phi4mini"
    name = re.sub(r"[^a-z0-9.]", "", model.lower().rsplit("/", 1)[-1])
    return CHAT if re.search(r"phi[34]", name) and "base" not in name else RAW


def fold(system: str, user: str) -> str:
    """The user turn of a template without a system turn: the system text leads it."""
    return system + FOLD_SEPARATOR + user


def messages(system: str, user: str) -> list[dict[str, str]]:
    """The chat as messages, for servers that apply the template themselves (backend.kind = openai)."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def probe(system: str, user: str, folded: bool = False) -> list[dict[str, str]]:
    if folded:
        return [{"role": "user", "content": fold(system, user)}]
    return messages(system, user)


def probe_with_answer(folded: bool = False) -> list[dict[str, str]]:
    """A conversation with an assistant answer followed by a user turn: what the template
    writes right after the answer is its end-of-turn."""
    first = [{"role": "user", "content": PROBE_USER}] if folded else messages(PROBE_SYSTEM, PROBE_USER)
    return first + [{"role": "assistant", "content": PROBE_ANSWER}, {"role": "user", "content": PROBE_NEXT_USER}]


def after_answer(rendered: str) -> str | None:
    """The text between the probe's assistant answer and the next user turn's content."""
    start = rendered.find(PROBE_ANSWER)
    end = rendered.find(PROBE_NEXT_USER, start + 1)
    if start < 0 or end < 0:
        return None
    return rendered[start + len(PROBE_ANSWER) : end]


def first_token(text: str, special: dict[str, int] | set[str] | tuple[str, ...]) -> str:
    """The end-of-turn marker at the start of `text`: the longest special token it starts with,
    else its first whitespace-delimited piece."""
    candidates = [t for t in special if t and text.startswith(t)]
    if candidates:
        return max(candidates, key=len)
    pieces = text.split()
    return pieces[0] if pieces else ""


class ChatRenderer(Protocol):
    """What the completion and review prompts need of a model's chat format."""

    fallback: bool

    @property
    def source_note(self) -> str: ...

    @property
    def stops(self) -> tuple[str, ...]: ...

    @property
    def stop_token_ids(self) -> tuple[int, ...]: ...

    def render(self, system: str, user: str) -> str: ...

    def messages(self, system: str, user: str) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class ChatShape:
    """A chat prompt as text around the system and user contents (learned from a server, or
    the built-in fallback): head + system + between + user + tail. With `folds_system` the
    template has no system turn: head + system + FOLD_SEPARATOR + user + tail."""

    head: str
    between: str
    tail: str
    stops: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    source_note: str = ""
    folds_system: bool = False
    fallback: bool = False

    def render(self, system: str, user: str) -> str:
        if self.folds_system:
            return self.head + fold(system, user) + self.tail
        return self.head + system + self.between + user + self.tail

    def messages(self, system: str, user: str) -> list[dict[str, str]]:
        return messages(system, user)

    def user_of(self, system: str, text: str) -> str | None:
        """The user turn of a prompt this shape rendered with `system`; None if it did not."""
        start = self.head + (system + FOLD_SEPARATOR if self.folds_system else system + self.between)
        if not text.startswith(start) or not text.endswith(self.tail) or len(text) < len(start) + len(self.tail):
            return None
        return text[len(start) : len(text) - len(self.tail)]


def shape_from(rendered: str, system: str, user: str, folded: bool = False) -> tuple[str, str, str] | None:
    """(head, between, tail) of a rendered probe; None when the sentinels are not each there
    once, in order (the template changed or dropped them)."""
    first = fold(system, user) if folded else system
    if rendered.count(first) != 1 or rendered.count(user) != 1:
        return None
    if folded:
        at = rendered.index(first)
        return rendered[:at], "", rendered[at + len(first) :]
    s, u = rendered.index(system), rendered.index(user)
    if u < s + len(system):
        return None
    return rendered[:s], rendered[s + len(system) : u], rendered[u + len(user) :]


# The documented fallback when a model's template can be neither read nor learned: the shape of
# microsoft/Phi-4-mini-instruct (the default model)'s official template.
BUILTIN = ChatShape(
    head="<|system|>",
    between="<|end|><|user|>",
    tail="<|end|><|assistant|>",
    stops=("<|end|>", END_OF_TEXT),
    source_note="the built-in Phi-4-mini shape (the model's own template could not be read or learned)",
    fallback=True,
)
