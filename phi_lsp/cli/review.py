"""`phi-lsp review PATH...`: the review pipeline from the command line.

Files (and the source files under directories) are reviewed together: their units go to the
backend as list-of-prompts requests of up to `review.batchSize` prompts. Secret and
`privacy.exclude`d files are never sent. Output goes to stdout in the chosen format, a progress
bar to stderr when it is a terminal.

Exit status: 1 when a finding at or above `--fail-on` exists; otherwise 2 when the review
could not be completed (no backend, a request failed, a path does not exist); else 0.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from phi_lsp.core.settings import SettingsManager
from phi_lsp.core.privacy import PrivacyFilter
from phi_lsp.core.symbols import SymbolIndex, is_inside, iter_source_files

from phi_lsp.review import formats
from phi_lsp.core.documents import Limits
from phi_lsp.review.files import load
from phi_lsp.review.pipeline import Escalation, Reviewer, ReviewOptions
from phi_lsp.review.prompts import resolve_mode

MAX_CLI_FILES = 5_000


class ProgressBar:
    """`[#####.....] 12/32 units` on stderr, only on a terminal."""

    def __init__(self, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._shown = False

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        width = 30
        filled = int(width * done / total)
        self.stream.write(f"\r\033[Kphi-lsp review [{'#' * filled}{'.' * (width - filled)}] {done}/{total} units")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def collect_files(paths: list[str], privacy: PrivacyFilter) -> tuple[list[Path], list[str]]:
    """The files to review, and problems to report (missing paths, excluded files)."""
    files: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = list(iter_source_files([path], privacy.is_excluded))
        elif path.is_file():
            if privacy.is_excluded(str(path.absolute())):
                problems.append(f"{raw}: not reviewed: excluded by privacy settings (secrets never leave the machine)")
                continue
            if path.is_symlink() and not is_inside(os.path.realpath(path), [os.path.realpath(Path.cwd())]):
                problems.append(f"{raw}: not reviewed: a link to a file outside the working directory")
                continue
            found = [path]
        else:
            problems.append(f"{raw}: no such file or directory")
            continue
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files[:MAX_CLI_FILES], problems


async def run_review(
    manager: SettingsManager, paths: list[str], fmt: str = "text", fail_on: str = "never", progress: bool = True
) -> int:
    from phi_lsp.model.managed_vllm import ManagedVllmError
    from phi_lsp.model.cli_backend import chat_format, cli_backend, served_context_length
    from phi_lsp.core.tokens import TokenCounter

    settings = manager.settings
    privacy = PrivacyFilter(settings.privacy, [Path.cwd()])
    files, problems = collect_files(paths, privacy)
    problems = privacy.problems + problems
    incomplete = any("no such file" in p for p in problems)
    for problem in problems:
        print(f"phi-lsp: {problem}", file=sys.stderr)
    limits = Limits(settings.limits.max_document_bytes, settings.limits.max_line_bytes)
    jobs = []
    for file in files:
        job, skipped = load(file, limits)
        if skipped is not None:
            print(f"phi-lsp: {file}: not reviewed: {skipped}", file=sys.stderr)
        if job is not None:
            jobs.append(job)
    if not jobs:
        print("phi-lsp: nothing to review (no source files with a known language)", file=sys.stderr)
        _emit(fmt, [], "", None, 0.0)
        return 2 if incomplete else 0

    index = SymbolIndex(exclude=privacy.is_excluded)
    # Not resolve(): a linked file must not make its target's folder part of the index.
    roots = {Path(p).absolute() if Path(p).is_dir() else Path(p).absolute().parent for p in paths if Path(p).exists()}
    await index.build(sorted(roots))

    bar = ProgressBar(progress and sys.stderr.isatty())
    started = time.monotonic()
    try:
        async with cli_backend(manager) as cb:
            if cb.note:
                print(f"phi-lsp: {cb.note}", file=sys.stderr)
            options = ReviewOptions.from_settings(settings.review, cb.review_model, cb.backend)
            length = await served_context_length(cb, cb.review_model)
            options = replace(options, context_tokens=length or options.context_tokens)
            if options.mode == "chat":
                options = replace(options, chat=await chat_format(cb, cb.review_model))
            counter = TokenCounter.for_model(cb.model_source)
            reviewer = Reviewer()
            try:
                results = await reviewer.review(
                    jobs, cb.backend, options, lookup=index.lookup, clean=privacy.clean,
                    sendable=privacy.sendable,
                    count_tokens=counter.count, on_progress=bar.update,
                    escalation=cli_escalation(settings, cb),
                )
            finally:
                bar.close()
            model = cb.review_model
            requests = reviewer.stats.requests
    except ManagedVllmError as exc:
        print(f"phi-lsp: {exc}", file=sys.stderr)
        return 2
    _emit(fmt, results, model, requests, time.monotonic() - started)
    errors = sorted({r.error for r in results if r.error})
    for error in errors:
        print(f"phi-lsp: some units were not reviewed: {error}", file=sys.stderr)
    if formats.fails(results, fail_on):
        return 1
    return 2 if errors or incomplete else 0


def cli_escalation(settings, cb) -> Escalation | None:
    """review.escalationModel when backend.endpoints lists it (docs/ROUTING.md)."""
    from phi_lsp.model.escalation import Router

    name = settings.review.escalation_model
    endpoints = cb.endpoints
    if not name or endpoints is None or name == cb.review_model or not endpoints.serves(name):
        return None
    router = Router(tell_user=lambda text: print(text, file=sys.stderr))
    router.configure(settings.routing.max_tokens_per_minute)
    for member in endpoints.members:
        member.backend.on_usage = (
            lambda served, prompt, completion, spec=member.spec: router.note_usage(spec.name_for(served), prompt, completion)
        )
    options = ReviewOptions.from_settings(settings.review, name, cb.backend)
    from dataclasses import replace

    options = replace(options, mode=resolve_mode("auto", endpoints.served_name(name)))
    return Escalation(cb.backend, options, router, settings.routing.review_min_confidence)


def _emit(fmt: str, results, model: str, requests: int | None, seconds: float) -> None:
    if fmt == "json":
        sys.stdout.write(formats.format_json(results, model, requests, seconds))
    elif fmt == "sarif":
        sys.stdout.write(formats.format_sarif(results, model))
    else:
        sys.stdout.write(formats.format_text(results))
    sys.stdout.flush()
