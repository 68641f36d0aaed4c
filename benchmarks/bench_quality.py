"""Line-completion quality through the language server, against a real vLLM serving
phi-code-tiny, on Python code the test model never saw: packages downloaded from the registry at
run time (boltons, marshmallow, tomlkit, humanize: not among the sources it was trained on).

For each sampled line the cursor is put inside it (after its first token) and the rest of the
line is removed; the server is asked for an automatic completion, and the suggestion is compared
with the removed text: exact match (of the completed line) and edit similarity (difflib ratio,
0 when nothing is shown). Every configuration runs through the LSP with the same samples:
the raw-prefix baseline (no context source), each context source on its own, and all of them.

Also reported, because the tiny model cannot turn context into better answers (its MODEL.md says
so): context recall — for lines that use a name defined in another file of the package, how often
that definition was in the prompt sent to the backend. And the count of shown suggestions that
add a syntax error (a fresh parse of the file with the suggestion, against the file without it).

    .venv/bin/python benchmarks/bench_quality.py [--backend-url URL] [--samples 120]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import random
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_backend_flag, editor, quiet_client_logs, vllm  # noqa: E402
from lsprotocol import types  # noqa: E402

from phi_lsp.core import syntax  # noqa: E402
from phi_lsp.core.symbols import definitions_in  # noqa: E402

PACKAGES = ["boltons", "marshmallow", "tomlkit", "humanize"]
ALL = ["suffix", "imports", "scopes", "symbols", "recent"]
CONFIGS = [("baseline (prefix only)", [])] + [(f"+ {s}", [s]) for s in ALL] + [("full pipeline", ALL)]
BUDGET = 1536  # tokens: the default completion.contextTokens


def fetch_packages(folder: Path) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(folder / "wheels"), *PACKAGES],
        check=True,
    )
    roots = []
    for wheel in sorted((folder / "wheels").glob("*.whl")):
        target = folder / wheel.name.split("-")[0]
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        roots.append(target)
    return roots


@dataclass
class Sample:
    path: Path
    line: int
    column: int  # characters
    truth: str  # the removed rest of the line
    cross_file_names: list[str] = field(default_factory=list)


def sample_lines(roots: list[Path], count: int, seed: int = 7) -> list[Sample]:
    rng = random.Random(seed)
    defined_in: dict[str, set[Path]] = {}
    files = [p for root in roots for p in sorted(root.rglob("*.py")) if "test" not in p.name]
    for path in files:
        source = path.read_bytes()
        for d in definitions_in(syntax.parse("python", source), source, "python", str(path)):
            defined_in.setdefault(d.name, set()).add(path)
    candidates = []
    for path in files:
        lines = path.read_text(encoding="utf-8").split("\n")
        in_docstring = False
        for number, line in enumerate(lines):
            stripped = line.strip()
            if stripped.count('"""') == 1 or stripped.count("'''") == 1:
                in_docstring = not in_docstring
                continue
            if in_docstring or len(stripped) < 12 or stripped.startswith(("#", "@", '"', "'")) or number < 3:
                continue
            first = re.match(r"\s*\S+", line)
            column = first.end() if first else 0
            truth = line[column:].rstrip()
            if len(truth.strip()) < 4:
                continue
            names = [n for n in re.findall(r"[A-Za-z_]\w*", truth) if defined_in.get(n, set()) - {path}]
            candidates.append(Sample(path, number, column, truth, names))
    rng.shuffle(candidates)
    # Half of the samples use a name from another file, so context recall has cases to count.
    cross = [c for c in candidates if c.cross_file_names][: count // 2]
    rest = [c for c in candidates if not c.cross_file_names][: count - len(cross)]
    chosen = cross + rest
    rng.shuffle(chosen)
    return chosen


def errors(source: str) -> int:
    return syntax.error_count(syntax.parse("python", source.encode()).root_node)


@dataclass
class Scores:
    shown: int = 0
    exact: int = 0
    similarity: float = 0.0
    syntax_added: int = 0
    recall_cases: int = 0
    recall_hits: int = 0
    samples: int = 0


async def run_config(url: str, root: Path, samples: list[Sample], sources: list[str], budget: int) -> Scores:
    scores = Scores()
    async with editor(url, root, debounceMs=0, contextTokens=budget, contextSources=sources, maxTokens=48) as ed:
        recent: list[str] = []
        for sample in samples:
            lines = sample.path.read_text(encoding="utf-8").split("\n")
            head = lines[sample.line][: sample.column]
            text = "\n".join(lines[: sample.line] + [head] + lines[sample.line + 1 :])
            uri = sample.path.as_uri()
            ed.client.text_document_did_open(types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
            position = types.Position(sample.line, len(head.encode("utf-16-le")) // 2)
            result = await ed.client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=position,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
            suggestion = result.items[0].insert_text if result and result.items else ""
            predicted = suggestion.split("\n", 1)[0].rstrip()
            scores.samples += 1
            if suggestion:
                scores.shown += 1
                with_it = "\n".join(lines[: sample.line] + [head + suggestion] + lines[sample.line + 1 :])
                if errors(with_it) > errors(text):
                    scores.syntax_added += 1
            scores.exact += predicted == sample.truth
            scores.similarity += difflib.SequenceMatcher(None, predicted, sample.truth).ratio() if predicted else 0.0
            if sample.cross_file_names:
                scores.recall_cases += 1
                last = await ed.command("phi.debug.lastPrompt")
                prompt = last["prompt"] if last else ""
                other_files = prompt.rsplit("# file:", 1)[0]  # everything before the current file
                if any(re.search(rf"\b(def|class) {re.escape(n)}\b", other_files) for n in sample.cross_file_names):
                    scores.recall_hits += 1
            # The user finishes the line: an edit, so this file is a "recent edit" for the next one.
            end = types.Position(sample.line, position.character)
            ed.client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(end, end), text=sample.truth)]))
            recent.append(uri)
            if len(recent) > 3:
                old = recent.pop(0)
                if old not in recent:
                    ed.client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=old)))
    return scores


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--budget", type=int, default=BUDGET, help="completion.contextTokens")
    args = parser.parse_args()
    quiet_client_logs()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        roots = fetch_packages(folder)
        samples = sample_lines(roots, args.samples)
        async with vllm(args.backend_url) as url:
            results = {}
            for name, sources in CONFIGS:
                results[name] = await run_config(url, folder, samples, sources, args.budget)
                print(f"(done: {name})", file=sys.stderr, flush=True)
    n = len(samples)
    print(f"Line completion on {', '.join(PACKAGES)} ({n} lines, cursor after the first token, "
          f"prompt budget {args.budget} tokens, greedy, through the LSP)")
    print(f"  {'configuration':<24} {'shown':>6} {'exact':>7} {'similarity':>11} {'ctx recall':>11} {'syntax+':>8}")
    for name, s in results.items():
        recall = f"{s.recall_hits}/{s.recall_cases}"
        print(f"  {name:<24} {s.shown / n:>6.0%} {s.exact / n:>7.1%} {s.similarity / n:>11.3f} {recall:>11} {s.syntax_added:>8}")
    base, full = results["baseline (prefix only)"], results["full pipeline"]
    print(f"  full vs baseline: exact {100 * (full.exact - base.exact) / n:+.1f} points, "
          f"similarity {(full.similarity - base.similarity) / n:+.3f}, "
          f"context recall {full.recall_hits}/{full.recall_cases} vs {base.recall_hits}/{base.recall_cases}")
    print(f"  suggestions that add a syntax error: {sum(s.syntax_added for s in results.values())} (goal 0)")


if __name__ == "__main__":
    asyncio.run(main())
