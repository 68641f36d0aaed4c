"""Record real answers of the test model for review units, as golden data.

    .venv/bin/python tests/golden/review/record.py --backend-url http://127.0.0.1:8765/v1

Writes recorded_phi_code_tiny.json next to this file: the reviewed files, and for every unit
the model's answer (regex-constrained as the server sends it, plus a few with a tiny token
budget, which come back truncated, and a few unconstrained ones, which are free text) with the
outcome the current validation gives. Review the diff before committing a new recording.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from phi_lsp.model.backend import Backend  # noqa: E402
from phi_lsp.core.settings import ReviewSettings  # noqa: E402
from phi_lsp.core.documents import Document  # noqa: E402
from phi_lsp.review.anchor import line_offsets  # noqa: E402
from phi_lsp.review.findings import review_answer  # noqa: E402
from phi_lsp.review.pipeline import ReviewOptions  # noqa: E402
from phi_lsp.review.prompts import PromptContext, file_imports, render  # noqa: E402
from phi_lsp.review.units import extract_units  # noqa: E402

HERE = Path(__file__).resolve().parent

BUGGY = '''import os
import subprocess


def average(values):
    total = sum(values)
    return total / len(values)


def run(cmd):
    return subprocess.call(cmd, shell=True)


def read_config(path):
    f = open(path)
    data = f.read()
    return data


class Cache:
    """A cache without bounds."""

    items = {}

    def get(self, key):
        if key in self.items:
            return self.items[key]
        return None

    def put(self, key, value):
        self.items[key] = value


def find_user(db, name):
    query = "SELECT * FROM users WHERE name = '%s'" % name
    return db.execute(query).fetchall()
'''

JS = '''import fs from "fs";

export function total(items) {
  let sum = 0;
  for (var i = 0; i <= items.length; i++) {
    sum += items[i].price;
  }
  return sum;
}

class Store {
  constructor() { this.items = []; }
  add(item) { this.items.push(item); return this.items.length; }
}
'''


def files() -> dict[str, tuple[str, str]]:
    return {
        "buggy.py": (BUGGY, "python"),
        "cart.js": (JS, "javascript"),
        "progress.py": ((ROOT / "phi_lsp" / "progress.py").read_text(encoding="utf-8"), "python"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend-url", required=True)
    parser.add_argument("--model", default="phi-code-tiny")
    args = parser.parse_args()
    backend = Backend(args.backend_url)
    options = ReviewOptions.from_settings(ReviewSettings(), args.model, backend)
    recorded = {"model": args.model, "files": {}, "answers": []}
    try:
        variants = [("constrained", options), ("max_tokens=24", replace(options, max_tokens=24)),
                    ("unconstrained", replace(options, constrained=False, max_tokens=64))]
        for name, (source, language) in files().items():
            recorded["files"][name] = source
            document = Document(f"file:///recorded/{name}", source, 1, language)
            snapshot = document.snapshot()
            units = extract_units(snapshot)
            ctx = PromptContext(name, language, file_imports(snapshot))
            for variant, opts in variants:
                chosen = units if variant == "constrained" else units[:3]
                prompts = [render(u, ctx, opts.mode, opts.max_tokens) for u in chosen]
                answers = await backend.complete(args.model, prompts, opts.sampling(logprobs=False))
                for unit, choices in zip(chosen, answers):
                    choice = choices[0]
                    result = review_answer(choice.text, choice.finish_reason, unit, language, snapshot.source,
                                           line_offsets(unit, snapshot.buffer))
                    recorded["answers"].append({
                        "file": name, "language": language, "unit": unit.name, "variant": variant,
                        "text": choice.text, "finish_reason": choice.finish_reason,
                        "expect": {"drops": dict(Counter(result.drops)), "findings": len(result.findings)},
                    })
    finally:
        await backend.aclose()
    out = HERE / "recorded_phi_code_tiny.json"
    out.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    outcomes = Counter()
    for entry in recorded["answers"]:
        outcomes.update(entry["expect"]["drops"])
        outcomes["findings"] += entry["expect"]["findings"]
    print(f"wrote {out}: {len(recorded['answers'])} answers; {dict(outcomes)}")


if __name__ == "__main__":
    asyncio.run(main())
