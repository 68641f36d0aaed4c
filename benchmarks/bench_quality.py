"""Line-completion quality through the language server, against a real vLLM serving
phi-code-tiny, on Python code the test model never saw: packages downloaded from the registry at
run time (boltons, marshmallow, tomlkit, humanize: not among the sources it was trained on).

Two modes, the same sampled function-body lines in each:
- `token`: the cursor after the line's first token, the rest of the line removed;
- `line`: the whole line removed, the cursor after its indentation (starting a new line: the
  case the first-token mode hides, where the local prefix matters most).
The server is asked for an automatic completion (completion.minConfidence 0, so every answer
and its confidence come back), and the suggestion's first line is compared with the removed text:
exact match, and precision (exact among the shown). The reference is raw prefix continuation sent
straight to vLLM: the file's text before the cursor, cut at a line start to as many characters as
the server's prompt for that line had, under a `# file:` header, greedy, one line; and the same
with the server's token healing (a trailing space left to the model), which separates what the
context adds from what healing adds.

Then, per completion.minConfidence threshold, the share of lines that would be shown and the
share of shown suggestions that are exactly right (the README's default comes from this table).
Also: how often the prompt held the definition of a name from another file that the line uses,
and shown suggestions that add a syntax error.

    .venv/bin/python benchmarks/bench_quality.py [--backend-url URL] [--samples 160] [--sweep]
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

from common import MODEL, add_backend_flag, editor, function_body_lines, quiet_client_logs, vllm  # noqa: E402
from lsprotocol import types  # noqa: E402

from phi_lsp.core import syntax  # noqa: E402
from phi_lsp.core.symbols import definitions_in  # noqa: E402

PACKAGES = ["boltons", "marshmallow", "tomlkit", "humanize"]
ALL = ["suffix", "imports", "scopes", "symbols", "recent"]
DEFAULT = None  # the server's default completion.contextSources
# The server's configurations: the default, prefix only, and (with --sweep) each source on its own.
CONFIGS = [("phi-lsp (default)", DEFAULT)]
SWEEP = [("phi-lsp prefix only", [])] + [(f"phi-lsp + {s}", [s]) for s in ALL] + [("phi-lsp all sources", ALL)]
BUDGET = 1536  # tokens: the default completion.contextTokens (the server gives the test model at most 1,152)
THRESHOLDS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6]
MODES = ("token", "line")


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
        body = function_body_lines(syntax.parse("python", path.read_bytes()))
        in_docstring = False
        for number, line in enumerate(lines):
            stripped = line.strip()
            if stripped.count('"""') == 1 or stripped.count("'''") == 1:
                in_docstring = not in_docstring
                continue
            if in_docstring or len(stripped) < 12 or stripped.startswith(("#", "@", '"', "'")) or number not in body:
                continue
            first = re.match(r"\s*\S+", line)
            column = first.end() if first else 0
            truth = line[column:].rstrip()
            if len(truth.strip()) < 4:
                continue
            names = [n for n in re.findall(r"[A-Za-z_]\w*", truth) if defined_in.get(n, set()) - {path}]
            candidates.append(Sample(path, number, column, truth, names))
    rng.shuffle(candidates)
    return candidates[:count]


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
    # (confidence, exact) per shown suggestion, for the threshold table
    answers: list = field(default_factory=list)
    prompt_chars: list = field(default_factory=list)  # per sample, for the raw reference
    reasons: dict = field(default_factory=dict)  # why nothing was shown (or "shown")
    right: list = field(default_factory=list)  # per sample, exact or not (for paired comparisons)


def result_reason(last: dict | None, suggestion: str) -> str:
    if suggestion:
        return "shown"
    if not last:
        return "no request"
    return "dropped by post-processing" if "suggestions" in last else "no answer (error or timeout)"


