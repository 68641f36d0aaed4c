"""Core benchmarks (issue: the language server core). Prints figures; asserts nothing.

1. didChange handling on a 10,000-line Python file: a typing trace (new statements typed key by
   key in function bodies across the file); per keystroke: splice + Tree.edit + incremental
   reparse, against a full parse of the same text, measured side by side in one run.
2. Server start to `initialize` answered (a fresh process each time).
3. Resident memory of the server with 200 open 1,000-line documents.
4. Deep trees (issue 11): context building and post-processing of one completion in the middle
   of an 80,000- and a 200,000-character expression line and inside 5,000 and 20,000 nested
   parentheses, with ancestors collected walking down from the root (now) and by climbing
   `Node.parent` (before; skipped where it takes minutes unless --slow).
5. Size limits (issue 11): a 1.5 MB Python file (under the limits), a 20 MB Python file and a
   1 MB minified line (over them), each in a fresh
   process, with the default `limits.*` (no tree) and with limits raised above them (a tree, as
   before the limits): time to open and parse, time per completion request (context and
   post-processing), resident memory added.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--only typing,startup,memory,deep,limits] [--slow]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsprotocol import types  # noqa: E402

from phi_lsp.core import syntax  # noqa: E402
from phi_lsp.core.documents import Document  # noqa: E402


def stdlib_lines(count: int, skip: int = 0) -> list[str]:
    """`count` lines of real Python: the standard library's modules, concatenated."""
    lines: list[str] = []
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        lines += Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        if len(lines) >= count + skip:
            break
    return lines[skip : skip + count]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_did_change(statements: int) -> None:
    lines = stdlib_lines(10_000)
    doc = Document("file:///bench/big.py", "\n".join(lines), 1, "python", "utf-16")
    parser = syntax.parser_for("python")
    # Places to type: just after function headers, spread over the file.
    targets = [i for i, line in enumerate(lines) if line.strip().startswith("def ") and line.rstrip().endswith(":")]
    step = max(1, len(targets) // statements)
    targets = targets[::step][:statements]
    snippet = "total = compute(alpha, beta) + self.values[0]"
    incremental: list[float] = []
    full: list[float] = []
    version = 1
    for n, target in enumerate(reversed(targets)):  # bottom-up: earlier targets keep their line numbers
        header = lines[target]
        indent = " " * (len(header) - len(header.lstrip()) + 4)
        line, column = target, len(header)
        for char in "\n" + indent + snippet:
            version += 1
            change = types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(line, column), types.Position(line, column)), text=char
            )
            t0 = time.perf_counter()
            doc.apply_changes([change], version)
            incremental.append(time.perf_counter() - t0)
            if char == "\n":
                line, column = line + 1, 0
            else:
                column += 1
            if len(full) < len(incremental) // 4:  # a sample of full parses of the same text
                t0 = time.perf_counter()
                parser.parse(doc.source)
                full.append(time.perf_counter() - t0)
    assert doc.tree is not None
    fresh = parser.parse(doc.source)
    same = str(fresh.root_node) == str(doc.tree.root_node)
    inc_median, inc_p99 = statistics.median(incremental) * 1000, percentile(incremental, 0.99) * 1000
    full_median = statistics.median(full) * 1000
    print("didChange on a 10,000-line Python file (typing trace)")
    print(f"  keystrokes                : {len(incremental)} ({len(targets)} statements typed)")
    print(f"  incremental median / p99  : {inc_median:.3f} ms / {inc_p99:.3f} ms   (goal <= 1 ms / <= 5 ms)")
    print(f"  full reparse median       : {full_median:.3f} ms  ({len(full)} samples)")
    print(f"  speed-up (median)         : {full_median / inc_median:.1f}x   (goal >= 10x)")
    print(f"  tree equals a fresh parse : {same}")


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_message(stream) -> dict:
    length = None
    while True:
        line = stream.readline()
        if not line:
            raise EOFError("server closed its output")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        elif line in (b"\r\n", b"\n") and length is not None:
            return json.loads(stream.read(length))


def _start_server(root: str | None = None) -> subprocess.Popen:
    # As on a user's machine: bytecode is cached (a shell with PYTHONDONTWRITEBYTECODE=1 would
    # otherwise compile every module on every start).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.Popen(
        [sys.executable, "-m", "phi_lsp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=root,
        env=env,
    )


