"""`phi-lsp demo`: the main job on an example file, from a terminal, with nothing set up.

Starts the managed vLLM once (the bundled demo model when there is no GPU and no model is
configured), completes a few lines of the example file the way the editor would (each line cut
after its first words), reviews the whole file in one batched request, prints what came back,
and stops vLLM.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from phi_lsp.core.paths import EXAMPLES
from phi_lsp.model.backend import BackendError
from phi_lsp.core.settings import SettingsManager
from phi_lsp.model.managed_vllm import ManagedVllmError
from phi_lsp.model.cli_backend import cli_backend

EXAMPLE = EXAMPLES / "inventory.py"
# (line, the text the cursor follows): lines of the example to complete.
CUT_AFTER = [(9, "        return"), (22, "        self.items."), (29, "    return"), (14, "        json.dump(")]


async def run_demo(manager: SettingsManager, file: str | None = None) -> int:
    from phi_lsp.cli.complete import complete_file
    from phi_lsp.review import formats
    from phi_lsp.review.files import load_job
    from phi_lsp.review.pipeline import Reviewer, ReviewOptions

    from phi_lsp.core.tokens import TokenCounter

    source = Path(file) if file else EXAMPLE
    with tempfile.TemporaryDirectory(prefix="phi-lsp-demo-") as tmp:
        work = Path(tmp) / source.name
        shutil.copyfile(source, work)
        lines = work.read_text(encoding="utf-8").split("\n")
        cuts = CUT_AFTER if not file else _cut_points(lines)
        print(f"phi-lsp demo: completing and reviewing {source.name}")
        try:
            async with cli_backend(manager) as cli:
                if cli.note:
                    print(f"\nNote: {cli.note}\n")
                print(f"Model {cli.completion_model} at {cli.backend.url}\n")

                @contextlib.asynccontextmanager
                async def same_backend(_manager):
                    yield cli

                print("Completions (what the editor would show as ghost text after the cursor |):")
                for number, head in cuts:
                    truncated = lines[: number - 1] + [head] + lines[number:]
                    work.write_text("\n".join(truncated), encoding="utf-8")
                    report = await complete_file(manager, work, number, len(head) + 1, same_backend)
                    suggestion = report["suggestion"]
                    shown = repr(suggestion) if suggestion is not None else f"(nothing: {report['reason']})"
                    print(f"  {source.name}:{number}  {head.strip()}|  ->  {shown}  ({report['timings'].get('totalMs', 0):.0f} ms)")
                work.write_text("\n".join(lines), encoding="utf-8")

                print(f"\nReview of {source.name} (all its functions in one batched request):")
                job = load_job(work)
                if job is None:
                    print("  (no grammar for this file type)")
                    return 1
                options = ReviewOptions.from_settings(manager.settings.review, cli.review_model, cli.backend)
                reviewer = Reviewer()
                started = time.monotonic()
                results = await reviewer.review([job], cli.backend, options, count_tokens=TokenCounter.for_model(cli.model_source).count)
                seconds = time.monotonic() - started
        except (ManagedVllmError, BackendError) as exc:
            print(f"\nphi-lsp demo: the model is not available: {exc}", file=sys.stderr)
            print("Run `phi-lsp doctor` to see what to fix.", file=sys.stderr)
            return 1
    summary = formats.summary(results, reviewer.stats.requests, seconds)
    text = formats.format_text(results).replace(str(work), source.name)
    print(f"  {summary['units']} units, {summary['requests']} request(s), {seconds:.1f} s")
    if text:
        print("  " + text.rstrip().replace("\n", "\n  "))
    else:
        print(f"  no findings survived validation (dropped: {summary['dropped'] or 'none'})")
    if cli.note:
        print("\nThe demo model is tiny: it shows the pipeline working, not what a real Phi model finds.")
    print("\nNext: set backend.url to a vLLM serving microsoft/Phi-4-mini-instruct, and set up your editor (README.md).")
    return 0


def _cut_points(lines: list[str]) -> list[tuple[int, str]]:
    """For a user's file: a few indented lines, cut after their first word."""
    points = []
    for number, line in enumerate(lines, 1):
        words = line.split()
        if line.startswith("    ") and len(words) > 2 and not line.strip().startswith("#"):
            head = line[: len(line) - len(line.lstrip())] + words[0]
            points.append((number, head))
        if len(points) == 4:
            break
    return points
