"""Review benchmark against the real vLLM serving phi-code-tiny.

    .venv/bin/python benchmarks/bench_review.py --backend-url http://127.0.0.1:8765/v1
    .venv/bin/python benchmarks/bench_review.py            # starts a managed vLLM for the run

Prints:
1. Batching: wall time of one save of a 32-function file (didSave to publishDiagnostics, through
   the real server over stdio) and the number of HTTP requests and prompts it sent (phi.stats),
   against 1-function files holding each of the same functions (saved one after the other,
   which is also the sequential design, measured): the ratio to the median and to the slowest
   1-function file, and how much slower the sequential design is.
2. Incremental review: after changing one function of the 32 (and again after moving every
   function down), the next save sends exactly one unit (one prompt in one request).
3. Reliability: many real answers of the model (real code from the standard library; the
   server's regex-constrained requests, the same with a tiny token budget so that answers are
   cut, and unconstrained ones as backend.kind = openai would give) all end as valid diagnostics
   or counted drops, never as an exception: every answer and every stated finding is accounted
   for, and every published range is checked in the three position encodings.

Exit status 0 when the invariants hold (one request per save, exact unit counts, exactly one
unit re-sent, every answer accounted for); the ratios are figures to read, printed with the
target next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import sysconfig
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsprotocol import types  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from common import MODEL, close, model_dir, vllm  # noqa: E402  (the shared vLLM starter)

ANSWER_LEVEL = {"truncated", "unparseable", "backend-error", "too-long", "fix-no-change", "fix-breaks-syntax", "internal-error"}


# -- an editor ----------------------------------------------------------------------------------


class Editor:
    def __init__(self, client: LanguageClient, root: Path):
        self.client = client
        self.root = root
        self.diagnostics: dict[str, asyncio.Queue] = {}

    def on_diagnostics(self, params: types.PublishDiagnosticsParams) -> None:
        self.diagnostics.setdefault(params.uri, asyncio.Queue()).put_nowait((time.monotonic(), params))

    def open(self, name: str, text: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        uri = path.as_uri()
        self.diagnostics.setdefault(uri, asyncio.Queue())
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        return uri

    def replace_all(self, uri: str, text: str, version: int) -> None:
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))

    async def save_and_wait(self, uri: str) -> tuple[float, types.PublishDiagnosticsParams]:
        queue = self.diagnostics[uri]
        while not queue.empty():
            queue.get_nowait()
        started = time.monotonic()
        self.client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))
        arrived, params = await asyncio.wait_for(queue.get(), 600)
        return arrived - started, params

    def close(self, uri: str) -> None:
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    async def stats(self) -> dict:
        return await self.client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.stats"))


@contextlib.asynccontextmanager
async def editor(url: str, root: Path, folders: list[Path] = ()) -> AsyncIterator[Editor]:
    client = LanguageClient("bench-review", "1")
    session = Editor(client, root)

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def published(params: types.PublishDiagnosticsParams) -> None:
        session.on_diagnostics(params)

    await client.start_io(sys.executable, "-m", "phi_lsp")
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(), process_id=os.getpid(),
        workspace_folders=[types.WorkspaceFolder(uri=f.as_uri(), name=f.name) for f in folders] or None,
        initialization_options={"backend": {"url": url}, "completion": {"model": MODEL}, "review": {"model": MODEL}}))
    client.initialized(types.InitializedParams())
    try:
        yield session
    finally:
        await close(client)


# -- files ------------------------------------------------------------------------------------

_BODIES = [
    "    total = 0\n    for item in items:\n        total += item.price * item.count\n    return total / len(items)\n",
    "    result = {}\n    for key, value in pairs:\n        if key in result:\n            continue\n        result[key] = value\n    return result\n",
    "    with open(path) as handle:\n        lines = handle.readlines()\n    return [line.strip() for line in lines if line]\n",
    "    if not name:\n        raise ValueError('name is empty')\n    query = 'SELECT * FROM users WHERE name = %s' % name\n    return db.execute(query)\n",
]


def function(index: int, seed: int) -> str:
    body = _BODIES[index % len(_BODIES)].replace("0\n", f"{seed % 7}\n", 1)
    return f"def step_{seed}_{index}(items, pairs, path, name, db):\n    \"\"\"Step {index} of run {seed}.\"\"\"\n{body}"


def functions_file(n: int, seed: int) -> str:
    return "\n\n".join(function(i, seed) for i in range(n))


# -- 1 and 2: batching and incremental review ----------------------------------------------------


async def timed_save(session: Editor, name: str, text: str) -> dict:
    uri = session.open(name, text)
    before = await session.stats()
    seconds, published = await session.save_and_wait(uri)
    after = await session.stats()
    session.close(uri)
    delta = lambda key: after["backend"][key] - before["backend"][key]  # noqa: E731
    return {
        "seconds": seconds,
        "requests": after["backend"]["byPath"].get("/completions", 0) - before["backend"]["byPath"].get("/completions", 0),
        "prompts": delta("prompts"),
        "tokens": delta("completionTokens"),
        "units": after["review"]["last"]["unitsSent"],
        "diagnostics": len(published.diagnostics),
    }


def single_function_file(i: int, seed: int) -> str:
    """Function i of functions_file(32, seed) alone, at the line where it is in that file: the
    model sees exactly the prompt it sees for that function in the 32-function file."""
    before = functions_file(32, seed).split(f"def step_{seed}_{i}(")[0]
    return "\n" * before.count("\n") + function(i, seed)


async def prefill_figures(url: str, seed: int) -> None:
    """The part of the time that batching cannot share on a CPU: reading the prompts."""
    from phi_lsp.model.backend import Backend, Sampling
    from phi_lsp.core.documents import Document
    from phi_lsp.review.prompts import PromptContext, constraint, render
    from phi_lsp.review.units import extract_units

    snapshot = Document("file:///b/steps.py", functions_file(32, seed), 1, "python").snapshot()
    prompts = [render(u, PromptContext("steps.py", "python"), "raw", 320) for u in extract_units(snapshot)]
    backend = Backend(url, request_timeout_s=600)
    try:
        sampling = Sampling(max_tokens=1, constraint=constraint())
        started = time.monotonic()
        await backend.complete(MODEL, prompts[:1], sampling)
        one = time.monotonic() - started
        tokens_one = backend.stats.prompt_tokens
        started = time.monotonic()
        await backend.complete(MODEL, prompts[1:], sampling)
        rest = time.monotonic() - started
        tokens_rest = backend.stats.prompt_tokens - tokens_one
    finally:
        await backend.aclose()
    print(f"  prefill only (max_tokens=1; the shared few-shot prefix is served from vLLM's prefix cache): 1 prompt "
          f"{one:.2f} s; the other 31 in one request ({tokens_rest} prompt tokens) {rest:.2f} s = {rest / one:.1f}x.")
    print("  Reading the code of 31 more functions is compute-bound on this 2-core CPU: one request cannot share it;")
    print("  batching shares the per-request cost and the decoding steps.")


async def bench_batching(url: str, rounds: int) -> bool:
    print("== 1. One save of a 32-function file vs a 1-function file (didSave -> publishDiagnostics) ==")
    print("  Each round: a new 32-function file (batch/steps.py) saved once; then each of its functions")
    print("  alone in a 1-function file (single_NN/steps.py, the function at the same line, so its prompt")
    print("  is the very prompt the batch sent for it), saved one after the other: that is also the")
    print("  sequential design, measured. A batch lasts as long as its longest answer, so it is compared")
    print("  with the median 1-function file and with the slowest (the one with that longest answer).")
    ok = True
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = [root / "batch"] + [root / f"single_{i:02d}" for i in range(32)]
        for folder in folders:
            folder.mkdir()
        async with editor(url, root, folders) as session:
            await timed_save(session, "batch/warmup.py", functions_file(2, 999))  # compile the constraint once
            for round_ in range(rounds):
                seed = 100 + round_
                many = await timed_save(session, "batch/steps.py", functions_file(32, seed))
                ok &= many["requests"] == 1 and many["units"] == 32 and many["prompts"] == 32
                ones = [await timed_save(session, f"single_{i:02d}/steps.py", single_function_file(i, seed))
                        for i in range(32)]
                ok &= all(o["requests"] == 1 and o["units"] == 1 for o in ones)
                times = [o["seconds"] for o in ones]
                one, slowest, total = statistics.median(times), max(times), sum(times)
                rows.append((many["seconds"], one, slowest, total))
                print(f"  round {round_ + 1}: 32 functions in one save {many['seconds']:6.2f} s: {many['requests']} HTTP request, "
                      f"{many['prompts']} prompts, {many['tokens']} tokens generated")
                print(f"           1-function files: median {one:5.2f} s, slowest {slowest:5.2f} s; all 32 one after the other "
                      f"{total:6.2f} s in {sum(o['requests'] for o in ones)} requests, {sum(o['tokens'] for o in ones)} tokens")
                print(f"           ratio to the median 1-function file {many['seconds'] / one:6.2f}x, to the slowest "
                      f"{many['seconds'] / slowest:5.2f}x; sequential / batched {total / many['seconds']:5.2f}x")
            await prefill_figures(url, seed=900)
            t32 = statistics.median(r[0] for r in rows)
            med = statistics.median(r[0] / r[1] for r in rows)
            slow = statistics.median(r[0] / r[2] for r in rows)
            seq = statistics.median(r[3] / r[0] for r in rows)
            print(f"  median over rounds: 32-function save {t32:.2f} s; ratio to the median 1-function file {med:.2f}x, "
                  f"to the slowest 1-function file {slow:.2f}x (target <= 3x); the sequential design takes {seq:.2f}x as long")

            print("== 2. Re-save after changing one function of the 32 ==")
            text = functions_file(32, 7777)
            uri = session.open("batch/incremental.py", text)
            await session.save_and_wait(uri)
            version = 1
            for what, change in [
                ("one function changed", lambda t: t.replace("def step_7777_5(items, pairs, path, name, db):\n",
                                                          "def step_7777_5(items, pairs, path, name, db):\n    items = list(items)\n")),
                ("another function changed and every function moved down 3 lines",
                 lambda t: "\n\n\n" + t.replace("def step_7777_20(items, pairs, path, name, db):\n",
                                                  "def step_7777_20(items, pairs, path, name, db):\n    pairs = dict(pairs)\n")),
            ]:
                text = change(text)
                version += 1
                session.replace_all(uri, text, version)
                before = await session.stats()
                seconds, published = await session.save_and_wait(uri)
                after = await session.stats()
                last = after["review"]["last"]
                requests = after["backend"]["byPath"].get("/completions", 0) - before["backend"]["byPath"].get("/completions", 0)
                prompts = after["backend"]["prompts"] - before["backend"]["prompts"]
                print(f"  {what}: units {last['units']}, sent {last['unitsSent']}, cached {last['unitsCached']}; "
                      f"{requests} HTTP request with {prompts} prompt; {seconds:.2f} s; published for version {published.version}")
                ok &= last["unitsSent"] == 1 and prompts == 1 and requests == 1 and published.version == version
    return ok


# -- 3: reliability -----------------------------------------------------------------------------


def stdlib_files(limit: int) -> list[Path]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [p for p in files if 3_000 < p.stat().st_size < 40_000][:limit]


async def bench_reliability(url: str, units_wanted: int) -> bool:
    from phi_lsp.core import positions
    from phi_lsp.model.backend import Backend
    from phi_lsp.core.settings import ReviewSettings
    from phi_lsp.core.documents import Document, TextBuffer
    from phi_lsp.core.tokens import TokenCounter
    from phi_lsp.review.diagnostics import to_diagnostic
    from phi_lsp.review.pipeline import FileJob, Reviewer, ReviewOptions
    from phi_lsp.review.units import extract_units

    print(f"== 3. Reliability: ~{units_wanted} units of standard-library code per variant ==")
    jobs, units = [], 0
    for path in stdlib_files(200):
        snapshot = Document(path.as_uri(), path.read_text(encoding="utf-8", errors="replace"), 1, "python").snapshot()
        count = len(extract_units(snapshot))
        if count == 0:
            continue
        jobs.append(FileJob(snapshot, path.name))
        units += count
        if units >= units_wanted:
            break
    backend = Backend(url, request_timeout_s=600)
    counter = TokenCounter.for_model(str(model_dir()))
    base = ReviewOptions.from_settings(ReviewSettings(), MODEL, backend)
    variants = [
        ("regex-constrained (as the server sends)", base),
        ("constrained, max_tokens=12 (answers cut)", replace(base, max_tokens=12)),
        ("unconstrained (as backend.kind=openai)", replace(base, constrained=False, max_tokens=96)),
    ]
    ok = True
    try:
        for name, options in variants:
            reviewer = Reviewer()
            exceptions = 0
            bad_ranges = 0
            started = time.monotonic()
            requests_before = backend.stats.by_path.get("/completions", 0)
            try:
                results = await reviewer.review(jobs, backend, options, count_tokens=counter.count)
            except Exception:
                exceptions += 1
                traceback.print_exc()
                results = []
            diagnostics = 0
            for result in results:
                for encoding in positions.ENCODINGS:
                    buffer = TextBuffer(result.snapshot.source, encoding)
                    for placed in result.findings:
                        try:
                            d = to_diagnostic(placed, buffer)
                            lines = buffer.line_count()
                            if not (0 <= d.range.start.line <= d.range.end.line < lines):
                                bad_ranges += 1
                            diagnostics += 1
                        except Exception:
                            exceptions += 1
            stats = reviewer.stats
            answers = sum(stats.answers.values())
            finding_drops = sum(n for reason, n in stats.drops.items() if reason not in ANSWER_LEVEL)
            accounted = stats.findings_stated == stats.findings_valid + finding_drops
            requests = backend.stats.by_path.get("/completions", 0) - requests_before
            print(f"  {name}: {stats.units_sent} units in {requests} requests, {time.monotonic() - started:.1f} s")
            print(f"    answers {answers}: {dict(sorted(stats.answers.items()))}; backend errors {stats.units_failed}")
            print(f"    findings stated {stats.findings_stated} = valid {stats.findings_valid} + dropped {finding_drops}"
                  f" -> {'all accounted for' if accounted else 'MISMATCH'}")
            print(f"    drops by reason: {dict(sorted(stats.drops.items()))}")
            print(f"    diagnostics built in utf-8/16/32: {diagnostics} ({bad_ranges} bad ranges); exceptions: {exceptions}")
            ok &= (exceptions == 0 and bad_ranges == 0 and accounted and stats.units_failed == 0
                   and answers == stats.units_sent and "internal-error" not in stats.drops)
    finally:
        await backend.aclose()
    return ok


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-url", default=os.environ.get("PHI_LSP_TEST_VLLM_URL"),
                        help="a running vLLM serving phi-code-tiny (default: start one for this run)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 1 vs 32 comparison")
    parser.add_argument("--reliability-units", type=int, default=256)
    args = parser.parse_args()
    logging.getLogger("pygls").setLevel(logging.ERROR)
    async with vllm(args.backend_url) as url:
        print(f"backend {url}, model {MODEL}")
        batching_ok = await bench_batching(url, args.rounds)
        reliability_ok = await bench_reliability(url, args.reliability_units)
    print(f"RESULT: one request per save, exactly one unit re-sent: {'PASS' if batching_ok else 'FAIL'}; "
          f"reliability: {'PASS' if reliability_ok else 'FAIL'}")
    return 0 if batching_ok and reliability_ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
