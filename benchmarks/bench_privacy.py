"""Privacy benchmarks (issue 11). Prints figures; asserts nothing. No model needed.

1. Whole-document masking of a 5,000-line Python file (with a 300-line private key and a few
   tokens in it): the first time (every chunk scanned), then per keystroke (one character typed
   in the middle of the file: one chunk rescanned, the rest from the chunk cache), against a
   full scan without the cache.
2. `clean` of a typical completion prompt (the last ~150 lines of the file): what every prompt
   pays on top.
3. `privacy.exclude`: matching a path against `**/**/.../x` (30 repeats, which never returned
   with the old hand-written matcher), and against a set of ordinary patterns.

    .venv/bin/python benchmarks/bench_privacy.py [--keystrokes 200]
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from phi_lsp.core import privacy, secrets  # noqa: E402
from phi_lsp.core.settings import PrivacySettings  # noqa: E402


def five_thousand_lines() -> str:
    """Real code from this repository, repeated to 5,000 lines, with secrets in it."""
    lines: list[str] = []
    files = sorted((ROOT / "phi_lsp").rglob("*.py")) + sorted((ROOT / "completion").glob("*.py"))
    while len(lines) < 4_600:
        for path in files:
            lines += path.read_text().splitlines()
    lines = lines[:4_600]
    rng = random.Random(3)
    key = [base64.b64encode(bytes(rng.getrandbits(8) for _ in range(48))).decode() for _ in range(300)]
    block = ['KEY = """-----BEGIN RSA PRIVATE KEY-----', *key, '-----END RSA PRIVATE KEY-----"""']
    tokens = ['HF = "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH"', 'password = "hunter2-secret"',
              "GITLAB = 'glpat-x8Yz3AbCdEfGhIjKlMnO'", "AWS = 'AKIAIOSFODNN7EXAMPLE'"]
    lines[1_000:1_000] = block
    for i, token in enumerate(tokens):
        lines.insert(2_000 + 600 * i, token)
    return "\n".join(lines[:5_000]) + "\n"


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(values) * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keystrokes", type=int, default=200)
    args = parser.parse_args()

    started = time.perf_counter()
    rules = secrets.gitleaks_rules()
    print(f"rules: {len(rules)} gitleaks + {len(secrets.OWN_RULES)} own, loaded and compiled in "
          f"{(time.perf_counter() - started) * 1000:.0f} ms (once per process)")

    text = five_thousand_lines()
    source = text.encode()
    print(f"document: {text.count(chr(10))} lines, {len(source) / 1024:.0f} KiB")

    privacy._chunk_cache.clear()
    started = time.perf_counter()
    masked = privacy.mask_source(source)
    print(f"1. mask the whole document, first time: {(time.perf_counter() - started) * 1000:.1f} ms "
          f"({len(privacy.document_secrets(source))} secrets)")
    assert masked != source

    middle = len(source) // 2
    per_keystroke = []
    current = source
    for n in range(args.keystrokes):
        position = middle + n
        current = current[:position] + b"x" + current[position:]
        started = time.perf_counter()
        privacy.mask_source(current)
        per_keystroke.append(time.perf_counter() - started)
    print(f"   per keystroke (one character typed mid-file, {args.keystrokes} keystrokes): {ms(per_keystroke)}")

    full = []
    for _ in range(5):
        started = time.perf_counter()
        secrets.find_secrets(current)
        full.append(time.perf_counter() - started)
    print(f"   full scan without the chunk cache (what every keystroke would pay): {ms(full)}")

    window = "\n".join(text.split("\n")[-150:])
    filter_ = privacy.PrivacyFilter()
    cleans = []
    for _ in range(50):
        started = time.perf_counter()
        filter_.clean(window)
        cleans.append(time.perf_counter() - started)
    print(f"2. clean a prompt of 150 lines ({len(window) / 1024:.1f} KiB): {ms(cleans)}")

    pathological = "/".join(["**"] * 30) + "/x"
    deep = "/ws/" + "a/" * 40 + "y.py"
    for label, patterns in (("**/**/.../x (30 repeats)", (pathological,)),
                            ("10 ordinary patterns", ("build/", "*.sql", "!public.sql", "/dist", "docs/**/*.md",
                                                      "**/generated/*", "[Tt]emp*.py", "data[!0-9].csv", "*.min.js", "vendor/"))):
        f = privacy.PrivacyFilter(PrivacySettings(exclude=patterns), [Path("/ws")])
        times = []
        for _ in range(200):
            started = time.perf_counter()
            f.is_excluded(deep)
            times.append(time.perf_counter() - started)
        print(f"3. privacy.exclude {label}, a path 40 folders deep: {ms(times)} per file")


if __name__ == "__main__":
    main()
