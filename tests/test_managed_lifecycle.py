"""The managed vLLM never outlives phi-lsp (SLOW: starts a second, managed vLLM; ~70-95 s on
two cores, bounded at 300 s; one such start in the whole suite).

- `test_managed_vllm_never_outlives_phi_lsp`: `python -m phi_lsp` with no backend.url and
  completion.model = "phi-code-tiny" starts vLLM for the bundled model, reports the start-up
  with $/progress (begin, reports, end) and turns "ready"; a completion is served by it; then
  phi-lsp is SIGKILLed (no chance to clean up) and every process of the vLLM child's process
  group (and every descendant it had) is gone within 20 s: vllm_launcher's parent watchdog.
- `test_without_vllm_it_says_so_once_and_leaves_no_progress_open`: an interpreter without
  vLLM: one message with the install hint, status error, no progress left open (fast).
- `test_shutdown_while_the_model_starts_stops_it`: shutdown + exit while vLLM is still
  starting (its engine process up, the server not ready) exits 0 and leaves none of its
  processes, those started after the stop began included (the normal stop path; ~20 s: no wait
  for vLLM to become ready).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from lsprotocol import types

from tests.conftest import MODEL_NAME, REQUIRE_VLLM, capabilities
from tests.waiting import make_watching_client, state_since, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="session")

READY_WITHIN_S = 300
GONE_WITHIN_S = 20


def _needs_vllm():
    from phi_lsp.model.managed_vllm import bundled_model, vllm_missing

    reason = vllm_missing(sys.executable) or (None if bundled_model(MODEL_NAME) else "the bundled model is missing")
    if reason:
        if REQUIRE_VLLM:
            pytest.fail(reason)
        pytest.skip(reason)


# -- processes, from /proc ------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _launcher_of(pid: int) -> int | None:
    for child in _all_pids():
        stat = _stat(child)
        if stat and stat[1] == pid:
            try:
                if b"phi_lsp.model.vllm_launcher" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
    return None


def _tree(pgid: int, root: int) -> dict[int, int]:
    """pid -> start time of the group's processes and of root's descendants (alive ones)."""
    stats = {pid: _stat(pid) for pid in _all_pids()}
    found = {pid: s[3] for pid, s in stats.items() if s and s[0] != "Z" and s[2] == pgid}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, s in stats.items():
            if s and s[1] == parent and pid not in found and s[0] != "Z":
                found[pid] = s[3]
                frontier.append(pid)
    if root not in found and stats.get(root) and stats[root][0] != "Z":
        found[root] = stats[root][3]
    return found


def _alive(processes: dict[int, int]) -> dict[int, int]:
    """Those of `processes` still running (the same process: same start time; not a zombie)."""
    alive = {}
    for pid, started in processes.items():
        stat = _stat(pid)
        if stat and stat[3] == started and stat[0] != "Z":
            alive[pid] = started
    return alive


def _members(pgid: int) -> dict[int, int]:
    """The group's processes now (also those started after the last look)."""
    return {pid: s[3] for pid in _all_pids() if (s := _stat(pid)) and s[2] == pgid and s[0] != "Z"}


async def _until_gone(pgid: int, processes: dict[int, int], within: float) -> float:
    started = time.monotonic()
    while left := {**_alive(processes), **_members(pgid)}:
        processes.update(left)
        if time.monotonic() - started > within:
            names = {pid: _cmdline(pid) for pid in left}
            raise AssertionError(f"still running {within} s later: {names}")
        await asyncio.sleep(0.25)  # nothing announces a process' end to a non-parent: poll /proc
    return time.monotonic() - started


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:80]
    except OSError:
        return b"?"


def _kill_leftovers(processes: dict[int, int], pgid: int | None = None) -> None:
    for pid in {**_alive(processes), **(_members(pgid) if pgid else {})}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


async def _stop_everything(client, processes: dict[int, int], launcher: int | None) -> None:
    """Whatever a failed test left running: vLLM's processes, phi-lsp, the client."""
    _kill_leftovers(processes, launcher)
    if client._server.returncode is None:
        client._server.kill()
    await client.stop()


# -- the server -----------------------------------------------------------------------------


async def _start(tmp_path: Path):
    client = make_watching_client()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_LSP_")}
    await client.start_io(sys.executable, "-m", "phi_lsp", env=env, cwd=str(tmp_path))
    await client.initialize_session(types.InitializeParams(
        capabilities=capabilities("visual_studio_code"),
        root_uri=tmp_path.as_uri(),
        workspace_folders=[types.WorkspaceFolder(uri=tmp_path.as_uri(), name="ws")],
        initialization_options={
            # No backend.url: phi-lsp starts vLLM itself, for the bundled model.
            "completion": {"model": MODEL_NAME, "promptMode": "raw", "debounceMs": 0, "minConfidence": 0.0},
            "review": {"model": MODEL_NAME, "onSave": False},
            "managed": {"startTimeoutS": READY_WITHIN_S},
        },
    ))
    return client


def _startup_progress(client) -> list:
    for reports in client.progress_reports.values():
        if any(isinstance(r, types.WorkDoneProgressBegin) and "starting the model" in r.title for r in reports):
            return reports
    return []


