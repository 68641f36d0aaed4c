"""Soak: thousands of completion requests against the real vLLM, with random cancellations
(issue: reliability). Prints figures; exits 1 when a request is unaccounted for, answered twice,
asyncio tasks leak, or RSS grows by more than 10% from the first minute to the end.

Several documents are "typed into" (each keystroke a didChange, then an inline completion, or
a textDocument/completion now and then; automatic triggers mostly, invoked ones too); about 30%
of the requests are cancelled with $/cancelRequest after a random delay, as an editor does when
the user types on. The server's own figures (asyncio tasks, RSS, backend requests) come from
`phi.stats`.

    .venv/bin/python benchmarks/bench_soak.py [--backend-url http://127.0.0.1:8765/v1]
        [--requests 5000] [--seconds 120] [--cancel 0.3] [--documents 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_backend_flag, editor, python_sources, quiet_client_logs, vllm  # noqa: E402
from lsprotocol import types  # noqa: E402
from pygls.exceptions import JsonRpcException  # noqa: E402

REQUEST_CANCELLED = -32800
MB = 1024 * 1024


def sources(count: int) -> list[tuple[str, str]]:
    """(start of a real file, the rest of it to type)."""
    out = []
    for path in python_sources():
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) > 6_000:
            out.append((text[:1_500], text[1_500:]))
        if len(out) >= count:
            break
    return out


async def stats_of(ed) -> dict:
    """phi.stats, bounded: a server that stops answering is a finding, not a hang of the run."""
    return await asyncio.wait_for(ed.command("phi.stats"), 60)


async def soak(url: str, args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="phi-soak-"))
    async with editor(url, root, debounceMs=args.debounce_ms) as ed:
        protocol = ed.client.protocol
        # The server's stderr (its warnings and errors): read it, so that a full pipe can never
        # block the server, and count it.
        stderr_lines: list[str] = []

        async def drain(stream) -> None:
            while line := await stream.readline():
                stderr_lines.append(line.decode("utf-8", "replace").rstrip())

        drainer = asyncio.ensure_future(drain(ed.client._server.stderr))
        answers: collections.Counter = collections.Counter()  # responses per request id
        original = protocol._handle_response

        def count_response(msg_id, result=None, error=None):
            answers[msg_id] += 1
            return original(msg_id, result, error)

        protocol._handle_response = count_response

        docs = []
        for number, (start, rest) in enumerate(sources(args.documents)):
            uri = ed.open(f"soak_{number}.py", start)
            docs.append([uri, rest, 0])
        for uri, _, _ in docs:  # warm up (tokenizer, first requests)
            await ed.inline(uri, invoked=True)
        await asyncio.sleep(1)
        first = await stats_of(ed)

        futures: dict[str, asyncio.Future] = {}
        kinds: dict[str, str] = {}
        cancelled_by_us: set[str] = set()
        cancel_handles = []
        rss_samples: list[tuple[float, int]] = []
        interval = args.seconds / args.requests
        started = time.monotonic()
        next_sample = started
        for i in range(args.requests):
            due = started + i * interval
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if time.monotonic() >= next_sample:
                stats = await stats_of(ed)
                rss_samples.append((time.monotonic() - started, stats["process"]["rssBytes"]))
                next_sample += 10
            doc = docs[rng.randrange(len(docs))]
            uri, rest, typed = doc
            if typed >= len(rest):  # the file is typed out: start it over with a fresh buffer
                doc[2] = typed = 0
                ed.client.text_document_did_close(types.DidCloseTextDocumentParams(
                    text_document=types.TextDocumentIdentifier(uri=uri)))
                ed.open(Path(uri).name, ed.texts[uri][:1_500])
            step = rng.choice((1, 1, 1, 2, 3))
            ed.type(uri, rest[typed : typed + step])
            doc[2] += step
            msg_id = f"soak-{i}"
            invoked = rng.random() < 0.2
            if rng.random() < 0.15:
                kinds[msg_id] = "completion"
                kind = types.CompletionTriggerKind.Invoked if invoked else types.CompletionTriggerKind.TriggerCharacter
                params = types.CompletionParams(
                    text_document=types.TextDocumentIdentifier(uri=uri), position=ed.end(uri),
                    context=types.CompletionContext(trigger_kind=kind, trigger_character=None if invoked else "."))
                future = protocol.send_request(types.TEXT_DOCUMENT_COMPLETION, params, msg_id=msg_id)
            else:
                kinds[msg_id] = "inline"
                future = protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, ed.inline_params(uri, invoked), msg_id=msg_id)
            futures[msg_id] = asyncio.wrap_future(future)
            if rng.random() < args.cancel:
                cancelled_by_us.add(msg_id)
                delay = rng.uniform(0, 0.3)
                cancel_handles.append(asyncio.get_running_loop().call_later(
                    delay, protocol.notify, types.CANCEL_REQUEST, types.CancelParams(id=msg_id)))
        sent_for = time.monotonic() - started
        stats = await stats_of(ed)
        rss_samples.append((time.monotonic() - started, stats["process"]["rssBytes"]))

        # Every request answered: wait (bounded) for the stragglers.
        done, pending = await asyncio.wait(futures.values(), timeout=args.grace)
        # Then the server settles: background work (prefetches, in-flight batches) ends.
        settle_deadline = time.monotonic() + 20
        while True:
            await asyncio.sleep(1)
            last = await stats_of(ed)
            if last["process"]["asyncioTasks"] <= first["process"]["asyncioTasks"] or time.monotonic() > settle_deadline:
                break

        drainer.cancel()

    outcomes = collections.Counter()
    errors = collections.Counter()
    by_kind = collections.Counter()
    for msg_id, future in futures.items():
        if not future.done():
            outcomes["unanswered"] += 1
            continue
        exc = future.exception()
        if exc is None:
            result = future.result()
            items = getattr(result, "items", None) or []
            outcomes["result with suggestions" if items else "result, empty"] += 1
            by_kind[kinds[msg_id], "result"] += 1
        elif isinstance(exc, JsonRpcException) and getattr(exc, "code", None) == REQUEST_CANCELLED:
            outcomes["cancelled (by us)" if msg_id in cancelled_by_us else "cancelled (superseded)"] += 1
            by_kind[kinds[msg_id], "cancelled"] += 1
        else:
            outcomes["error"] += 1
            errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
    twice = sum(1 for msg_id in futures if answers[msg_id] > 1)
    unknown = sum(n for msg_id, n in answers.items() if str(msg_id).startswith("soak-") and msg_id not in futures)

    minute_one = min(rss_samples, key=lambda s: abs(s[0] - 60)) if rss_samples else (0, 0)
    end_rss = last["process"]["rssBytes"]
    growth = (end_rss - minute_one[1]) / minute_one[1] * 100 if minute_one[1] else float("nan")
    backend_requests = last["backend"]["httpRequests"] - first["backend"]["httpRequests"]
    completions = last["backend"]["byPath"].get("/completions", 0) - first["backend"]["byPath"].get("/completions", 0)

    print(f"Soak: {args.requests} completion requests over {sent_for:.1f} s on {len(docs)} documents "
          f"(~{args.cancel:.0%} cancelled at random, debounce {args.debounce_ms} ms), vLLM at {url}")
    print(f"  requests sent                 : {len(futures)}")
    print(f"    inline / completion         : {sum(1 for k in kinds.values() if k == 'inline')} / "
          f"{sum(1 for k in kinds.values() if k == 'completion')}")
    print(f"    $/cancelRequest sent        : {len(cancelled_by_us)}")
    for name in ("result with suggestions", "result, empty", "cancelled (by us)", "cancelled (superseded)", "error", "unanswered"):
        print(f"  {name:<30}: {outcomes[name]}")
    for text, n in errors.most_common(5):
        print(f"    {n} x {text}")
    print(f"  accounted for                 : {sum(outcomes.values()) - outcomes['unanswered']} of {len(futures)}")
    print(f"  answered twice                : {twice}   (responses to unknown ids: {unknown})")
    print(f"  asyncio tasks (server)        : {first['process']['asyncioTasks']} at start, {last['process']['asyncioTasks']} at the end"
          f" (background tasks {first['process']['backgroundTasks']} -> {last['process']['backgroundTasks']})")
    print(f"  RSS (server)                  : {first['process']['rssBytes'] / MB:.1f} MB at start, "
          f"{minute_one[1] / MB:.1f} MB at {minute_one[0]:.0f} s, {end_rss / MB:.1f} MB at the end: "
          f"{growth:+.1f}% from minute 1 to the end")
    print("  RSS every 10 s (MB)           : " + " ".join(f"{rss / MB:.0f}" for _, rss in rss_samples))
    print(f"  backend HTTP requests         : {backend_requests} ({completions} /completions; "
          f"batches {last['batching']['batches'] - first['batching']['batches']}, "
          f"prompts sent {last['batching']['prompts_sent'] - first['batching']['prompts_sent']}, "
          f"cancelled before send {last['batching']['cancelled_before_send'] - first['batching']['cancelled_before_send']}, "
          f"aborted in flight {last['batching']['aborted_in_flight'] - first['batching']['aborted_in_flight']})")
    completion = last.get("completion", {})
    print(f"  server completion counters    : requests {completion.get('requests')}, model calls {completion.get('modelCalls')}, "
          f"from cache {completion.get('servedFromCache')}, superseded {completion.get('superseded')}, "
          f"debounced away {completion.get('debouncedAway')}, errors {completion.get('errors')}, "
          f"latency {completion.get('latencyMs')}")
    print(f"  pending messages (server)     : {first['process'].get('pendingMessages')} at start, "
          f"{last['process'].get('pendingMessages')} at the end")
    kinds_of_lines = collections.Counter(" ".join(line.split()[2:5]) for line in stderr_lines)
    print(f"  server stderr lines           : {len(stderr_lines)}" + "".join(
        f"\n    {n} x {text}" for text, n in kinds_of_lines.most_common(5)))
    leaked = last["process"]["asyncioTasks"] - first["process"]["asyncioTasks"]
    ok = outcomes["unanswered"] == 0 and twice == 0 and leaked <= 0 and growth <= 10
    print(f"  verdict                       : {'PASS' if ok else 'FAIL'} (every request accounted for, none answered twice, "
          f"no leaked tasks, RSS growth <= 10%)")
    return 0 if ok else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--cancel", type=float, default=0.3, help="share of requests cancelled with $/cancelRequest")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--debounce-ms", type=int, default=60, help="completion.debounceMs (the default)")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds to wait for the last answers")
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    quiet_client_logs()
    async with vllm(args.backend_url) as url:
        return await soak(url, args)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
