"""A small OpenAI-compatible worker for tests of a router in front of several replicas.

It answers what a router needs of a vLLM replica (`GET /health`, `GET /v1/models`,
`POST /v1/completions`, `POST /v1/chat/completions`) and appends one JSON line per model request
to `--log`: which worker answered it, the session header it carried, the prompts (their count
and texts; a chat request's message texts joined). Its /v1/models says `--max-model-len`. The
answers are canned (the text "pass"); what is tested is where requests go, not what they say.
It runs as its own process so that a test can SIGKILL it, as a replica dies.

    python tests/fake_worker.py --port 8001 --name a --model phi-code-tiny --log /tmp/a.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name: str, model: str, log_path: str, session_header: str, max_model_len: int = 2048):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the test reads the JSON log
            pass

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._answer(200, {})
            elif self.path == "/v1/models":
                self._answer(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "owned_by": "vllm", "max_model_len": max_model_len}
                ]})
            elif self.path == "/metrics":
                body = b"# fake worker: no metrics\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._answer(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._answer(400, {"error": {"message": "malformed JSON"}})
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._answer(404, {"error": {"message": f"no route {self.path}"}})
                return
            prompts = body.get("prompt", "")
            count = len(prompts) if isinstance(prompts, list) else 1
            if self.path == "/v1/chat/completions":
                texts = ["".join(str(m.get("content", "")) for m in body.get("messages", []))]
            else:
                texts = prompts if isinstance(prompts, list) else [prompts]
            n = int(body.get("n") or 1)
            record = {"worker": name, "path": self.path, "session": self.headers.get(session_header),
                      "prompts": count, "texts": texts, "at": time.time()}
            with lock, open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            usage = {"prompt_tokens": 10 * count, "completion_tokens": count * n, "total_tokens": 11 * count * n}
            if self.path == "/v1/completions":
                choices = [
                    {"index": i, "text": " pass", "finish_reason": "stop",
                     "logprobs": {"tokens": [" pass"], "token_logprobs": [-0.01]} if body.get("logprobs") else None}
                    for i in range(count * n)
                ]
                self._answer(200, {"id": f"cmpl-{name}", "object": "text_completion", "model": body.get("model"),
                                   "choices": choices, "usage": usage})
            else:
                choices = [{"index": i, "message": {"role": "assistant", "content": "pass"}, "finish_reason": "stop"}
                           for i in range(n)]
                self._answer(200, {"id": f"chat-{name}", "object": "chat.completion", "model": body.get("model"),
                                   "choices": choices, "usage": usage})

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model", default="phi-code-tiny")
    parser.add_argument("--log", required=True)
    parser.add_argument("--session-header", default="X-Session-ID")
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.name, args.model, args.log, args.session_header,
                                                                   args.max_model_len))
    server.daemon_threads = True
    print(f"fake worker {args.name} on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
