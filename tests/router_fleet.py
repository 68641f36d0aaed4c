"""vLLM's real router (`vllm-router`, from the package registry) in front of worker processes on
loopback, for the tests and the routing benchmark.

    fleet = Fleet.start(["http://127.0.0.1:8001", ...], policy="consistent_hash")
    fleet.url          # the router's OpenAI base URL (.../v1)
    fleet.stop()

The router is started with the flags docs/DEPLOY.md recommends for fast failover: one failure
opens a worker's circuit breaker, health checks every second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FAST_FAILOVER = ["--cb-failure-threshold", "1", "--health-check-interval-secs", "1", "--health-failure-threshold", "1"]
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def router_binary() -> str | None:
    """The `vllm-router` command: beside this Python (a venv's bin/) or on PATH."""
    beside = Path(sys.executable).with_name("vllm-router")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("vllm-router")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_for(url: str, seconds: float, process: subprocess.Popen | None = None, check=lambda answer: True) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        try:
            if check(get_json(url, 1.0)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


@dataclass
class FakeWorker:
    name: str
    port: int
    log: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, name: str, log: Path, model: str = "phi-code-tiny", max_model_len: int = 2048) -> "FakeWorker":
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(FAKE_WORKER), "--port", str(port), "--name", name, "--model", model, "--log", str(log),
             "--max-model-len", str(max_model_len)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        worker = cls(name, port, log, process)
        wait_for(worker.url + "/v1/models", 20, process)
        return worker

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def kill(self) -> None:
        """SIGKILL, as a replica dies: no goodbye to open connections."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Fleet:
    port: int
    process: subprocess.Popen
    log: Path
    workers: list[str] = field(default_factory=list)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.root + "/v1"

    @classmethod
    def start(cls, worker_urls: list[str], policy: str = "consistent_hash", log: Path | None = None,
              extra: list[str] = (), ready_s: float = 60) -> "Fleet":
        binary = router_binary()
        if binary is None:
            raise FileNotFoundError("vllm-router is not installed (pip install vllm-router)")
        port = free_port()
        log = log or Path(os.devnull)
        out = open(log, "ab")
        command = [binary, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
                   "--worker-urls", *worker_urls, *FAST_FAILOVER, "--log-level", "warning", *extra]
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        fleet = cls(port, process, log, list(worker_urls))
        try:
            wait_for(fleet.root + "/readiness", ready_s, process,
                     check=lambda answer: isinstance(answer, dict) and answer.get("healthy_workers") == len(worker_urls))
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
