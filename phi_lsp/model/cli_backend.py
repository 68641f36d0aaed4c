"""A backend for command-line runs (review, complete, demo, doctor): the configured URL (and the
configured endpoints: which URL serves which model), a running `phi-lsp serve-model` for the
same model, or a managed vLLM started for this run and stopped at its end. Requests carry the
session key of their file, keyed by the current directory as the workspace."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator


from phi_lsp.core.chat_format import ChatRenderer
from phi_lsp.core.paths import state_dir
from phi_lsp.model.backend import Backend, BackendError
from phi_lsp.model.chat_format_discovery import ChatFormats
from phi_lsp.core.settings import SettingsManager
from phi_lsp.model.managed_vllm import ManagedVllm, ModelChoice
from phi_lsp.model.session import SessionKeys


SERVE_MODEL_FILE = "serve-model.json"
PROGRESS_EVERY_S = 15.0


@dataclass
class CliBackend:
    backend: Backend
    completion_model: str
    review_model: str
    model_source: str  # path or hub id (for the tokenizer)
    note: str = ""
    endpoints: Any = None  # the Endpoints when backend.endpoints is set (backend then dispatches by model)


_CHAT_FORMATS = ChatFormats(tell=lambda message: print(message, file=sys.stderr))


def _serving(cb: CliBackend, model: str) -> tuple[Backend, str] | None:
    """The backend serving `model` and the name it knows it by (None: no endpoint lists it)."""
    if cb.endpoints is None:
        return cb.backend, model
    endpoint = cb.endpoints.for_model(model)
    return (endpoint.backend, endpoint.spec.served_name(model)) if endpoint is not None else None


async def chat_format(cb: CliBackend, model: str) -> ChatRenderer:
    """`model`'s chat format (its files on disk, else learned from the server serving it)."""
    backend, served = _serving(cb, model) or (cb.backend, model)
    files = cb.model_source if model == cb.completion_model else None
    return await _CHAT_FORMATS.get(backend, served, files)


async def served_context_length(cb: CliBackend, model: str) -> int | None:
    """What the server serving `model` accepts per request in tokens, if its /models says
    (prompts are then cut to fit); None when it does not say or does not answer (the request
    itself then reports the real error)."""
    serving = _serving(cb, model)
    if serving is None:
        return None
    backend, served = serving
    try:
        await backend.list_models()
    except BackendError:
        return None
    return backend.context_lengths.get(served)


def model_configured(manager: SettingsManager) -> bool:
    origins = manager.origins()
    return "completion.model" in origins or "review.model" in origins


def write_serve_model_record(url: str, choice: ModelChoice) -> Path:
    path = state_dir() / SERVE_MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url, "model": choice.served_name, "source": choice.source, "pid": os.getpid()}))
    return path


def find_serve_model(choice: ModelChoice) -> str | None:
    """URL of a live `phi-lsp serve-model` serving the same model, if there is one."""
    path = state_dir() / SERVE_MODEL_FILE
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("model") != choice.served_name:
        return None
    import httpx  # only the command line gets here; the server's start-up does not pay for it

    try:
        health = record["url"].rsplit("/v1", 1)[0] + "/health"
        if httpx.get(health, timeout=1.0).status_code == 200:
            return record["url"]
    except httpx.HTTPError:
        return None
    return None


_last_progress_line = 0.0


def _progress(message: str, percent: int | None) -> None:
    """One updating line on a terminal; elsewhere a line every PROGRESS_EVERY_S seconds."""
    global _last_progress_line
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{message}")
        sys.stderr.flush()
        return
    now = time.monotonic()
    if percent == 100 or now - _last_progress_line >= PROGRESS_EVERY_S:
        _last_progress_line = now
        print(message, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def cli_backend(manager: SettingsManager) -> AsyncIterator[CliBackend]:
    settings = manager.settings
    b = settings.backend
    timeouts = dict(connect_timeout_s=b.connect_timeout_ms / 1000, request_timeout_s=b.request_timeout_ms / 1000)
    sessions = dict(session_header=b.session_header, sessions=SessionKeys([Path.cwd()]))
    if b.endpoints:
        from phi_lsp.model.endpoints import Endpoints, EndpointSpec

        specs = [EndpointSpec.parse(b.url, (), b.api_key)] if b.url else []
        specs += [EndpointSpec.parse(e.url, e.models, e.api_key) for e in b.endpoints]
        endpoints = Endpoints.create(specs, kind=b.kind, **timeouts, **sessions)
        for model, urls in endpoints.duplicates().items():
            print(f"phi-lsp: backend.endpoints lists {model!r} at {len(urls)} URLs; only {urls[0]} is used "
                  "(put vllm-router in front of replicas: docs/DEPLOY.md)", file=sys.stderr)
        completion_model = settings.completion.model
        try:
            yield CliBackend(endpoints.backend(), completion_model, settings.review.model,
                             endpoints.served_name(completion_model), endpoints=endpoints)
        finally:
            await endpoints.aclose()
        return
    if b.url:
        backend = Backend(b.url, b.kind, b.api_key, **timeouts, **sessions)
        try:
            yield CliBackend(backend, settings.completion.model, settings.review.model, settings.completion.model)
        finally:
            await backend.aclose()
        return
    managed = ManagedVllm.from_settings(settings, model_configured(manager))
    choice = managed.model
    url = find_serve_model(choice)
    started = url is None
    if started:
        url = await managed.start(_progress)
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
    backend = Backend(url, "vllm", None, **timeouts, **sessions)
    try:
        yield CliBackend(backend, choice.served_name, choice.served_name, choice.source, choice.note)
    finally:
        await backend.aclose()
        if started:
            await managed.stop()
