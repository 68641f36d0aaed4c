"""Completion benchmarks against a real vLLM serving phi-code-tiny (issue: inline completion).
Prints figures; asserts nothing.

1. LSP overhead: median latency of an invoked completion through the server vs the very same
   requests (read back from the server) sent straight to vLLM, interleaved in one run.
2. Typing: 200 keystrokes at 40 ms with automatic trigger (each keystroke: didChange and an
   inlineCompletion request, the previous one cancelled, as VS Code does): backend requests, and
   suggestions delivered for a position that had moved on.
   Then typing through a shown suggestion: share of requests answered without a new backend request.
3. Batching: 16 simultaneous completion requests on 16 documents vs the same 16 one by one,
   with session keys (the default: a request holds one document's prompts, so that a router
   keeps each document on one replica) and without (`backend.sessionHeader = ""`: documents
   share requests), side by side.

    .venv/bin/python benchmarks/bench_completion.py [--backend-url http://127.0.0.1:8000/v1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from common import MODEL, add_backend_flag, editor, python_sources, quiet_client_logs, vllm  # noqa: E402
from lsprotocol import types  # noqa: E402


def cut_points(count: int) -> list[tuple[str, str]]:
    """(name, text up to a cursor) from real files: the cursor after an indented line's first word."""
    points = []
    for path in python_sources():
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        for number in range(40, len(lines), 97):
            line = lines[number]
            stripped = line.strip()
            if stripped and line.startswith("    ") and " " in stripped and not stripped.startswith("#"):
                head = line[: len(line) - len(stripped)] + stripped.split(" ", 1)[0]
                points.append((f"{path.stem}_{number}.py", "\n".join(lines[:number] + [head])))
                if len(points) >= count:
                    return points
    return points


async def settled(ed) -> None:
    """Until the server has no request of its own in flight (a background prefetch)."""
    for _ in range(100):
        if (await ed.command("phi.stats"))["backend"]["inFlight"] == 0:
            return
        await asyncio.sleep(0.02)


async def bench_overhead(url: str, root: Path, samples: int) -> None:
    """Each sample is asked once to warm vLLM's prefix cache (and to learn the server's
    requests), then measured warm both ways, in alternating order: replaying right after the
    server's own request would otherwise hand the direct path a prefix-cache hit that the
    server's request did not get."""
    async with editor(url, root) as ed, httpx.AsyncClient(timeout=60) as http:
        points = cut_points(samples + 2)
        for name, text in points[:2]:  # warm up both paths
            uri = ed.open("warm_" + name, text)
            await ed.inline(uri)
        through, direct, inside, cold, differ = [], [], [], [], 0
        for index, (name, text) in enumerate(points[2:]):
            uri = ed.open(name, text)
            t0 = time.perf_counter()
            await ed.inline(uri, invoked=True)
            cold.append(time.perf_counter() - t0)
            await settled(ed)
            bodies = [dict(b) for b in (await ed.command("phi.debug.lastPrompt"))["requests"]]
            ed.close(uri)  # forgets the cached suggestion; the same text asks the same prompt
            uri = ed.open(name, text)

            async def via_server() -> None:
                t0 = time.perf_counter()
                await ed.inline(uri, invoked=True)
                through.append(time.perf_counter() - t0)

            async def straight() -> None:
                t0 = time.perf_counter()
                responses = await asyncio.gather(*(http.post(url + "/completions", json=b) for b in bodies))
                direct.append(time.perf_counter() - t0)
                assert all(r.status_code == 200 for r in responses)

            for step in ((via_server, straight) if index % 2 == 0 else (straight, via_server)):
                await step()
                await settled(ed)  # the server's next-line prefetch must not slow the next step
            last = await ed.command("phi.debug.lastPrompt")
            inside.append(last["timings"])
            differ += [dict(b) for b in last["requests"]] != bodies
    m_through, m_direct = statistics.median(through) * 1000, statistics.median(direct) * 1000
    print("LSP overhead (invoked completion; the server's own requests replayed straight to vLLM)")
    print(f"  samples                   : {len(through)} (prompts that differed on the second ask: {differ})")
    print(f"  first ask (median)        : {statistics.median(cold) * 1000:.1f} ms")
    print(f"  through phi-lsp (median)  : {m_through:.1f} ms")
    print(f"  straight to vLLM (median) : {m_direct:.1f} ms")
    for part in ("contextMs", "backendMs", "postprocessMs"):
        print(f"  server {part:<19}: {statistics.median(t[part] for t in inside):.1f} ms (median)")
    print(f"  ratio                     : {m_through / m_direct:.3f}   (goal <= 1.10)")


