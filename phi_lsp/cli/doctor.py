"""`phi-lsp doctor`: the configuration in effect, whether the backend answers, which models it
serves, what stands behind its URL (vLLM itself or vLLM's router and its workers), and what to
fix. Exit status 1 when something needs fixing."""

from __future__ import annotations

import shutil
import sys

from phi_lsp import __version__
from phi_lsp.core.chat_format import CHAT, prompt_family
from phi_lsp.core.chat_template import find_chat_template
from phi_lsp.model.backend import Backend, BackendError
from phi_lsp.core.privacy import mask_known
from phi_lsp.core.settings import SettingsManager, all_keys, redacted
from phi_lsp.model.managed_vllm import choose_model, has_gpu, vllm_missing
from phi_lsp.model.cli_backend import find_serve_model, model_configured
from phi_lsp.model.server_probe import describe, probe_server
from phi_lsp.review.prompts import CONTEXT_TOKENS as REVIEW_CONTEXT_TOKENS


async def run_doctor(manager: SettingsManager, out=None) -> int:
    out = out or sys.stdout
    settings = manager.settings
    origins = manager.origins()
    problems: list[str] = []

    def say(text: str = "") -> None:
        print(mask_known(text), file=out)  # URL credentials and keys, wherever they show

    say(f"phi-lsp {__version__} (Python {sys.version.split()[0]} at {sys.executable})")
    say()
    say("Configuration in effect (source in brackets; no bracket = default):")
    values = redacted(settings)
    for key in all_keys():
        section, name = key.split(".", 1)
        source = origins.get(key)
        say(f"  {key} = {values[section][name]!r}" + (f"  [{source}]" if source else ""))
    untrusted = manager.untrusted_keys()
    if untrusted:
        say(f"  ignored from the untrusted workspace: {', '.join(untrusted)} "
            "(`phi-lsp trust` in the workspace folder allows them)")
    say()

    b = settings.backend
    if b.endpoints:
        await _check_endpoints(settings, say, problems)
    elif b.url:
        say(f"Backend: {b.url} (kind {b.kind}{', API key set' if b.api_key else ''})")
        backend = Backend(b.url, b.kind, b.api_key, connect_timeout_s=b.connect_timeout_ms / 1000)
        try:
            served = await backend.list_models(timeout_s=5)
        except BackendError as exc:
            served = None
            problems.append(
                f"The backend does not answer: {exc.reason}. Start it (for example "
                f"`vllm serve {settings.completion.model}`), or fix backend.url."
            )
        if served is not None:
            say(f"  reachable; serves: {', '.join(served) or '(nothing)'}")
            await _say_what_serves(b.url, b.api_key, b.session_header, say, problems)
            for task in ("completion", "review"):
                model = getattr(settings, task).model
                if model not in served:
                    problems.append(
                        f"{task}.model is {model!r}, which {b.url} does not serve. Set {task}.model "
                        f"to one of: {', '.join(served) or '(none)'}."
                    )
                else:
                    say(f"  {task}.model {model!r}: served{_accepts(settings, task, backend.context_lengths.get(model))}")
            if b.kind == "vllm":
                await _check_chat_formats(settings, backend, say, problems)
        await backend.aclose()
    else:
        choice = choose_model(settings, model_configured(manager))
        say("Backend: none configured (backend.url unset), so phi-lsp starts a managed local vLLM.")
        say(f"  it would serve: {choice.served_name} ({choice.source})")
        if choice.note:
            say(f"  note: {choice.note}")
        if prompt_family(choice.served_name, settings.completion.prompt_mode) == CHAT:
            template = find_chat_template(choice.source)
            say(f"  chat prompts: {template.source_note if template else 'learned from the managed vLLM once it runs'}")
        say(f"  GPU: {'found' if has_gpu() else 'none found'}")
        running = find_serve_model(choice)
        if running:
            say(f"  a `phi-lsp serve-model` is already serving it at {running}")
        missing = vllm_missing(settings.managed.python or sys.executable)
        if missing:
            problems.append(missing)
        else:
            say(f"  vLLM: installed for {settings.managed.python or sys.executable}")
    if b.kind == "openai":
        say("  kind openai: one prompt per request; no logprobs (no confidence gate) and no structured outputs.")
    if shutil.which("node") is None:
        say("  (node not found: only needed to build the VS Code extension)")
    say()
    if problems:
        say("What to fix:")
        for problem in problems:
            say(f"  - {problem}")
        return 1
    say("Everything looks right.")
    return 0



