"""The VS Code side, under the project's one test command.

- The extension's contributed `phiLsp.*` settings are exactly the server's keys (config.all_keys()),
  with the same types, defaults, enums and limits (no Node needed).
- editors/vscode: `npm ci` (when node_modules is missing or older than package-lock.json),
  `npm run compile`, its unit tests, `npm run package` (a .vsix).
- tests/node: a Node LSP client built on vscode-languageserver-protocol, offering the capabilities
  of VS Code's client, drives `python -m phi_lsp` against the session's real vLLM; then the
  compiled extension runs with the real vscode-languageclient on a stand-in of the VS Code API.

Without node/npm these skip with the reason; with PHI_LSP_REQUIRE_VLLM=1 (CI) they fail instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from phi_lsp.core import settings as config

ROOT = Path(__file__).resolve().parent.parent
VSCODE = ROOT / "editors" / "vscode"
NODE_TESTS = ROOT / "tests" / "node"
REQUIRE = os.environ.get("PHI_LSP_REQUIRE_VLLM") == "1"
EXTENSION_ONLY = ("server.", "trace.")
MIN_NODE = 18  # node:test

NPM_CI_TIMEOUT_S = 600
COMPILE_TIMEOUT_S = 300
UNIT_TIMEOUT_S = 120
PACKAGE_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 1200


def manifest() -> dict:
    return json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))


def contributed_settings() -> dict[str, dict]:
    sections = manifest()["contributes"]["configuration"]
    properties: dict[str, dict] = {}
    for section in sections if isinstance(sections, list) else [sections]:
        for name, schema in section["properties"].items():
            assert name not in properties, f"{name} is contributed twice"
            properties[name] = schema
    return properties


# -- the settings schema (no Node needed) -----------------------------------------------------


def _default(field: dataclasses.Field):
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return list(value) if isinstance(value, tuple) else value


def _expected_type(kind: str, default) -> str | list[str]:
    base = {
        "url": "string",
        "secret": "string",
        "str": "string",
        "header": "string",
        "choice": "string",
        "bool": "boolean",
        "int": "integer",
        "float": "number",
        "str_list": "array",
        "endpoints": "array",
        "str_map": "object",
    }[kind]
    return [base, "null"] if default is None else base


def test_vscode_settings_are_the_server_keys():
    server_keys = config.all_keys()
    contributed = contributed_settings()
    assert all(name.startswith("phiLsp.") for name in contributed)
    for prefix in EXTENSION_ONLY:
        assert not any(key.startswith(prefix) for key in server_keys), (
            f"the server now has a `{prefix}` section: the extension-only settings must move"
        )
    server_side = {name[len("phiLsp."):] for name in contributed if not name[len("phiLsp."):].startswith(EXTENSION_ONLY)}
    assert server_side == set(server_keys), (
        f"missing in package.json: {sorted(set(server_keys) - server_side)}; "
        f"not server keys: {sorted(server_side - set(server_keys))} "
        "(editors/vscode/scripts/sync_settings.py brings package.json in line with phi_lsp/config.py)"
    )
    problems = []
    for key, field in server_keys.items():
        schema = contributed[f"phiLsp.{key}"]
        meta = field.metadata
        default = _default(field)
        want = {"default": default, "type": _expected_type(meta["kind"], default)}
        if meta["kind"] == "choice":
            want["enum"] = list(meta["choices"])
        if meta["kind"] in ("int", "float"):
            want["minimum"], want["maximum"] = meta["min"], meta["max"]
        if meta["kind"] == "str_list":
            want["items"] = {"type": "string", **({"enum": list(meta["choices"])} if "choices" in meta else {})}
        if meta["kind"] == "str_map":
            want["additionalProperties"] = {"type": "string"}
        for name, value in want.items():
            if schema.get(name) != value:
                problems.append(f"phiLsp.{key}: {name} is {schema.get(name)!r}, the server says {value!r}")
        for name in ("enum", "minimum", "maximum"):
            if name in schema and name not in want:
                problems.append(f"phiLsp.{key}: has {name} but the server has no such rule")
        description = schema.get("markdownDescription") or schema.get("description") or ""
        if not description or description.startswith("TODO"):
            problems.append(f"phiLsp.{key}: no description")
    assert not problems, "\n".join(problems) + (
        "\n(editors/vscode/scripts/sync_settings.py brings package.json in line with phi_lsp/config.py)"
    )


def test_vscode_extension_only_settings_and_commands():
    contributed = contributed_settings()
    for name in ("phiLsp.server.path", "phiLsp.server.args", "phiLsp.server.pythonPath"):
        assert name in contributed, name
    commands = {c["command"] for c in manifest()["contributes"]["commands"]}
    assert {"phiLsp.reviewFile", "phiLsp.reviewWorkspace", "phiLsp.restartServer", "phiLsp.showOutput"} <= commands
    # The TypeScript side must agree on which keys are extension-only.
    source = (VSCODE / "src" / "settings.ts").read_text(encoding="utf-8")
    prefixes = re.search(r"EXTENSION_ONLY_PREFIXES = \[([^\]]*)\]", source).group(1)
    assert sorted(re.findall(r"'([^']+)'", prefixes)) == sorted(EXTENSION_ONLY)


# -- Node ------------------------------------------------------------------------------------


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"Node.js is required here (PHI_LSP_REQUIRE_VLLM=1): {reason}")
    pytest.skip(f"needs Node.js {MIN_NODE}+ and npm: {reason}")


def _run(command: list[str], cwd: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-6000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-6000:]
        pytest.fail(f"{' '.join(command)} (in {cwd}) took longer than {timeout} s\n{out}")


def _ok(result: subprocess.CompletedProcess, what: str) -> str:
    output = (result.stdout or "") + (result.stderr or "")
    assert result.returncode == 0, f"{what} failed with exit code {result.returncode}:\n{output[-12000:]}"
    return output


def _stale(folder: Path) -> bool:
    installed = folder / "node_modules" / ".package-lock.json"
    return not installed.is_file() or installed.stat().st_mtime < (folder / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="module")
def npm():
    """npm, with node_modules installed (`npm ci`) in editors/vscode and tests/node."""
    node, npm_path = shutil.which("node"), shutil.which("npm")
    if node is None or npm_path is None:
        _unavailable("`node` or `npm` is not on PATH")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major = re.match(r"v(\d+)", version)
    if major is None or int(major.group(1)) < MIN_NODE:
        _unavailable(f"node {version} is too old")
    for folder in (VSCODE, NODE_TESTS):
        if _stale(folder):
            _ok(_run([npm_path, "ci", "--no-audit", "--no-fund"], folder, NPM_CI_TIMEOUT_S), f"npm ci in {folder}")
    return npm_path


@pytest.fixture(scope="module")
def compiled(npm):
    _ok(_run([npm, "run", "compile"], VSCODE, COMPILE_TIMEOUT_S), "npm run compile (editors/vscode)")
    assert (VSCODE / "out" / "extension.js").is_file()
    return npm


def test_vscode_extension_compiles(compiled):
    for name in ("extension", "serverCommand", "settings", "status", "startup", "trace", "statsView"):
        assert (VSCODE / "out" / f"{name}.js").is_file(), name


def test_vscode_extension_unit_tests(compiled):
    output = _ok(_run([compiled, "test"], VSCODE, UNIT_TIMEOUT_S), "npm test (editors/vscode)")
    assert re.search(r"^# fail 0$", output, re.M), output[-4000:]


def test_vscode_extension_packages_as_vsix(compiled):
    vsix = VSCODE / "phi-lsp.vsix"
    vsix.unlink(missing_ok=True)
    _ok(_run([compiled, "run", "package"], VSCODE, PACKAGE_TIMEOUT_S), "npm run package (editors/vscode)")
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        packaged = json.loads(archive.read("extension/package.json"))
    # One bundle (esbuild: the extension and vscode-languageclient) and the manifest files only.
    assert {name for name in names if name.startswith("extension/")} == {
        "extension/out/extension.js", "extension/package.json", "extension/readme.md", "extension/LICENSE.txt"}
    bundle = zipfile.ZipFile(vsix).read("extension/out/extension.js").decode()
    assert 'require("vscode")' in bundle and "vscode-languageclient" not in re.findall(r'require\("([^"]+)"\)', bundle)
    assert packaged["contributes"]["configuration"] == manifest()["contributes"]["configuration"]


@pytest.mark.vllm
def test_node_clients_against_real_vllm(compiled, vllm_url):
    """tests/node: client.test.js (protocol-level client) and extension.test.js (the compiled
    extension with the real vscode-languageclient on a stand-in VS Code API)."""
    result = _run(
        [shutil.which("node") or "node", "--test", "--test-concurrency=1", "client.test.js", "extension.test.js"],
        NODE_TESTS,
        CLIENT_TIMEOUT_S,
        env={"PHI_LSP_TEST_VLLM_URL": vllm_url, "PHI_LSP_PYTHON": sys.executable},
    )
    output = _ok(result, "the Node client tests (tests/node)")
    assert re.search(r"^# fail 0$", output, re.M), output[-12000:]
    assert re.search(r"^# pass [1-9]", output, re.M), output[-12000:]
