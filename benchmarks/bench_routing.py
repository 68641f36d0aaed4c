"""Routing benchmark: escalation to a larger model, and a fleet of vLLM replicas behind
vLLM's router (`vllm-router`), against real vLLM servers serving phi-code-tiny.

    .venv/bin/python benchmarks/bench_routing.py --part fleet        # starts two vLLMs (~6 GB, minutes)
    .venv/bin/python benchmarks/bench_routing.py --part fleet --fake-workers   # the plumbing only
    .venv/bin/python benchmarks/bench_routing.py --part review --backend-url http://127.0.0.1:8765/v1

Prints:
1. (`--part review`) Escalation on a review workload (standard-library code): the share of units
   escalated, by reason, and the total time and large-model tokens against "everything on the
   large model" and "everything on the small model". A second vLLM (phi-code-tiny again, started
   here) stands in for the large model, listed in backend.endpoints under an alias: what is
   measured is the routing, not the quality a larger model would add.
2. (`--part fleet`) Two vLLM replicas (started here, on loopback) behind vllm-router, and several
   editors (a phi-lsp server each, driven over LSP) typing through their documents concurrently,
   asking for a completion after every chunk: time, answers, and the prefix-cache hit rate from
   the replicas' own /metrics (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`)
   with the router's `consistent_hash` policy (keyed by phi-lsp's X-Session-ID), `cache_aware`
   and `round_robin`. The router runs with the fast-failover flags of docs/DEPLOY.md. Each
   replica's compute threads get a core of their own (VLLM_CPU_OMP_THREADS_BIND); with `--old
   CHECKOUT`, that checkout's phi-lsp (its own balancer over both replicas, no router) runs too.
3. The same with `consistent_hash`, one replica SIGKILLed a third of the way in: requests sent,
   answered, errors and warnings the editors saw, phi-lsp's retries (goal: none lost).

Exit status 0 when no request was lost in part 3 and every strategy of part 1 reviewed every
unit; the rates are figures to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from common import MODEL, Editor, add_backend_flag, close, model_dir, python_sources, quiet_client_logs, vllm  # noqa: E402
from lsprotocol import types  # noqa: E402

from phi_lsp.core.settings import ReviewSettings, RoutingSettings  # noqa: E402
from phi_lsp.model.endpoints import Endpoints, EndpointSpec  # noqa: E402
from phi_lsp.model.escalation import Router  # noqa: E402
from phi_lsp.review.files import load_job  # noqa: E402
from phi_lsp.review.pipeline import Escalation, FileJob, Reviewer, ReviewOptions  # noqa: E402
from phi_lsp.review.units import extract_units  # noqa: E402

LARGE = "phi-large"


def pool_of(specs: list[EndpointSpec], router: Router | None = None) -> Endpoints:
    pool = Endpoints.create(specs, request_timeout_s=600)
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


# -- 2. / 3. several editors on a fleet: vllm-router in front of two replicas --------------------


def documents(count: int, steps: int, chars: int = 4_000) -> list[tuple[str, list[str]]]:
    """(name, the chunks a user types, one per request) for `count` files: the first chunk is
    the file's first 45%, the others take it down to `chars` characters at line ends."""
    docs = []
    for path in python_sources()[40:]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text) < chars:
            continue
        text = text[:chars]
        cuts = [0]
        for step in range(steps):
            at = int(chars * (0.45 + 0.55 * step / max(1, steps - 1)))
            at = text.rfind("\n", 0, at) + 1 or at
            cuts.append(max(at, cuts[-1]))
        docs.append((path.stem, [text[a:b] for a, b in zip(cuts, cuts[1:])]))
        if len(docs) == count:
            break
    return docs


