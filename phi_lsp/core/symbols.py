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
from phi_lsp.core.chunks import ChunkIndex
from phi_lsp.core.ignore import GitIgnore
from phi_lsp.core.imports import ImportedName, imports_of, module_name_of

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
MAX_REEXPORT_DEPTH = 4  # `from .a import x` in __init__.py, which itself re-exports ...
MAX_FIELDS = 12
MAX_FIELD_CHARS = 100
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
    fields: tuple[str, ...] = ()  # a class's field declarations (`name: type = default`)


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
    fields = _fields(node, source) if kind == "class" else ()
    return Definition(name, kind, signature_of(node, source), path, node.start_point.row, container,
                      _docstring(node, source), fields)


def _fields(node: Node, source: bytes) -> tuple[str, ...]:
    """A class body's assignments (dataclass fields, attributes, enum members): what its
    constructor takes or what `Cls.` completes."""
    body = node.child_by_field_name("body")
    if body is None:
        return ()
    found = []
    for statement in body.named_children:
        assignment = statement
        if statement.type == "expression_statement" and statement.named_children:  # older grammars
            assignment = statement.named_children[0]
        if assignment.type != "assignment":
            continue
        text = source[assignment.start_byte : assignment.end_byte].decode("utf-8", "replace")
        text = text.split("\n", 1)[0].rstrip()
        found.append(text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 3] + "...")
        if len(found) >= MAX_FIELDS:
            break
    return tuple(found)


class SymbolIndex:
    def __init__(self, exclude: Callable[[str], bool] = lambda path: False):
        self._exclude = exclude
        self._by_file: OrderedDict[str, list[Definition]] = OrderedDict()
        self._by_name: dict[str, list[Definition]] = {}
        self._imports: dict[str, list[ImportedName]] = {}  # path -> what it imports (Python)
        self._modules: dict[str, str] = {}  # dotted module name -> path
        self._module_of: dict[str, tuple[str, bool]] = {}  # path -> (module name, is a package)
        self._count = 0
        self.gitignore: GitIgnore | None = None
        self.chunks: ChunkIndex | None = None  # similar-code retrieval, when a setting asks for it
        self.generation = 0  # bumped on every change (cached lookups compare it)
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
        if self.excluded(path):
            self.remove(path)
            return
        defs = definitions_in(tree, source, language, path) if tree is not None else []
        self.remove(path)
        self._by_file[path] = defs
        for d in defs:
            self._by_name.setdefault(d.name, []).append(d)
        self._count += len(defs)
        if self.chunks is not None:
            self.chunks.update(path, tree, source, language)
        if language == "python":
            module, is_package = module_name_of(path)
            self._module_of[path] = (module, is_package)
            if module:
                self._modules[module] = path
            self._imports[path] = imports_of(tree, source, module, is_package) if tree is not None else []
        self.generation += 1
        self._evict()

    def remove(self, path: str) -> None:
        if self.chunks is not None:
            self.chunks.remove(path)
        self._imports.pop(path, None)
        module = self._module_of.pop(path, None)
        if module is not None and self._modules.get(module[0]) == path:
            del self._modules[module[0]]
        self.generation += 1
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

    def excluded(self, path: str) -> bool:
        """Left out of the index: privacy.exclude, secret files, or ignored by git."""
        if self._exclude(path):
            return True
        return self.gitignore is not None and self.gitignore.ignored(path)

    def index_file(self, path: Path) -> None:
        """(Re)read one file from disk; a file that is gone or excluded leaves the index."""
        language = syntax.language_for(str(path))
        if language is None:
            return
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                self.remove(str(path))
                return
            source = path.read_bytes()
        except OSError:
            self.remove(str(path))
            return
        self.update(str(path), syntax.parse(language, source), source, language)

    async def build(self, roots: Iterable[Path], progress: Callable[[int], None] | None = None) -> None:
        """Index every source file under `roots`, yielding to the event loop between slices (a
        completion asked meanwhile uses what is indexed so far; it never waits for the build).
        `progress` is told the number of files done, now and then."""
        roots = list(roots)
        self.gitignore = GitIgnore(roots)
        started = time.monotonic()
        slice_started = time.monotonic()
        for path in iter_source_files(roots, self._exclude, self.gitignore):
            self.index_file(path)
            self.files_indexed += 1
            if self.files_indexed >= MAX_FILES:
                break
            if time.monotonic() - slice_started > SLICE_SECONDS:
                if progress is not None:
                    progress(self.files_indexed)
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

    def members_of(self, cls: Definition) -> list[Definition]:
        """The methods of one class definition (from its own file)."""
        return [d for d in self._by_file.get(cls.path, ()) if d.container == cls.name and d.kind == "method"]

    # -- imports ---------------------------------------------------------------------------

    def module_of(self, path: str) -> tuple[str, bool]:
        """(dotted module name, is a package) of a file, indexed or not."""
        known = self._module_of.get(path)
        return known if known is not None else module_name_of(path)

    def module_path(self, module: str) -> str | None:
        """The workspace file of a dotted module name (None: not in the workspace)."""
        return self._modules.get(module)

    def imports_in(self, path: str) -> list[ImportedName]:
        return list(self._imports.get(path, ()))

    def resolve(self, module: str, name: str | None, _depth: int = 0) -> tuple[list[Definition], str | None]:
        """What `from module import name` (or, with name None, `import module`) refers to in
        the workspace: (its definitions, the path of the module when the name is a module).
        Re-exports are followed: `from .core import Thing` in a package's __init__.py makes
        `from package import Thing` find `Thing` in core.py."""
        if name is None:
            return [], self._modules.get(module)
        path = self._modules.get(module)
        if path is not None:
            defs = [d for d in self._by_file.get(path, ()) if d.name == name and d.container is None]
            if defs:
                return defs, None
        submodule = self._modules.get(f"{module}.{name}" if module else name)
        if submodule is not None:
            return [], submodule
        if path is None or _depth >= MAX_REEXPORT_DEPTH:
            return [], None
        for imported in self._imports.get(path, ()):
            if imported.local == name and not imported.star:
                return self.resolve(imported.module, imported.name, _depth + 1)
        for imported in self._imports.get(path, ()):
            if imported.star and imported.module != module:
                found = self.resolve(imported.module, name, _depth + 1)
                if found[0] or found[1]:
                    return found
        return [], None


def iter_source_files(roots: Iterable[Path], exclude: Callable[[str], bool],
                      gitignore: GitIgnore | None = None) -> Iterable[Path]:
    """Source files under `roots`, never one whose real path (links resolved) lies outside
    them: a link to `../outside/.env` or `/etc/passwd` is not a workspace file, whatever its
    name. Linked folders are not entered (os.walk's default); `exclude` judges link targets."""
    roots = list(roots)
    real_roots = [os.path.realpath(root) for root in roots]
    seen: set[str] = set()
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(
                d for d in dirs
                if d not in SKIP_DIRS and not d.startswith(".")
                and not (gitignore is not None and gitignore.ignored(os.path.join(folder, d), True, parents_checked=True))
            )
            for name in sorted(files):
                path = os.path.join(folder, name)
                real = os.path.realpath(path)
                if real in seen or not is_inside(real, real_roots) or not os.path.isfile(real):
                    continue
                if exclude(path) or syntax.language_for(path) is None:
                    continue
                if gitignore is not None and gitignore.ignored(path, parents_checked=True):
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
