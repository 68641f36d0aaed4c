"""Review units: the pieces of a file that are reviewed (and cached) on their own.

A file is split with tree-sitter into functions, methods, classes and module-level code. Each
line of the file belongs to at most one unit: a method's lines belong to the method, the rest of
its class (header, docstring, class attributes) to the class, top-level statements that are not
definitions (imports included) to the module. A unit is therefore a list of LSP lines, not
always contiguous (a class without its methods), and its identity is a hash of its content, not
of its position: an edit elsewhere in the file moves a unit but does not change it, so its last
review still holds.

Units larger than `max_bytes` are split into parts at line boundaries, so every prompt fits the
model's context; a single line longer than that (minified code) is not reviewed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from tree_sitter import Node

from phi_lsp.core import syntax
from phi_lsp.core.documents import Snapshot

MAX_UNIT_BYTES = 2_400  # about 700 tokens of code: with the prompt's frame it fits 2k contexts
MAX_CALLS = 24
_MAX_WALK = 20_000  # nodes visited per unit when collecting calls

# Call nodes across grammars, and the field that names what is called.
_CALLS = {
    "call": "function",  # python
    "call_expression": "function",  # javascript, typescript, go, rust, c, c++
    "method_invocation": "name",  # java
    "new_expression": "constructor",  # javascript, typescript
    "object_creation_expression": "type",  # java
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WRAPPERS = ("decorated_definition", "export_statement", "template_declaration")


@dataclass(frozen=True)
class Unit:
    name: str  # "load", "Config", "Config.load", "<module>"; " (part 2/3)" when split
    kind: str  # "function" | "method" | "class" | "module"
    lines: tuple[int, ...]  # the LSP lines (0-based) it owns, ascending
    text: tuple[bytes, ...]  # the content of each of those lines, without line endings
    digest: str  # content hash: what the review cache is keyed on
    header: str | None = None  # the enclosing class's header, for methods
    calls: tuple[str, ...] = ()  # names it calls (to look up their signatures)

    @property
    def first_line(self) -> int:
        return self.lines[0]

    @property
    def last_line(self) -> int:
        return self.lines[-1]

    def joined(self) -> bytes:
        """The unit's lines joined with "\\n" (whatever the file's line endings are)."""
        return b"\n".join(self.text)

    def owns(self, line: int) -> bool:
        return line in self._line_set

    def contiguous(self, first_index: int, last_index: int) -> bool:
        """True when unit lines first_index..last_index are consecutive lines of the file."""
        return self.lines[last_index] - self.lines[first_index] == last_index - first_index

    @property
    def _line_set(self) -> frozenset[int]:
        cached = self.__dict__.get("_lines_cache")
        if cached is None:
            cached = frozenset(self.lines)
            object.__setattr__(self, "_lines_cache", cached)
        return cached


@dataclass
class _Owner:
    kind: str
    name: str
    header: str | None = None
    call_nodes: list[Node] = field(default_factory=list)


def digest_of(kind: str, name: str, text: tuple[bytes, ...]) -> str:
    h = hashlib.sha256()
    h.update(f"{kind}\0{name}\0".encode())
    h.update(b"\n".join(text))
    return h.hexdigest()[:24]


def extract_units(snapshot: Snapshot, max_bytes: int = MAX_UNIT_BYTES) -> list[Unit]:
    """The review units of one version of a file (none when it has no grammar)."""
    tree = snapshot.tree
    if tree is None:
        return []
    spec = syntax.spec_for(snapshot.language)
    if not spec.functions and not spec.classes:
        return []
    source = snapshot.source
    buffer = snapshot.buffer
    line_count = buffer.line_count()
    owner_of: list[int | None] = [None] * line_count
    owners: list[_Owner] = [_Owner("module", "<module>")]

    def first_last(node: Node) -> tuple[int, int]:
        first = buffer.lines.line_of(node.start_byte)
        last = buffer.lines.line_of(max(node.start_byte, node.end_byte - 1))
        return first, last

    def claim(first: int, last: int, owner: int) -> None:
        for line in range(first, min(last, line_count - 1) + 1):
            owner_of[line] = owner

    def leading_comments_start(siblings: list[Node], index: int, first: int) -> int:
        """Comments right above a definition (no blank line between) belong to it."""
        while index > 0:
            previous = siblings[index - 1]
            if "comment" not in previous.type:
                break
            p_first, p_last = first_last(previous)
            if p_last != first - 1:
                break
            first, index = p_first, index - 1
        return first

    def visit(parent: Node, container: int, container_name: str | None, depth: int) -> None:
        siblings = parent.named_children
        for index, child in enumerate(siblings):
            target = _unwrap(child)
            first, last = first_last(child)
            if target.type in spec.classes or target.type in spec.functions:
                first = leading_comments_start(siblings, index, first)
                name = syntax.name_of(target, source) or _fallback_name(target, source)
                qualified = f"{container_name}.{name}" if container_name else name
                if target.type in spec.classes:
                    owners.append(_Owner("class", qualified))
                    class_id = len(owners) - 1
                    claim(first, last, class_id)
                    body = target.child_by_field_name("body")
                    header = syntax.header_of(target, source).decode("utf-8", "replace")
                    if body is not None and depth < 3:
                        visit(body, class_id, qualified, depth + 1)
                        for member in owners[class_id + 1 :]:
                            if member.kind == "method" and member.header is None:
                                member.header = header
                    else:
                        owners[class_id].call_nodes.append(target)
                else:
                    kind = "method" if container_name else "function"
                    owners.append(_Owner(kind, qualified, call_nodes=[target]))
                    claim(first, last, len(owners) - 1)
            else:
                owners[container].call_nodes.append(child)
                if container == 0:
                    claim(first, last, 0)

    visit(tree.root_node, 0, None, 0)
    _fill_blank_gaps(owner_of, buffer)

    lines_of: dict[int, list[int]] = {}
    for line, owner_id in enumerate(owner_of):
        if owner_id is not None:
            lines_of.setdefault(owner_id, []).append(line)
    units: list[Unit] = []
    for owner_id, owner in enumerate(owners):
        lines = lines_of.get(owner_id, [])
        texts = [buffer.line_bytes(line) for line in lines]
        while lines and not texts[-1].strip():
            lines.pop(), texts.pop()
        while lines and not texts[0].strip():
            lines.pop(0), texts.pop(0)
        if not lines:
            continue
        calls = _calls_in(owner.call_nodes, source)
        for part_lines, part_texts, suffix in _parts(lines, texts, max_bytes):
            name = owner.name + suffix
            units.append(
                Unit(
                    name=name,
                    kind=owner.kind,
                    lines=tuple(part_lines),
                    text=tuple(part_texts),
                    digest=digest_of(owner.kind, name, tuple(part_texts)),
                    header=owner.header,
                    calls=calls,
                )
            )
    units.sort(key=lambda u: u.first_line)
    return units


def _unwrap(node: Node) -> Node:
    if node.type in _WRAPPERS:
        inner = node.child_by_field_name("definition") or node.child_by_field_name("declaration")
        if inner is None and node.named_children:
            inner = node.named_children[-1]
        return inner if inner is not None else node
    return node


def _fallback_name(node: Node, source: bytes) -> str:
    named = node.child_by_field_name("type") or node.child_by_field_name("declarator")
    if named is not None:
        return source[named.start_byte : named.end_byte].decode("utf-8", "replace")[:60]
    return syntax.header_of(node, source).decode("utf-8", "replace").strip()[:60] or node.type


def _fill_blank_gaps(owner_of: list[int | None], buffer) -> None:
    """Blank lines between two lines of the same unit belong to it (they keep it contiguous)."""
    previous_owner: int | None = None
    gap: list[int] = []
    for line, owner in enumerate(owner_of):
        if owner is None:
            if buffer.line_bytes(line).strip():
                previous_owner, gap = None, []
            else:
                gap.append(line)
            continue
        if gap and owner == previous_owner:
            for g in gap:
                owner_of[g] = owner
        gap = []
        previous_owner = owner


def _parts(lines: list[int], texts: list[bytes], max_bytes: int):
    """Split a unit's lines into parts of at most max_bytes; drop lines that alone exceed it."""
    parts: list[tuple[list[int], list[bytes]]] = []
    current: tuple[list[int], list[bytes]] = ([], [])
    size = 0
    for line, text in zip(lines, texts):
        if len(text) > max_bytes:  # minified or generated: not reviewable
            if current[0]:
                parts.append(current)
            current, size = ([], []), 0
            continue
        if current[0] and size + len(text) + 1 > max_bytes:
            parts.append(current)
            current, size = ([], []), 0
        current[0].append(line)
        current[1].append(text)
        size += len(text) + 1
    if current[0]:
        parts.append(current)
    parts = [p for p in parts if any(t.strip() for t in p[1])]
    if len(parts) == 1:
        return [(parts[0][0], parts[0][1], "")]
    return [(p[0], p[1], f" (part {i}/{len(parts)})") for i, p in enumerate(parts, 1)]


def _calls_in(nodes: list[Node], source: bytes) -> tuple[str, ...]:
    """Names called inside `nodes` (first occurrence order, bounded)."""
    found: dict[str, None] = {}
    visited = 0
    stack = list(reversed(nodes))
    while stack and visited < _MAX_WALK and len(found) < MAX_CALLS:
        node = stack.pop()
        visited += 1
        field_name = _CALLS.get(node.type)
        if field_name is not None:
            callee = node.child_by_field_name(field_name)
            if callee is not None:
                text = source[max(callee.start_byte, callee.end_byte - 120) : callee.end_byte]
                names = _IDENT.findall(text.decode("utf-8", "replace"))
                if names:
                    found.setdefault(names[-1], None)
        stack.extend(reversed(node.named_children))
    return tuple(found)