async def metric_totals(root: str, names: tuple[str, ...]) -> dict[str, float]:
    """Sums of Prometheus counters (over their labels) from `root`/metrics; {} if it is gone."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(root + "/metrics")).text
    except httpx.HTTPError:
        return {}
    return {
        name: sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M))
        for name in names
    }


CACHE = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:request_success_total")


@contextlib.asynccontextmanager
async def fleet_editor(url: str, root: Path, old_code: Path | None = None,
                       endpoints: list[str] = ()) -> AsyncIterator[tuple[Editor, list[str]]]:
    """A phi-lsp session as an editor has it, with the warnings it shows the user. With
    `old_code` the server is that checkout's (started from it, so its packages win) and balances
    over `endpoints` itself: the in-process balancer phi-lsp had before vllm-router."""
    from pygls.lsp.client import LanguageClient

    client = LanguageClient("bench", "1")
    shown: list[str] = []

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show(ls, params: types.ShowMessageParams) -> None:
        if params.type in (types.MessageType.Error, types.MessageType.Warning):
            shown.append(params.message)

    await client.start_io(sys.executable, "-m", "phi_lsp", cwd=str(old_code) if old_code else None)
    backend = {"url": url} if not endpoints else {"endpoints": [{"url": u, "models": [MODEL]} for u in endpoints]}
    settings = {
        "backend": {**backend, "requestTimeoutMs": 120_000},
        "completion": {"model": MODEL, "promptMode": "raw", "minConfidence": 0.0, "debounceMs": 0,
                       "maxTokens": 16, "timeoutMs": 120_000},
        "review": {"model": MODEL, "onSave": False},
    }
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=root.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        process_id=os.getpid(), initialization_options=settings))
    client.initialized(types.InitializedParams())
    try:
        yield Editor(client, root), shown
    finally:
        await close(client)


async def drive_editors(url: str, editors: int, docs, tag: str, on_answer=None, old_code: Path | None = None,
                        endpoints: list[str] = ()) -> dict:
    """`editors` phi-lsp servers, each typing through its share of `docs` concurrently and
    asking for a completion after every chunk."""
    counts = {"sent": 0, "answered": 0, "empty": 0, "errors": 0}
    shown_all: list[str] = []
    backend_figures: list[dict] = []
    base = Path(tempfile.mkdtemp(prefix=f"bench-routing-{tag}-"))

    async def one_editor(number: int) -> None:
        mine = docs[number::editors]
        async with fleet_editor(url, base / f"editor{number}", old_code, endpoints) as (ed, shown):

            async def one_document(name: str, chunks: list[str]) -> None:
                uri = ed.open(f"{tag}_{number}_{name}.py", chunks[0])
                for index, chunk in enumerate(chunks):
                    if index:
                        ed.type(uri, chunk)
                    counts["sent"] += 1
                    try:
                        items = await ed.inline(uri)
                    except Exception:  # an LSP error answer
                        counts["errors"] += 1
                        continue
                    counts["answered" if items else "empty"] += 1
                    if on_answer is not None:
                        on_answer(counts["answered"] + counts["empty"])

            await asyncio.gather(*(one_document(name, chunks) for name, chunks in mine))
            stats = await ed.command("phi.stats")
            backend_figures.append(stats.get("backend") or {})
            shown_all.extend(shown)

    started = time.monotonic()
    await asyncio.gather(*(one_editor(n) for n in range(editors)))
    counts["seconds"] = time.monotonic() - started
    counts["shown"] = shown_all
    for key in ("httpRequests", "failures", "retries", "retriesAnswered"):
        counts[key] = sum(b.get(key, 0) for b in backend_figures)
    return counts


async def policy_run(replicas: list, policy: str, editors: int, docs, tag: str, logs: Path, kill=None) -> dict:
    from tests.router_fleet import Fleet, free_port

    roots = [r.root for r in replicas]
    metrics_port = free_port()
    router = Fleet.start(roots, policy, logs / f"router-{tag}.log",
                         extra=["--prometheus-port", str(metrics_port)], ready_s=120)
    router_root = f"http://127.0.0.1:{metrics_port}"
    try:
        before = [await metric_totals(root, CACHE) for root in roots]
        result = await drive_editors(router.url, editors, docs, tag, kill)
        after = [await metric_totals(root, CACHE) for root in roots]
        routed = await metric_totals(router_root, ("vllm_router_requests_total", "vllm_router_retries_total"))
        per_worker = re.findall(
            r'^vllm_router_processed_requests_total\{worker="([^"]+)"\} ([0-9.e+]+)$',
            (await _text(router_root + "/metrics")), re.M)
    finally:
        router.stop()
    live = [i for i, a in enumerate(after) if a]
    hits = sum(after[i][CACHE[0]] - before[i].get(CACHE[0], 0) for i in live)
    queries = sum(after[i][CACHE[1]] - before[i].get(CACHE[1], 0) for i in live)
    result.update(
        policy=policy,
        hit_rate=hits / queries if queries else 0.0,
        # As the router counts them (vLLM's own counter is gone with a killed replica).
        per_replica=[int(float(dict(per_worker).get(root, 0))) for root in roots],
        router_retries=int(routed.get("vllm_router_retries_total", 0)),
        cache_complete=len(live) == len(roots),
    )
    return result


async def balancer_run(replicas: list, editors: int, docs, tag: str, old_code: Path) -> dict:
    """The old code's own balancer (document affinity, least-loaded) over the same replicas,
    no router in front; per-replica requests from the replicas' own counters."""
    roots = [r.root for r in replicas]
    before = [await metric_totals(root, CACHE) for root in roots]
    result = await drive_editors("", editors, docs, tag, old_code=old_code, endpoints=[f"{r}/v1" for r in roots])
    after = [await metric_totals(root, CACHE) for root in roots]
    hits = sum(a[CACHE[0]] - b.get(CACHE[0], 0) for a, b in zip(after, before) if a)
    queries = sum(a[CACHE[1]] - b.get(CACHE[1], 0) for a, b in zip(after, before) if a)
    result.update(
        policy="old: in-process",
        hit_rate=hits / queries if queries else 0.0,
        per_replica=[int(a.get(CACHE[2], 0) - b.get(CACHE[2], 0)) for a, b in zip(after, before)],
        router_retries=0,
        cache_complete=all(after),
    )
    return result


