"""A fault-injecting HTTP proxy between phi-lsp and the real vLLM, controlled from the test.

Healthy traffic ("pass") is relayed to the real server untouched; every other mode injects a
fault the real vLLM cannot produce on demand. The mode can be switched at any time and applies
to the next request (each relayed request gets its own upstream connection and the client is
told to close its connection afterwards, so no pooled connection escapes a switch):

- pass       relay to vLLM (and record the request)
- refuse     nothing listens on the port: connections are refused
- reset      relay, then reset the connection (RST) in the middle of the response
- hang       read the request and never answer
- http500, http429, http503
             answered by the proxy with that status and a JSON error body
- malformed  200 with a body that is not JSON
- half       relay the response headers and half of its body, then close
- drip       relay the real response a few bytes at a time, slower than any deadline
- garbage    bytes that are not HTTP at all, then close
- slow       a busy server: model requests (POST) are relayed after SLOW_S seconds, /models at
             once
- echo       HTTP 401 whose error message echoes the request's Authorization header, as some
             gateways do
- badlogprobs  the real answer, with strings and nulls put into its logprobs
- huge       200 with a 100 MB JSON body (sent as long as the client reads)

`fail_next(mode, n)` gives the next n model requests (POST) that fault and then passes again:
a replica dying under one request while the router already sends the next one elsewhere.

Every request (method, path, headers, body) is recorded in `requests`, whatever the mode, so a
test can check exactly what left phi-lsp. The proxy runs its own event loop on a thread; its
methods are safe to call from any thread or loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAULTS = ("refuse", "reset", "hang", "http500", "http429", "http503", "malformed", "half", "drip", "garbage")
# Answers that are well-formed HTTP and JSON but wrong inside, and echo (no outage): not in
# FAULTS, which tests/test_faults.py runs through two outages each; tests/test_hostile_inputs.py
# uses badlogprobs and huge.
BAD_ANSWERS = ("badlogprobs", "huge")
MODES = ("pass", *FAULTS, "echo", *BAD_ANSWERS, "slow")
SLOW_S = 3.0
HUGE_BYTES = 100 * 1024 * 1024
_STATUS_TEXT = {500: "Internal Server Error", 429: "Too Many Requests", 503: "Service Unavailable"}
DRIP_BYTES = 8
DRIP_INTERVAL_S = 0.3


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    mode: str
    at: float = field(default_factory=time.monotonic)

    def json(self):
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


class FaultProxy:
    def __init__(self, upstream_url: str, host: str = "127.0.0.1"):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.base_path = parts.path.rstrip("/")  # "/v1"
        self.host = host
        self.port = 0
        self.mode = "pass"
        self._next_faults: list[str] = []  # one-shot faults for the next model requests
        self.requests: list[Recorded] = []
        self.hangups = 0  # hanging requests whose client closed the connection
        self._lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    # -- control (any thread) ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self._call(self._set_mode(mode))

    def heal(self) -> None:
        self.set_mode("pass")

    def fail_next(self, mode: str, count: int = 1) -> None:
        assert mode in FAULTS and mode != "refuse", mode  # refusing is the listener's, not a request's
        with self._lock:
            self._next_faults = [mode] * count

    def recorded(self, path_suffix: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(path_suffix)]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _call(self, coro, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the proxy (its own loop) ---------------------------------------------------------

    async def _set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            await self._stop_listening(drop_connections=False)
        elif self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self, drop_connections: bool) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if drop_connections:
            for writer in list(self._connections):
                writer.transport.abort()

    async def _shutdown(self) -> None:
        await self._stop_listening(drop_connections=True)
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        self._handlers.add(asyncio.current_task())
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                method, path, headers, body, raw_head = request
                with self._lock:
                    mode = self._next_faults.pop(0) if self._next_faults and method == "POST" else self.mode
                    self.requests.append(Recorded(method, path, headers, body, mode))
                if not await self._serve(mode, raw_head, body, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            self._connections.discard(writer)
            self._handlers.discard(asyncio.current_task())
            if not writer.transport.is_closing():
                writer.close()

    async def _serve(self, mode, raw_head: bytes, body: bytes, reader, writer) -> bool:
        """Answer one request; True when the client's connection may carry another one."""
        if mode in ("http500", "http429", "http503"):
            status = int(mode[4:])
            payload = json.dumps({"object": "error", "message": f"injected HTTP {status}", "code": status}).encode()
            extra = "Retry-After: 1\r\n" if status in (429, 503) else ""
            writer.write(_response_head(status, _STATUS_TEXT[status], len(payload), extra) + payload)
            await writer.drain()
            return True
        if mode == "echo":
            lines = raw_head.decode("latin-1").split("\r\n")[1:]
            auth = next((h for h in lines if h.lower().startswith("authorization:")), "no Authorization header")
            payload = json.dumps({"object": "error", "message": f"unauthorized: {auth.split(':', 1)[1].strip()} is not a valid key",
                                  "code": 401}).encode()
            writer.write(_response_head(401, "Unauthorized", len(payload)) + payload)
            await writer.drain()
            return True
        if mode == "malformed":
            payload = b'{"id": "cmpl-injected", "object": "text_completion", "choices": [{"text": "x", '
            writer.write(_response_head(200, "OK", len(payload)) + payload)
            await writer.drain()
            return True
        if mode == "huge":
            # A JSON string 100 MB long, inside an otherwise normal answer.
            opening, closing = b'{"choices": [{"index": 0, "text": "', b'"}]}'
            writer.write(_response_head(200, "OK", len(opening) + HUGE_BYTES + len(closing)) + opening)
            chunk = b"x" * (1024 * 1024)
            for _ in range(HUGE_BYTES // len(chunk)):
                if writer.transport.is_closing():
                    return False
                writer.write(chunk)
                await writer.drain()
            writer.write(closing)
            await writer.drain()
            return True
        if mode == "garbage":
            writer.write(b"\x00\xffnot http at all\r\n\x17\x03\x03")
            await writer.drain()
            return False
        if mode == "hang":
            await reader.read()  # until the client gives up and closes
            self.hangups += 1
            return False
        if mode == "slow":
            if not raw_head.startswith(b"GET"):
                await asyncio.sleep(SLOW_S)
                if reader.at_eof():
                    return False  # the client gave up waiting: the model is spared the request
            mode = "pass"
        # The rest talk to the real server.
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            return False
        try:
            up_writer.write(_force_close(raw_head) + body)
            await up_writer.drain()
            if mode == "pass":
                await _relay_until_eof(up_reader, writer, reader)
                return False
            head = await up_reader.readuntil(b"\r\n\r\n")
            length = _content_length(head)
            if mode == "badlogprobs":
                answer = json.loads(await up_reader.readexactly(length) if length else await up_reader.read())
                for choice in answer.get("choices", []):
                    text = choice.get("text") or "x"
                    choice["logprobs"] = {"tokens": [text, None], "token_logprobs": ["-0.5", None],
                                          "text_offset": [0, len(text)], "top_logprobs": None}
                payload = json.dumps(answer).encode()
                writer.write(_response_head(200, "OK", len(payload)) + payload)
                await writer.drain()
                return True
            if mode == "reset":
                writer.write(head + (await up_reader.read(16)))
                await writer.drain()
                _abort_with_reset(writer)
                return False
            if mode == "half":
                wanted = max(1, (length or 64) // 2)
                chunk = await up_reader.readexactly(wanted) if length else await up_reader.read(wanted)
                writer.write(head + chunk)
                await writer.drain()
                return False
            if mode == "drip":
                data = head + await up_reader.read()
                for i in range(0, len(data), DRIP_BYTES):
                    writer.write(data[i : i + DRIP_BYTES])
                    await writer.drain()
                    await asyncio.sleep(DRIP_INTERVAL_S)
                    if writer.transport.is_closing() or reader.at_eof():
                        break
                return False
            raise AssertionError(mode)
        finally:
            up_writer.close()


async def _read_request(reader: asyncio.StreamReader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body, head


def _force_close(head: bytes) -> bytes:
    """The request head with `Connection: close` (one request per upstream connection)."""
    lines = [line for line in head.split(b"\r\n") if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join(lines + [b"Connection: close", b"", b""])


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return None


def _response_head(status: int, text: str, length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


async def _relay_until_eof(up_reader, writer, client_reader) -> None:
    """Upstream -> client until upstream closes; a client that hangs up aborts upstream too
    (vLLM then frees the sequence, as it would without the proxy)."""

    async def pump() -> None:
        while chunk := await up_reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    pumping = asyncio.ensure_future(pump())
    hangup = asyncio.ensure_future(client_reader.read())
    try:
        await asyncio.wait([pumping, hangup], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, hangup):
            task.cancel()
        await asyncio.gather(pumping, hangup, return_exceptions=True)


def _abort_with_reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
