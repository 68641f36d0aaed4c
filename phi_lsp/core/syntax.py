"""tree-sitter languages: which grammar a document uses, cached parsers, and what each grammar
calls a function, a class, an import. Shared by the completion and review pipelines.

Grammars come from tree-sitter-language-pack 0.13 (bundled, works offline). A document whose
language is unknown is plain text: everything that does not need a tree still works.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from functools import lru_cache
from pygls import uris

from tree_sitter import Node, Parser, Tree

log = logging.getLogger(__name__)

# languageId (as editors send it) -> grammar name
_BY_LANGUAGE_ID = {
    "python": "python",
    "javascript": "javascript",
    "javascriptreact": "javascript",
    "typescript": "typescript",
    "typescriptreact": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "ruby": "ruby",
    "kotlin": "kotlin",
    "lua": "lua",
    "php": "php",
    "shellscript": "bash",
    "sh": "bash",
    "bash": "bash",
    "scala": "scala",
    "swift": "swift",
}

_BY_EXTENSION = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".c++": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".rb": "ruby",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".lua": "lua",
    ".php": "php",
    ".sh": "bash",
    ".bash": "bash",
    ".scala": "scala",
    ".swift": "swift",
}


@dataclass(frozen=True)
class LanguageSpec:
    """What a grammar's node types mean to us."""

    functions: frozenset[str] = field(default_factory=frozenset)
    classes: frozenset[str] = field(default_factory=frozenset)
    imports: frozenset[str] = field(default_factory=frozenset)
    comment: str = "//"
    # Statements whose end also ends a single-line suggestion's natural scope.
    blocks: frozenset[str] = field(default_factory=frozenset)


def _spec(functions=(), classes=(), imports=(), comment="//", blocks=()) -> LanguageSpec:
    return LanguageSpec(
        frozenset(functions), frozenset(classes), frozenset(imports), comment, frozenset(blocks)
    )


_C_LIKE_BLOCKS = ("compound_statement", "statement_block", "block")

