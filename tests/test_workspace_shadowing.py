"""The server started exactly as the editors start it, from a workspace whose own packages have
the names of phi-lsp's parts (a Django app called `review` is common) and raise on import:
nothing of the workspace is imported, and completion and review work against the real vLLM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import settings
from tests.rawlsp import RawServer

SHADOWING_PACKAGES = ("review", "completion", "core", "lsp", "model", "cli", "phi_lsp")
CODE = "import os\n\n\ndef join_all(path, names):\n    return [os.path.join(path, n) for n in names]\n\n\ndef add(a, b):\n    return"

# The VS Code extension runs `<python> -P -m phi_lsp` (or the console script) with the workspace
# folder as the working directory; Neovim runs the console script. A plain `python -m phi_lsp`
# (an older extension, a hand-written client config) puts the workspace first on sys.path: even
# then no generic name of ours can be taken from it (only a workspace `phi_lsp` package could).
LAUNCHES = {
    "python -P -m phi_lsp": [sys.executable, "-P", "-m", "phi_lsp"],
    "phi-lsp console script": [str(Path(sys.executable).with_name("phi-lsp"))],
    "python -m phi_lsp": [sys.executable, "-m", "phi_lsp"],
}


def make_workspace(tmp_path, packages):
    workspace = tmp_path / "project"
    for name in packages:
        package = workspace / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            f"open({str(tmp_path / ('imported-' + name))!r}, 'w').close()\n"
            f"raise RuntimeError('the workspace package {name} was imported by phi-lsp')\n"
        )
    (workspace / "app.py").write_text(CODE)
    return workspace


@pytest.mark.parametrize("launch", list(LAUNCHES), ids=["python-P", "console-script", "python-without-P"])
def test_a_workspace_cannot_shadow_phi_lsp(tmp_path, vllm_url, launch):
    command = LAUNCHES[launch]
    isolated = "-P" in command or "python" not in Path(command[0]).name
    hostile_workspace = make_workspace(
        tmp_path, SHADOWING_PACKAGES if isolated else [p for p in SHADOWING_PACKAGES if p != "phi_lsp"])
    if not Path(command[0]).exists():
        pytest.fail(f"{command[0]} is missing: the package is not installed with its console script")
    server = RawServer(command=command, cwd=hostile_workspace)
    try:
        options = settings(vllm_url, **{"completion.timeoutMs": 60_000})  # a busy CI machine
        server.initialize(hostile_workspace, options, {"general": {"positionEncodings": ["utf-16"]}})
        uri = (hostile_workspace / "app.py").as_uri()
        server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": CODE}})
        lines = CODE.split("\n")
        answer = server.response(server.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": len(lines) - 1, "character": len(lines[-1])},
            "context": {"triggerKind": 1}}), timeout=120)
        items = answer["result"]["items"] if isinstance(answer.get("result"), dict) else answer.get("result")
        assert items and items[0]["insertText"].strip(), answer

        server.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
        diagnostics = None
        while diagnostics is None:
            message = server.messages.get(timeout=240)
            if message.get("method") == "textDocument/publishDiagnostics" and message["params"]["uri"] == uri:
                diagnostics = message["params"]["diagnostics"]
        assert all(d["source"] == "phi-review" for d in diagnostics)
        stats = server.response(server.request("workspace/executeCommand", {"command": "phi.stats", "arguments": []}))
        assert stats["result"]["backend"]["byPath"].get("/completions", 0) >= 2  # completion + the review
    finally:
        server.close()
    imported = sorted(p.name for p in hostile_workspace.parent.glob("imported-*"))
    assert imported == [], f"phi-lsp imported workspace packages: {imported}"
    assert b"was imported by phi-lsp" not in b"".join(server.stderr)