def _initialize(proc: subprocess.Popen, root: str | None) -> None:
    params = {
        "processId": os.getpid(),
        "rootUri": Path(root).as_uri() if root else None,
        "capabilities": {},
        "initializationOptions": {"backend": {"url": "http://127.0.0.1:9/v1"}},
    }
    proc.stdin.write(_frame({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}))
    proc.stdin.flush()
    while _read_message(proc.stdout).get("id") != 1:
        pass


def bench_startup(runs: int) -> None:
    times = []
    for run in range(runs + 1):  # the first run writes the bytecode cache and is not counted
        t0 = time.perf_counter()
        proc = _start_server()
        _initialize(proc, None)
        if run:
            times.append(time.perf_counter() - t0)
        proc.kill()
        proc.wait()
    print("Server start to `initialize` answered")
    print(f"  runs {runs}: median {statistics.median(times):.3f} s, best {min(times):.3f} s, worst {max(times):.3f} s   (goal <= 0.5 s)")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(documents: int, lines_each: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        texts = []
        for n in range(documents):
            text = "\n".join(stdlib_lines(lines_each, skip=(n * 397) % 40_000))
            path = Path(root) / f"module_{n}.py"
            path.write_text(text)
            texts.append((path.as_uri(), text))
        proc = _start_server(root)
        _initialize(proc, root)
        proc.stdin.write(_frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))
        baseline = _rss_mb(proc.pid)
        for version, (uri, text) in enumerate(texts, 1):
            item = {"uri": uri, "languageId": "python", "version": version, "text": text}
            proc.stdin.write(_frame({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": item}}))
        # A request after all the opens: answered once they have all been handled.
        proc.stdin.write(_frame({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand", "params": {"command": "phi.stats"}}))
        proc.stdin.flush()
        while (message := _read_message(proc.stdout)).get("id") != 2:
            pass
        time.sleep(1.0)  # let the workspace symbol index finish its slices
        proc.stdin.write(_frame({"jsonrpc": "2.0", "id": 3, "method": "workspace/executeCommand", "params": {"command": "phi.stats"}}))
        proc.stdin.flush()
        while (message := _read_message(proc.stdout)).get("id") != 3:
            pass
        rss = _rss_mb(proc.pid)
        stats = message["result"]
        proc.kill()
        proc.wait()
    print(f"Memory with {documents} open {lines_each}-line documents")
    print(f"  open documents            : {stats['documents']}; symbol index {stats.get('symbolIndex')}")
    print(f"  RSS after initialize      : {baseline:.1f} MB")
    print(f"  RSS with the documents    : {rss:.1f} MB   (goal <= 150 MB)")


def _deep_inputs() -> dict[str, tuple[str, int]]:
    """name -> (text, cursor byte offset)."""
    inputs = {}
    for chars in (80_000, 200_000):
        body = "x = " + " + ".join(["a"] * (chars // 4))
        text = "def f():\n    " + body + "\n"
        inputs[f"{chars:,}-character line"] = (text, text.index(" + ", len(text) // 2) + 3)
    for depth in (5_000, 20_000):
        text = "def f():\n    x = " + "(" * depth + "a" + ")" * depth + "\n"
        inputs[f"{depth:,} nested parentheses"] = (text, text.index("a"))
    return inputs


def _climbing_ancestors(root, node, max_depth=None):
    """The walk before issue 11: Node.parent, which tree-sitter finds from the root each time."""
    chain = []
    while node is not None:
        chain.append(node)
        node = node.parent
    return chain


def _one_completion(text: str, cursor: int) -> float:
    """Seconds for what one completion request does on the event loop besides the model call."""
    from phi_lsp.completion import postprocess
    from phi_lsp.completion.context import build_context
    from phi_lsp.completion.service import _cursor_info
    from phi_lsp.core.documents import Limits
    from phi_lsp.core.tokens import TokenCounter
    from phi_lsp.model.backend import Choice

    document = Document("file:///bench/deep.py", text, 1, "python", "utf-16", limits=Limits(10**9, 10**9))
    snapshot = document.snapshot()
    t0 = time.perf_counter()
    context = build_context(snapshot, cursor, 1536, TokenCounter(), "deep.py")
    info = _cursor_info(snapshot, cursor, context)
    multiline = postprocess.is_multiline_position(info)
    postprocess.postprocess(Choice(text="b + c", tokens=["b", " +", " c"], token_logprobs=[-0.1] * 3), info, multiline)
    return time.perf_counter() - t0


def bench_deep(slow: bool) -> None:
    print("One completion deep in the tree (context + post-processing, no model call)")
    print(f"  {'input':<28} {'before (Node.parent)':>22} {'now (walk down)':>16}")
    for name, (text, cursor) in _deep_inputs().items():
        now = min(_one_completion(text, cursor) for _ in range(3))
        before = "skipped (--slow)"
        if slow or name.startswith(("80,000-", "5,000 ")):
            original = syntax.ancestors
            syntax.ancestors = _climbing_ancestors
            try:
                before = f"{_one_completion(text, cursor):.3f} s"
            finally:
                syntax.ancestors = original
        print(f"  {name:<28} {before:>22} {now:>14.3f} s")


def _limits_inputs() -> dict[str, tuple[str, str, str]]:
    """name -> (file name, languageId, text)."""
    python = "\n".join(stdlib_lines(10**7))
    while len(python) < 20_000_000:
        python += "\n" + python
    minified = "var a=" + "f(1,2)+" * (1_000_000 // 7) + "0;\n"
    return {"1.5 MB Python file": ("mid.py", "python", python[:1_500_000]),
            "20 MB Python file": ("big.py", "python", python[:20_000_000]),
            "1 MB minified line": ("min.js", "javascript", minified)}


def _limits_case(name: str, raised: bool) -> dict:
    """Run in a fresh process: open, parse (if allowed), three completion requests."""
    from phi_lsp.completion import postprocess
    from phi_lsp.completion.context import build_context
    from phi_lsp.completion.service import _cursor_info
    from phi_lsp.core.documents import Limits
    from phi_lsp.core.tokens import TokenCounter
    from phi_lsp.model.backend import Choice

    file_name, language, text = _limits_inputs()[name]
    rss0 = _rss_mb(os.getpid())
    t0 = time.perf_counter()
    limits = Limits(10**9, 10**9) if raised else Limits()
    document = Document(f"file:///bench/{file_name}", text, 1, language, "utf-16", limits=limits)
    del text
    document.tree  # noqa: B018 - the parse an editor's first request causes
    opened = time.perf_counter() - t0
    requests = []
    for n in range(3):
        cursor = len(document.source) * (n + 1) // 4
        t0 = time.perf_counter()
        snapshot = document.snapshot()
        context = build_context(snapshot, cursor, 1536, TokenCounter(), file_name)
        info = _cursor_info(snapshot, cursor, context)
        postprocess.postprocess(Choice(text="x", tokens=["x"], token_logprobs=[-0.1]), info, postprocess.is_multiline_position(info))
        requests.append(time.perf_counter() - t0)
    return {"tree": document.tree is not None, "open_s": opened, "request_s": statistics.median(requests),
            "rss_mb": _rss_mb(os.getpid()) - rss0}


def bench_limits() -> None:
    print("Documents over the size limits, each in a fresh process (context + post-processing per request)")
    print(f"  {'document':<20} {'limits':<28} {'tree':<5} {'open+parse':>10} {'per request':>12} {'RSS added':>10}")
    for name in _limits_inputs():
        for raised in (True, False) if name != "1.5 MB Python file" else (False,):  # under the limits
            out = subprocess.run([sys.executable, __file__, "--limits-case", name, "raised" if raised else "default"],
                                 capture_output=True, text=True, timeout=900)
            if out.returncode != 0:
                print(f"  {name}: failed: {out.stderr[-500:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            label = "raised above it (before)" if raised else "default (2 MB, 20,000 B)"
            print(f"  {name:<20} {label:<28} {str(r['tree']):<5} {r['open_s']:>8.2f} s {r['request_s'] * 1000:>9.1f} ms {r['rss_mb']:>7.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples (for a smoke run)")
    parser.add_argument("--only", default="typing,startup,memory,deep,limits", help="comma-separated sections")
    parser.add_argument("--slow", action="store_true", help="also time the old walk where it takes minutes")
    parser.add_argument("--limits-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limits_case:
        print(json.dumps(_limits_case(args.limits_case[0], args.limits_case[1] == "raised")))
        return
    sections = {
        "typing": lambda: bench_did_change(statements=8 if args.quick else 30),
        "startup": lambda: bench_startup(runs=3 if args.quick else 10),
        "memory": lambda: bench_memory(documents=200, lines_each=1000),
        "deep": lambda: bench_deep(args.slow),
        "limits": bench_limits,
    }
    for n, name in enumerate(args.only.split(",")):
        if n:
            print()
        sections[name.strip()]()


if __name__ == "__main__":
    main()
