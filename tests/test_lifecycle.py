"""Lifecycle and protocol robustness, driven over raw stdio."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEAD_BACKEND, settings
from tests.rawlsp import RawServer


@pytest.fixture
def raw(tmp_path):
    server = RawServer()
    yield server
    server.close()


def test_exit_after_shutdown_is_zero(raw, tmp_path):
    result = raw.initialize(tmp_path, settings(DEAD_BACKEND))
    caps = result["result"]["capabilities"]
    assert caps["textDocumentSync"]["change"] == 2  # incremental
    assert raw.response(raw.request("shutdown"))["result"] is None
    raw.notify("exit")
    assert raw.wait() == 0


def test_exit_without_shutdown_is_one(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    raw.notify("exit")
    assert raw.wait() == 1


def test_requests_before_initialize_and_after_shutdown(raw, tmp_path):
    early = raw.response(raw.request("textDocument/hover", {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0}}))
    assert early["error"]["code"] == -32002
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    again = raw.response(raw.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}}))
    assert again["error"]["code"] == -32600
    raw.response(raw.request("shutdown"))
    late = raw.response(raw.request("workspace/executeCommand", {"command": "phi.stats"}))
    assert late["error"]["code"] == -32600
    raw.notify("exit")
    assert raw.wait() == 0


def test_malformed_messages_get_errors_and_the_server_keeps_going(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    body = b'{"jsonrpc": "2.0", "id": 7, "method": '
    raw.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert raw.response(None)["error"]["code"] == -32700
    raw.send_bytes(b"Content-Length: 4\r\n\r\n\xff\xfe\x00\x01")  # binary garbage
    assert raw.response(None)["error"]["code"] == -32700
    # Wrong Content-Length (too short): that message is lost, the next one is not.
    good = json.dumps({"jsonrpc": "2.0", "id": 8, "method": "workspace/executeCommand", "params": {"command": "phi.status"}}).encode()
    raw.send_bytes(b"Content-Length: 10\r\n\r\n" + good)
    raw.send(json.loads(good.replace(b'"id": 8', b'"id": 9')))
    assert "result" in raw.response(9)
    # Params of the wrong shape: InvalidParams for that id.
    raw.send({"jsonrpc": "2.0", "id": 10, "method": "textDocument/inlineCompletion", "params": {"textDocument": 3}})
    assert raw.response(10)["error"]["code"] in (-32602, -32600)
    # Unknown method: MethodNotFound.
    assert raw.response(raw.request("phi/noSuchThing", {}))["error"]["code"] == -32601
    # didChange for a document never opened is ignored; the server still answers.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": "file:///never.py", "version": 2},
                                          "contentChanges": [{"text": "x"}]})
    assert "result" in raw.response(raw.request("workspace/executeCommand", {"command": "phi.status"}))
    raw.response(raw.request("shutdown"))
    raw.notify("exit")
    assert raw.wait() == 0


def test_exits_when_the_editor_process_dies(raw, tmp_path):
    # The "editor" is another process; our test keeps phi-lsp's stdin open, so only the
    # processId watch can notice that the editor is gone.
    editor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    msg_id = raw.request("initialize", {"processId": editor.pid, "rootUri": tmp_path.as_uri(), "capabilities": {},
                                        "initializationOptions": settings(DEAD_BACKEND)})
    raw.response(msg_id)
    editor.kill()
    editor.wait()
    assert raw.wait(timeout=15) == 1


def test_tcp_transport(tmp_path):
    import socket

    from phi_lsp.model.managed_vllm import free_port

    port = free_port()
    token = "test-token-0123456789abcdef"  # the client must present it (tests/test_tcp_auth.py)
    proc = subprocess.Popen([sys.executable, "-m", "phi_lsp", "serve", "--tcp", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PHI_LSP_TCP_TOKEN": token})
    try:
        for _ in range(100):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError("phi-lsp --tcp exited")
                import time
                time.sleep(0.1)
        stream = sock.makefile("rwb")

        stream.write(f"Phi-Lsp-Token: {token}\r\n".encode())

        def send(message):
            body = json.dumps(message).encode()
            stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            stream.flush()

        def receive(msg_id):
            while True:
                length = None
                while True:
                    line = stream.readline()
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    elif line in (b"\r\n", b"") and length is not None:
                        break
                message = json.loads(stream.read(length))
                if message.get("id") == msg_id:
                    return message

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"processId": None, "rootUri": tmp_path.as_uri(), "capabilities": {},
                         "initializationOptions": settings(DEAD_BACKEND)}})
        assert "capabilities" in receive(1)["result"]
        send({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
        assert receive(2)["result"] is None
        send({"jsonrpc": "2.0", "method": "exit"})
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
