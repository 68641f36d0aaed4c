"""Protocol abuse over raw stdio (beyond test_lifecycle.py): what a confused or hostile client
may send. The server answers with the JSON-RPC/LSP error the spec names, ignores what the spec
says to ignore, and keeps serving afterwards.

Error codes: -32700 ParseError, -32600 InvalidRequest, -32601 MethodNotFound, -32602
InvalidParams, -32002 ServerNotInitialized, -32800 RequestCancelled.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import DEAD_BACKEND, settings
from tests.rawlsp import RawServer
from tests.text_model import lines_with_starts, offset_at, unit_width

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
NOT_INITIALIZED, REQUEST_CANCELLED = -32002, -32800
ENCODINGS = ["utf-8", "utf-16", "utf-32"]


@pytest.fixture
def raw():
    server = RawServer()
    yield server
    server.close()


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def position(line: int, character: int) -> dict:
    return {"line": line, "character": character}


def inline_params(uri: str, pos: dict, kind: int = 1) -> dict:
    return {"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": kind}}


def open_doc(raw: RawServer, uri: str, text: str, version: int = 1, language: str = "python") -> None:
    raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}})


def still_serving(raw: RawServer) -> dict:
    answer = raw.response(raw.request("workspace/executeCommand", {"command": "phi.stats"}), timeout=30)
    assert "result" in answer, answer
    return answer["result"]


def responses_until(raw: RawServer, msg_id, timeout: float = 15.0) -> list[dict]:
    """Every response (not notification) up to and including the one to `msg_id`."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        message = raw.messages.get(timeout=max(0.1, deadline - time.monotonic()))
        if "method" in message:
            continue
        seen.append(message)
        if message.get("id") == msg_id:
            return seen


def error_code(message: dict) -> int | None:
    return (message.get("error") or {}).get("code")


def shutdown_and_exit(raw: RawServer) -> None:
    assert raw.response(raw.request("shutdown"))["result"] is None
    raw.notify("exit")
    assert raw.wait() == 0


# -- lifecycle -------------------------------------------------------------------------------


def test_exit_before_initialize_is_one(raw):
    raw.notify("exit")
    assert raw.wait() == 1


def test_before_initialize_requests_error_and_notifications_are_dropped(raw, tmp_path):
    uri = (tmp_path / "early.py").as_uri()
    open_doc(raw, uri, "x = 1\n")  # dropped: not initialized
    for method, params in [
        ("textDocument/inlineCompletion", inline_params(uri, position(0, 0))),
        ("textDocument/inlineCompletion", {}),  # bad params too: the lifecycle answers first
        ("workspace/executeCommand", {"command": "phi.stats"}),
        ("shutdown", None),
        ("phi/noSuchThing", {}),
    ]:
        assert error_code(raw.response(raw.request(method, params))) == NOT_INITIALIZED, method
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    assert still_serving(raw)["documents"] == 0
    answer = raw.response(raw.request("textDocument/inlineCompletion", inline_params(uri, position(0, 0))))
    assert error_code(answer) == INVALID_PARAMS and "not open" in answer["error"]["message"]
    # After shutdown: InvalidRequest for everything, a second shutdown included.
    assert raw.response(raw.request("shutdown"))["result"] is None
    for method in ("shutdown", "textDocument/inlineCompletion", "workspace/executeCommand"):
        assert error_code(raw.response(raw.request(method, {}))) == INVALID_REQUEST, method
    raw.notify("exit")
    assert raw.wait() == 0


# -- framing and JSON ----------------------------------------------------------------------