TYPED = (
    "\n\ndef summarize(records, key):\n    totals = {}\n    for record in records:\n"
    "        value = record.get(key)\n        if value is None:\n            continue\n"
    "        totals[value] = totals.get(value, 0) + 1\n    ordered = sorted(totals.items(), key=lambda kv: kv[1])\n"
    "    return dict(ordered[::-1])\n"
)


async def bench_typing(url: str, root: Path) -> None:
    async with editor(url, root) as ed:
        base = "import json\nimport os\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n"
        uri = ed.open("typing.py", base)
        before = (await ed.command("phi.stats"))["backend"]["httpRequests"]
        keystrokes = (TYPED * 3)[:200]
        stale = delivered = cancelled = answered = 0
        pending: asyncio.Future | None = None

        def settle(future: asyncio.Future, version: int) -> None:
            nonlocal stale, delivered, cancelled, answered
            if future.cancelled():
                return
            if future.exception() is not None:
                cancelled += 1  # RequestCancelled (or superseded): answered with an error
                return
            answered += 1
            items = future.result().items if future.result() else []
            if items:
                delivered += 1
                if version != ed.versions[uri]:
                    stale += 1  # a suggestion arrived for a document that had changed

        for char in keystrokes:
            if pending is not None and not pending.done():
                ed.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=pending.msg_id))
            ed.type(uri, char)
            msg_id = f"k{ed.versions[uri]}"
            future = asyncio.wrap_future(ed.client.protocol.send_request(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, ed.inline_params(uri, invoked=False), msg_id=msg_id))
            future.msg_id = msg_id
            version = ed.versions[uri]
            future.add_done_callback(lambda f, v=version: settle(f, v))
            pending = future
            await asyncio.sleep(0.040)
        await asyncio.wait([pending], timeout=15)
        await asyncio.sleep(0.2)
        after = (await ed.command("phi.stats"))["backend"]["httpRequests"]
        stats = await ed.command("phi.stats")
    print("Typing: 200 keystrokes at 40 ms, automatic trigger")
    print(f"  backend requests          : {after - before}   (goal <= 25)")
    print(f"  answered / errors (cancel): {answered} / {cancelled}")
    print(f"  suggestions delivered     : {delivered}; for a stale position: {stale}   (goal 0)")
    print(f"  completion stats          : debounced away {stats['completion']['debouncedAway']}, "
          f"superseded {stats['completion']['superseded']}, stale dropped {stats['completion']['stale']}")


async def bench_type_through(url: str, root: Path, rounds: int) -> None:
    served_without_backend = total = 0
    async with editor(url, root) as ed:
        for index, (name, text) in enumerate(cut_points(rounds * 3)[: rounds * 3]):
            uri = ed.open(f"through_{index}.py", text)
            suggestions = await ed.inline(uri, invoked=False)
            if not suggestions or len(suggestions[0]) < 3:
                continue
            suggestion = suggestions[0]
            for k in range(1, len(suggestion)):
                ed.type(uri, suggestion[k - 1])
                # Model calls made for requests (a background next-line prefetch is not one).
                before = (await ed.command("phi.stats"))["completion"]["modelCalls"]
                answer = await ed.inline(uri, invoked=False)
                after = (await ed.command("phi.stats"))["completion"]["modelCalls"]
                total += 1
                if after == before and answer and answer[0] == suggestion[k:]:
                    served_without_backend += 1
            rounds -= 1
            if rounds == 0:
                break
    print("Typing through a shown suggestion")
    print(f"  requests while typing it  : {total}")
    print(f"  answered without backend  : {served_without_backend} ({served_without_backend / max(total, 1):.0%})   (goal >= 90%)")


