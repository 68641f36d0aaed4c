"""`phi-lsp complete FILE:LINE:COL`: the completion pipeline from a terminal (1-based line and
column, the column counted in characters). Prints the suggestion; `--format json` adds the other
candidates, timings and the context sources used."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lsprotocol import types

from phi_lsp.core import positions
from phi_lsp.model.batching import Batcher
from phi_lsp.model.backend import BackendError
from phi_lsp.core.settings import SettingsManager
from phi_lsp.core.documents import Document, Limits
from phi_lsp.model.managed_vllm import ManagedVllmError
from phi_lsp.core.privacy import PrivacyFilter
from phi_lsp.core.chat_format import CHAT, prompt_family
from phi_lsp.model.cli_backend import chat_format, cli_backend, served_context_length
from phi_lsp.core.symbols import SymbolIndex
from phi_lsp.core.tokens import TokenCounter

from phi_lsp.completion.service import INVOKED, CompletionService, Model, Request


def parse_location(location: str) -> tuple[Path, int, int]:
    match = re.match(r"^(.*):(\d+):(\d+)$", location)
    if not match:
        raise ValueError(f"expected FILE:LINE:COL (1-based), got {location!r}")
    return Path(match.group(1)), int(match.group(2)), int(match.group(3))


def project_root(path: Path) -> Path:
    for folder in [path.parent, *path.parent.parents]:
        if (folder / ".git").exists() or (folder / "pyproject.toml").is_file():
            return folder
    return path.parent


async def complete_file(manager: SettingsManager, path: Path, line: int, column: int, backend_factory=cli_backend) -> dict:
    """Run the pipeline once; returns the JSON report (raises ValueError on bad input)."""
    settings = manager.settings
    privacy = PrivacyFilter(settings.privacy, [project_root(path)])
    for problem in privacy.problems:
        print(f"phi-lsp complete: {problem}", file=sys.stderr)
    if privacy.is_excluded(str(path.absolute())):  # the link's name and its target's
        raise ValueError(f"{path} holds secrets or is excluded by privacy.exclude; it is never sent to the model")
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    limits = Limits(settings.limits.max_document_bytes, settings.limits.max_line_bytes)
    document = Document(path.resolve().as_uri(), text, 1, None, positions.UTF32, limits=limits)
    if document.too_large:
        print(f"phi-lsp complete: {path} is too large for full support ({document.too_large}): "
              "only the text around the cursor is used", file=sys.stderr)
    if line < 1 or line > document.line_count():
        raise ValueError(f"line {line} is outside {path} (1..{document.line_count()})")
    cursor = document.offset_at(types.Position(line - 1, max(0, column - 1)))
    root = project_root(path.resolve())
    index = SymbolIndex(exclude=privacy.is_excluded)
    await index.build([root])
    async with backend_factory(manager) as cli:
        chat = None
        if prompt_family(cli.completion_model, settings.completion.prompt_mode) == CHAT:
            chat = await chat_format(cli, cli.completion_model)
        model = Model(cli.backend, Batcher(cli.backend), cli.completion_model, TokenCounter.for_model(cli.model_source),
                      chat=chat, context_length=await served_context_length(cli, cli.completion_model))
        service = CompletionService(
            model=lambda: model,
            settings=lambda: settings.completion,
            index=index,
            clean=privacy.clean,
            sendable=privacy.sendable,
            display=lambda p: _relative(p, root),
        )
        request = Request(document.uri, document.snapshot(), cursor, INVOKED, str(path.resolve()), _relative(str(path.resolve()), root))
        result = await service.suggest(request)
        return {
            "file": str(path),
            "line": line,
            "column": column,
            "model": cli.completion_model,
            "suggestion": result.suggestions[0].text if result.suggestions else None,
            "candidates": [{"text": s.text, "confidence": s.confidence} for s in result.suggestions],
            "reason": result.reason or None,
            "contextSources": result.context.sources_used if result.context else [],
            "promptTokens": result.context.tokens if result.context else 0,
            "timings": {k: round(v, 1) for k, v in result.timings.items()},
            "dropped": dict(service.stats.dropped),
            "note": cli.note or None,
        }


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


async def run_complete(manager: SettingsManager, location: str, fmt: str) -> int:
    try:
        path, line, column = parse_location(location)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        report = await complete_file(manager, path, line, column)
    except (ValueError, OSError) as exc:
        print(f"phi-lsp complete: {exc}", file=sys.stderr)
        return 2
    except (BackendError, ManagedVllmError) as exc:
        print(f"phi-lsp complete: the model is not available: {exc}", file=sys.stderr)
        return 1
    if fmt == "json":
        print(json.dumps(report, indent=2))
    elif report["suggestion"] is None:
        print(f"(no suggestion: {report['reason']})", file=sys.stderr)
    else:
        print(report["suggestion"])
    return 0
