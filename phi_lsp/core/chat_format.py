"""Phi model families and their prompt templates, shared by the completion and review prompts.

- Phi-3, Phi-3.5-mini and Phi-4-mini: `<|system|>\\n…<|end|>\\n<|user|>\\n…<|end|>\\n<|assistant|>\\n`
- Phi-4: ChatML with Phi's separator, `<|im_start|>system<|im_sep|>…<|im_end|>…<|im_start|>assistant<|im_sep|>`
- anything else (base models such as the demo model): raw text continuation.
`promptMode = auto` picks by the served model's name; `chat` forces a template, `raw` none.
"""

from __future__ import annotations

import re

RAW, PHI3, PHI4 = "raw", "phi3", "phi4"
END_OF_TEXT = "<|endoftext|>"


def prompt_family(model: str, prompt_mode: str = "auto") -> str:
    """RAW, PHI3 (also Phi-3.5 and Phi-4-mini) or PHI4 for a served model name and promptMode."""
    if prompt_mode == "raw":
        return RAW
    # "microsoft/Phi-4-mini-instruct" -> "phi4miniinstruct"; Ollama's "phi4-mini" -> "phi4mini"
    name = re.sub(r"[^a-z0-9.]", "", model.lower().rsplit("/", 1)[-1])
    chat_family = None
    if re.search(r"phi4mini|phi3", name):
        chat_family = PHI3
    elif "phi4" in name:
        chat_family = PHI4
    if prompt_mode == "chat":
        return chat_family or PHI3
    # auto: instruct/chat Phi models get their template; base models continue raw text.
    return RAW if chat_family is None or "base" in name else chat_family


def chat_prompt(family: str, system: str, user: str) -> str:
    """The whole prompt text, ending where the assistant's answer begins."""
    if family == PHI4:
        return (
            f"<|im_start|>system<|im_sep|>{system}<|im_end|>"
            f"<|im_start|>user<|im_sep|>{user}<|im_end|>"
            "<|im_start|>assistant<|im_sep|>"
        )
    return f"<|system|>\n{system}<|end|>\n<|user|>\n{user}<|end|>\n<|assistant|>\n"


def chat_stops(family: str) -> tuple[str, ...]:
    """Where an assistant turn ends."""
    return ("<|im_end|>", END_OF_TEXT) if family == PHI4 else ("<|end|>", END_OF_TEXT)


def split_chat_prompt(family: str, text: str) -> tuple[str, str]:
    """(system, user) back out of a rendered chat prompt (for servers that apply templates)."""
    if family == PHI4:
        system = text.split("<|im_start|>system<|im_sep|>", 1)[1].split("<|im_end|>", 1)[0]
        user = text.split("<|im_start|>user<|im_sep|>", 1)[1].split("<|im_end|>", 1)[0]
    else:
        system = text.split("<|system|>\n", 1)[1].split("<|end|>", 1)[0]
        user = text.split("<|user|>\n", 1)[1].split("<|end|>", 1)[0]
    return system, user