async def bench_batching(url: str, root: Path, documents: int, context_tokens: int | None = None,
                         session_keys: bool = True) -> float:
    settings = {"debounceMs": 0} | ({"contextTokens": context_tokens} if context_tokens else {})
    backend = {} if session_keys else {"sessionHeader": ""}
    async with editor(url, root, backend=backend, **settings) as ed:
        points = cut_points(documents * 2 + 2)
        warm = ed.open("warm.py", points[0][1])
        await ed.inline(warm, invoked=False)
        run = time.time_ns() % 10**6  # a name of this run's own: no prefix-cache hit from an earlier run
        one_by_one = [ed.open(f"seq_{run}_{i}.py", t) for i, (_, t) in enumerate(points[2 : 2 + documents])]
        together = [ed.open(f"par_{run}_{i}.py", t) for i, (_, t) in enumerate(points[2 + documents : 2 + 2 * documents])]
        s0 = await ed.command("phi.stats")
        t0 = time.perf_counter()
        for uri in one_by_one:
            await ed.inline(uri, invoked=False)
        sequential = time.perf_counter() - t0
        s1 = await ed.command("phi.stats")
        t0 = time.perf_counter()
        await asyncio.gather(*(ed.inline(uri, invoked=False) for uri in together))
        concurrent = time.perf_counter() - t0
        s2 = await ed.command("phi.stats")

    def sent(a: dict, b: dict) -> str:
        requests = b["backend"]["httpRequests"] - a["backend"]["httpRequests"]
        tokens = (b["backend"]["promptTokens"] - a["backend"]["promptTokens"]) / max(1, documents)
        return f"{requests} HTTP requests, {tokens:.0f} prompt tokens per document"

    budget = context_tokens or "default"
    keys = "session keys: one document per request" if session_keys else 'backend.sessionHeader = "": documents share requests'
    print(f"Batching: {documents} completion requests on {documents} documents (completion.contextTokens {budget}; {keys})")
    print(f"  one by one                : {sequential:.2f} s, {sent(s0, s1)}")
    print(f"  simultaneously            : {concurrent:.2f} s, {sent(s1, s2)}")
    print(f"  throughput ratio          : {sequential / concurrent:.1f}x   (goal >= 4x)")
    return sequential / concurrent


async def bench_vllm_ceiling(url: str, documents: int, context_chars: int) -> None:
    """The same comparison without phi-lsp: 16 prompts one by one vs one list-of-prompts
    request, straight to vLLM. What batching can gain on this machine at all."""
    run = time.time_ns()
    texts = [t[-context_chars:] for _, t in cut_points(documents + 2)[2:]]
    bodies = [{"model": MODEL, "prompt": f"# file: ceiling_{run}_{i}.py\n{t}", "max_tokens": 64,
               "temperature": 0, "stop": ["\n"]} for i, t in enumerate(texts)]
    async with httpx.AsyncClient(timeout=120) as http:
        t0 = time.perf_counter()
        for body in bodies:
            (await http.post(url + "/completions", json=body)).raise_for_status()
        sequential = time.perf_counter() - t0
        together = {**bodies[0], "prompt": [b["prompt"].replace("ceiling_", "ceiling_list_") for b in bodies]}
        t0 = time.perf_counter()
        (await http.post(url + "/completions", json=together)).raise_for_status()
        concurrent = time.perf_counter() - t0
    print(f"  vLLM alone, {context_chars:>4}-char prompts: one by one {sequential:.2f} s, one list {concurrent:.2f} s: "
          f"{sequential / concurrent:.1f}x (the ceiling on this machine)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--only", choices=("overhead", "typing", "batching"))
    args = parser.parse_args()
    quiet_client_logs()
    async with vllm(args.backend_url) as url:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            if args.only in (None, "overhead"):
                await bench_overhead(url, root / "overhead", args.samples)
                print()
            if args.only in (None, "typing"):
                await bench_typing(url, root / "typing")
                await bench_type_through(url, root / "through", rounds=8)
                print()
            if args.only in (None, "batching"):
                # Prefill is compute: on a CPU it costs the same batched or not, so the ratio
                # is bounded by the share of the time that decoding takes. Measured with the
                # default context and with a short one (decode-dominated, as on a GPU).
                for keys in (True, False):
                    await bench_batching(url, root / f"batching-{keys}", 16, session_keys=keys)
                await bench_vllm_ceiling(url, 16, context_chars=4000)
                print()
                for keys in (True, False):
                    await bench_batching(url, root / f"batching-short-{keys}", 16, context_tokens=128, session_keys=keys)
                await bench_vllm_ceiling(url, 16, context_chars=400)


if __name__ == "__main__":
    asyncio.run(main())
