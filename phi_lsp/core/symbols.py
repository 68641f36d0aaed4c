"""The workspace symbol index: definitions (functions, classes, methods) of every source file,
found with tree-sitter, so prompts can show the model the signatures of what the code near the
cursor (or a reviewed function) uses from other files.

Only signatures are kept, never bodies, and the index is bounded (files, entries, signature
length). It is built cooperatively on the event loop (a slice of files, then a yield) and kept
up to date from open documents' trees and saved files. Secret and excluded files are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tree_sitter import Node, Tree

from phi_lsp.core import syntax

log = logging.getLogger(__name__)

SKIP_DIRS = {
    ".git", ".hg", ".svn", ".venv", "venv", "env", ".env", "node_modules", "__pycache__",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".nox", "build", "dist", "target",
    ".idea", ".vscode", "site-packages", ".hypothesis", "out",
}
MAX_FILE_BYTES = 512 * 1024
MAX_FILES = 5_000
MAX_DEFINITIONS = 100_000
MAX_SIGNATURE_CHARS = 300
SLICE_SECONDS = 0.01  # work per event-loop turn while indexing


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # "function" | "class" | "method"
    signature: str  # the header, e.g. "def load(path: str) -> Config:"
    path: str
    line: int  # 0-based
    container: str | None = None  # the enclosing class for methods
    doc: str | None = None  # the first line of a docstring, where the language has them


def definitions_in(tree: Tree, source: bytes, language: str | None, path: str) -> list[Definition]:
    """Top-level functions and classes, and the methods of those classes."""
    spec = syntax.spec_for(language)
    if not spec.functions and not spec.classes:
        return []
    found: list[Definition] = []

    def visit(node: Node, container: str | None, depth: int) -> None:
        for child in node.named_children:
            target = child
            if child.type in ("decorated_definition", "export_statement"):
                inner = child.child_by_field_name("definition") or child.child_by_field_name("declaration")
                target = inner if inner is not None else child
            if target.type in spec.classes:
                name = syntax.name_of(target, source)
                if name:
                    found.append(_definition(target, source, "class", name, path, container))
                body = target.child_by_field_name("body")
                if body is not None and depth < 2:
                    visit(body, name, depth + 1)
            elif target.type in spec.functions:
                name = syntax.name_of(target, source)
                if name:
                    kind = "method" if container else "function"
                    found.append(_definition(target, source, kind, name, path, container))
            elif depth == 0 and child.type in ("namespace_definition", "mod_item", "impl_item", "declaration_list"):
                visit(child, container, depth + 1)

    visit(tree.root_node, None, 0)
    return found


def signature_of(node: Node, source: bytes) -> str:
    """A definition's header: its text up to the body (or its first line)."""
    body = node.child_by_field_name("body")
    end = body.start_byte if body is not None and body.start_byte > node.start_byte else None
    if end is None:
        line_end = source.find(b"\n", node.start_byte)
        end = node.end_byte if line_end < 0 else min(line_end, node.end_byte)
    text = source[node.start_byte : end].decode("utf-8", "replace").rstrip(" {\t\r\n")
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= MAX_SIGNATURE_CHARS else text[: MAX_SIGNATURE_CHARS - 3] + "..."


def _docstring(node: Node, source: bytes) -> str | None:
    body = node.child_by_field_name("body")
    if body is None or not body.named_children:
        return None
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_children:  # older grammars
        first = first.named_children[0]
    if first.type != "string":
        return None
    text = source[first.start_byte : first.end_byte].decode("utf-8", "replace").strip("\"' \n\r\t")
    lines = text.strip().splitlines()
    return lines[0][:160] if lines else None


def _definition(node: Node, source: bytes, kind: str, name: str, path: str, container: str | None) -> Definition:
    return Definition(name, kind, signature_of(node, source), path, node.start_point.row, container, _docstring(node, source))


