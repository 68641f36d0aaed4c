"""`phi-lsp serve --tcp`: only the client that presents the start's token is served.

The server is the real CLI; the clients are raw sockets (what an attacker would use): no token,
a wrong token, an HTTP request (a browser driven by a web page) are refused before any LSP
message of theirs is handled; they do not take the one editor slot; the right token works.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import DEAD_BACKEND, settings

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"processId": None, "rootUri": None, "capabilities": {},
                         "initializationOptions": settings(DEAD_BACKEND)}}


def frame(message: dict, *headers: str) -> bytes:
    body = json.dumps(message).encode()
    head = "".join(f"{h}\r\n" for h in headers).encode()
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class TcpServer:
    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "phi_lsp", "serve", "--tcp", "127.0.0.1:0", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(r"listening on [\d.]+:(\d+)").group(1))

    def _read(self) -> None:
        for raw in self.proc.stderr:
            with self._seen:
                self.lines.append(raw.decode("utf-8", "replace"))
                self._seen.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no line matching {pattern!r} on stderr: {''.join(self.lines)}")
                self._seen.wait(left)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=15)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answer(sock: socket.socket, msg_id: int) -> dict:
    stream = sock.makefile("rb")
    while True:
        length = None
        while True:
            line = stream.readline()
            assert line, "the server closed the connection"
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            elif line.strip() == b"" and length is not None:
                break
        message = json.loads(stream.read(length))
        if message.get("id") == msg_id:
            return message


def session(sock: socket.socket, first: bytes) -> int:
    """initialize (sent as `first`), shutdown, exit; the server's answers checked."""
    sock.sendall(first)
    assert "capabilities" in answer(sock, 1)["result"]
    sock.sendall(frame({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}))
    assert answer(sock, 2)["result"] is None
    sock.sendall(frame({"jsonrpc": "2.0", "method": "exit"}))
    return 0


@pytest.fixture
def server():
    tcp = TcpServer()
    yield tcp
    tcp.close()


def test_connections_without_the_token_are_refused_and_the_right_token_is_served(server):
    token = server.wait_for(r"TCP token: (\S+)").group(1)
    attempts = {
        "no token": frame(INITIALIZE),
        "wrong token": frame(INITIALIZE, "Phi-Lsp-Token: " + "x" * len(token)),
        "token prefix": frame(INITIALIZE, "Phi-Lsp-Token: " + token[:-1]),
    }
    for what, first in attempts.items():
        with server.connect() as sock:
            sock.sendall(first)
            assert read_all(sock) == b"", f"{what}: the server answered"
        server.wait_for("refused")
    # A browser's request (DNS rebinding): 403, nothing handled.
    with server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: attacker.example:80\r\nContent-Type: text/plain\r\n\r\n"
                     + frame(INITIALIZE, "Phi-Lsp-Token: " + token))
        assert read_all(sock).startswith(b"HTTP/1.1 403")
    server.wait_for("HTTP request")
    # None of them took the one editor slot; the token as a line of its own before the first
    # message works as well as a header of it.
    with server.connect() as sock:
        session(sock, f"Phi-Lsp-Token: {token}\r\n".encode() + frame(INITIALIZE))
    assert server.proc.wait(timeout=15) == 0


def test_the_token_from_a_file_or_the_environment(tmp_path):
    token = "correct-horse-battery-staple-0123"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    refused = subprocess.run([sys.executable, "-m", "phi_lsp", "serve", "--tcp", "127.0.0.1:0",
                              "--tcp-token-file", str(token_file)], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "readable by other users" in refused.stderr
    token_file.chmod(0o600)
    for server in (TcpServer("--tcp-token-file", str(token_file)), TcpServer(env={"PHI_LSP_TCP_TOKEN": token})):
        try:
            assert not any("TCP token:" in line for line in server.lines), "a given token is never printed"
            with server.connect() as sock:
                sock.sendall(frame(INITIALIZE, "Phi-Lsp-Token: wrong-token-wrong-token"))
                assert read_all(sock) == b""
            with server.connect() as sock:
                session(sock, frame(INITIALIZE, f"Phi-Lsp-Token: {token}"))
            assert server.proc.wait(timeout=15) == 0
        finally:
            server.close()


def test_a_silent_connection_does_not_block_the_editor(server):
    token = server.wait_for(r"TCP token: (\S+)").group(1)
    with server.connect() as idle, server.connect() as sock:
        idle.sendall(b"Content-")  # an incomplete header, then nothing
        session(sock, frame(INITIALIZE, f"Phi-Lsp-Token: {token}"))
    assert server.proc.wait(timeout=15) == 0