async def _text(url: str) -> str:
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(url)).text
    except httpx.HTTPError:
        return ""


class Replica:
    """A vLLM serving phi-code-tiny (started here), or a fake worker (--fake-workers, for
    trying the script without the minutes and gigabytes two vLLMs cost)."""

    def __init__(self, root: str, stop, kill):
        self.root, self.stop, self.kill = root, stop, kill

    @classmethod
    async def vllm(cls, cores: str | None = None) -> "Replica":
        """A vLLM replica; `cores` ("0", "1", ...) pins its compute threads. vLLM's CPU build
        binds every replica to the same cores by default (all but one kept for its front-end),
        so two replicas on one machine would take turns on one core."""
        from phi_lsp.model.managed_vllm import ManagedVllm, ModelChoice

        server = ManagedVllm(ModelChoice(str(model_dir()), MODEL), max_model_len=2048, start_timeout_s=1_200)
        saved = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
        if cores is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores  # the child's environment is copied at start
        try:
            url = await server.start()
        finally:
            if saved is None:
                os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
            else:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = saved

        def kill() -> None:
            os.killpg(server.process.pid, signal.SIGKILL)

        return cls(url.rsplit("/v1", 1)[0], server.stop, kill)

    @classmethod
    async def fake(cls, name: str, logs: Path) -> "Replica":
        from tests.router_fleet import FakeWorker

        worker = await asyncio.to_thread(FakeWorker.start, name, logs / f"{name}.jsonl")

        async def stop() -> None:
            worker.kill()

        return cls(worker.url, stop, worker.kill)


async def part_fleet(replicas: list, editors: int, count: int, steps: int, logs: Path, old_code: Path | None) -> bool:
    docs = documents(count, steps)
    requests = sum(len(c) for _, c in docs)
    print(f"\n2. {editors} editors (a phi-lsp each), {len(docs)} documents typed through concurrently, "
          f"{steps} completions each ({requests} requests), vllm-router in front of {len(replicas)} replicas")
    await drive_editors(
        f"{replicas[0].root}/v1", 1, documents(2, 2, 1_500), "warm-up")  # a fresh server's first requests are slow
    rows = []
    for policy in ("consistent_hash", "cache_aware", "round_robin"):
        rows.append(await policy_run(replicas, policy, editors, docs, policy.replace("_", ""), logs))
    if old_code is not None:
        rows.append(await balancer_run(replicas, editors, docs, "old", old_code))
    print(f"   {'policy':<16} {'seconds':>7} {'req/s':>6} {'answered':>9} {'prefix-cache hits':>17}  requests per replica")
    for r in rows:
        print(f"   {r['policy']:<16} {r['seconds']:>7.1f} {r['answered'] / r['seconds']:>6.2f} "
              f"{r['answered']:>4}/{r['sent']:<4} {100 * r['hit_rate']:>16.1f}%  {r['per_replica']}")

    print(f"\n3. consistent_hash, one replica SIGKILLed after a third of the answers")
    killed: list[int] = []

    def on_answer(done: int) -> None:
        if not killed and done >= requests // 3:
            killed.append(done)
            replicas[1].kill()

    r = await policy_run(replicas, "consistent_hash", editors, docs, "kill", logs, on_answer)
    print(f"   killed after {killed[0] if killed else '?'} answers; sent {r['sent']}, answered with a suggestion "
          f"{r['answered']}, empty {r['empty']}, LSP errors {r['errors']}; warnings shown to the user {len(r['shown'])}")
    print(f"   phi-lsp: {r['httpRequests']} HTTP requests, {r['retries']} retried ({r['retriesAnswered']} answered on "
          f"the retry), {r['failures']} failed; router: {r['router_retries']} retries of its own; "
          f"requests per replica {r['per_replica']} (the second killed)")
    for line in r["shown"][:3]:
        print(f"   shown: {line}")
    return r["errors"] == 0 and r["failures"] == 0 and not r["shown"] and r["answered"] + r["empty"] == r["sent"]