def test_framing_and_json_abuse(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    # Body that is not UTF-8, truncated JSON, an empty object, a batch (LSP has none), a bare value.
    raw.send_bytes(frame(b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe"}'))
    assert error_code(raw.response(None)) == PARSE_ERROR
    raw.send_bytes(frame(b'{"jsonrpc": "2.0", "id": 2, "method": "shutdown"'))
    assert error_code(raw.response(None)) == PARSE_ERROR
    for body, msg_id in [(b"{}", None), (b'[{"jsonrpc": "2.0", "id": 3, "method": "shutdown"}]', None),
                         (b"42", None), (b'{"id": 4, "method": "shutdown"}', 4),
                         (b'{"jsonrpc": "1.0", "id": 5, "method": "shutdown"}', 5)]:
        raw.send_bytes(frame(body))
        assert error_code(raw.response(msg_id)) == INVALID_REQUEST, body
    # Headers in another case, an extra header, a header line that is not a header.
    body = json.dumps({"jsonrpc": "2.0", "id": 6, "method": "workspace/executeCommand", "params": {"command": "phi.status"}}).encode()
    raw.send_bytes(b"content-length: %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\nnonsense\r\n\r\n" % len(body) + body)
    assert "result" in raw.response(6)
    # Content-Length too long: the bad message and what it swallowed are lost, the reader
    # resynchronises on the next header.
    first = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "workspace/executeCommand", "params": {"command": "phi.status"}}).encode()
    second = frame(json.dumps({"jsonrpc": "2.0", "id": 8, "method": "workspace/executeCommand", "params": {"command": "phi.status"}}).encode())
    raw.send_bytes(b"Content-Length: %d\r\n\r\n" % (len(first) + 10) + first + second)
    raw.send(json.loads(second.split(b"\r\n\r\n", 1)[1].replace(b'"id": 8', b'"id": 9')))
    answers = responses_until(raw, 9)
    assert {error_code(a) for a in answers if a.get("id") is None} <= {PARSE_ERROR}
    assert "result" in answers[-1]
    # An absurd Content-Length is not read (nor allocated): the reader resynchronises.
    raw.send_bytes(b"Content-Length: 10000000000000\r\n\r\n")
    assert "result" in raw.response(raw.request("workspace/executeCommand", {"command": "phi.status"}))
    # A message without Content-Length is skipped; the next one is read.
    raw.send_bytes(b"X-Nothing: 1\r\n\r\n")
    assert "result" in raw.response(raw.request("workspace/executeCommand", {"command": "phi.status"}))
    # Unknown request: MethodNotFound; unknown notifications ($/ or not) are ignored.
    assert error_code(raw.response(raw.request("phi/noSuchThing", {}))) == METHOD_NOT_FOUND
    assert error_code(raw.response(raw.request("$/noSuchThing", {}))) == METHOD_NOT_FOUND
    raw.notify("$/noSuchThing", {"x": 1})
    raw.notify("phi/noSuchNotification", {"x": 1})
    marker = raw.request("workspace/executeCommand", {"command": "phi.status"})
    assert [m.get("id") for m in responses_until(raw, marker)] == [marker]
    shutdown_and_exit(raw)


def test_invalid_params_are_invalid_params(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    uri = (tmp_path / "p.py").as_uri()
    open_doc(raw, uri, "x = 1\n")
    bad = [
        ("textDocument/inlineCompletion", inline_params(uri, position(-1, 0))),
        ("textDocument/inlineCompletion", inline_params(uri, {"line": "zero", "character": 0})),
        ("textDocument/inlineCompletion", {"textDocument": {"uri": uri}}),
        ("textDocument/completion", {"textDocument": 7, "position": position(0, 0)}),
        ("textDocument/codeAction", {"textDocument": {"uri": uri}}),
        ("workspace/executeCommand", {"command": "phi.noSuchCommand"}),
        ("workspace/executeCommand", {"arguments": []}),
    ]
    for method, params in bad:
        assert error_code(raw.response(raw.request(method, params))) == INVALID_PARAMS, (method, params)
    # Notifications with bad params are dropped without an answer.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri}, "contentChanges": "nope"})
    raw.notify("textDocument/didOpen", {"textDocument": None})
    marker = raw.request("workspace/executeCommand", {"command": "phi.status"})
    assert [m.get("id") for m in responses_until(raw, marker)] == [marker]
    assert still_serving(raw)["documents"] == 1
    shutdown_and_exit(raw)


# -- documents -------------------------------------------------------------------------------


def test_unknown_documents_for_every_method(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND))
    unknown = (tmp_path / "never-opened.py").as_uri()
    for method, params in [
        ("textDocument/inlineCompletion", inline_params(unknown, position(0, 0))),
        ("textDocument/completion", {"textDocument": {"uri": unknown}, "position": position(0, 0)}),
    ]:
        answer = raw.response(raw.request(method, params))
        assert error_code(answer) == INVALID_PARAMS and "not open" in answer["error"]["message"], answer
    # codeAction: nothing to offer for a document the server does not have.
    actions = raw.response(raw.request("textDocument/codeAction", {
        "textDocument": {"uri": unknown}, "range": {"start": position(0, 0), "end": position(0, 0)},
        "context": {"diagnostics": []}}))
    assert actions["result"] in (None, [])
    for arguments in ([unknown], ["not a uri at all"], ["untitled:Untitled-1"], [{"uri": 3}], [None, 5], []):
        review = raw.response(raw.request("workspace/executeCommand", {"command": "phi.review", "arguments": arguments}))
        assert review["result"]["reviewed"] is False, (arguments, review)
    for command in ("phi.acceptCompletion", "phi.rejectCompletion"):
        for arguments in ([{"id": "no-such-suggestion"}], ["x", 3], None):
            answer = raw.response(raw.request("workspace/executeCommand", {"command": command, "arguments": arguments}))
            assert "result" in answer, answer
    # Sync notifications for documents the server does not have: ignored.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": unknown, "version": 2},
                                          "contentChanges": [{"range": {"start": position(0, 0), "end": position(0, 0)}, "text": "x"}]})
    raw.notify("textDocument/didSave", {"textDocument": {"uri": unknown}})
    raw.notify("textDocument/didClose", {"textDocument": {"uri": unknown}})
    assert still_serving(raw)["documents"] == 0
    # A duplicate didOpen replaces the document (version and text).
    uri = (tmp_path / "twice.py").as_uri()
    open_doc(raw, uri, "first = 1\n", 1)
    open_doc(raw, uri, "second = 2\nthird = 3\n", 7)
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 8},
                                          "contentChanges": [{"range": {"start": position(1, 0), "end": position(1, 5)}, "text": "fourth"}]})
    assert still_serving(raw)["documents"] == 1
    raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})  # twice
    assert still_serving(raw)["documents"] == 0
    shutdown_and_exit(raw)