async def _check_chat_formats(settings, backend: Backend, say, problems: list[str]) -> None:
    """Which chat format the models with chat prompts get; the built-in fallback is a problem."""
    from phi_lsp.model.chat_format_discovery import ChatFormats

    formats = ChatFormats()
    modes = {"completion": settings.completion.prompt_mode, "review": "auto"}
    for task, mode in modes.items():
        model = getattr(settings, task).model
        if prompt_family(model, mode) != CHAT:
            continue
        chat = await formats.get(backend, model)
        say(f"  {task}.model {model!r}: chat prompts in {chat.source_note}")
        if chat.fallback:
            problems.append(
                f"The chat template of {model!r} could not be read or learned from {backend.url} (vLLM's /tokenize); "
                "chat prompts use a built-in Phi-4-mini shape that may not be the model's own. Serve the model with "
                "vLLM (which exposes /tokenize), or put its files (tokenizer_config.json) in the Hugging Face cache."
            )


async def _check_endpoints(settings, say, problems: list[str]) -> None:
    """backend.endpoints (and backend.url beside them): each server and what it serves."""
    from phi_lsp.model.endpoints import Endpoints, EndpointSpec

    b = settings.backend
    specs = [EndpointSpec.parse(b.url, (), b.api_key)] if b.url else []
    specs += [EndpointSpec.parse(e.url, e.models, e.api_key) for e in b.endpoints]
    endpoints = Endpoints.create(specs, kind=b.kind, connect_timeout_s=b.connect_timeout_ms / 1000)
    say(f"Backend: {len(specs)} endpoints (kind {b.kind})")
    for model, urls in endpoints.duplicates().items():
        problems.append(
            f"backend.endpoints lists {model!r} at {len(urls)} URLs; only the first ({urls[0]}) is used. "
            "Replicas of one model go behind vllm-router, listed once by its URL (docs/DEPLOY.md)."
        )
    try:
        for member in endpoints.members:
            listed = member.spec.listed() or ["(every model no entry lists)"]
            try:
                served = await member.backend.list_models(timeout_s=5)
            except BackendError as exc:
                problems.append(f"The endpoint {member.url} does not answer: {exc.reason}.")
                say(f"  {member.url}: not answering; listed for {', '.join(listed)}")
                continue
            say(f"  {member.url}: reachable; serves {', '.join(served) or '(nothing)'}; listed for {', '.join(listed)}")
            await _say_what_serves(member.url, member.spec.api_key, b.session_header, lambda t: say("  " + t), problems)
            for name, served_name in member.spec.models:
                if served and served_name not in served:
                    problems.append(f"{member.url} does not serve {served_name!r} (listed in backend.endpoints).")
        for task in ("completion", "review"):
            section = getattr(settings, task)
            for key, model in (("model", section.model), ("escalationModel", section.escalation_model)):
                if model is None:
                    continue
                endpoint = endpoints.for_model(model)
                if endpoint is not None:
                    say(f"  {task}.{key} {model!r}: {endpoint.url}{_accepts(settings, task, endpoints.context_length(model))}")
                else:
                    problems.append(f"{task}.{key} is {model!r}, which no endpoint lists.")
    finally:
        await endpoints.aclose()


def _accepts(settings, task: str, length: int | None) -> str:
    """What the server accepts per request for a task's model, when /models says, and whether
    phi-lsp cuts that task's prompts to fit it."""
    if length is None:
        return ""
    note = f", {length:,} tokens per request"
    if task == "completion":
        c = settings.completion
        if c.context_tokens + c.max_tokens > length:
            note += (f" (less than completion.contextTokens {c.context_tokens:,} + maxTokens {c.max_tokens:,}: "
                     "prompts are cut to fit)")
    elif length < REVIEW_CONTEXT_TOKENS:
        note += f" (less than the {REVIEW_CONTEXT_TOKENS:,} review prompts may take: they are cut to fit)"
    return note


async def _say_what_serves(url: str, api_key: str | None, session_header: str, say, problems: list[str]) -> None:
    """What stands behind `url`: vLLM itself, vllm-router and its workers, or another server."""
    facts = await probe_server(url, api_key)
    lines, found = describe(facts, session_header)
    for line in lines:
        say(f"  {line}")
    problems += [f"{url}: {problem}" for problem in found]
