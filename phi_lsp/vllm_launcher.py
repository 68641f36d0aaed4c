"""Entry point of the managed vLLM child: `python -m phi_lsp.vllm_launcher <vLLM args>`.

It runs vLLM's OpenAI server in this process, after starting a watchdog that takes the whole
process group down (vLLM's engine and worker processes included) as soon as the phi-lsp process
that started it is gone, even if phi-lsp was killed without a chance to clean up.
"""

from __future__ import annotations

import os
import runpy
import signal
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
    try:
        os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(8)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> None:
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