async def test_managed_vllm_never_outlives_phi_lsp(tmp_path):
    _needs_vllm()
    client = await _start(tmp_path)
    server = client._server
    processes: dict[int, int] = {}
    launcher = None
    try:
        await wait_until(client, state_since(client, 0, "starting"), 30, "status starting")
        launcher = None
        deadline = time.monotonic() + 30
        while launcher is None and time.monotonic() < deadline:
            launcher = _launcher_of(server.pid)
            await asyncio.sleep(0.2)
        assert launcher is not None, "no vllm_launcher child"
        assert os.getpgid(launcher) == launcher, "the child leads its own process group"
        processes.update(_tree(launcher, launcher))

        started = time.monotonic()
        await wait_until(client, state_since(client, 0, "ready"), READY_WITHIN_S, "status ready")
        ready_after = time.monotonic() - started
        await wait_until(client, lambda: any(isinstance(r, types.WorkDoneProgressEnd) for r in _startup_progress(client)),
                         10, "$/progress end")
        progress = _startup_progress(client)
        assert isinstance(progress[0], types.WorkDoneProgressBegin)
        assert any(isinstance(r, types.WorkDoneProgressReport) for r in progress)
        assert isinstance(progress[-1], types.WorkDoneProgressEnd)
        status = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.status"))
        assert status["state"] in ("ready", "busy") and status["model"] == MODEL_NAME and status["url"].startswith("http://127.0.0.1:")

        path = tmp_path / "a.py"
        path.write_text("import numpy as")
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=path.as_uri(), language_id="python", version=1, text="import numpy as")))
        result = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=path.as_uri()), position=types.Position(0, 15),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))), 60)
        assert result.items and result.items[0].insert_text.startswith(" np")

        processes.update(_tree(launcher, launcher))  # vLLM's engine processes, now up
        assert len(_alive(processes)) >= 2, processes
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.wait_for(server.wait(), 10)
        gone_after = await _until_gone(launcher, processes, GONE_WITHIN_S)
        print(f"managed vLLM: ready after {ready_after:.0f} s; {len(processes)} processes gone {gone_after:.1f} s after SIGKILL")
    finally:
        await _stop_everything(client, processes, launcher)


async def test_shutdown_while_the_model_starts_stops_it(tmp_path):
    _needs_vllm()
    client = await _start(tmp_path)
    server = client._server
    processes: dict[int, int] = {}
    launcher = None
    try:
        # Once vLLM is under way (its launcher reports progress and its engine process is
        # starting, not ready yet), shut down.
        await wait_until(client, lambda: any(isinstance(r, types.WorkDoneProgressReport) for r in _startup_progress(client)),
                         60, "a start-up progress report")
        launcher = _launcher_of(server.pid)
        assert launcher is not None
        deadline = time.monotonic() + 60
        while len(_members(launcher)) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)  # polling /proc: vLLM's processes announce nothing
        processes.update(_tree(launcher, launcher))
        assert len(processes) >= 3, {pid: _cmdline(pid) for pid in processes}
        assert not any(s.state == "ready" for s in client.statuses)
        await asyncio.wait_for(client.shutdown_async(None), 30)
        client.exit(None)
        assert await asyncio.wait_for(server.wait(), 30) == 0
        await _until_gone(launcher, processes, GONE_WITHIN_S)
        ended = _startup_progress(client)
        assert not ended or isinstance(ended[-1], (types.WorkDoneProgressEnd, types.WorkDoneProgressReport))
    finally:
        await _stop_everything(client, processes, launcher)


async def test_without_vllm_it_says_so_once_and_leaves_no_progress_open(tmp_path):
    """No backend.url and an interpreter without vLLM: the user is told what is missing and how
    to install it, the status says error, and no "starting the model" progress stays open."""
    no_vllm = tmp_path / "python-without-vllm"
    no_vllm.write_text("#!/bin/sh\nexit 1\n")  # answers "not found" to the vLLM check
    no_vllm.chmod(0o755)
    client = make_watching_client()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_LSP_")}
    await client.start_io(sys.executable, "-m", "phi_lsp", env=env, cwd=str(tmp_path))
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=capabilities("visual_studio_code"), root_uri=tmp_path.as_uri(),
            initialization_options={"completion": {"model": MODEL_NAME}, "managed": {"python": str(no_vllm)}}))
        await wait_until(client, state_since(client, 0, "error"), 30, "status error")
        await wait_until(client, lambda: client.messages, 10, "a message to the user")
        warnings = [m.message for m in client.messages if "vLLM is not installed" in m.message]
        assert len(warnings) == 1 and "pip install" in warnings[0], [m.message for m in client.messages]
        for reports in client.progress_reports.values():
            if any(isinstance(r, types.WorkDoneProgressBegin) and "starting the model" in r.title for r in reports):
                assert isinstance(reports[-1], types.WorkDoneProgressEnd), reports  # (the index has its own)
        # Everything that needs no model still works.
        status = await client.workspace_execute_command_async(types.ExecuteCommandParams(command="phi.status"))
        assert status["state"] == "error"
        await client.shutdown_session()
    finally:
        await _stop_everything(client, {}, None)  # a failed assertion must not leave stop() waiting