def test_cancel_requests(raw, tmp_path):
    raw.initialize(tmp_path, settings(DEAD_BACKEND, **{"completion.debounceMs": 5000}))
    # Cancelling ids nobody asked for (or already answered) is ignored: no answer at all.
    done = raw.request("workspace/executeCommand", {"command": "phi.status"})
    raw.response(done)
    for msg_id in (done, 99_999, "no-such-id", None):
        raw.notify("$/cancelRequest", {"id": msg_id})
    marker = raw.request("workspace/executeCommand", {"command": "phi.status"})
    assert [m.get("id") for m in responses_until(raw, marker)] == [marker]
    # A request still waiting (here: the debounce of an automatic trigger) answers
    # RequestCancelled at once, exactly once.
    uri = (tmp_path / "c.py").as_uri()
    open_doc(raw, uri, "import numpy as")
    started = time.monotonic()
    waiting = raw.request("textDocument/inlineCompletion", inline_params(uri, position(0, 15), kind=2))
    raw.notify("$/cancelRequest", {"id": waiting})
    answer = raw.response(waiting)
    assert error_code(answer) == REQUEST_CANCELLED and time.monotonic() - started < 3.0
    marker = raw.request("workspace/executeCommand", {"command": "phi.status"})
    assert [m.get("id") for m in responses_until(raw, marker)] == [marker]  # no second answer
    raw.notify("$/cancelRequest", {"id": waiting})  # cancelling it again: nothing
    still_serving(raw)
    shutdown_and_exit(raw)


# -- contents and positions (real vLLM) ------------------------------------------------------


