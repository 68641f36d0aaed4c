"""Settings precedence across every source, for the server and the command line alike:
defaults < workspace pyproject.toml (or --config FILE) < environment < flags
< initializationOptions < workspace/didChangeConfiguration; key by key, never section by section."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DEAD_BACKEND
from tests.rawlsp import RawServer

PYPROJECT = """
[tool.phi-lsp]
completion.timeoutMs = 1111
completion.debounceMs = 11
completion.maxTokens = 11
review.maxFindingsPerFile = 11
backend.kind = "openai"
"""
CONFIG_FILE = """
backend.kind = "openai"
backend.apiKey = "file-key-123"
completion.timeoutMs = 2222
"""
ENV = {"PHI_LSP_MODEL": "env-model", "PHI_LSP_API_KEY": "env-key-456"}


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "user.toml").write_text(CONFIG_FILE)
    return ws


def server_settings(workspace, *args: str) -> dict:
    """Start `phi-lsp ARGS` in the workspace, go through initialize and a settings change,
    and return phi.stats' view of the settings in effect."""
    env = {**ENV, "XDG_STATE_HOME": str(workspace.parent / "state")}
    server = RawServer(*args, env=env, cwd=workspace)
    try:
        server.initialize(workspace, {"completion": {"maxTokens": 33}, "review": {"maxFindingsPerFile": 33}})
        server.notify("workspace/didChangeConfiguration", {"settings": {"phiLsp": {"review": {"maxFindingsPerFile": 44}}}})
        answer = server.response(server.request("workspace/executeCommand", {"command": "phi.stats", "arguments": []}))
        return answer["result"]
    finally:
        server.close()


def doctor_settings(workspace, *args: str) -> dict[str, tuple[str, str | None]]:
    """`phi-lsp doctor ARGS` in the workspace: key -> (value, source)."""
    env = {**os.environ, **ENV, "XDG_STATE_HOME": str(workspace.parent / "state")}
    out = subprocess.run([sys.executable, "-m", "phi_lsp", "doctor", *args], cwd=workspace, env=env,
                         capture_output=True, text=True, timeout=60).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("  ") and " = " in line and line.strip().split(" = ")[0].count(".") == 1:
            key, rest = line.strip().split(" = ", 1)
            value, _, source = rest.partition("  [")
            found[key] = (value, source.rstrip("]") or None)
    return found


def test_server_ranks_every_source(workspace):
    result = server_settings(workspace, "--backend-url", DEAD_BACKEND)
    s, sources = result["settings"], result["settingsSources"]
    assert (s["completion"]["timeoutMs"], sources["completion.timeoutMs"]) == (1111, "pyproject.toml")
    assert (s["completion"]["debounceMs"], sources["completion.debounceMs"]) == (11, "pyproject.toml")
    assert (s["completion"]["model"], sources["completion.model"]) == ("env-model", "environment")
    assert (s["backend"]["apiKey"], sources["backend.apiKey"]) == ("(set, hidden)", "environment")
    assert (s["backend"]["url"], sources["backend.url"]) == (DEAD_BACKEND, "command line")
    assert (s["completion"]["maxTokens"], sources["completion.maxTokens"]) == (33, "initializationOptions")
    assert s["review"]["maxFindingsPerFile"] == 44
    assert sources["review.maxFindingsPerFile"] == "workspace/didChangeConfiguration"
    # The repository may not pick the backend's protocol (an untrusted workspace).
    assert s["backend"]["kind"] == "vllm" and result["untrustedKeys"] == ["backend.kind"]


def test_server_config_file_keeps_every_key_beside_a_flag(workspace):
    """--config FILE with --backend-url: the file's backend.kind and apiKey stay (the old
    shallow merge lost them), the environment still beats the file, the pyproject is not read."""
    result = server_settings(workspace, "--config", str(workspace.parent / "user.toml"), "--backend-url", DEAD_BACKEND)
    s, sources = result["settings"], result["settingsSources"]
    assert (s["backend"]["kind"], sources["backend.kind"]) == ("openai", "--config")
    assert (s["backend"]["url"], sources["backend.url"]) == (DEAD_BACKEND, "command line")
    assert sources["backend.apiKey"] == "environment"  # environment above the file
    assert (s["completion"]["timeoutMs"], sources["completion.timeoutMs"]) == (2222, "--config")
    assert "completion.debounceMs" not in sources
    assert "file-key-123" not in str(result) and "env-key-456" not in str(result)


def test_command_line_ranks_the_same_way(workspace):
    found = doctor_settings(workspace, "--backend-url", DEAD_BACKEND)
    assert found["completion.timeoutMs"] == ("1111", "pyproject.toml")
    assert found["completion.model"] == ("'env-model'", "environment")
    assert found["backend.apiKey"] == ("'(set, hidden)'", "environment")
    assert found["backend.url"] == (repr(DEAD_BACKEND), "command line")
    assert found["backend.kind"] == ("'vllm'", None)
    found = doctor_settings(workspace, "--config", str(workspace.parent / "user.toml"), "--model", "flag-model")
    assert found["backend.kind"] == ("'openai'", "--config")
    assert found["completion.timeoutMs"] == ("2222", "--config")
    assert found["completion.model"] == ("'flag-model'", "command line")
    assert found["backend.apiKey"] == ("'(set, hidden)'", "environment")
