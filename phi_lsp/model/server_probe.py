"""What answers at a backend URL: vLLM itself, vLLM's router in front of replicas, or some other
OpenAI-compatible server (for `phi-lsp doctor`).

vllm-router answers `GET /workers` with its workers (URL, health, load) and `GET /readiness`
with how many are healthy; its `/health` says "All servers healthy" where vLLM's own answers an
empty 200; `/v1/models` it passes through to a worker. vLLM answers `GET /version`. Nothing
here changes how requests are sent: a router needs nothing from phi-lsp but the session header.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

ROUTER, VLLM, OTHER, UNREACHABLE = "vllm-router", "vllm", "other", "unreachable"


@dataclass
class Worker:
    url: str
    healthy: bool | None = None
    load: int | None = None


@dataclass
class ServerFacts:
    kind: str
    health: str = ""  # "200 All servers healthy", "503 ...", or why it did not answer
    version: str | None = None  # vLLM's, when it says
    workers: list[Worker] = field(default_factory=list)

    @property
    def healthy_workers(self) -> int:
        return sum(1 for w in self.workers if w.healthy)


def root_of(url: str) -> str:
    """The server's root for a base URL ending in /v1."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


async def probe_server(url: str, api_key: str | None = None, timeout_s: float = 5.0, transport=None) -> ServerFacts:
    import httpx

    headers = {"User-Agent": "phi-lsp doctor"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    root = root_of(url)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, transport=transport) as client:

        async def get(path: str) -> httpx.Response | None:
            try:
                async with asyncio.timeout(timeout_s):
                    return await client.get(root + path)
            except (httpx.HTTPError, OSError, TimeoutError):
                return None

        health, workers, version = await asyncio.gather(get("/health"), get("/workers"), get("/version"))
    if health is None and workers is None and version is None:
        return ServerFacts(UNREACHABLE, "no answer")
    facts = ServerFacts(OTHER, _status_line(health) if health is not None else "no answer")
    listed = _workers(_json(workers))
    if listed is not None:
        facts.kind, facts.workers = ROUTER, listed
        return facts
    answer = _json(version)
    if isinstance(answer, dict) and isinstance(answer.get("version"), str):
        facts.kind, facts.version = VLLM, answer["version"]
    return facts


def describe(facts: ServerFacts, session_header: str) -> tuple[list[str], list[str]]:
    """(lines to print, problems to fix) for a server's facts."""
    lines: list[str] = []
    problems: list[str] = []
    if facts.kind == ROUTER:
        lines.append(
            f"vllm-router in front of {len(facts.workers)} worker(s), {facts.healthy_workers} healthy "
            f"(/health: {facts.health})"
        )
        for worker in facts.workers:
            state = {True: "healthy", False: "UNHEALTHY", None: "health unknown"}[worker.healthy]
            load = f", load {worker.load}" if worker.load is not None and worker.load >= 0 else ""
            lines.append(f"  worker {worker.url}: {state}{load}")
        if facts.workers and not facts.healthy_workers:
            problems.append("the router has no healthy worker: start the vLLM replicas or fix --worker-urls")
        if session_header:
            lines.append(
                f"phi-lsp sends each document's session key in {session_header}: with "
                "`--policy consistent_hash` a document stays on one replica's prefix cache"
            )
        else:
            lines.append("backend.sessionHeader is empty: the router cannot keep a document on one replica")
        lines.append(
            "fast failover: start the router with --cb-failure-threshold 1 --health-check-interval-secs 1 "
            "--health-failure-threshold 1 (docs/DEPLOY.md)"
        )
    elif facts.kind == VLLM:
        lines.append(f"vLLM {facts.version} itself (no router in front; /health: {facts.health})")
    elif facts.kind == OTHER:
        lines.append(f"an OpenAI-compatible server (not vLLM or vllm-router that phi-lsp can tell; /health: {facts.health})")
    return lines, problems


def _status_line(response) -> str:
    text = " ".join(response.text.split())[:60]
    return f"{response.status_code} {text}".strip()


def _json(response) -> Any:
    if response is None or response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _workers(answer: Any) -> list[Worker] | None:
    """vllm-router's `/workers` answer as workers; None when it is not one."""
    if not isinstance(answer, dict) or not isinstance(answer.get("workers"), list):
        return None
    workers = []
    for item in answer["workers"]:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            return None
        healthy = item.get("is_healthy")
        load = item.get("load")
        workers.append(Worker(
            item["url"],
            healthy if isinstance(healthy, bool) else None,
            load if isinstance(load, int) and not isinstance(load, bool) else None,
        ))
    return workers
