"""Entry point of the managed vLLM child: `python -m phi_lsp.model.vllm_launcher <vLLM args>`.

It runs vLLM's OpenAI server in this process, after starting a watchdog that takes the whole
process group down (vLLM's engine and worker processes included) as soon as the phi-lsp process
that started it is gone, even if phi-lsp was killed without a chance to clean up.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import threading
import time


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    # Reparented: our parent died. Stop everything we started; the group is ours only when
    # phi-lsp started us as a session leader (it does), never a shell's job.
    if os.getpgrp() != os.getpid():
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # SIGTERM ends this process too (at once while vLLM starts, before it handles signals),
    # so the SIGKILL for whatever is left a few seconds later (vLLM's engine process, which
    # ignores SIGTERM once orphaned) comes from a small process of its own session.
    subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(os.getpgrp())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
    except ProcessLookupError:
        pass


_REAPER = """
import os, signal, sys, time
group, deadline = int(sys.argv[1]), time.monotonic() + 8
while True:
    try:
        os.killpg(group, signal.SIGKILL if time.monotonic() > deadline else 0)
    except ProcessLookupError:
        break
    time.sleep(0.2)
"""


def main() -> None:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
