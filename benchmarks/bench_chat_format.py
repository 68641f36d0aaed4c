"""Chat-format benchmarks (issue 15). Prints figures; asserts nothing.

1. Rendering one chat prompt (a ~6 KB user turn) with the model's jinja template (as read from
   its files) and with a learned shape (string concatenation): per-prompt cost, per keystroke.
2. Reading a model's template from disk (first time, uncached compile).
3. Learning a template from a vLLM server (/tokenize + /detokenize probes): the one-time cost
   per (server, model), and how many HTTP requests it takes.

    .venv/bin/python benchmarks/bench_chat_format.py --backend-url http://127.0.0.1:8765/v1 [--model phi-code-tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phi_lsp.completion.prompts import SYSTEM  # noqa: E402
from phi_lsp.core import chat_template  # noqa: E402
from phi_lsp.model.backend import Backend  # noqa: E402
from phi_lsp.model.chat_format_discovery import learn  # noqa: E402


def _median_us(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--model", default="phi-code-tiny")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()

    chat_template.compile_template.cache_clear()
    start = time.perf_counter()
    template = chat_template.find_chat_template(args.model)
    load_ms = (time.perf_counter() - start) * 1000
    if template is None:
        sys.exit(f"no chat template on disk for {args.model}")
    user = ("def handler(request):\n    return respond(request, status=200)\n" * 100)[:6000]
    template.render(SYSTEM, user)  # compile and probe the system turn once

    async def learned_shape():
        backend = Backend(args.backend_url)
        try:
            start = time.perf_counter()
            shape = await learn(backend, args.model)
            return shape, (time.perf_counter() - start) * 1000, backend.stats.http_requests
        finally:
            await backend.aclose()

    shape, learn_ms, requests = asyncio.run(learned_shape())
    same = shape.render(SYSTEM, user) == template.render(SYSTEM, user)
    print(f"Chat format of {args.model}")
    print(f"  template from disk (first read + compile): {load_ms:.1f} ms  ({template.origin})")
    print(f"  render, jinja template  : {_median_us(lambda: template.render(SYSTEM, user), args.runs):.1f} us per prompt (median of {args.runs})")
    print(f"  render, learned shape   : {_median_us(lambda: shape.render(SYSTEM, user), args.runs):.1f} us per prompt")
    print(f"  learning from {args.backend_url}: {learn_ms:.0f} ms, {requests} HTTP requests (once per server and model)")
    print(f"  learned shape renders exactly as the template: {same}; stops {shape.stops} ids {shape.stop_token_ids}")


if __name__ == "__main__":
    main()