async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--part", choices=("review", "fleet", "all"), default="all")
    parser.add_argument("--units", type=int, default=48, help="review units in part 1")
    parser.add_argument("--editors", type=int, default=4, help="phi-lsp servers in parts 2 and 3")
    parser.add_argument("--documents", type=int, default=16, help="documents over all editors")
    parser.add_argument("--steps", type=int, default=5, help="completions per document in parts 2 and 3")
    parser.add_argument("--fake-workers", action="store_true",
                        help="parts 2 and 3 against two fake workers (tests/fake_worker.py) instead of vLLMs")
    parser.add_argument("--old", type=Path, metavar="CHECKOUT",
                        help="part 2 also runs this checkout's phi-lsp (before vllm-router: its own balancer "
                             "over both replicas, no router), side by side")
    parser.add_argument("--review-min-confidence", type=float, default=RoutingSettings().review_min_confidence)
    args = parser.parse_args()
    quiet_client_logs()
    ok = True
    if args.part in ("review", "all"):
        from phi_lsp.model.managed_vllm import ManagedVllm, ModelChoice

        async with vllm(args.backend_url) as url_a:
            second = ManagedVllm(ModelChoice(str(model_dir()), MODEL), max_model_len=2048, start_timeout_s=900)
            print("(starting a second vLLM for phi-code-tiny ...)", file=sys.stderr, flush=True)
            url_b = await second.start()
            try:
                print(f"Servers: A {url_a} (small model), B {url_b} (\"{LARGE}\"), both phi-code-tiny on the "
                      f"CPU build of vLLM, {os.cpu_count()} cores")
                ok &= await part_routing(url_a, url_b, args.units, args.review_min_confidence)
            finally:
                await second.stop()
    if args.part in ("fleet", "all"):
        logs = Path(tempfile.mkdtemp(prefix="bench-routing-logs-"))
        started = time.monotonic()
        if args.fake_workers:
            replicas = [await Replica.fake(name, logs) for name in ("a", "b")]
        else:
            print("(starting two vLLM replicas of phi-code-tiny ...)", file=sys.stderr, flush=True)
            # One after the other: each is started with its own core binding in the environment.
            cores: list[str | None] = [None, None]  # a binding the user set is kept
            if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                cores = [str(i % (os.cpu_count() or 1)) for i in range(2)]
            started_or_not = []
            for core in cores:
                try:
                    started_or_not.append(await Replica.vllm(core))
                except Exception as exc:  # noqa: BLE001 (said below)
                    started_or_not.append(exc)
            replicas = [r for r in started_or_not if isinstance(r, Replica)]
            if len(replicas) < 2:  # stop the one that did start; say why the other did not
                await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
                raise next(r for r in started_or_not if isinstance(r, BaseException))
        print(f"(replicas ready in {time.monotonic() - started:.0f} s: {', '.join(r.root for r in replicas)}; "
              f"logs in {logs})", file=sys.stderr, flush=True)
        if not args.fake_workers:
            print(f"   (replicas' compute threads on cores {' and '.join(c or 'vLLM default' for c in cores)})")
        try:
            ok &= await part_fleet(replicas, args.editors, args.documents, args.steps, logs, args.old)
        finally:
            await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        print(f"   ({os.cpu_count()} CPU cores shared by both replicas, the router and {args.editors} phi-lsp servers"
              f"{'; fake workers: no prefix cache' if args.fake_workers else ''})")
    print("\nOK" if ok else "\nFAILED: a request was lost or a unit was not reviewed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
