"""Routing and endpoints benchmark against real vLLM servers serving phi-code-tiny.

    .venv/bin/python benchmarks/bench_routing.py --backend-url http://127.0.0.1:8765/v1
    .venv/bin/python benchmarks/bench_routing.py            # starts the first vLLM as well

A second vLLM (phi-code-tiny on a free port, started here and stopped at the end) stands in for
the large model in part 1 and for a second replica in parts 2 and 3. Both serve the same tiny
model, so part 1 measures the routing (how many units escalate, why, what it costs in requests,
tokens and time), not the quality a larger model would add.

Prints:
1. Routing on a review workload (standard-library code): the share of units escalated, by
   reason, and the total time and large-model tokens against "everything on the large model"
   and "everything on the small model". Each strategy reviews the same units under a path of
   its own, so no strategy is served from another's prefix cache (the shared few-shot frame
   aside).
2. 16 documents completing concurrently (each a sequence of requests as its user types
   through a file) through one replica and through two: throughput and its ratio (goal
   >= 1.6x), and the prefix-cache hit rate from each vLLM's /metrics
   (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`) with document affinity
   and with round-robin.
3. The same workload through two replicas, the second killed (SIGKILL) a third of the way in:
   requests sent, answered and lost (goal: none lost).

Exit status 0 when no request was lost in part 3 and every strategy of part 1 reviewed every
unit; the ratios are figures to read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from common import MODEL, add_backend_flag, model_dir, python_sources, vllm  # noqa: E402

from phi_lsp.model.backend import BackendError, Sampling  # noqa: E402
from phi_lsp.core.settings import ReviewSettings, RoutingSettings  # noqa: E402
from phi_lsp.model.endpoints import AFFINITY, ROUND_ROBIN, EndpointPool, EndpointSpec  # noqa: E402
from phi_lsp.model.escalation import Router  # noqa: E402
from phi_lsp.review.files import load_job  # noqa: E402
from phi_lsp.review.pipeline import Escalation, FileJob, Reviewer, ReviewOptions  # noqa: E402
from phi_lsp.review.units import extract_units  # noqa: E402

LARGE = "phi-large"


def pool_of(specs: list[EndpointSpec], router: Router | None = None, policy: str = AFFINITY) -> EndpointPool:
    pool = EndpointPool.create(specs, request_timeout_s=600, policy=policy)
    if router is not None:
        for member in pool.members:
            member.backend.on_usage = (
                lambda served, p, c, spec=member.spec: router.note_usage(spec.name_for(served), p, c)
            )
    return pool


# -- 1. routing on a review workload -------------------------------------------------------------


def review_workload(units_wanted: int) -> list[FileJob]:
    jobs, units = [], 0
    for path in python_sources():
        job = load_job(path)
        if job is None:
            continue
        count = len(extract_units(job.snapshot))
        if count > 40:  # keep the workload a mix of several files
            continue
        jobs.append(job)
        units += count
        if units >= units_wanted:
            break
    return jobs


def relabelled(jobs: list[FileJob], tag: str) -> list[FileJob]:
    """The same code under other paths: prompts differ from the unit's title on."""
    out = []
    for job in jobs:
        snapshot = replace(job.snapshot, uri=job.snapshot.uri.replace("file:///", f"file:///{tag}/"))
        out.append(FileJob(snapshot, f"{tag}/{job.path}"))
    return out


async def review_strategy(name: str, jobs, small_url: str, large_url: str, min_confidence: float) -> dict:
    router = Router()
    small_spec = EndpointSpec.parse(small_url, [MODEL])
    large_spec = EndpointSpec.parse(large_url, [f"{LARGE}={MODEL}"])
    specs = {"all-small": [small_spec], "all-large": [large_spec], "routed": [small_spec, large_spec]}[name]
    pool = pool_of(specs, router)
    backend = pool.backend()
    first_model = LARGE if name == "all-large" else MODEL
    options = ReviewOptions.from_settings(ReviewSettings(), first_model, backend)
    escalation = None
    if name == "routed":
        large = ReviewOptions.from_settings(ReviewSettings(), LARGE, backend)
        escalation = Escalation(backend, large, router, min_confidence)
    reviewer = Reviewer()
    started = time.monotonic()
    try:
        results = await reviewer.review(jobs, backend, options, escalation=escalation)
    finally:
        await pool.aclose()
    seconds = time.monotonic() - started
    stats = reviewer.stats
    return {
        "name": name,
        "seconds": seconds,
        "units": stats.units,
        "sent": stats.units_sent,
        "failed": stats.units_failed,
        "requests": stats.requests,
        "escalated": dict(stats.escalated),
        "answers": dict(stats.answers_by_model),
        "findings": sum(len(r.findings) for r in results),
        "large_tokens": router.budget.totals[LARGE],
        "small_tokens": router.budget.totals[MODEL],
    }


