"""Settings: one typed, fully defaulted tree, filled from several sources.

Sources, lowest to highest precedence (DESIGN.md, README):
  defaults < [tool.phi-lsp] in the workspace's pyproject.toml (or --config FILE)
  < environment (PHI_LSP_BACKEND_URL, PHI_LSP_MODEL, PHI_LSP_API_KEY) < command-line flags
  < LSP initializationOptions < workspace/didChangeConfiguration.
`load_settings` fills the sources below the editor's for the server and the command line
alike, so the two cannot rank them differently.

The workspace's pyproject.toml is the repository author's, not the user's: from it, the
sections that run a program or decide where code is sent (GUARDED_SECTIONS) are taken only when
the user trusts the workspace (phi_lsp.core.trust); otherwise they are reported and ignored.

Keys are camelCase and nested ("completion.debounceMs"); dotted keys are accepted too. Each
source is validated on its own: a bad value is reported once, in words, and dropped, so the
value from the source below it (at worst the default) stays in effect. Nothing here raises.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from phi_lsp.core.trust import is_trusted

DEFAULT_MODEL = "microsoft/Phi-4-mini-instruct"
DEMO_MODEL = "phi-code-tiny"
CONTEXT_SOURCES = ("suffix", "imports", "scopes", "symbols", "recent")  # the default
# `chunks` (similar code from the workspace) is off by default: docs/DECISIONS.md says why.
CONTEXT_SOURCE_CHOICES = CONTEXT_SOURCES + ("chunks",)
# Sections a workspace may set only when trusted: managed.* runs a program, backend.* decides
# where code goes (and with which key), limits.* keeps a hostile file from stalling the server.
GUARDED_SECTIONS = ("backend", "managed", "limits")
PYPROJECT = "pyproject.toml"
CONFIG_FILE = "--config"
HEADER_NAME = r"[A-Za-z0-9!#$%&'*+.^_`|~-]*"  # an HTTP token (RFC 9110), or empty


def _opt(default, kind: str, **rules) -> Any:
    """A settings field: `kind` names its validator, `rules` its limits."""
    factory = None
    if isinstance(default, (list, dict)):
        factory, default = (lambda d=default: type(d)(d)), dataclasses.MISSING
    meta = {"kind": kind, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta, repr=kind != "secret")


@dataclass(frozen=True)
class Endpoint:
    url: str
    models: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BackendSettings:
    url: str | None = _opt(None, "url")
    kind: str = _opt("vllm", "choice", choices=("vllm", "openai"))
    api_key: str | None = _opt(None, "secret")
    connect_timeout_ms: int = _opt(2000, "int", min=100, max=60_000)
    request_timeout_ms: int = _opt(60_000, "int", min=500, max=3_600_000)
    # Which URL serves which model (one URL per model: replicas go behind vllm-router).
    endpoints: tuple = _opt((), "endpoints")
    # The request header that carries each document's session key ("" sends none).
    session_header: str = _opt("X-Session-ID", "header")


@dataclass(frozen=True)
class CompletionSettings:
    enabled: bool = _opt(True, "bool")
    model: str = _opt(DEFAULT_MODEL, "str")
    escalation_model: str | None = _opt(None, "str")
    prompt_mode: str = _opt("auto", "choice", choices=("auto", "chat", "raw"))
    debounce_ms: int = _opt(60, "int", min=0, max=5_000)
    max_tokens: int = _opt(64, "int", min=1, max=1_024)
    min_confidence: float = _opt(0.15, "float", min=0.0, max=1.0)
    context_tokens: int = _opt(1_536, "int", min=64, max=131_072)
    # Which context sources go into prompts besides the prefix (turn "symbols" and "recent"
    # off to send nothing from other files).
    context_sources: tuple = _opt(CONTEXT_SOURCES, "str_list", choices=CONTEXT_SOURCE_CHOICES)
    timeout_ms: int = _opt(8_000, "int", min=100, max=120_000)
    prompt_variants: dict = _opt({}, "str_map")


@dataclass(frozen=True)
class ReviewSettings:
    enabled: bool = _opt(True, "bool")
    on_save: bool = _opt(True, "bool")
    model: str = _opt(DEFAULT_MODEL, "str")
    escalation_model: str | None = _opt(None, "str")
    max_findings_per_file: int = _opt(20, "int", min=0, max=1_000)
    batch_size: int = _opt(32, "int", min=1, max=1_024)
    max_tokens: int = _opt(320, "int", min=16, max=4_096)
    timeout_ms: int = _opt(180_000, "int", min=1_000, max=3_600_000)


@dataclass(frozen=True)
class PrivacySettings:
    exclude: tuple = _opt((), "str_list")
    redact_secrets: bool = _opt(True, "bool")


@dataclass(frozen=True)
class ManagedSettings:
    """The local vLLM that phi-lsp starts when backend.url is unset."""

    python: str | None = _opt(None, "str")
    extra_args: tuple = _opt((), "str_list")
    start_timeout_s: int = _opt(900, "int", min=10, max=7_200)
    # Unset: 2,048 for the bundled demo model (its context), 8,192 for others.
    max_model_len: int | None = _opt(None, "int", min=256, max=131_072)


@dataclass(frozen=True)
class RoutingSettings:
    max_tokens_per_minute: int | None = _opt(None, "int", min=1, max=10**9)
    # A review unit whose small-model answer has a lower mean token probability escalates.
    review_min_confidence: float = _opt(0.7, "float", min=0.0, max=1.0)


@dataclass(frozen=True)
class TelemetrySettings:
    enabled: bool = _opt(True, "bool")
    keep_text: bool = _opt(False, "bool")
    retention_days: int = _opt(30, "int", min=1, max=3_650)


@dataclass(frozen=True)
class LimitsSettings:
    """Above these a document is too large to parse: it gets no syntax tree, completion sees
    only the text around the cursor, and it is neither reviewed nor indexed (docs/SECURITY.md)."""

    max_document_bytes: int = _opt(2_097_152, "int", min=10_000, max=1_000_000_000)
    # A line this long is minified or generated code (VS Code stops tokenizing at 20,000).
    max_line_bytes: int = _opt(20_000, "int", min=200, max=1_000_000_000)


@dataclass(frozen=True)
class Settings:
    backend: BackendSettings = field(default_factory=BackendSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    managed: ManagedSettings = field(default_factory=ManagedSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)


_SECTION_CLASSES = {
    "backend": BackendSettings,
    "completion": CompletionSettings,
    "review": ReviewSettings,
    "privacy": PrivacySettings,
    "managed": ManagedSettings,
    "routing": RoutingSettings,
    "telemetry": TelemetrySettings,
    "limits": LimitsSettings,
}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def all_keys() -> dict[str, dataclasses.Field]:
    """Every setting as "section.camelKey" -> its dataclass field (for docs and schema checks)."""
    return {
        f"{section}.{camel(f.name)}": f
        for section, cls in _SECTION_CLASSES.items()
        for f in dataclasses.fields(cls)
    }


# -- validation ------------------------------------------------------------------------------


class _Invalid(ValueError):
    pass


def _check(value: Any, meta: Mapping[str, Any]) -> Any:
    kind = meta["kind"]
    if value is None and kind in ("url", "secret", "str", "int", "header"):
        return None  # null means "not set": the default applies
    if kind in ("str", "secret"):
        if not isinstance(value, str) or not value.strip():
            raise _Invalid("must be a non-empty string")
        return value.strip()
    if kind == "header":
        if not isinstance(value, str) or not re.fullmatch(HEADER_NAME, value.strip()):
            raise _Invalid("must be an HTTP header name such as X-Session-ID (letters, digits, '-'), or \"\" for none")
        return value.strip()
    if kind == "url":
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+", value.strip()):
            raise _Invalid("must be an http:// or https:// URL such as http://localhost:8000/v1")
        return value.strip().rstrip("/")
    if kind == "choice":
        if value not in meta["choices"]:
            raise _Invalid("must be one of " + ", ".join(repr(c) for c in meta["choices"]))
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Invalid("must be true or false")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number between {meta['min']} and {meta['max']}")
        try:
            if kind == "int" and not float(value).is_integer():
                raise _Invalid("must be a whole number")
            finite = math.isfinite(value)
        except OverflowError:  # an int too large for a float (10**400)
            finite = False
        if not finite or not meta["min"] <= value <= meta["max"]:
            raise _Invalid(f"must be between {meta['min']} and {meta['max']}")
        return int(value) if kind == "int" else float(value)
    if kind == "str_list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise _Invalid("must be a list of strings")
        unknown = [v for v in value if "choices" in meta and v not in meta["choices"]]
        if unknown:
            raise _Invalid("may only name " + ", ".join(repr(c) for c in meta["choices"]))
        return tuple(value)
    if kind == "str_map":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _Invalid("must be a table of name = string")
        return dict(value)
    if kind == "endpoints":
        return _check_endpoints(value)
    raise AssertionError(kind)


def _check_endpoints(value: Any) -> tuple[Endpoint, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid("must be a list of {url, models, apiKey} tables")
    endpoints = []
    for item in value:
        if not isinstance(item, Mapping) or "url" not in item:
            raise _Invalid("every endpoint needs a url")
        url = _check(item["url"], {"kind": "url"})
        models = _check(item.get("models", []), {"kind": "str_list"})
        api_key = _check(item.get("apiKey"), {"kind": "secret"})
        endpoints.append(Endpoint(url, models, api_key))
    return tuple(endpoints)


def _describe(value: Any, meta: Mapping[str, Any]) -> str:
    if meta["kind"] in ("secret", "endpoints"):  # endpoints carry API keys
        return "(hidden)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def nest(flat_or_nested: Mapping[str, Any]) -> dict[str, Any]:
    """Expand dotted keys ({"backend.url": x} -> {"backend": {"url": x}}), recursively."""
    result: dict[str, Any] = {}
    for key, value in flat_or_nested.items():
        if isinstance(value, Mapping):
            value = nest(value)
        parts = str(key).split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                break
        else:
            existing = target.get(parts[-1])
            if isinstance(existing, dict) and isinstance(value, dict):
                existing.update(value)
            else:
                target[parts[-1]] = value
    return result


@dataclass
class Layer:
    """One source's validated values, as {"section": {"camelKey": value}}."""

    source: str
    values: dict[str, dict[str, Any]]
    problems: list[str]
    # Keys left out because the source may not set them (an untrusted workspace's backend.url).
    untrusted_keys: list[str] = field(default_factory=list)