def cut(sample: Sample, mode: str) -> tuple[list[str], str, str]:
    """(the file's lines, the cursor line's head, the removed text) for a mode."""
    lines = sample.path.read_text(encoding="utf-8").split("\n")
    line = lines[sample.line]
    column = sample.column if mode == "token" else len(line) - len(line.lstrip())
    return lines, line[:column], line[column:].rstrip()


async def run_config(url: str, root: Path, samples: list[Sample], sources: list[str] | None, budget: int,
                     mode: str) -> Scores:
    scores = Scores()
    # A generous deadline: this measures what is shown, not how fast (a shared CPU vLLM can take
    # tens of seconds per request under load, and a timeout would read as "nothing shown").
    options = dict(debounceMs=0, contextTokens=budget, maxTokens=48, timeoutMs=120_000)
    if sources is not None:
        options["contextSources"] = sources
    async with editor(url, root, **options) as ed:
        recent: list[str] = []
        for sample in samples:
            lines, head, truth = cut(sample, mode)
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
            last = await ed.command("phi.debug.lastPrompt")
            prompt = last["prompt"] if last else ""
            scores.prompt_chars.append(len(prompt))
            scores.samples += 1
            if scores.samples % 20 == 0:
                print(f"  ({mode}: {scores.samples}/{len(samples)})", file=sys.stderr, flush=True)
            if suggestion:
                confidence = ((last or {}).get("suggestions") or [{}])[0].get("confidence") or 0.0
                scores.answers.append((confidence, predicted == truth))
            if suggestion:
                scores.shown += 1
                with_it = "\n".join(lines[: sample.line] + [head + suggestion] + lines[sample.line + 1 :])
                if errors(with_it) > errors(text):
                    scores.syntax_added += 1
            scores.exact += predicted == truth
            scores.right.append(predicted == truth)
            scores.similarity += difflib.SequenceMatcher(None, predicted, truth).ratio() if predicted else 0.0
            if sample.cross_file_names:
                scores.recall_cases += 1
                other_files = prompt.rsplit("# file:", 1)[0]  # everything before the current file
                if any(re.search(rf"\b(def|class) {re.escape(n)}\b", other_files) for n in sample.cross_file_names):
                    scores.recall_hits += 1
            # The user finishes the line: an edit, so this file is a "recent edit" for the next one.
            end = types.Position(sample.line, position.character)
            ed.client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangePartial(range=types.Range(end, end), text=truth)]))
            recent.append(uri)
            scores.reasons[result_reason(last, suggestion)] = scores.reasons.get(result_reason(last, suggestion), 0) + 1
            if len(recent) > 3:
                old = recent.pop(0)
                if old not in recent:
                    ed.client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=old)))
    return scores


async def raw_reference(url: str, folder: Path, samples: list[Sample], chars: list[int], mode: str,
                        heal: bool = False) -> Scores:
    """Raw prefix continuation straight to vLLM, each prompt as long as the server's was; with
    `heal`, a trailing space left to the model and taken off its answer, as the server does
    (completion/prompts.py), so that what remains between the two is the context."""
    import httpx

    scores = Scores()
    gate = asyncio.Semaphore(4)  # a few at a time: vLLM batches them
    async with httpx.AsyncClient(timeout=300) as client:
        async def one(sample: Sample, budget: int) -> tuple[Sample, str, str]:
            lines, head, truth = cut(sample, mode)
            before = "\n".join(lines[: sample.line] + [head])
            header = f"# file: {sample.path.relative_to(folder).as_posix()}\n"  # as the server shows it
            keep = max(0, budget - len(header))
            if len(before) > keep:
                start = before.find("\n", len(before) - keep)
                before = before[start + 1 :] if start >= 0 else before[-keep:]
            prompt = header + before
            healed = heal and prompt.endswith(" ")
            async with gate:
                answer = await client.post(f"{url}/completions", json={
                    "model": MODEL, "prompt": prompt[:-1] if healed else prompt, "max_tokens": 48, "temperature": 0,
                    "stop": ["\n", "<|endoftext|>"]})
            text = answer.json()["choices"][0]["text"]
            return sample, truth, text[1:] if healed and text.startswith(" ") else text

        answers = await asyncio.gather(*(one(s, b) for s, b in zip(samples, chars)))
        for sample, truth, text in answers:
            predicted = text.split("\n", 1)[0].rstrip()
            scores.samples += 1
            if predicted.strip():
                scores.shown += 1
                scores.answers.append((1.0, predicted == truth))
            scores.exact += predicted == truth
            scores.right.append(predicted == truth)
            scores.similarity += difflib.SequenceMatcher(None, predicted, truth).ratio() if predicted else 0.0
    return scores