class SymbolIndex:
    def __init__(self, exclude: Callable[[str], bool] = lambda path: False):
        self._exclude = exclude
        self._by_file: OrderedDict[str, list[Definition]] = OrderedDict()
        self._by_name: dict[str, list[Definition]] = {}
        self._count = 0
        self.ready = asyncio.Event() if _has_loop() else None
        self.files_indexed = 0
        self.build_seconds = 0.0

    def __len__(self) -> int:
        return self._count

    def set_exclude(self, exclude: Callable[[str], bool]) -> None:
        self._exclude = exclude
        for path in [p for p in self._by_file if exclude(p)]:
            self.remove(path)

    # -- updates ---------------------------------------------------------------------------

    def update(self, path: str, tree: Tree | None, source: bytes, language: str | None) -> None:
        """Replace one file's definitions (from an open document's current tree)."""
        if self._exclude(path):
            self.remove(path)
            return
        defs = definitions_in(tree, source, language, path) if tree is not None else []
        self.remove(path)
        self._by_file[path] = defs
        for d in defs:
            self._by_name.setdefault(d.name, []).append(d)
        self._count += len(defs)
        self._evict()

    def remove(self, path: str) -> None:
        defs = self._by_file.pop(path, None)
        if not defs:
            return
        self._count -= len(defs)
        for d in defs:
            bucket = self._by_name.get(d.name)
            if bucket is not None:
                bucket[:] = [x for x in bucket if x.path != path]
                if not bucket:
                    del self._by_name[d.name]

    def _evict(self) -> None:
        # Bounded memory: drop the files indexed longest ago first.
        while (self._count > MAX_DEFINITIONS or len(self._by_file) > MAX_FILES) and self._by_file:
            self.remove(next(iter(self._by_file)))

    def index_file(self, path: Path) -> None:
        language = syntax.language_for(str(path))
        if language is None:
            return
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                return
            source = path.read_bytes()
        except OSError:
            return
        self.update(str(path), syntax.parse(language, source), source, language)

    async def build(self, roots: Iterable[Path]) -> None:
        """Index every source file under `roots`, yielding to the event loop between slices."""
        started = time.monotonic()
        slice_started = time.monotonic()
        for path in iter_source_files(roots, self._exclude):
            self.index_file(path)
            self.files_indexed += 1
            if self.files_indexed >= MAX_FILES:
                break
            if time.monotonic() - slice_started > SLICE_SECONDS:
                await asyncio.sleep(0)
                slice_started = time.monotonic()
        self.build_seconds = time.monotonic() - started
        log.info("indexed %d files, %d definitions in %.2f s", self.files_indexed, self._count, self.build_seconds)
        if self.ready is not None:
            self.ready.set()

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, name: str, exclude_path: str | None = None) -> list[Definition]:
        return [d for d in self._by_name.get(name, ()) if d.path != exclude_path]

    def members(self, container: str, exclude_path: str | None = None) -> list[Definition]:
        """Methods of a class called `container` (for `obj.method` completions)."""
        found = []
        for defs in self._by_file.values():
            found.extend(d for d in defs if d.container == container and d.path != exclude_path)
        return found

    def in_file(self, path: str) -> list[Definition]:
        return list(self._by_file.get(path, ()))


def iter_source_files(roots: Iterable[Path], exclude: Callable[[str], bool]) -> Iterable[Path]:
    """Source files under `roots`, never one whose real path (links resolved) lies outside
    them: a link to `../outside/.env` or `/etc/passwd` is not a workspace file, whatever its
    name. Linked folders are not entered (os.walk's default); `exclude` judges link targets."""
    roots = list(roots)
    real_roots = [os.path.realpath(root) for root in roots]
    seen: set[str] = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(files):
                path = os.path.join(folder, name)
                real = os.path.realpath(path)
                if real in seen or not is_inside(real, real_roots) or not os.path.isfile(real):
                    continue
                if exclude(path) or syntax.language_for(path) is None:
                    continue
                seen.add(real)
                yield Path(path)


def is_inside(real_path: str, real_roots: list[str]) -> bool:
    """True when `real_path` (links resolved) is one of `real_roots` or below one."""
    return any(real_path == root or real_path.startswith(root.rstrip(os.sep) + os.sep) for root in real_roots)


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