def test_binary_content(raw, tmp_path, vllm_url):
    raw.initialize(tmp_path, settings(vllm_url), {"general": {"positionEncodings": ["utf-16"]}})
    uri = (tmp_path / "binary.py").as_uri()
    # NULs, control characters, U+FFFD (what invalid UTF-8 becomes in an editor), lone
    # surrogates escaped in JSON (both halves, separately), a BOM, U+2028 and a form feed.
    text = 'blob = "\x00\x01\x7f\ufffd\ud800\udfff\ufeff\u2028\x0c"\n\x00\x00\ndef f(x):\n    return'
    body = json.dumps({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {
        "textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}}).encode()
    raw.send_bytes(frame(body))
    end = lines_with_starts(text)[-1]
    answer = raw.response(raw.request("textDocument/inlineCompletion", inline_params(uri, position(3, len(end[1])))), timeout=30)
    assert "result" in answer, answer  # not an internal error
    # Edits right next to and between the lone surrogates.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": position(0, 12), "end": position(0, 13)}, "text": "\x00"},
        {"range": {"start": position(1, 0), "end": position(2, 0)}, "text": ""}]})
    answer = raw.response(raw.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": position(2, 10)}), timeout=30)
    assert "result" in answer, answer
    review = raw.response(raw.request("workspace/executeCommand", {"command": "phi.review", "arguments": [uri]}), timeout=120)
    assert "result" in review and "error" not in review["result"], review
    assert still_serving(raw)["status"]["state"] in ("ready", "busy")  # no outage from the content
    shutdown_and_exit(raw)


def _normalized(text: str, line: int, character: int, encoding: str) -> tuple[int, int]:
    """What a position means: clamped to its line/the document, rounded down to a character."""
    lines = lines_with_starts(text)
    offset = offset_at(text, line, character, encoding)
    for number, (start, content) in enumerate(lines):
        if start <= offset <= start + len(content):
            return number, sum(unit_width(c, encoding) for c in content[: offset - start])
    raise AssertionError(offset)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_positions_past_the_end_and_inside_characters(tmp_path, vllm_url, encoding):
    raw = RawServer()
    try:
        result = raw.initialize(tmp_path, settings(vllm_url), {"general": {"positionEncodings": [encoding]}})
        assert result["result"]["capabilities"]["positionEncoding"] == encoding
        uri = (tmp_path / "pos.py").as_uri()
        text = 'face = "😀é中"\ndef f(x):\n    return'
        open_doc(raw, uri, text)
        inside_emoji = {"utf-8": 10, "utf-16": 9, "utf-32": 8}[encoding]  # utf-32 has no inside
        inside_e = {"utf-8": 13, "utf-16": 10, "utf-32": 9}[encoding]
        for line, character in [(0, inside_emoji), (0, inside_e), (2, 500), (40, 3), (0, 10_000_000)]:
            expected = _normalized(text, line, character, encoding)
            inline = raw.response(raw.request("textDocument/inlineCompletion", inline_params(uri, position(line, character))), timeout=30)
            assert "result" in inline, inline
            for item in inline["result"]["items"]:
                r = item["range"]
                assert (r["start"]["line"], r["start"]["character"]) == expected == (r["end"]["line"], r["end"]["character"])
            menu = raw.response(raw.request("textDocument/completion", {"textDocument": {"uri": uri}, "position": position(line, character)}), timeout=30)
            assert "result" in menu, menu
            for item in menu["result"]["items"]:
                r = item["textEdit"]["range"]
                assert (r["end"]["line"], r["end"]["character"]) == expected
                assert r["start"]["line"] == expected[0] and r["start"]["character"] <= expected[1]
        # An edit whose range starts inside a character and ends past the end of the document.
        raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": position(0, inside_emoji), "end": position(99, 0)}, "text": "X"}]})
        stats = still_serving(raw)
        assert stats["documents"] == 1
        shutdown_and_exit(raw)
    finally:
        raw.close()


def test_ten_megabyte_document(raw, tmp_path, vllm_url):
    raw.initialize(tmp_path, settings(vllm_url), {"general": {"positionEncodings": ["utf-16"]}})
    uri = (tmp_path / "huge.py").as_uri()
    unit = "def function_{0:06d}(alpha, beta):\n    return alpha * beta + {0}\n\n"
    parts, size, n = [], 0, 0
    while size < 10 * 1024 * 1024:
        parts.append(unit.format(n))
        size += len(parts[-1])
        n += 1
    text = "".join(parts) + "import numpy as"
    last = text.count("\n")
    started = time.monotonic()
    open_doc(raw, uri, text)
    still_serving(raw)
    opened = time.monotonic() - started
    # Type at the end, then ask: answered (with a suggestion at the right place) in bounded time.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
        {"range": {"start": position(last, 15), "end": position(last, 15)}, "text": " "}]})
    started = time.monotonic()
    answer = raw.response(raw.request("textDocument/inlineCompletion", inline_params(uri, position(last, 16))), timeout=60)
    first = time.monotonic() - started
    assert "result" in answer, answer
    for item in answer["result"]["items"]:
        assert item["range"]["start"] == position(last, 16)
    # An edit near the top (incremental reparse of the whole file), then ask again.
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3}, "contentChanges": [
        {"range": {"start": position(3, 0), "end": position(3, 0)}, "text": "# a comment\n"}]})
    started = time.monotonic()
    answer = raw.response(raw.request("textDocument/inlineCompletion", inline_params(uri, position(last + 1, 16))), timeout=60)
    second = time.monotonic() - started
    assert "result" in answer, answer
    print(f"10 MB document: open {opened:.2f} s, first completion {first:.2f} s, after an edit {second:.2f} s")
    assert opened < 10 and first < 20 and second < 20
    raw.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert still_serving(raw)["documents"] == 0
    shutdown_and_exit(raw)
