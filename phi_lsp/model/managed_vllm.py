"""The managed local vLLM: started by phi-lsp when `backend.url` is unset.

The server (and `phi-lsp serve-model`, `review`, `complete`, `demo`) starts vLLM's OpenAI server
for the configured model as a child process on a free loopback port, reports start-up, waits for
/health and stops it on exit. The child runs in its own process group and watches its parent, so
it never outlives phi-lsp, even when phi-lsp is killed.

Which model: the configured one; but when the user configured none and there is no GPU, the
bundled demo model phi-code-tiny (41 MB, runs on a CPU), with a plain word that it is a tiny demo
model and how to switch to Phi-4-mini.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from phi_lsp.core.paths import PACKAGE_DIR, bundled_model
from phi_lsp.core.settings import DEFAULT_MODEL, DEMO_MODEL, Settings

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install it with `pip install 'phi-lsp[cpu]'` (CPU build, runs the bundled demo model) or "
    "`pip install vllm` on a machine with an NVIDIA GPU, or set backend.url to a running "
    "OpenAI-compatible server (for example `vllm serve microsoft/Phi-4-mini-instruct`)."
)
TORCHVISION_HINT = (
    "vLLM could not start because the installed torchvision does not match the CPU build of "
    "torch. Text models need none of it: run `pip uninstall -y torchvision torchaudio torchcodec`."
)


class ManagedVllmError(Exception):
    pass


@dataclass(frozen=True)
class ModelChoice:
    """What the managed vLLM serves: `source` (a path or hub id) under `served_name`."""

    source: str
    served_name: str
    is_demo: bool = False
    note: str = ""


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def choose_model(settings: Settings, model_configured: bool, gpu: bool | None = None) -> ModelChoice:
    """The model the managed vLLM should serve for these settings."""
    wanted = settings.completion.model
    gpu = has_gpu() if gpu is None else gpu
    demo = bundled_model(DEMO_MODEL)
    if not model_configured and wanted == DEFAULT_MODEL and not gpu and demo is not None:
        return ModelChoice(
            str(demo),
            DEMO_MODEL,
            is_demo=True,
            note=(
                f"No GPU and no model configured: serving the bundled demo model {DEMO_MODEL}, a "
                "tiny 20M-parameter code model that only shows the plumbing working. For real "
                f"suggestions run {DEFAULT_MODEL} on a GPU (`vllm serve {DEFAULT_MODEL}`) and set "
                "backend.url, or set completion.model/review.model."
            ),
        )
    bundled = bundled_model(wanted)
    if bundled is not None:
        return ModelChoice(str(bundled), wanted, is_demo=wanted == DEMO_MODEL)
    if Path(wanted).expanduser().is_dir():
        return ModelChoice(str(Path(wanted).expanduser()), wanted)
    return ModelChoice(wanted, wanted)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def vllm_missing(python: str) -> str | None:
    """Why vLLM cannot be started with `python`, or None if it can."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        found = importlib.util.find_spec("vllm") is not None
    else:
        try:
            found = (
                subprocess.run(
                    [python, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"Cannot run the Python interpreter {python} to start vLLM ({exc})."
    if found:
        return None
    return f"vLLM is not installed for {python}. {INSTALL_HINT}"


ProgressFn = Callable[[str, int | None], None]


class ManagedVllm:
    def __init__(
        self,
        model: ModelChoice,
        python: str | None = None,
        extra_args: tuple[str, ...] = (),
        max_model_len: int = 2048,
        start_timeout_s: float = 900,
        host: str = "127.0.0.1",
        port: int | None = None,
    ):
        self.model = model
        self.python = python or sys.executable
        self.extra_args = tuple(extra_args)
        self.max_model_len = max_model_len
        self.start_timeout_s = start_timeout_s
        self.host = host
        self.port = port
        self.process: asyncio.subprocess.Process | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=60)
        self._reader: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings: Settings, model_configured: bool) -> "ManagedVllm":
        managed = settings.managed
        model = choose_model(settings, model_configured)
        return cls(
            model,
            python=managed.python,
            extra_args=managed.extra_args,
            max_model_len=managed.max_model_len or (2048 if model.is_demo else 8192),
            start_timeout_s=managed.start_timeout_s,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "phi_lsp.model.vllm_launcher",
            "--model",
            self.model.source,
            "--served-model-name",
            self.model.served_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--max-model-len",
            str(self.max_model_len),
            *self.extra_args,
        ]

    async def start(self, progress: ProgressFn = lambda message, percent: None) -> str:
        """Start vLLM and wait until /health answers; returns the base URL (…/v1)."""
        missing = await asyncio.to_thread(vllm_missing, self.python)  # may run another Python
        if missing:
            raise ManagedVllmError(missing)
        self.port = self.port or free_port(self.host)
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; ignored on GPUs
        env.setdefault("PYTHONUNBUFFERED", "1")
        # The child must import this package even when phi-lsp runs from a source checkout.
        package_root = str(PACKAGE_DIR.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        progress(f"Starting vLLM for {self.model.served_name}", 0)
        log.info("starting managed vLLM: %s", " ".join(self.command()))
        self.process = await asyncio.create_subprocess_exec(
            *self.command(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        _started.add(self.process.pid)
        self._reader = asyncio.create_task(self._read_output())
        try:
            await self._wait_ready(progress)
        except BaseException:
            await self.stop()
            raise
        progress(f"vLLM is serving {self.model.served_name}", 100)
        return self.url

    async def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self.output.append(text)
            log.debug("vllm: %s", text)

    async def _wait_ready(self, progress: ProgressFn) -> None:
        import httpx

        assert self.process is not None
        started = time.monotonic()
        health = f"http://{self.host}:{self.port}/health"
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if self.process.returncode is not None:
                    raise ManagedVllmError(self._failure_message())
                try:
                    if (await client.get(health)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                elapsed = time.monotonic() - started
                if elapsed > self.start_timeout_s:
                    raise ManagedVllmError(
                        f"vLLM did not become ready within {self.start_timeout_s:.0f} s. "
                        + self._failure_message()
                    )
                last = next((line for line in reversed(self.output) if line.strip()), "")
                # Start-up is ~70-95 s on a small CPU; report a rough percentage of that.
                percent = min(95, int(elapsed / 90 * 100))
                progress(f"Starting vLLM ({elapsed:.0f} s): {_tail(last)}", percent)
                await asyncio.sleep(0.5)

    def _failure_message(self) -> str:
        text = "\n".join(self.output)
        if "torchvision::nms does not exist" in text:
            return TORCHVISION_HINT
        tail = "\n".join(list(self.output)[-8:])
        code = self.process.returncode if self.process else None
        return f"vLLM exited (code {code}). Its last output:\n{tail}"

    async def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except asyncio.TimeoutError:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        # vLLM's engine process can outlive the server process that leads the group: one
        # spawned during start-up just after the SIGTERM never got it, and ignores another.
        # Whatever is left of the group goes too.
        await _end_group(process.pid)
        _started.discard(process.pid)
        if self._reader is not None:
            self._reader.cancel()


def _tail(line: str) -> str:
    # vLLM prefixes lines with "(APIServer pid=N) INFO 11-23 13:28:33 [file.py:12] "
    if "] " in line:
        line = line.split("] ", 1)[1]
    return line[:100]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def _end_group(pgid: int, grace_s: float = 2.0) -> None:
    """SIGTERM what is left of a process group, SIGKILL it after `grace_s`."""
    deadline = time.monotonic() + grace_s
    while _group_alive(pgid):
        now = time.monotonic()
        if now > deadline + 5:
            log.warning("processes of vLLM's group %s survive SIGKILL", pgid)
            return
        _signal_group(pgid, signal.SIGTERM if now < deadline else signal.SIGKILL)
        await asyncio.sleep(0.1)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# Last resort when the event loop is gone before stop() ran (the child's own watchdog covers
# a phi-lsp that is killed outright).
_started: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_started):
        _signal_group(pid, signal.SIGTERM)