def print_table(title: str, results: dict[str, Scores], n: int) -> None:
    print(title)
    print(f"  {'configuration':<30} {'shown':>6} {'exact':>7} {'precision':>10} {'similarity':>11} {'ctx recall':>11} {'syntax+':>8}")
    for name, s in results.items():
        recall = f"{s.recall_hits}/{s.recall_cases}" if s.recall_cases else "-"
        precision = s.exact / s.shown if s.shown else 0.0
        print(f"  {name:<30} {s.shown / n:>6.0%} {s.exact / n:>7.1%} {precision:>10.1%} {s.similarity / n:>11.3f} "
              f"{recall:>11} {s.syntax_added:>8}")


def print_thresholds(scores: Scores, n: int) -> None:
    print("  completion.minConfidence (phi-lsp default sources):  threshold: shown / exact among shown / exact of all")
    for t in THRESHOLDS:
        kept = [ok for c, ok in scores.answers if c >= t]
        right = sum(kept)
        print(f"    {t:>4.2f}: {len(kept) / n:>5.0%} shown, {right / len(kept) if kept else 0:>6.1%} right, "
              f"{right / n:>5.1%} of lines")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--samples", type=int, default=160)
    parser.add_argument("--budget", type=int, default=BUDGET, help="completion.contextTokens")
    parser.add_argument("--sweep", action="store_true", help="also each context source on its own")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    quiet_client_logs()
    configs = CONFIGS + (SWEEP if args.sweep else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        roots = fetch_packages(folder)
        samples = sample_lines(roots, args.samples)
        n = len(samples)
        async with vllm(args.backend_url) as url:
            for mode in args.modes.split(","):
                results: dict[str, Scores] = {}
                for name, sources in configs:
                    results[name] = await run_config(url, folder, samples, sources, args.budget, mode)
                    print(f"(done: {mode} {name})", file=sys.stderr, flush=True)
                default = results[CONFIGS[0][0]]
                results["raw prefix to vLLM (same chars)"] = await raw_reference(url, folder, samples, default.prompt_chars, mode)
                results["  the same, healed"] = await raw_reference(url, folder, samples, default.prompt_chars, mode, heal=True)
                where = "cursor after the first token" if mode == "token" else "whole line removed, cursor after the indentation"
                print_table(f"Line completion, {mode} mode ({where}) on {', '.join(PACKAGES)}: {n} lines, "
                            f"prompt budget {args.budget} tokens, greedy, through the LSP", results, n)
                print_thresholds(default, n)
                print(f"  phi-lsp outcomes: {default.reasons}")
                raw, healed = results["raw prefix to vLLM (same chars)"], results["  the same, healed"]
                print(f"  phi-lsp vs raw prefix: exact {100 * (default.exact - raw.exact) / n:+.1f} points "
                      f"({100 * (default.exact - healed.exact) / n:+.1f} against the healed one); "
                      f"mean prompt {sum(default.prompt_chars) / n:.0f} chars", flush=True)
                for name, other in (("raw", raw), ("healed raw", healed)):
                    only_ours = sum(a and not b for a, b in zip(default.right, other.right))
                    only_theirs = sum(b and not a for a, b in zip(default.right, other.right))
                    print(f"  paired, lines exactly right: phi-lsp only {only_ours}, {name} only {only_theirs}")


if __name__ == "__main__":
    asyncio.run(main())