SPECS: dict[str, LanguageSpec] = {
    "python": _spec(
        ["function_definition"],
        ["class_definition"],
        ["import_statement", "import_from_statement", "future_import_statement"],
        "#",
        ["block"],
    ),
    "javascript": _spec(
        [
            "function_declaration",
            "generator_function_declaration",
            "method_definition",
            "function_expression",
            "arrow_function",
        ],
        ["class_declaration", "class"],
        ["import_statement"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "typescript": _spec(
        [
            "function_declaration",
            "generator_function_declaration",
            "method_definition",
            "function_expression",
            "arrow_function",
            "function_signature",
        ],
        ["class_declaration", "abstract_class_declaration", "interface_declaration", "enum_declaration"],
        ["import_statement"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "go": _spec(
        ["function_declaration", "method_declaration", "func_literal"],
        ["type_declaration"],
        ["import_declaration", "package_clause"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "rust": _spec(
        ["function_item", "closure_expression"],
        ["struct_item", "enum_item", "impl_item", "trait_item", "mod_item"],
        ["use_declaration", "extern_crate_declaration"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "java": _spec(
        ["method_declaration", "constructor_declaration", "lambda_expression"],
        ["class_declaration", "interface_declaration", "enum_declaration", "record_declaration"],
        ["import_declaration", "package_declaration"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "c": _spec(
        ["function_definition"],
        ["struct_specifier", "union_specifier", "enum_specifier"],
        ["preproc_include"],
        blocks=_C_LIKE_BLOCKS,
    ),
    "cpp": _spec(
        ["function_definition", "lambda_expression"],
        ["class_specifier", "struct_specifier", "union_specifier", "enum_specifier", "namespace_definition"],
        ["preproc_include", "using_declaration"],
        blocks=_C_LIKE_BLOCKS,
    ),
}
SPECS["tsx"] = SPECS["typescript"]
_PLAIN = LanguageSpec()


def source_extensions() -> list[str]:
    """The file extensions a language is known for (without the dot)."""
    return sorted(ext.lstrip(".") for ext in _BY_EXTENSION)


def spec_for(language: str | None) -> LanguageSpec:
    return SPECS.get(language or "", _PLAIN)


def path_of(uri: str) -> str:
    """The file-system path of a file: URI (pygls' reading, Windows drive letters included);
    the path part of any other URI (untitled:, notebook cells); a plain path as it is."""
    if uris.uri_scheme(uri) == "file":
        return uris.to_fs_path(uri) or uri
    scheme, _, path, *_ = uris.urlparse(uri)
    return path if scheme else uri


def language_for(uri: str, language_id: str | None = None) -> str | None:
    """Grammar name for a document, by languageId first, then by file extension."""
    candidates = []
    if language_id:
        candidates.append(_BY_LANGUAGE_ID.get(language_id.lower()))
    ext = posixpath.splitext(path_of(uri))[1].lower()
    candidates.append(_BY_EXTENSION.get(ext))
    for name in candidates:
        if name and parser_for(name) is not None:
            return name
    return None


@lru_cache(maxsize=None)
def parser_for(language: str) -> Parser | None:
    """A parser for `language`, or None if the grammar is not available."""
    try:
        from tree_sitter_language_pack import get_parser

        return get_parser(language)  # type: ignore[arg-type]
    except Exception as exc:  # a missing grammar must not take the server down
        log.warning("no tree-sitter grammar for %s: %s", language, exc)
        return None


def parse(language: str | None, source: bytes) -> Tree | None:
    parser = parser_for(language) if language else None
    return parser.parse(source) if parser is not None else None


def error_count(node: Node) -> int:
    """Number of ERROR and MISSING nodes under `node` (only subtrees with errors are walked)."""
    if not node.has_error:
        return 0
    count = 0
    stack = [node]
    while stack:
        current = stack.pop()
        if current.is_error or current.is_missing:
            count += 1
        stack.extend(child for child in current.children if child.has_error or child.is_missing)
    return count


# Ancestor chains are collected walking DOWN from the root (linear in the depth); beyond this
# many levels the innermost ones are not seen. tree-sitter's `Node.parent` walks down from the
# root on every call, so climbing with it is quadratic: 9 s at the middle of an 80,000-character
# expression line, 4.8 s inside 5,000 nested parentheses.
MAX_ANCESTOR_DEPTH = 10_000


def ancestors(root: Node, node: Node | None, max_depth: int = MAX_ANCESTOR_DEPTH) -> list[Node]:
    """`node` and its ancestors up to `root`, innermost first (only the outermost `max_depth`
    levels, and `node` itself, when it lies deeper than that)."""
    if node is None:
        return []
    chain: list[Node] = []
    current: Node | None = root
    while current is not None and current != node and len(chain) < max_depth:
        chain.append(current)
        current = current.child_with_descendant(node)
    chain.append(node)
    chain.reverse()
    return chain


def enclosing(root: Node, node: Node | None, types: frozenset[str]) -> list[Node]:
    """Ancestors of `node` (innermost first, `node` included) whose type is in `types`."""
    return [n for n in ancestors(root, node) if n.type in types]


def header_of(node: Node, source: bytes) -> bytes:
    """The first line of a definition (its signature, for most grammars)."""
    start = node.start_byte
    line_end = source.find(b"\n", start)
    end = node.end_byte if line_end < 0 else min(line_end, node.end_byte)
    return source[start:end].rstrip()


def name_of(node: Node, source: bytes) -> str | None:
    """The name of a definition node, where the grammar exposes one."""
    name = node.child_by_field_name("name")
    if name is None and node.type == "type_declaration":  # Go: type Foo struct {...}
        spec = next((c for c in node.named_children if c.type == "type_spec"), None)
        name = spec.child_by_field_name("name") if spec is not None else None
    if name is None and node.type in ("function_definition",) and node.child_by_field_name("declarator"):
        # C/C++: the name sits inside nested declarators.
        declarator = node.child_by_field_name("declarator")
        while declarator is not None and declarator.child_by_field_name("declarator") is not None:
            declarator = declarator.child_by_field_name("declarator")
        name = declarator
    if name is None:
        return None
    return source[name.start_byte : name.end_byte].decode("utf-8", "replace")
