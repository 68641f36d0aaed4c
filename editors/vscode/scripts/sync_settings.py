"""Bring the extension's contributed `phiLsp.*` settings in line with the server's keys.

    .venv/bin/python editors/vscode/scripts/sync_settings.py          # rewrite package.json
    .venv/bin/python editors/vscode/scripts/sync_settings.py --check  # exit 1 if out of date

For every key in `phi_lsp.core.settings.all_keys()` it sets type, default, enum, minimum/maximum and
item rules from the dataclass field, keeps the description already written in package.json,
and adds new keys (with a placeholder description that tests/test_node_client.py rejects, so
a person writes one) to their section's group. Settings of sections the server no longer has
are dropped; the extension-only `phiLsp.server.*` / `phiLsp.trace.*` group is left alone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from phi_lsp.core import settings as config  # noqa: E402

PACKAGE_JSON = Path(__file__).resolve().parents[1] / "package.json"
EXTENSION_ONLY = ("server.", "trace.")
PLACEHOLDER = "TODO: describe this setting"
TITLES = {
    "backend": "Backend",
    "completion": "Completion",
    "review": "Review",
    "privacy": "Privacy",
    "managed": "Managed vLLM",
    "routing": "Routing",
    "telemetry": "Telemetry",
    "limits": "Limits",
}
RULES = ("type", "pattern", "patternErrorMessage", "enum", "minimum", "maximum", "items", "additionalProperties", "default")


def default_of(field: dataclasses.Field):
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return list(value) if isinstance(value, tuple) else value


def schema_for(field: dataclasses.Field) -> dict:
    """The JSON-schema rules of one server setting (everything but its description)."""
    meta = field.metadata
    kind = meta["kind"]
    default = default_of(field)
    nullable = default is None
    schema: dict = {}
    if kind in ("url", "secret", "str"):
        schema["type"] = ["string", "null"] if nullable else "string"
        if kind == "url":
            schema["pattern"] = "^https?://"
            schema["patternErrorMessage"] = "An http:// or https:// URL such as http://localhost:8000/v1"
    elif kind == "header":
        schema["type"] = "string"
        schema["pattern"] = "^" + config.HEADER_NAME + "$"
        schema["patternErrorMessage"] = "An HTTP header name such as X-Session-ID, or empty for none"
    elif kind == "choice":
        schema["type"] = "string"
        schema["enum"] = list(meta["choices"])
    elif kind == "bool":
        schema["type"] = "boolean"
    elif kind in ("int", "float"):
        base = "integer" if kind == "int" else "number"
        schema["type"] = [base, "null"] if nullable else base
        schema["minimum"] = meta["min"]
        schema["maximum"] = meta["max"]
    elif kind == "str_list":
        schema["type"] = "array"
        schema["items"] = {"type": "string"}
        if "choices" in meta:
            schema["items"]["enum"] = list(meta["choices"])
    elif kind == "str_map":
        schema["type"] = "object"
        schema["additionalProperties"] = {"type": "string"}
    elif kind == "endpoints":
        schema["type"] = "array"
        schema["items"] = {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "models": {"type": "array", "items": {"type": "string"}},
                "apiKey": {"type": "string"},
            },
        }
    else:
        raise SystemExit(f"sync_settings.py: no JSON schema for setting kind {kind!r}")
    schema["default"] = default
    return schema


def synced(manifest: dict) -> dict:
    groups = manifest["contributes"]["configuration"]
    existing = {name: schema for group in groups for name, schema in group["properties"].items()}
    extension_only = [g for g in groups if all(n[len("phiLsp."):].startswith(EXTENSION_ONLY) for n in g["properties"])]
    by_section: dict[str, dict] = {}
    for key, field in config.all_keys().items():
        name = f"phiLsp.{key}"
        old = existing.get(name, {})
        schema = {**{k: v for k, v in old.items() if k not in RULES}, **schema_for(field)}
        if not (schema.get("markdownDescription") or schema.get("description")):
            schema["markdownDescription"] = PLACEHOLDER
        # Rules first, then the description and anything else (scope, order, ...).
        ordered = {k: schema[k] for k in RULES if k in schema}
        ordered.update({k: v for k, v in schema.items() if k not in RULES})
        by_section.setdefault(key.split(".")[0], {})[name] = ordered
    result = list(extension_only)
    for order, (section, properties) in enumerate(by_section.items(), start=len(result)):
        result.append({"title": TITLES.get(section, section.title()), "order": order, "properties": properties})
    manifest = json.loads(json.dumps(manifest))
    manifest["contributes"]["configuration"] = result
    return manifest


def main(argv: list[str]) -> int:
    text = PACKAGE_JSON.read_text(encoding="utf-8")
    manifest = json.loads(text)
    new_text = json.dumps(synced(manifest), indent=2) + "\n"
    if "--check" in argv:
        if new_text != text:
            print(f"{PACKAGE_JSON} is out of date: run {Path(__file__).name} without --check", file=sys.stderr)
            return 1
        return 0
    if new_text != text:
        PACKAGE_JSON.write_text(new_text, encoding="utf-8")
        print(f"updated {PACKAGE_JSON}")
    placeholders = [n for g in synced(manifest)["contributes"]["configuration"] for n, s in g["properties"].items() if s.get("markdownDescription") == PLACEHOLDER]
    if placeholders:
        print("write a description for: " + ", ".join(placeholders), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
