"""Who may talk to a server listening on TCP: only the client that presents this start's token.

Any local process can connect to a loopback port, and a web page can make the browser send an
HTTP request to one (DNS rebinding). Before any LSP message is handled, the client's first
header block must carry the token as a header of its own:

    Phi-Lsp-Token: <token>\\r\\n
    Content-Length: 123\\r\\n
    \\r\\n
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", ...}

(a client that cannot add a header writes the line `Phi-Lsp-Token: <token>\\r\\n` first, before
its first message: it then reads as that message's header). A connection whose first bytes look
like HTTP (`GET /`, `POST /`, ...) is answered 403 and closed; one without the right token within
AUTH_TIMEOUT_S is closed unanswered.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

TOKEN_HEADER = b"phi-lsp-token"
TOKEN_ENV = "PHI_LSP_TCP_TOKEN"
AUTH_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 8192
_HTTP_REQUEST = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/\d")
_HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")
HTTP_FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class TokenError(Exception):
    pass


def load_token(token_file: str | None) -> tuple[str, bool]:
    """(the token, whether it was generated here and must be shown to the user).

    From `token_file` (written by the editor integration, readable by the user only), else the
    environment variable PHI_LSP_TCP_TOKEN, else a new random one."""
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"cannot read the TCP token file {path}: {exc.strerror or exc}") from exc
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise TokenError(f"the TCP token file {path} is readable by other users (chmod 600 it)")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return secrets.token_urlsafe(32), True
    if len(token) < 16 or not token.isprintable() or any(c.isspace() for c in token):
        raise TokenError("the TCP token must be at least 16 printable characters without spaces")
    return token, False


@dataclass
class Verdict:
    accepted: bool
    reason: str = ""
    replay: list[bytes] | None = None  # header lines read, to hand on to the message reader
    reply: bytes = b""  # what to send before closing a refused connection


async def check_client(reader: asyncio.StreamReader, token: str, timeout_s: float = AUTH_TIMEOUT_S) -> Verdict:
    """Read the client's first header block (bounded in size and time) and judge it."""
    lines: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                line = await reader.readline()
                if not line:
                    return Verdict(False, "the connection closed before a token was sent")
                if not lines and (line.startswith(_HTTP_METHODS) or _HTTP_REQUEST.match(line)):
                    return Verdict(False, "an HTTP request (a web page?) was refused", reply=HTTP_FORBIDDEN)
                size += len(line)
                if size > MAX_HEADER_BYTES:
                    return Verdict(False, "the first header block is too large")
                lines.append(line)
                if line in (b"\r\n", b"\n"):
                    break
    except TimeoutError:
        return Verdict(False, f"no token within {timeout_s:g} s")
    except (ValueError, asyncio.LimitOverrunError):  # a line longer than the stream's limit
        return Verdict(False, "the first header block is too large")
    presented = _header(lines, TOKEN_HEADER)
    if presented is None:
        return Verdict(False, "no Phi-Lsp-Token header")
    if not hmac.compare_digest(presented.encode(), token.encode()):
        return Verdict(False, "a wrong token")
    return Verdict(True, replay=[line for line in lines if not line.lower().startswith(TOKEN_HEADER + b":")])


def _header(lines: list[bytes], name: bytes) -> str | None:
    for line in lines:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("utf-8", "replace")
    return None
