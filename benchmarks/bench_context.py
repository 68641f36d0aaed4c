"""What retrieval puts in the prompt, measured without a model, on Python packages the test model
never saw (boltons, marshmallow, tomlkit, humanize: downloaded from the registry at run time).

Definition recall: a *hole* is a function-body line that uses a name the file imports from
another module of the same workspace (resolved to its def/class) and that the code before the
line does not use yet: the name the user is about to type. The line is removed (cursor after its
indentation, as when starting a new line) and the completion prompt is built the way the server
builds it (raw prompt, the file's path shown, the workspace index built from the packages); a
hole counts when the prompt holds `def <name>` or `class <name>` of one of its names. Printed for
this checkout and, with --old PATH (a checkout of the code before, e.g. `git worktree add
--detach /tmp/old main`), for that code in a subprocess.

Also: prompt building time per request (median, p99), and for a 5,000-file workspace (the
packages copied until there are 5,000 files) the index build time and memory, and the time to
update the index after saving one file.

    .venv/bin/python benchmarks/bench_context.py [--old /tmp/old] [--holes 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGES = ["boltons", "marshmallow", "tomlkit", "humanize", "glom", "pypika", "parsimonious"]
BUDGETS = [512, 1536]
CACHE = Path(tempfile.gettempdir()) / "phi-lsp-bench-packages"


def packages() -> list[Path]:
    """The packages, unpacked (downloaded once per machine into the temp folder)."""
    wheels = CACHE / "wheels"
    if not wheels.is_dir() or len(list(wheels.glob("*.whl"))) < len(PACKAGES):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
                        "-d", str(wheels), *PACKAGES], check=True)
    roots = []
    for wheel in sorted(wheels.glob("*.whl")):
        target = CACHE / "src" / wheel.name.split("-")[0]
        if not target.is_dir():
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
        for info in target.glob("*.dist-info"):
            shutil.rmtree(info, ignore_errors=True)
        roots.append(target)
    return roots


# -- holes (computed with this checkout's import resolution; the old code gets the same list) --

def find_holes(roots: list[Path], limit: int, seed: int = 11) -> list[dict]:
    from common import function_body_lines
    from phi_lsp.core import syntax
    from phi_lsp.core.imports import imports_of
    from phi_lsp.core.symbols import SymbolIndex

    index = SymbolIndex()
    asyncio.run(index.build(roots))
    holes = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            source = path.read_bytes()
            tree = syntax.parse("python", source)
            module, is_package = index.module_of(str(path))
            targets: dict[str, str] = {}  # how the code writes it -> the definition's name
            for imported in imports_of(tree, source, module, is_package):
                defs, module_path = index.resolve(imported.module, imported.name)
                if any(d.path != str(path) for d in defs):
                    targets[imported.local] = defs[0].name
                if module_path is not None and module_path != str(path):
                    for d in index.in_file(module_path):
                        if d.container is None:
                            targets[f"{imported.local}.{d.name}"] = d.name
            if not targets:
                continue
            text = source.decode("utf-8", "replace")
            lines = text.split("\n")
            body_lines = function_body_lines(tree)
            offset = [0]
            for line in lines:
                offset.append(offset[-1] + len(line) + 1)
            code_only = _without_imports(tree, text)
            for number in sorted(body_lines):
                line = lines[number]
                stripped = line.strip()
                if not stripped or stripped.startswith(("#", '"', "'")):
                    continue
                before = code_only[: offset[number]]
                names = []
                for written, name in targets.items():
                    pattern = rf"(?<![\w.]){re.escape(written)}(?!\w)"
                    if re.search(pattern, line) and not re.search(pattern, before):
                        names.append(name)
                if names:
                    holes.append({"path": str(path), "line": number, "names": sorted(set(names))})
    random.Random(seed).shuffle(holes)
    return holes[:limit]


def _without_imports(tree, text: str) -> str:
    """The text with import statements blanked (an import is not a use)."""
    chars = list(text)
    data = text.encode()
    if len(data) != len(text):
        return text  # non-ASCII: byte and character offsets differ; keep it simple
    for child in tree.root_node.named_children:
        if child.type in ("import_statement", "import_from_statement"):
            for i in range(child.start_byte, child.end_byte):
                if chars[i] != "\n":
                    chars[i] = " "
    return "".join(chars)


# -- the worker: builds prompts with whatever phi_lsp is importable ----------------------------

def worker(job: dict) -> dict:
    if job.get("old"):
        import phi_lsp

        phi_lsp.__path__.append(job["old"])  # phi_lsp.completion from the old checkout's completion/
    from phi_lsp.completion import context as ctx_module, prompts
    from phi_lsp.core import syntax
    from phi_lsp.core.documents import Snapshot
    from phi_lsp.core.symbols import SymbolIndex
    from phi_lsp.core.tokens import TokenCounter

    counter = TokenCounter.for_model(job["model"])
    index = SymbolIndex()
    if not job.get("old"):
        from phi_lsp.core.chunks import ChunkIndex

        index.chunks = ChunkIndex()
    asyncio.run(index.build([Path(r) for r in job["roots"]]))
    root_of = lambda p: next(r for r in job["roots"] if p.startswith(r))  # noqa: E731
    out: dict = {"recall": {}, "build_ms": [], "sweep": {}}
    runs = [(b, None) for b in job["budgets"]] + [(b, share) for b in job["budgets"] for share in job.get("shares", [])]
    for budget, share in runs:
        hits = 0
        for hole in job["holes"]:
            path = hole["path"]
            lines = Path(path).read_text(encoding="utf-8").split("\n")
            indent = lines[hole["line"]][: len(lines[hole["line"]]) - len(lines[hole["line"]].lstrip())]
            lines[hole["line"]] = indent
            text = "\n".join(lines)
            source = text.encode()
            cursor = len("\n".join(lines[: hole["line"]]).encode()) + (1 if hole["line"] else 0) + len(indent.encode())
            snapshot = Snapshot(Path(path).as_uri(), 1, "python", source, syntax.parse("python", source))
            display = os.path.relpath(path, root_of(path))
            started = time.perf_counter()
            kwargs = dict(index=index, file_path=path, suffix_in_prompt=False,
                          display=lambda p: os.path.relpath(p, root_of(p)))
            if share is not None:
                kwargs["shares"] = {**ctx_module.shares_for(prompts.RAW), "symbols": share}
            context = ctx_module.build_context(snapshot, cursor, budget, counter, display, **kwargs)
            prompt = prompts.render(context, prompts.RAW, single_line=False)
            if budget == job["budgets"][-1] and share is None:
                out["build_ms"].append((time.perf_counter() - started) * 1000)
            other_files = prompt.text.rsplit(f"# file: {display}\n", 1)[0]
            if any(re.search(rf"\b(def|class) {re.escape(n)}\b", other_files) for n in hole["names"]):
                hits += 1
        if share is None:
            out["recall"][str(budget)] = hits / max(1, len(job["holes"]))
        else:
            out["sweep"][f"{budget}@{share}"] = hits / max(1, len(job["holes"]))
    if not job.get("old"):
        out["line_in_prompt"] = line_in_prompt(job, index, counter, ctx_module, prompts, syntax, Snapshot, root_of)
    return out


def line_in_prompt(job, index, counter, ctx_module, prompts, syntax, Snapshot, root_of) -> dict:
    """For random function-body lines (whole line removed): how often the removed line appears
    word for word in the other files' part of the prompt, without and with similar chunks."""
    found = {"default": 0, "with chunks": 0}
    for hole in job["lines"]:
        path = hole["path"]
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        truth = lines[hole["line"]].strip()
        indent = lines[hole["line"]][: len(lines[hole["line"]]) - len(lines[hole["line"]].lstrip())]
        lines[hole["line"]] = indent
        source = "\n".join(lines).encode()
        cursor = len("\n".join(lines[: hole["line"]]).encode()) + (1 if hole["line"] else 0) + len(indent.encode())
        snapshot = Snapshot(Path(path).as_uri(), 1, "python", source, syntax.parse("python", source))
        display = os.path.relpath(path, root_of(path))
        for name, sources in (("default", ctx_module.Sources()), ("with chunks", ctx_module.Sources(chunks=True))):
            context = ctx_module.build_context(snapshot, cursor, job["budgets"][-1], counter, display, index=index,
                                               file_path=path, suffix_in_prompt=False, sources=sources,
                                               display=lambda p: os.path.relpath(p, root_of(p)))
            prompt = prompts.render(context, prompts.RAW, single_line=False).text
            other_files = prompt.rsplit(f"# file: {display}\n", 1)[0]
            found[name] += any(line.strip() == truth for line in other_files.split("\n"))
    return {name: count / max(1, len(job["lines"])) for name, count in found.items()}


