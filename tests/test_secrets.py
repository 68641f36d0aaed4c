"""Secrets that must not reach the backend, nor any output, even in the corners (issue 11):

- a private key whose header lies above the prompt window (redaction runs on the whole document
  before any window is cut);
- workspace walks and open documents that lead, through a symbolic link, to a secret file or out
  of the workspace;
- token formats from the vendored gitleaks rules and our own (Hugging Face, GitLab, Azure
  connection strings, Authorization headers, DSN keys);
- a backend error that echoes the request's Authorization header, and URL credentials in doctor;
- `privacy.exclude` patterns that would make a backtracking regex run for ever.

End to end through the recording proxy (tests/fault_proxy.py) in front of the real vLLM, by the
language server (RawServer) and by the CLI.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi_lsp.core.privacy import REDACTED, PrivacyFilter, mask, redact
from phi_lsp.core.settings import PrivacySettings
from tests.conftest import MODEL_NAME, settings
from tests.fault_proxy import FaultProxy
from tests.rawlsp import RawServer
from tests.test_privacy import command, inline, open_doc

ROOT = Path(__file__).resolve().parent.parent


def key_block(lines: int = 300, seed: int = 11) -> tuple[str, list[str]]:
    """A PEM private key of `lines` base64 body lines (and the body lines)."""
    rng = random.Random(seed)
    body = [base64.b64encode(bytes(rng.getrandbits(8) for _ in range(48))).decode() for _ in range(lines)]
    return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(body) + "\n-----END RSA PRIVATE KEY-----", body


def source_with_key() -> tuple[str, list[str]]:
    block, body = key_block()
    code = "\n".join(f"def handler_{i}(request):\n    return respond(request, {i})\n" for i in range(6))
    return f'import ssl\n\nKEY = """{block}"""\n\n\n{code}\n\ndef main():\n    context = ssl.create_default_context(', body


def cli(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PHI_LSP_")}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "phi_lsp", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def sent(proxy: FaultProxy) -> list[str]:
    return [r.body.decode("utf-8", "replace") for r in proxy.recorded("/completions")]


def config_file(tmp_path: Path, **sections) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "phi-lsp.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def proxy(vllm_url):
    proxy = FaultProxy(vllm_url).start()
    yield proxy
    proxy.close()


# -- 1. redaction before the window is cut ------------------------------------------------------


def test_a_key_block_is_masked_over_the_whole_document():
    source, body = source_with_key()
    privacy = PrivacyFilter()
    from phi_lsp.core.documents import Document

    snapshot = Document("file:///ws/app.py", source, 1, "python").snapshot()
    masked = privacy.sendable(snapshot)
    assert len(masked.source) == len(snapshot.source) and masked.tree is snapshot.tree
    assert masked.source.count(b"\n") == snapshot.source.count(b"\n")
    tail = masked.source[masked.source.index(b"\n", len(masked.source) // 5):].decode()  # below the header
    cleaned = privacy.clean(tail)
    assert REDACTED in cleaned and not any(line in cleaned for line in body)
    assert "def main():" in cleaned and "handler_5" in cleaned
    assert privacy.sendable(snapshot).source is masked.source  # cached for the version


def test_completion_and_review_never_send_a_key_body_whose_header_is_above_the_window(tmp_path, proxy):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    source, body = source_with_key()
    raw = RawServer(env={"HOME": str(tmp_path)})
    try:
        raw.initialize(workspace, settings(proxy.url, **{"completion.contextTokens": 700, "review.onSave": False}),
                       {"general": {"positionEncodings": ["utf-16"]}})
        uri = open_doc(raw, workspace / "app.py", source)
        lines = source.split("\n")
        inline(raw, uri, {"line": len(lines) - 1, "character": len(lines[-1])})
        command(raw, "phi.review", uri)
        bodies = sent(proxy)
        assert any("def main():" in b for b in bodies), "the completion prompt was sent"
        leaked = [line for line in body if any(line in b for b in bodies)]
        assert not leaked, f"{len(leaked)} key lines were sent"
    finally:
        raw.close()


def test_cli_complete_and_review_never_send_a_key_body(tmp_path, proxy):
    source, body = source_with_key()
    (tmp_path / "app.py").write_text(source)
    config = config_file(tmp_path, completion={"contextTokens": 700, "promptMode": "raw"})
    lines = source.split("\n")
    done = cli(["complete", f"app.py:{len(lines)}:{len(lines[-1]) + 1}", "--config", str(config),
                "--backend-url", proxy.url, "--model", MODEL_NAME], tmp_path)
    assert done.returncode == 0, done.stderr
    done = cli(["review", "app.py", "--config", str(config), "--backend-url", proxy.url, "--model", MODEL_NAME], tmp_path)
    assert done.returncode in (0, 1), done.stderr
    bodies = sent(proxy)
    assert len(bodies) >= 2 and any("def main():" in b for b in bodies)
    assert not [line for line in body if any(line in b for b in bodies)]
