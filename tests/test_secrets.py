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


# -- 2. symbolic links: judge the target, never leave the workspace -----------------------------


def linked_workspace(tmp_path: Path) -> Path:
    """ws/ with links to a secret file and to code outside it; returns ws."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".env").write_text("OUTSIDEENVMARKER = 1\nAPI_TOKEN=t0k3n-outside-secret\n")
    (outside / "helper.py").write_text("def outsidecodemarker(x):\n    return x + 1\n")
    (outside / "pkg").mkdir()
    (outside / "pkg" / "mod.py").write_text("def outsidedirmarker():\n    return 2\n")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "settings.py").symlink_to("../outside/.env")
    (workspace / "helper.py").symlink_to(outside / "helper.py")
    (workspace / "pkg").symlink_to(outside / "pkg", target_is_directory=True)
    (workspace / "app.py").write_text("from helper import outsidecodemarker\n\n\ndef run(value):\n    total = outsidecodemarker(value)\n    return total\n")
    return workspace


OUTSIDE_MARKERS = ("OUTSIDEENVMARKER", "t0k3n-outside-secret", "outsidecodemarker(x)", "return x + 1", "outsidedirmarker")


def test_privacy_judges_a_links_target(tmp_path):
    workspace = linked_workspace(tmp_path)
    privacy = PrivacyFilter(PrivacySettings(exclude=("vendored/",)), [workspace])
    assert privacy.is_secret_file(str(workspace / "settings.py")) and privacy.is_excluded((workspace / "settings.py").as_uri())
    assert not privacy.is_excluded(str(workspace / "app.py"))
    (tmp_path / "vendored").mkdir()
    (tmp_path / "vendored" / "lib.py").write_text("x = 1\n")
    (workspace / "lib.py").symlink_to(tmp_path / "vendored" / "lib.py")
    assert not privacy.inside_roots(workspace / "lib.py") and privacy.inside_roots(workspace / "app.py")
    from phi_lsp.core.symbols import iter_source_files

    assert [p.name for p in iter_source_files([workspace], privacy.is_excluded)] == ["app.py"]


def test_the_server_sends_no_linked_secret_and_nothing_from_outside_the_workspace(tmp_path, proxy):
    workspace = linked_workspace(tmp_path)
    raw = RawServer(env={"HOME": str(tmp_path)})
    try:
        raw.initialize(workspace, settings(proxy.url, **{"review.onSave": False}), {"general": {"positionEncodings": ["utf-16"]}})
        # The editor opens the link: its target is a secret file, so nothing about it is sent.
        link = workspace / "settings.py"
        text = link.read_text()
        uri = link.as_uri()
        raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
        assert inline(raw, uri, {"line": 1, "character": 5})["items"] == []
        review = command(raw, "phi.review", uri)
        assert review["reviewed"] is False and "excluded" in review["reason"], review
        # The workspace walk and the symbol index: app.py only.
        app = open_doc(raw, workspace / "app.py", (workspace / "app.py").read_text())
        inline(raw, app, {"line": 5, "character": 16})
        summary = command(raw, "phi.reviewWorkspace", timeout=300)
        assert summary.get("files", 1) >= 1, summary
        bodies = sent(proxy)
        assert any("def run(value)" in b for b in bodies), "app.py was sent"
        for marker in OUTSIDE_MARKERS:
            assert not any(marker in b for b in bodies), marker
    finally:
        raw.close()


def test_cli_review_sends_no_linked_secret_and_nothing_from_outside(tmp_path, proxy):
    workspace = linked_workspace(tmp_path)
    done = cli(["review", ".", "--backend-url", proxy.url, "--model", MODEL_NAME, "--format", "json"], workspace)
    assert done.returncode in (0, 1), done.stderr
    assert [f["path"] for f in json.loads(done.stdout)["files"]] == ["app.py"], done.stdout
    done = cli(["review", "settings.py", "helper.py", "--backend-url", proxy.url, "--model", MODEL_NAME], workspace)
    assert "settings.py: not reviewed" in done.stderr and "helper.py: not reviewed" in done.stderr, done.stderr
    bodies = sent(proxy)
    assert any("def run(value)" in b for b in bodies)
    for marker in OUTSIDE_MARKERS:
        assert not any(marker in b for b in bodies), marker


# -- 3. token formats ---------------------------------------------------------------------------

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH"
GITLAB = "glpat-" + "x8Yz3AbCdEfGhIjKlMnO"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BEARER = "eyJ0eXAi0000.abcdef123456.ZZZZ9876secret"
SENTRY_KEY = "d4c1f0ab2e3b4c5d6e7f8091a2b3c4d5"
TOKENS = [
    (f'HF_TOKEN = "{HF}"', HF),
    (f"login(token='{HF}')", HF),
    (f'api.whoami("{HF}")', HF),
    (f"gl = gitlab.Gitlab(url, private_token={GITLAB!r})", GITLAB),
    (f"glab --token {GITLAB}", GITLAB),
    (f'CONN = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={AZURE_KEY};EndpointSuffix=core.windows.net"', AZURE_KEY),
    (f"curl -H 'Authorization: Bearer {BEARER}' https://api.example.com", BEARER),
    (f'headers = {{"Authorization": "Bearer {BEARER}"}}', BEARER),
    (f"Authorization: Bearer {BEARER}", BEARER),
    (f'sentry_sdk.init(dsn="https://{SENTRY_KEY}@o450000.ingest.sentry.io/5500000")', SENTRY_KEY),
    (f"SENTRY_DSN=https://{SENTRY_KEY}@sentry.example.com/12", SENTRY_KEY),
    ("slack = 'xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx'", "AbCdEfGhIjKlMnOpQrStUvWx"),
    ("npm = 'npm_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'", "npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),  # gitleaks' rule
]


@pytest.mark.parametrize("text,secret", TOKENS, ids=[t[0][:28] for t in TOKENS])
def test_token_formats_are_redacted(text, secret):
    result = redact(text)
    assert secret not in result.text and REDACTED in result.text, (result.text, result.kinds)


def test_every_vendored_gitleaks_rule_compiles():
    import tomllib

    from phi_lsp.core import secrets

    data = tomllib.loads(secrets.RULES_FILE.read_text())
    usable = [r for r in data["rules"] if "regex" in r and "path" not in r and r["id"] not in secrets.SKIPPED_RULES]
    assert len(secrets.gitleaks_rules()) == len(usable) >= 200


def test_tokens_never_reach_the_backend_from_the_server_or_the_cli(tmp_path, proxy):
    workspace = tmp_path / "ws"
    source = "import requests\n\n" + "\n".join(text for text, _ in TOKENS) + "\n\n\ndef fetch(url):\n    return requests.get("
    raw = RawServer(env={"HOME": str(tmp_path)})
    try:
        raw.initialize(workspace, settings(proxy.url, **{"review.onSave": False}), {"general": {"positionEncodings": ["utf-16"]}})
        uri = open_doc(raw, workspace / "client.py", source)
        lines = source.split("\n")
        inline(raw, uri, {"line": len(lines) - 1, "character": len(lines[-1])})
        command(raw, "phi.review", uri)
    finally:
        raw.close()
    done = cli(["review", "client.py", "--backend-url", proxy.url, "--model", MODEL_NAME], workspace)
    assert done.returncode in (0, 1), done.stderr
    bodies = sent(proxy)
    assert len(bodies) >= 3 and all("requests" in b for b in bodies)
    for _, secret in TOKENS:
        assert not any(secret in b for b in bodies), secret


# -- 4. keys in errors, output and messages -----------------------------------------------------

KEY = "phi-test-KEY-7f3a9c0e5b1d4e2f8a6c"  # matches no token rule: only its value is known
ENDPOINT_KEY = "endpoint-KEY-0b9c8d7e6f5a4b3c2d1e"


def test_the_api_key_echoed_by_a_backend_error_is_masked_in_the_server(tmp_path, proxy):
    workspace = tmp_path / "ws"
    options = settings(proxy.url, **{"review.onSave": False})
    options["backend"]["apiKey"] = KEY
    raw = RawServer("--log-file", str(tmp_path / "server.log"), "-v", env={"HOME": str(tmp_path)})
    try:
        raw.initialize(workspace, options, {"general": {"positionEncodings": ["utf-16"]}})
        uri = open_doc(raw, workspace / "app.py", "def twice(x):\n    return x * 2\n\n\ndef main():\n    return twice(")
        proxy.set_mode("echo")
        inline(raw, uri, {"line": 5, "character": 17})
        review = command(raw, "phi.review", uri)
        assert review["unitsFailed"] >= 1 and review.get("error"), review
        status = command(raw, "phi.status")
        stats = command(raw, "phi.stats")
        assert raw.response(raw.request("shutdown"))["result"] is None
        raw.notify("exit")
        raw.wait()
        while not raw.messages.empty():
            raw.notifications.append(raw.messages.get())
        assert any(r.headers.get("authorization") == f"Bearer {KEY}" for r in proxy.recorded()), "the key was used"
        assert any("unauthorized" in json.dumps(x) for x in [review, *raw.notifications]), "the echo was reported"
        for what in [review, status, stats, *raw.notifications]:
            assert KEY not in json.dumps(what), what
        for text in ((tmp_path / "server.log").read_text(), b"".join(raw.stderr).decode("utf-8", "replace")):
            assert KEY not in text
    finally:
        raw.close()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_api_key_echoed_by_a_backend_error_is_masked_in_cli_review(tmp_path, proxy, fmt):
    (tmp_path / "app.py").write_text("def twice(x):\n    return x * 2\n")
    proxy.set_mode("echo")
    # One key from the environment, one from a config file's endpoint: both are masked.
    config = tmp_path / "endpoints.toml"
    config.write_text(f'[backend]\nendpoints = [{{ url = "{proxy.url}", apiKey = "{ENDPOINT_KEY}" }}]\n')
    for args, key in ((["--backend-url", proxy.url], KEY), (["--config", str(config)], ENDPOINT_KEY)):
        done = cli(["review", "app.py", "--model", MODEL_NAME, "--format", fmt, *args],
                   tmp_path, env={"PHI_LSP_API_KEY": KEY})
        assert "unauthorized" in done.stdout + done.stderr, (done.stdout, done.stderr)
        assert f"Bearer {key}" in [r.headers.get("authorization") for r in proxy.recorded()]
        assert KEY not in done.stdout + done.stderr and ENDPOINT_KEY not in done.stdout + done.stderr, (done.stdout, done.stderr)


def test_doctor_masks_url_credentials(tmp_path):
    done = cli(["doctor", "--backend-url", "http://admin:pa55w0rd-doctor@127.0.0.1:9/v1", "--model", MODEL_NAME], tmp_path,
               env={"PHI_LSP_API_KEY": KEY}, timeout=120)
    output = done.stdout + done.stderr
    assert "127.0.0.1:9" in output, output
    assert "pa55w0rd-doctor" not in output and KEY not in output, output


def test_masking_functions():
    from phi_lsp.core import privacy
    from phi_lsp.core.settings import BackendSettings, Endpoint, Settings

    privacy.remember_configured_secrets(Settings(backend=BackendSettings(
        url="https://bob:s3cret-in-url@gw.example.com/v1", endpoints=(Endpoint("http://h/v1", (), ENDPOINT_KEY),))))
    text = f"failed: https://bob:s3cret-in-url@gw.example.com/v1 with {ENDPOINT_KEY} and https://{SENTRY_KEY}@o1.ingest.sentry.io/2"
    for masked in (privacy.mask_known(text), mask(text)):
        assert "s3cret-in-url" not in masked and ENDPOINT_KEY not in masked and SENTRY_KEY not in masked, masked
    from phi_lsp.model.backend import BackendError

    assert ENDPOINT_KEY not in BackendError(f"401: Authorization: Bearer {ENDPOINT_KEY}").reason


# -- 5. privacy.exclude patterns that would never finish --------------------------------------

PATHOLOGICAL = "/".join(["**"] * 30) + "/x"


def test_a_pathological_exclude_pattern_is_matched_at_once():
    # In a child process, so that a matcher that never returns fails the test instead of hanging it.
    code = (
        "import time; from pathlib import Path; from phi_lsp.core.privacy import PrivacyFilter; "
        "from phi_lsp.core.settings import PrivacySettings; "
        f"p = PrivacyFilter(PrivacySettings(exclude=({PATHOLOGICAL!r}, '*a*a*a*a*a*a*a*a*a*a*a*b')), [Path('/ws')]); "
        "t = time.perf_counter(); "
        "r = (p.is_excluded('/ws/' + 'a/' * 40 + 'x'), p.is_excluded('/ws/' + 'a/' * 40 + 'y.py'), p.is_excluded('/ws/x'), "
        "p.is_excluded('/ws/' + 'a' * 60)); print(r, p.problems, time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 5, done.stdout  # seconds for the four matches (a generous bound)
    # x is excluded at any depth; the 12-wildcard pattern fails closed: everything is excluded.
    assert done.stdout.startswith("(True, True, True, True)") and "no file is sent" in done.stdout, done.stdout


def test_the_server_answers_at_once_with_a_pathological_exclude_pattern(tmp_path, proxy):
    workspace = tmp_path / "ws"
    raw = RawServer(env={"HOME": str(tmp_path)})
    try:
        raw.initialize(workspace, settings(proxy.url, **{"privacy.exclude": [PATHOLOGICAL], "review.onSave": False}),
                       {"general": {"positionEncodings": ["utf-16"]}})
        folder = workspace.joinpath(*["a"] * 24)  # the old matcher's backtracking grows with the depth
        deep = open_doc(raw, folder / "x", "XDEEPMARKER = 1\n", "python")
        started = time.monotonic()
        assert inline(raw, deep, {"line": 0, "character": 5})["items"] == []
        app = open_doc(raw, folder / "app.py", "def twice(x):\n    return x * 2\n")
        inline(raw, app, {"line": 1, "character": 16})
        assert time.monotonic() - started < 30
        bodies = sent(proxy)
        assert any("def twice" in b for b in bodies) and not any("XDEEPMARKER" in b for b in bodies)
    finally:
        raw.close()


def test_cli_review_with_a_pathological_exclude_pattern(tmp_path, proxy):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "app.py").write_text("def twice(x):\n    return x * 2\n")
    config = tmp_path / "exclude.toml"
    config.write_text(f"[privacy]\nexclude = [{json.dumps(PATHOLOGICAL)}, \"*a*a*a*a*a*b\"]\n")
    done = cli(["review", "a", "--config", str(config), "--backend-url", proxy.url, "--model", MODEL_NAME], tmp_path, timeout=60)
    assert "no file is sent" in done.stderr, done.stderr  # the 6-wildcard pattern fails closed, and says so
    assert sent(proxy) == []
