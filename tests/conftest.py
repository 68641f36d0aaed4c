"""Shared fixtures: the real vLLM server (once per session) and LSP clients driving phi-lsp.

The vLLM server is vLLM's CPU build serving ../shared/models/phi-code-tiny (or the project's
bundled copy) on a free loopback port, started through phi-lsp's own managed-vLLM code. Where
vLLM or the model is missing, tests that need it skip with the reason; with
PHI_LSP_REQUIRE_VLLM=1 (set by .ci/run) they fail instead. PHI_LSP_TEST_VLLM_URL points the
tests at an already running server (handy while developing).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities, make_test_lsp_client

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODEL = ROOT.parent / "shared" / "models" / "phi-code-tiny"
BUNDLED_MODEL = ROOT / "phi_lsp" / "models" / "phi-code-tiny"
MODEL_NAME = "phi-code-tiny"
REQUIRE_VLLM = os.environ.get("PHI_LSP_REQUIRE_VLLM") == "1"
# A port nothing listens on: a backend that is down.
DEAD_BACKEND = "http://127.0.0.1:9/v1"

# Servers started by the tests record feedback (telemetry.enabled) in a state directory of the
# test session, never in the user's own.
if "PHI_LSP_KEEP_STATE_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="phi-lsp-test-state-")
    atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)
SERVER_COMMAND = [sys.executable, "-m", "phi_lsp"]


def make_client() -> LanguageClient:
    """pytest-lsp's client, also keeping the server's phi/status notifications."""
    client = make_test_lsp_client()
    client.statuses = []

    @client.feature("phi/status")
    def status(ls, params):
        ls.statuses.append(params)

    # As a real editor does: accept the server's dynamic registrations (the file watcher).
    client.registrations = []

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(ls, params: types.RegistrationParams):
        ls.registrations.extend(params.registrations)

    @client.feature(types.CLIENT_UNREGISTER_CAPABILITY)
    def unregister(ls, params: types.UnregistrationParams):
        gone = {u.id for u in params.unregisterations}
        ls.registrations[:] = [r for r in ls.registrations if r.id not in gone]

    return client


CONFIG = ClientServerConfig(server_command=SERVER_COMMAND, client_factory=make_client)


def model_dir() -> Path | None:
    for candidate in (SHARED_MODEL, BUNDLED_MODEL):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _unavailable(reason: str):
    if REQUIRE_VLLM:
        pytest.fail(f"the real vLLM server is required here (PHI_LSP_REQUIRE_VLLM=1): {reason}")
    pytest.skip(f"needs a real vLLM server: {reason}")


class _LoopThread:
    """An event loop on its own thread, so a session-long server does not depend on the loop
    pytest-asyncio gives each test (pytest-lsp fixtures resolve their dependencies while a
    loop is already running)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def vllm_url():
    """Base URL (…/v1) of a real vLLM serving phi-code-tiny for the whole test session."""
    if os.environ.get("PHI_LSP_TEST_VLLM_URL"):
        yield os.environ["PHI_LSP_TEST_VLLM_URL"].rstrip("/")
        return
    from phi_lsp.model.managed_vllm import ManagedVllm, ManagedVllmError, ModelChoice, vllm_missing

    missing = vllm_missing(sys.executable)
    if missing:
        _unavailable(missing)
    model = model_dir()
    if model is None:
        _unavailable(f"the test model is missing (looked in {SHARED_MODEL} and {BUNDLED_MODEL})")
    server = ManagedVllm(ModelChoice(str(model), MODEL_NAME), max_model_len=2048, start_timeout_s=600)
    runner = _LoopThread()
    try:
        url = runner.run(server.start())
    except ManagedVllmError as exc:
        runner.close()
        _unavailable(f"vLLM failed to start: {exc}")
    yield url
    runner.run(server.stop(), timeout=60)
    runner.close()


def capabilities(profile: str, encoding: str | None = None) -> types.ClientCapabilities:
    """A real editor's capabilities, optionally offering only one position encoding."""
    caps = client_capabilities(profile)
    if encoding is not None:
        caps.general = caps.general or types.GeneralClientCapabilities()
        caps.general.position_encodings = [encoding]
    return caps


def settings(url: str, **overrides) -> dict:
    options = {
        "backend": {"url": url},
        "completion": {"model": MODEL_NAME, "promptMode": "raw", "debounceMs": 0, "minConfidence": 0.0},
        "review": {"model": MODEL_NAME},
    }
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        options.setdefault(section, {})[name] = value
    return options


async def initialize(client: LanguageClient, workspace: Path, options: dict, profile="visual_studio_code", encoding=None):
    return await client.initialize_session(
        types.InitializeParams(
            capabilities=capabilities(profile, encoding),
            root_uri=workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=workspace.as_uri(), name="ws")],
            initialization_options=options,
        )
    )


@pytest_lsp.fixture(config=CONFIG)
async def client(lsp_client: LanguageClient, tmp_path):
    """A client whose backend is down: everything that needs no model must still work."""
    await initialize(lsp_client, tmp_path, settings(DEAD_BACKEND))
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(
    config=CONFIG,
    params=[("visual_studio_code", "utf-16"), ("neovim", "utf-8"), ("neovim", "utf-32")],
    ids=["vscode-utf16", "neovim-utf8", "neovim-utf32"],
)
async def model_client(lsp_client: LanguageClient, request, tmp_path, vllm_url):
    """A client of a server that talks to the real vLLM, once per editor/encoding profile."""
    profile, encoding = request.param
    result = await initialize(lsp_client, tmp_path, settings(vllm_url), profile, encoding)
    assert result.capabilities.position_encoding == encoding
    lsp_client.workspace = tmp_path
    yield
    await lsp_client.shutdown_session()
