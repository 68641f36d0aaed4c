"""Shared pieces of the benchmark scripts: a real vLLM (given, or started for the run), and a
small LSP client that drives `python -m phi_lsp` the way an editor does."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

MODEL = "phi-code-tiny"


def model_dir() -> Path:
    shared = ROOT.parent / "shared" / "models" / MODEL
    return shared if (shared / "config.json").is_file() else ROOT / "phi_lsp" / "models" / MODEL


def add_backend_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend-url",
        default=os.environ.get("PHI_LSP_TEST_VLLM_URL"),
        help="a running vLLM serving phi-code-tiny (default: start one for this run)",
    )


@contextlib.asynccontextmanager
async def vllm(url: str | None) -> AsyncIterator[str]:
    """The given vLLM, or one started now (and stopped at the end) serving phi-code-tiny."""
    if url:
        yield url.rstrip("/")
        return
    from phi_lsp.model.managed_vllm import ManagedVllm, ModelChoice

    server = ManagedVllm(ModelChoice(str(model_dir()), MODEL), max_model_len=2048)
    started = time.monotonic()
    print(f"(starting vLLM for {MODEL}...)", file=sys.stderr, flush=True)
    base = await server.start()
    print(f"(vLLM ready in {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    try:
        yield base
    finally:
        await server.stop()


class Editor:
    """An LSP client session with phi-lsp: open, type, ask, run commands."""

    def __init__(self, client: LanguageClient, root: Path):
        self.client = client
        self.root = root
        self.versions: dict[str, int] = {}
        self.texts: dict[str, str] = {}

    def open(self, name: str, text: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        uri = path.as_uri()
        self.versions[uri], self.texts[uri] = 1, text
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        return uri

    def close(self, uri: str) -> None:
        """didClose: the server forgets the document and the suggestions it cached for it."""
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    def end(self, uri: str) -> types.Position:
        lines = self.texts[uri].split("\n")
        return types.Position(len(lines) - 1, len(lines[-1].encode("utf-16-le")) // 2)

    def type(self, uri: str, text: str) -> None:
        """Insert `text` at the end of the document (one didChange)."""
        position = self.end(uri)
        self.versions[uri] += 1
        self.texts[uri] += text
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(position, position), text=text)]))

    def inline_params(self, uri: str, invoked: bool) -> types.InlineCompletionParams:
        kind = types.InlineCompletionTriggerKind.Invoked if invoked else types.InlineCompletionTriggerKind.Automatic
        return types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=self.end(uri),
            context=types.InlineCompletionContext(trigger_kind=kind))

    async def inline(self, uri: str, invoked: bool = True) -> list[str]:
        result = await self.client.text_document_inline_completion_async(self.inline_params(uri, invoked))
        return [item.insert_text for item in (result.items if result else [])]

    async def command(self, name: str, *arguments):
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments) or None))


@contextlib.asynccontextmanager
async def editor(url: str, root: Path, backend: dict | None = None, **completion) -> AsyncIterator[Editor]:
    """A phi-lsp server driven as an editor drives it; `completion` (and `backend`) settings
    on top of the benchmarks' defaults."""
    client = LanguageClient("bench", "1")
    await client.start_io(sys.executable, "-m", "phi_lsp")
    settings = {
        "backend": {"url": url, **(backend or {})},
        "completion": {"model": MODEL, "promptMode": "raw", "minConfidence": 0.0, **completion},
        "review": {"model": MODEL, "onSave": False},
    }
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(),
        process_id=os.getpid(), initialization_options=settings))
    client.initialized(types.InitializedParams())
    session = Editor(client, root)
    try:
        yield session
    finally:
        await close(client)


async def close(client: LanguageClient) -> None:
    """shutdown + exit, as an editor does; a server that does not answer is stopped anyway."""
    try:
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
    except Exception:
        pass
    await client.stop()


def python_sources(limit_bytes: int = 4_000_000) -> list[Path]:
    """Python files of the standard library (plumbing benchmarks only; the quality evaluation
    uses code the test model never saw)."""
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out, total = [], 0
    for path in files:
        size = path.stat().st_size
        if 2_000 < size < 60_000:
            out.append(path)
            total += size
        if total > limit_bytes:
            break
    return out


def function_body_lines(tree) -> set[int]:
    """Lines inside function bodies (after the `def` line: a one-line function has none), of a
    tree-sitter tree; where the quality and context benchmarks take their samples."""
    found: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_definition":
            body = node.child_by_field_name("body")
            if body is not None and body.start_point.row > node.start_point.row:
                found.update(range(body.start_point.row, body.end_point.row + 1))
        stack.extend(node.named_children)
    return found


def quiet_client_logs() -> None:
    """pygls' client logs every notification it has no handler for; the benchmarks need none."""
    import logging

    logging.getLogger("pygls").setLevel(logging.ERROR)