def validate(source: str, raw: Mapping[str, Any] | None, trusted: bool = True) -> Layer:
    """One source's values, checked key by key. With `trusted` false, keys of GUARDED_SECTIONS
    are left out and listed in `untrusted_keys` (with one problem saying so)."""
    values: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    if raw is None:
        return Layer(source, values, problems)
    if not isinstance(raw, Mapping):
        problems.append(f"phi-lsp settings from {source} must be an object; ignored them.")
        return Layer(source, values, problems)
    untrusted: list[str] = []
    for section, entries in nest(raw).items():
        if isinstance(entries, list) and not entries:
            entries = {}  # an empty Lua table arrives as [] from Neovim
        cls = _SECTION_CLASSES.get(section)
        if cls is None or not isinstance(entries, Mapping):
            problems.append(f"Unknown phi-lsp setting `{section}` (from {source}); ignored it.")
            continue
        fields = {camel(f.name): f for f in dataclasses.fields(cls)}
        for key, value in entries.items():
            f = fields.get(key)
            if f is None:
                problems.append(
                    f"Unknown phi-lsp setting `{section}.{key}` (from {source}); ignored it."
                )
                continue
            if not trusted and section in GUARDED_SECTIONS:
                untrusted.append(f"{section}.{key}")
                continue
            try:
                checked = _check(value, f.metadata)
                if checked is not None:  # null: leave the key to lower sources / the default
                    values.setdefault(section, {})[key] = checked
            except _Invalid as why:
                problems.append(
                    f"Invalid phi-lsp setting `{section}.{key}` = {_describe(value, f.metadata)}"
                    f" (from {source}): it {why}. Using the previous value instead."
                )
    if untrusted:
        problems.append(untrusted_message(source, untrusted))
    return Layer(source, values, problems, untrusted)


