"""How well a served model predicts code at each position of its context: the mean loss (negative
log-probability) of the actual next token, per bucket of positions, over long Python files from
this environment (the installed httpx and pygls sources), asked of vLLM with `prompt_logprobs`.

A model's configured context (phi-code-tiny's config says 2,048) is not always what it was trained
on. Where the loss jumps, text further back stops helping and starts hurting: a completion prompt
(completion.contextTokens plus the answer) should end before it. bench_quality.py's budget for the
test model comes from this figure.

    .venv/bin/python benchmarks/bench_positions.py [--backend-url URL] [--files 8] [--bucket 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL, add_backend_flag, vllm  # noqa: E402

CHARS = 6800  # about 1,800 tokens of Python: inside a 2,048-token server limit


def long_sources(count: int) -> list[Path]:
    import httpx
    import pygls

    found = []
    for package in (httpx, pygls):
        for path in sorted(Path(package.__file__).parent.rglob("*.py")):
            if path.stat().st_size >= CHARS:
                found.append(path)
    return found[:count]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flag(parser)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--bucket", type=int, default=128, help="positions per printed row")
    args = parser.parse_args()
    import httpx

    losses: dict[int, list[float]] = {}
    files = long_sources(args.files)
    async with vllm(args.backend_url) as url, httpx.AsyncClient(timeout=600) as client:
        for path in files:
            text = path.read_text(encoding="utf-8")[:CHARS]
            prompt = f"# file: {path.parent.name}/{path.name}\n{text}"
            answer = (await client.post(f"{url}/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0})).json()
            entries = answer["choices"][0]["prompt_logprobs"] or []
            for position, entry in enumerate(entries):
                if entry:  # the first position has no prediction
                    # With prompt_logprobs 0, the entry holds the actual token only.
                    losses.setdefault(position // args.bucket, []).append(-next(iter(entry.values()))["logprob"])
    print(f"Mean next-token loss per position, {MODEL}, {len(files)} files of Python:")
    for bucket in sorted(losses):
        values = losses[bucket]
        start = bucket * args.bucket
        print(f"  positions {start:>5}-{start + args.bucket - 1:<5} {statistics.mean(values):5.2f}  ({len(values)} tokens)")


if __name__ == "__main__":
    asyncio.run(main())
