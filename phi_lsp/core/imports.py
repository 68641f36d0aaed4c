"""What a Python file imports, read with tree-sitter, and where those modules are in the workspace.

`imports_of` lists every binding an import statement makes (`from x import a as b` binds `b`,
`import pkg.mod` binds `pkg` and is referred to as `pkg.mod.<attr>`), with relative module names
made absolute against the importing file's own module. `module_name_of` says which dotted module
a file is: the folders above it that hold an `__init__.py` are its packages, the first folder
without one is where imports start (a workspace root, `src/`, ...), as Python itself sees it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from tree_sitter import Node, Tree

_IMPORT_TYPES = ("import_statement", "import_from_statement", "future_import_statement")
# Imports inside these are still the file's (TYPE_CHECKING blocks, optional dependencies).
_CONTAINERS = {"if_statement", "try_statement", "block", "else_clause", "except_clause", "finally_clause",
               "elif_clause", "with_statement", "function_definition", "class_definition",
               "decorated_definition", "ERROR"}  # a file broken mid-edit parses into ERROR nodes


@dataclass(frozen=True)
class ImportedName:
    local: str  # the name as the importing code writes it: "b", or "pkg.mod" for `import pkg.mod`
    module: str  # the absolute dotted module imported from (or the module itself)
    name: str | None  # the attribute taken from `module` (`from module import name`); None: the module
    line: int  # 0-based line of the import statement
    star: bool = False  # `from module import *`


def imports_of(tree: Tree, source: bytes, module: str = "", is_package: bool = False) -> list[ImportedName]:
    """Every binding made by the file's import statements, in file order.

    `module` is the importing file's dotted name (for relative imports); `is_package` says it is
    an `__init__.py` (then `.` is the package itself, not its parent)."""
    found: list[ImportedName] = []
    stack = [tree.root_node]
    nodes: list[Node] = []
    while stack:
        node = stack.pop()
        for child in node.named_children:
            if child.type in _IMPORT_TYPES:
                nodes.append(child)
            elif child.type in _CONTAINERS:
                stack.append(child)
    for node in sorted(nodes, key=lambda n: n.start_byte):
        line = node.start_point.row
        if node.type == "import_statement":
            for target in node.children_by_field_name("name"):
                if target.type == "aliased_import":
                    dotted = _text(target.child_by_field_name("name"), source)
                    alias = _text(target.child_by_field_name("alias"), source)
                    found.append(ImportedName(alias, dotted, None, line))
                else:
                    dotted = _text(target, source)
                    found.append(ImportedName(dotted, dotted, None, line))
        elif node.type == "import_from_statement":
            base = _absolute(node.child_by_field_name("module_name"), source, module, is_package)
            if base is None:
                continue
            if any(c.type == "wildcard_import" for c in node.named_children):
                found.append(ImportedName("*", base, None, line, star=True))
                continue
            for target in node.children_by_field_name("name"):
                if target.type == "aliased_import":
                    name = _text(target.child_by_field_name("name"), source)
                    local = _text(target.child_by_field_name("alias"), source)
                else:
                    name = local = _text(target, source)
                found.append(ImportedName(local, base, name, line))
    return found


def _absolute(node: Node | None, source: bytes, module: str, is_package: bool) -> str | None:
    if node is None:
        return None
    if node.type != "relative_import":
        return _text(node, source)
    dots = 0
    rest = ""
    for child in node.children:
        if child.type == "import_prefix":
            dots = child.end_byte - child.start_byte
        elif child.type == "dotted_name":
            rest = _text(child, source)
    parts = module.split(".") if module else []
    # `.` is the importing module's package: the module itself for an __init__.py.
    keep = len(parts) - dots + (1 if is_package else 0)
    if keep < 0:
        return None  # above the top package
    dotted = ".".join(parts[:keep] + ([rest] if rest else []))
    return dotted or None


def _text(node: Node | None, source: bytes) -> str:
    return "" if node is None else source[node.start_byte : node.end_byte].decode("utf-8", "replace")


def module_name_of(path: str) -> tuple[str, bool]:
    """(dotted module name, is a package `__init__`) of a Python file, from the packages above it."""
    folder, filename = os.path.split(os.path.abspath(path))
    stem = filename.rsplit(".", 1)[0]
    is_package = stem == "__init__"
    parts = [] if is_package else [stem]
    while _is_package(folder):
        folder, name = os.path.split(folder)
        if not name:
            break
        parts.append(name)
    return ".".join(reversed(parts)), is_package


@lru_cache(maxsize=4096)
def _is_package_cached(folder: str, _generation: int) -> bool:
    return os.path.isfile(os.path.join(folder, "__init__.py"))


_generation = 0


def _is_package(folder: str) -> bool:
    return _is_package_cached(folder, _generation)


def forget_package_cache() -> None:
    """An `__init__.py` was created or deleted: ask the file system again."""
    global _generation
    _generation += 1