def untrusted_message(source: str, keys: list[str]) -> str:
    return (
        f"This workspace is not trusted, so phi-lsp ignored {', '.join(keys)} from its {source}: "
        "these settings can run a program or send your code to another server. If you wrote "
        "them, trust the folder with `phi-lsp trust` (in VS Code: trust the workspace)."
    )


def build(layers: list[Layer]) -> Settings:
    """Combine validated layers, later layers winning key by key."""
    sections = {}
    for section, cls in _SECTION_CLASSES.items():
        kwargs = {}
        for f in dataclasses.fields(cls):
            for layer in layers:
                if camel(f.name) in layer.values.get(section, {}):
                    kwargs[f.name] = layer.values[section][camel(f.name)]
        sections[section] = cls(**kwargs)
    return Settings(**sections)


def origins(layers: list[Layer]) -> dict[str, str]:
    """Which source set each key that is not a default ("backend.url" -> "environment")."""
    found = {}
    for layer in layers:
        for section, entries in layer.values.items():
            for key in entries:
                found[f"{section}.{key}"] = layer.source
    return found


# -- sources ---------------------------------------------------------------------------------


def from_environment(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if env.get("PHI_LSP_BACKEND_URL"):
        raw["backend.url"] = env["PHI_LSP_BACKEND_URL"]
    if env.get("PHI_LSP_MODEL"):
        raw["completion.model"] = raw["review.model"] = env["PHI_LSP_MODEL"]
    if env.get("PHI_LSP_API_KEY"):
        raw["backend.apiKey"] = env["PHI_LSP_API_KEY"]
    return raw


def from_flags(backend_url: str | None, model: str | None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    if backend_url:
        raw["backend.url"] = backend_url
    if model:
        raw["completion.model"] = raw["review.model"] = model
    return raw


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml at or above `start`."""
    start = start if start.is_dir() else start.parent
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def from_toml_file(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """[tool.phi-lsp] of a pyproject.toml, or the whole table of a phi-lsp config file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return None, [f"Could not read phi-lsp settings from {path}: {exc}"]
    if path.name == "pyproject.toml":
        return data.get("tool", {}).get("phi-lsp"), []
    return data.get("tool", {}).get("phi-lsp", data), []


def unwrap_client_settings(settings: Any) -> Any:
    """Clients nest our settings under a section name (VS Code: {"phiLsp": {...}})."""
    if isinstance(settings, Mapping):
        for section in ("phiLsp", "phi-lsp", "phi_lsp"):
            if isinstance(settings.get(section), Mapping):
                return settings[section]
    return settings


TRUST_OPTION = "workspaceTrusted"


def split_client_options(options: Any) -> tuple[Any, bool | None]:
    """(settings, the editor's word on workspace trust) from what an editor sends: its
    `workspaceTrusted` sits beside the settings or inside their section; None when absent."""
    settings = unwrap_client_settings(options)
    trusted = None
    for holder in (options, settings):
        if isinstance(holder, Mapping) and isinstance(holder.get(TRUST_OPTION), bool):
            trusted = holder[TRUST_OPTION]
    if isinstance(settings, Mapping) and TRUST_OPTION in settings:
        settings = {k: v for k, v in settings.items() if k != TRUST_OPTION}
    return settings, trusted


class SettingsManager:
    """Keeps each source's layer so that a later change of one source recomputes the rest."""

    ORDER = (
        "defaults",
        PYPROJECT,
        CONFIG_FILE,  # takes the place of the workspace's pyproject.toml
        "environment",
        "command line",
        "initializationOptions",
        "workspace/didChangeConfiguration",
    )

    def __init__(self) -> None:
        self._layers: dict[str, Layer] = {}
        self.settings = Settings()

    def set_source(self, source: str, raw: Mapping[str, Any] | None, trusted: bool = True) -> list[str]:
        """Replace one source's values; returns the problems found in them."""
        layer = validate(source, raw, trusted)
        self._layers[source] = layer
        self.settings = build(self.layers())
        return layer.problems

    def layers(self) -> list[Layer]:
        return [self._layers[name] for name in self.ORDER if name in self._layers]

    def origins(self) -> dict[str, str]:
        return origins(self.layers())

    def untrusted_keys(self) -> list[str]:
        """Keys a source set but may not (an untrusted workspace's backend.url, ...)."""
        return [key for layer in self.layers() for key in layer.untrusted_keys]


def load_settings(
    manager: SettingsManager,
    workspace: Path | None,
    *,
    config_file: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    workspace_trusted: bool | None = None,
) -> list[str]:
    """Fill the sources below the editor's: the workspace's pyproject.toml (or, instead, the
    --config FILE the user named), the environment, the command-line flags. The server (at
    initialize) and every command-line entry point call this; returns the problems found.

    `workspace_trusted`: the editor's word on the workspace; None asks phi-lsp's trust store.
    """
    problems: list[str] = []
    if config_file is not None:
        raw, read_problems = from_toml_file(Path(config_file))
        problems += read_problems + manager.set_source(CONFIG_FILE, raw)  # the user's own file
    elif workspace is not None and (pyproject := find_pyproject(workspace)) is not None:
        raw, read_problems = from_toml_file(pyproject)
        trusted = workspace_trusted if workspace_trusted is not None else is_trusted(pyproject.parent)
        problems += read_problems + manager.set_source(PYPROJECT, raw, trusted=trusted)
    problems += manager.set_source("environment", from_environment(env))
    problems += manager.set_source("command line", dict(flags or {}))
    return problems


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings as camelCase JSON with secrets hidden (for doctor and logs)."""
    out: dict[str, Any] = {}
    for section, cls in _SECTION_CLASSES.items():
        part = getattr(settings, section)
        entries = {}
        for f in dataclasses.fields(cls):
            value = getattr(part, f.name)
            if f.metadata.get("kind") == "secret":
                value = None if value is None else "(set, hidden)"
            elif f.metadata.get("kind") == "endpoints":
                value = [
                    {"url": e.url, "models": list(e.models), "apiKey": "(set, hidden)" if e.api_key else None}
                    for e in value
                ]
            elif isinstance(value, tuple):
                value = list(value)
            entries[camel(f.name)] = value
        out[section] = entries
    return out