async def part_routing(small_url: str, large_url: str, units: int, min_confidence: float) -> bool:
    jobs = review_workload(units)
    total_units = sum(len(extract_units(j.snapshot)) for j in jobs)
    print(f"\n1. Routing on a review workload: {len(jobs)} standard-library files, {total_units} units "
          f"(routing.reviewMinConfidence = {min_confidence})")
    rows = []
    for number, name in enumerate(("all-small", "all-large", "routed")):
        rows.append(await review_strategy(name, relabelled(jobs, f"run{number}"), small_url, large_url, min_confidence))
    ok = True
    print(f"   {'strategy':<10} {'seconds':>8} {'requests':>8} {'units sent':>10} {'to large':>8} "
          f"{'large-model tokens':>18} {'findings':>8}")
    for row in rows:
        to_large = row["answers"].get(LARGE, 0)
        print(f"   {row['name']:<10} {row['seconds']:>8.1f} {row['requests']:>8} {row['sent']:>10} {to_large:>8} "
              f"{row['large_tokens']:>18} {row['findings']:>8}")
        ok &= row["failed"] == 0 and row["sent"] == row["units"]
    routed = rows[2]
    share = sum(routed["escalated"].values()) / max(1, routed["sent"])
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(routed["escalated"].items())) or "none"
    print(f"   routed: {100 * share:.0f}% of the units escalated ({reasons})")
    small, large = rows[0]["seconds"], rows[1]["seconds"]
    print(f"   routed time: {routed['seconds'] / small:.2f}x all-small, {routed['seconds'] / large:.2f}x all-large; "
          f"large-model tokens: {routed['large_tokens'] / max(1, rows[1]['large_tokens']):.2f}x all-large")
    return ok


# -- 2. / 3. many documents over replicas --------------------------------------------------------


def documents(count: int, steps: int, chars: int = 4_000) -> list[tuple[str, list[str]]]:
    """(name, the text before the cursor at each step) for `count` files: a user typing down
    the file, asking at each step."""
    docs = []
    for path in python_sources()[40:]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) < chars:
            continue
        text = text[:chars]
        cuts = []
        for step in range(steps):
            at = int(chars * (0.45 + 0.55 * step / max(1, steps - 1)))
            at = text.rfind("\n", 0, at) + 1 or at
            cuts.append(text[:at])
        docs.append((path.name, cuts))
        if len(docs) == count:
            break
    return docs


async def cache_counters(url: str) -> tuple[float, float]:
    base = url.rsplit("/v1", 1)[0]
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(base + "/metrics")).text
    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M))
    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


async def run_documents(pool: EndpointPool, docs, tag: str, on_answer=None) -> dict:
    batcher = pool.batcher()
    sampling = Sampling(max_tokens=16)
    sent = answered = 0
    lost: list[str] = []

    async def one(name: str, cuts: list[str]) -> None:
        nonlocal sent, answered
        uri = f"file:///{tag}/{name}"
        for cut in cuts:
            sent += 1
            try:
                await batcher.complete(MODEL, f"# file: {tag}/{name}\n{cut}", sampling, 300, affinity=uri)
                answered += 1
                if on_answer is not None:
                    on_answer(answered)
            except BackendError as exc:
                lost.append(f"{name}: {exc.reason}")

    started = time.monotonic()
    await asyncio.gather(*(one(name, cuts) for name, cuts in docs))
    return {"seconds": time.monotonic() - started, "sent": sent, "answered": answered, "lost": lost,
            "retries": pool.retries, "moved": pool.moved}


async def measured(urls: list[str], docs, tag: str, policy: str = AFFINITY) -> dict:
    pool = pool_of([EndpointSpec.parse(u, [MODEL]) for u in urls], policy=policy)
    before = [await cache_counters(u) for u in urls]
    try:
        result = await run_documents(pool, docs, tag)
    finally:
        result_requests = [m.requests for m in pool.members]
        await pool.aclose()
    after = [await cache_counters(u) for u in urls]
    hits = sum(a[0] - b[0] for a, b in zip(after, before))
    queries = sum(a[1] - b[1] for a, b in zip(after, before))
    result.update(hit_rate=hits / queries if queries else 0.0, per_endpoint=result_requests)
    return result


