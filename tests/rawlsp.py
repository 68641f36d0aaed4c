"""A bare LSP peer over a subprocess's stdio, for what a well-behaved client never sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import queue
from pathlib import Path


class RawServer:
    def __init__(self, *args: str, env: dict | None = None, cwd: Path | None = None, command: list[str] | None = None):
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "phi_lsp"]), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        self.messages: queue.Queue = queue.Queue()
        self.notifications: list[dict] = []  # what response() passed over (and server requests)
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        self._next_id = 0

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line.strip() == b"" and length is not None:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.messages.put(json.loads(out.read(length)))

    def send_bytes(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params=None) -> int:
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    def notify(self, method: str, params=None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def response(self, msg_id, timeout: float = 15.0) -> dict:
        """The response to `msg_id` (notifications that arrive first go to `notifications`)."""
        while True:
            message = self.messages.get(timeout=timeout)
            if "id" in message and "method" not in message and message["id"] == msg_id:
                return message
            if "method" in message:
                self.notifications.append(message)

    def initialize(self, root: Path, options: dict | None = None, capabilities: dict | None = None) -> dict:
        msg_id = self.request(
            "initialize",
            {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": capabilities or {},
             "initializationOptions": options or {}},
        )
        result = self.response(msg_id)
        self.notify("initialized", {})
        return result

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
