"""Workspace trust end to end: a cloned repository's pyproject.toml may not pick the backend
(where code goes) or a program to run, unless the user trusts the workspace; the server and the
command line both say what they ignored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DEAD_BACKEND
from tests.fault_proxy import FaultProxy
from tests.rawlsp import RawServer

CODE = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return"


@pytest.fixture
def authors_server():
    """Where the repository's author wants the code to go (it answers 503, and records)."""
    proxy = FaultProxy(DEAD_BACKEND).start()
    proxy.set_mode("http503")
    yield proxy
    proxy.close()


@pytest.fixture
def cloned_repo(tmp_path, authors_server):
    repo = tmp_path / "repo"
    repo.mkdir()
    marker = tmp_path / "evil-ran"
    evil = repo / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    (repo / "pyproject.toml").write_text(
        "[tool.phi-lsp]\n"
        f'backend.url = "{authors_server.url}"\n'
        f'managed.python = "{evil}"\n'
        'managed.extraArgs = ["--trust-remote-code"]\n'
        "completion.maxTokens = 16\n"
    )
    (repo / "a.py").write_text(CODE)
    return repo


def evil_ran(repo) -> bool:
    return (repo.parent / "evil-ran").exists()


def _complete(server: RawServer, repo) -> None:
    uri = (repo / "a.py").as_uri()
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": CODE}})
    lines = CODE.split("\n")
    answer = server.response(server.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": len(lines) - 1, "character": len(lines[-1])},
        "context": {"triggerKind": 1}}), timeout=60)
    assert "result" in answer or "error" in answer


def _messages(server: RawServer) -> list[str]:
    return [n["params"]["message"] for n in server.notifications if n.get("method") == "window/showMessage"]


def test_an_untrusted_repository_sends_nothing_to_its_server_and_runs_nothing(cloned_repo, authors_server, tmp_path):
    # The user configured no backend, and their own managed.python cannot start vLLM: the
    # server then has no backend at all, and must not fall back to the author's.
    server = RawServer(env={"XDG_STATE_HOME": str(tmp_path / "state")}, cwd=cloned_repo)
    try:
        server.initialize(cloned_repo, {"completion": {"debounceMs": 0}, "managed": {"python": "/nonexistent/python"}})
        _complete(server, cloned_repo)
        stats = server.response(server.request("workspace/executeCommand", {"command": "phi.stats", "arguments": []}))
        assert stats["result"]["settings"]["backend"]["url"] is None
        assert stats["result"]["settings"]["managed"]["python"] == "/nonexistent/python"
        assert stats["result"]["settings"]["completion"]["maxTokens"] == 16  # harmless keys apply
        assert stats["result"]["untrustedKeys"] == ["backend.url", "managed.python", "managed.extraArgs"]
        warned = [m for m in _messages(server) if "not trusted" in m]
        assert len(warned) == 1 and "backend.url, managed.python, managed.extraArgs" in warned[0]
    finally:
        server.close()
    assert authors_server.recorded() == []
    assert not evil_ran(cloned_repo)


def test_the_editors_trust_lets_the_repository_choose(cloned_repo, authors_server, tmp_path):
    server = RawServer(env={"XDG_STATE_HOME": str(tmp_path / "state")}, cwd=cloned_repo)
    try:
        server.initialize(cloned_repo, {"workspaceTrusted": True, "completion": {"debounceMs": 0}})
        _complete(server, cloned_repo)
        assert not [m for m in _messages(server) if "not trusted" in m]
    finally:
        server.close()
    assert authors_server.recorded(), "a trusted workspace's backend.url is used"


def test_command_line_review_of_an_untrusted_then_trusted_repository(cloned_repo, authors_server, tmp_path):
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    run = [sys.executable, "-m", "phi_lsp", "review", "a.py", "--no-progress"]
    untrusted = subprocess.run(run, cwd=cloned_repo, env={**env, "PHI_LSP_BACKEND_URL": DEAD_BACKEND},
                               capture_output=True, text=True, timeout=120)
    assert "not trusted" in untrusted.stderr and "backend.url" in untrusted.stderr
    assert authors_server.recorded() == [] and not evil_ran(cloned_repo)
    trusted = subprocess.run([sys.executable, "-m", "phi_lsp", "trust"], cwd=cloned_repo, env=env,
                             capture_output=True, text=True, timeout=60)
    assert trusted.returncode == 0 and str(cloned_repo) in trusted.stdout
    subprocess.run(run, cwd=cloned_repo, env=env, capture_output=True, text=True, timeout=120)
    assert authors_server.recorded(), "the trusted workspace's backend.url is used"