async def part_replicas(url_a: str, url_b: str, count: int, steps: int) -> None:
    docs = documents(count, steps)
    requests = sum(len(c) for _, c in docs)
    print(f"\n2. {len(docs)} documents completing concurrently, {steps} requests each ({requests} requests, "
          f"prompts up to ~1,100 tokens, 16 new tokens)")
    warm = pool_of([EndpointSpec.parse(u, [MODEL]) for u in (url_a, url_b)])
    await run_documents(warm, docs[:4], "warm-up")  # first requests of a fresh server are slower
    await warm.aclose()
    one = await measured([url_a], docs, "one")
    two = await measured([url_a, url_b], docs, "two")
    rr = await measured([url_a, url_b], docs, "rr", ROUND_ROBIN)
    for label, r in (("one replica", one), ("two, affinity", two), ("two, round-robin", rr)):
        print(f"   {label:<17} {r['seconds']:>6.1f} s  {r['answered'] / r['seconds']:>5.2f} req/s  "
              f"prefix-cache hit rate {100 * r['hit_rate']:>5.1f}%  requests per endpoint {r['per_endpoint']}"
              + (f", documents moved to a less busy endpoint {r['moved']}" if r["moved"] else ""))
    print(f"   throughput, two replicas / one: {one['seconds'] / two['seconds']:.2f}x (goal >= 1.6x); "
          f"round-robin: {one['seconds'] / rr['seconds']:.2f}x")
    print(f"   (this machine has {os.cpu_count()} CPU cores, shared by both vLLM servers: a second replica adds no "
          "compute here, so the throughput goal needs replicas on separate hardware)")


async def part_kill(url_a: str, server_b, count: int, steps: int) -> bool:
    docs = documents(count, steps)
    total = sum(len(c) for _, c in docs)
    pool = pool_of([EndpointSpec.parse(url_a, [MODEL]), EndpointSpec.parse(server_b.url, [MODEL])])
    killed_at: list[int] = []

    def on_answer(answered: int) -> None:
        if not killed_at and answered >= total // 3:
            killed_at.append(answered)
            os.killpg(server_b.process.pid, signal.SIGKILL)

    try:
        result = await run_documents(pool, docs, "kill", on_answer)
        if killed_at:
            await server_b.process.wait()
            if server_b._reader is not None:  # its output pipe closes with the process group
                await asyncio.wait([server_b._reader], timeout=10)
    finally:
        states = [("up" if m.available else "down") for m in pool.members]
        per = [m.requests for m in pool.members]
        await pool.aclose()
    print(f"\n3. Two replicas, the second killed (SIGKILL) after {killed_at[0] if killed_at else '?'} of {total} answers")
    print(f"   sent {result['sent']}, answered {result['answered']}, lost {len(result['lost'])}; "
          f"retried on the other replica: {result['retries']}; calls per endpoint {per}; endpoints now {states}")
    for line in result["lost"][:5]:
        print(f"   lost: {line}")
    return not result["lost"] and result["answered"] == total


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--units", type=int, default=48, help="review units in part 1")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="requests per document in parts 2 and 3")
    parser.add_argument("--review-min-confidence", type=float, default=RoutingSettings().review_min_confidence)
    args = parser.parse_args()
    from phi_lsp.model.managed_vllm import ManagedVllm, ModelChoice

    async with vllm(args.backend_url) as url_a:
        second = ManagedVllm(ModelChoice(str(model_dir()), MODEL), max_model_len=2048, start_timeout_s=900)
        started = time.monotonic()
        print("(starting a second vLLM for phi-code-tiny ...)", file=sys.stderr, flush=True)
        url_b = await second.start()
        print(f"(second vLLM ready at {url_b} in {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        try:
            print(f"Servers: A {url_a} (small model / first replica), B {url_b} (\"{LARGE}\" / second replica), "
                  f"both phi-code-tiny on the CPU build of vLLM, {os.cpu_count()} cores")
            ok = await part_routing(url_a, url_b, args.units, args.review_min_confidence)
            await part_replicas(url_a, url_b, args.documents, args.steps)
            ok &= await part_kill(url_a, second, args.documents, args.steps)
        finally:
            await second.stop()
    print("\nOK" if ok else "\nFAILED: a request was lost or a unit was not reviewed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
