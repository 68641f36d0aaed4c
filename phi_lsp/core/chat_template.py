"""A model's own chat template, read from its files and rendered the way transformers does.

Where the template lives (transformers' order): `chat_template.jinja` next to the tokenizer
wins over `chat_template` in tokenizer_config.json, which is a string or a list of named
templates (`[{"name": "default", "template": ...}, ...]`; "default" is used). Rendering mirrors
`transformers.utils.chat_template_utils._compile_jinja_template`: an ImmutableSandboxedEnvironment
with trim_blocks and lstrip_blocks, the `loopcontrols` extension, a `{% generation %}` block
(rendered as its body), `raise_exception`, `tojson` (no HTML escaping) and `strftime_now`, and the
special tokens (bos_token, eos_token, ...) from tokenizer_config.json as variables.

A template is code from the model's files: the sandbox keeps it from touching anything else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from phi_lsp.core import chat_format as cf

log = logging.getLogger(__name__)

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(Exception):
    """The template could not be read, compiled or rendered."""


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


@lru_cache(maxsize=16)
def compile_template(source: str):
    """The compiled template, as transformers compiles it (cached per source)."""
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # transformers marks the assistant's tokens with {% generation %}; the text is the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc


@dataclass(eq=False)
class ChatTemplate:
    """A model's jinja chat template with its special tokens, rendering system + user prompts.

    `special` maps the added tokens' text to their ids (tokenizer.json), `eos_ids` are the
    generation config's end ids: together they say which tokens end the assistant's turn."""

    source: str
    tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... -> text
    special: dict[str, int] = field(default_factory=dict)
    eos_ids: tuple[int, ...] = ()
    origin: str = ""  # the file it came from

    fallback = False

    def render_messages(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return compile_template(self.source).render(
                messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                **self.tokens,
            )
        except jinja2.TemplateError as exc:  # raise_exception(), or an error inside the template
            raise ChatTemplateError(str(exc)) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(f"the chat template failed: {exc!r}") from exc

    # -- the renderer (what the pipelines use) ----------------------------------------------

    @property
    def source_note(self) -> str:
        return f"the model's chat template ({self.origin})" if self.origin else "the model's chat template"

    @property
    def folds_system(self) -> bool:
        return _folded(self)

    def render(self, system: str, user: str) -> str:
        if self.folds_system:
            return self.render_messages([{"role": "user", "content": cf.fold(system, user)}])
        return self.render_messages([{"role": "system", "content": system}, {"role": "user", "content": user}])

    def messages(self, system: str, user: str) -> list[dict[str, str]]:
        return cf.messages(system, user)

    @property
    def stops(self) -> tuple[str, ...]:
        return _stops(self)[0]

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return _stops(self)[1]


@lru_cache(maxsize=16)
def _folded(template: ChatTemplate) -> bool:
    """True when the template has no system turn (it refuses one, or drops its text)."""
    try:
        text = template.render_messages(cf.probe(cf.PROBE_SYSTEM, cf.PROBE_USER))
    except ChatTemplateError:
        return True
    return cf.PROBE_SYSTEM not in text


@lru_cache(maxsize=16)
def _stops(template: ChatTemplate) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The end-of-turn token (what the template writes after an assistant's answer), then the
    eos token and the generation config's end tokens: their texts and, where known, ids."""
    texts: list[str] = []
    try:
        rendered = template.render_messages(cf.probe_with_answer(template.folds_system), add_generation_prompt=True)
        after = cf.after_answer(rendered)
    except ChatTemplateError:
        after = None
    if after:
        texts.append(cf.first_token(after, template.special))
    eos = template.tokens.get("eos_token")
    if eos:
        texts.append(eos)
    by_id = {i: t for t, i in template.special.items()}
    texts += [by_id[i] for i in template.eos_ids if i in by_id]
    texts = [t for t in dict.fromkeys(texts) if t]
    ids = tuple(dict.fromkeys(template.special[t] for t in texts if t in template.special))
    return tuple(texts), ids


# -- reading a model's files ------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ChatTemplateError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def pick_template(value: Any) -> str | None:
    """tokenizer_config.json's `chat_template`: a string, or a list of named templates."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        return chosen if isinstance(chosen, str) else None
    return None


def _special_tokens(directory: Path, config: dict) -> dict[str, int]:
    special: dict[str, int] = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        text = _token_text(entry)
        if text is not None and str(key).isdigit():
            special[text] = int(key)
    tokenizer = directory / "tokenizer.json"
    if not special and tokenizer.is_file():  # tokenizer.json is large: read only when needed
        try:
            for entry in _read_json(tokenizer).get("added_tokens") or []:
                if isinstance(entry, dict) and isinstance(entry.get("content"), str) and isinstance(entry.get("id"), int):
                    special[entry["content"]] = entry["id"]
        except ChatTemplateError:
            pass
    return special


def load_from_dir(directory: Path) -> ChatTemplate | None:
    """The chat template in a model directory; None when it has none."""
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    jinja_path = directory / "chat_template.jinja"
    if jinja_path.is_file():
        try:
            source, origin = jinja_path.read_text(encoding="utf-8"), jinja_path
        except OSError as exc:
            raise ChatTemplateError(f"cannot read {jinja_path}: {exc}") from exc
    else:
        source, origin = pick_template(config.get("chat_template")), config_path
    if not source:
        return None
    tokens = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None}
    eos_ids: tuple[int, ...] = ()
    generation = directory / "generation_config.json"
    if generation.is_file():
        try:
            value = _read_json(generation).get("eos_token_id")
            eos_ids = tuple(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
        except ChatTemplateError:
            pass
    template = ChatTemplate(source, tokens, _special_tokens(directory, config), eos_ids, str(origin))
    compile_template(source)  # a template that does not compile is no template
    return template


def model_dirs(model: str) -> list[Path]:
    """Where a model's files may be on disk: a directory, the bundled model of that name, or
    the Hugging Face cache's snapshots of a hub id."""
    from phi_lsp.core.paths import bundled_model
    from phi_lsp.core.tokens import _hub_cache

    # Only an absolute path is a directory: a served name such as "org/model" must not pick up a
    # folder of that name in the workspace the server happens to run in.
    direct = Path(model).expanduser()
    found = [direct] if direct.is_absolute() and direct.is_dir() else []
    bundled = bundled_model(model)
    if bundled is not None:
        found.append(bundled)
    if "/" in model and not direct.is_absolute():
        snapshots = _hub_cache() / ("models--" + model.replace("/", "--")) / "snapshots"
        if snapshots.is_dir():
            found += sorted(p for p in snapshots.iterdir() if p.is_dir())
    return found


def find_chat_template(model: str) -> ChatTemplate | None:
    """The chat template of a model whose files are on disk (path, bundled name or cached hub
    id); None when none is found. A broken one is logged and skipped."""
    for directory in model_dirs(model):
        try:
            template = load_from_dir(directory)
        except ChatTemplateError as exc:
            log.warning("ignoring the chat template in %s: %s", directory, exc)
            continue
        if template is not None:
            return template
    return None