def random_body_lines(roots: list[Path], count: int, seed: int = 5) -> list[dict]:
    from common import function_body_lines
    from phi_lsp.core import syntax

    candidates = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            source = path.read_bytes()
            lines = source.decode("utf-8", "replace").split("\n")
            for number in sorted(function_body_lines(syntax.parse("python", source))):
                stripped = lines[number].strip() if number < len(lines) else ""
                if len(stripped) >= 12 and not stripped.startswith(("#", '"', "'")):
                    candidates.append({"path": str(path), "line": number})
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


def run_worker(job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(job, handle)
    env = dict(os.environ)
    if job.get("old"):  # its phi_lsp first on the path, ahead of the editable install
        env["PYTHONPATH"] = job["old"] + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", handle.name], capture_output=True, text=True,
                              check=True, env=env)
    except subprocess.CalledProcessError as exc:
        sys.stderr.write(exc.stderr)
        raise
    finally:
        os.unlink(handle.name)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- a 5,000-file workspace -------------------------------------------------------------------

def big_workspace(roots: list[Path], folder: Path, files: int = 5000) -> Path:
    sources = [p for r in roots for p in sorted(r.rglob("*.py"))]
    count = 0
    copy = 0
    while count < files:
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                target = folder / f"copy{copy}" / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                count += 1
                if count >= files:
                    break
            if count >= files:
                break
        copy += 1
    (folder / ".gitignore").write_text("build/\n")
    del sources
    return folder


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def index_figures(roots: list[Path]) -> dict:
    import gc

    from phi_lsp.core.symbols import SymbolIndex

    with tempfile.TemporaryDirectory() as tmp:
        workspace = big_workspace(roots, Path(tmp))
        gc.collect()
        before = rss_bytes()
        index = SymbolIndex()
        started = time.perf_counter()
        asyncio.run(index.build([workspace]))
        build_s = time.perf_counter() - started
        gc.collect()
        memory = rss_bytes() - before
        one = sorted(workspace.rglob("*.py"))[len(index._by_file) // 2]
        one.write_text(one.read_text() + "\n\ndef added_on_save(x: int) -> int:\n    return x\n")
        times = []
        for _ in range(20):
            started = time.perf_counter()
            index.index_file(one)
            times.append((time.perf_counter() - started) * 1000)
        assert index.lookup("added_on_save")
        return {"files": index.files_indexed, "definitions": len(index), "build_s": build_s,
                "memory_mb": memory / 2**20, "update_ms": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", help="a checkout of the code before (git worktree), measured the same way")
    parser.add_argument("--holes", type=int, default=400)
    parser.add_argument("--lines", type=int, default=200, help="random body lines for the similar-chunks figure")
    parser.add_argument("--no-index", action="store_true", help="skip the 5,000-file index figures")
    parser.add_argument("--shares", default="", help="also the recall with these symbols shares, e.g. 0.06,0.12,0.2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text()))))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import model_dir

    roots = packages()
    holes = find_holes(roots, args.holes)
    job = {"roots": [str(r) for r in roots], "holes": holes, "budgets": BUDGETS,
           "lines": random_body_lines(roots, args.lines),
           "model": str(model_dir())}
    shares = [float(x) for x in args.shares.split(",") if x]
    new = run_worker({**job, "shares": shares})
    print(f"Definition recall on {', '.join(PACKAGES)}: {len(holes)} holes (whole line removed, raw prompt)")
    print(f"  {'code':<22}" + "".join(f"{f'budget {b}':>13}" for b in BUDGETS))
    print(f"  {'this checkout':<22}" + "".join(f"{new['recall'][str(b)]:>13.2f}" for b in BUDGETS))
    if args.old:
        old = run_worker({**job, "old": str(Path(args.old).resolve())})
        print(f"  {'before (' + Path(args.old).name + ')':<22}" + "".join(f"{old['recall'][str(b)]:>13.2f}" for b in BUDGETS))
    for share in shares:
        print(f"  {f'symbols share {share:.2f}':<22}" + "".join(f"{new['sweep'][f'{b}@{share}']:>13.2f}" for b in BUDGETS))
    lip = new["line_in_prompt"]
    print(f"Removed line found word for word in other files' part of the prompt ({len(job['lines'])} random "
          f"function-body lines, budget {BUDGETS[-1]}): default sources {lip['default']:.1%}, "
          f"with similar chunks {lip['with chunks']:.1%}")
    times = sorted(new["build_ms"])
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"Prompt building (context + render, budget {BUDGETS[-1]}): median {statistics.median(times):.2f} ms, "
          f"p99 {p99:.2f} ms over {len(times)} requests")
    if not args.no_index:
        figures = index_figures(roots)
        print(f"Index of a {figures['files']:,}-file workspace: built in {figures['build_s']:.1f} s, "
              f"{figures['definitions']:,} definitions, +{figures['memory_mb']:.0f} MB RSS; "
              f"update after saving one file: {figures['update_ms']:.1f} ms (median)")


if __name__ == "__main__":
    main()
