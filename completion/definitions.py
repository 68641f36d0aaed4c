"""Which definitions from other workspace files a completion prompt should show, most likely to be
used next first.

The name the user is about to type is rarely near the cursor yet, but it is usually in the file's
imports: the file imported it for a reason. So candidates come from the imports, resolved to the
workspace's own files (absolute and relative `from x import a [as b]`, `import pkg.mod` then
`pkg.mod.a`, re-exports through `__init__.py`), ranked by:
- imported but not used before the cursor (the strongest sign: it is what the code is about to
  use, and the model has seen no use of it to copy from);
- used before, but not in the scope the cursor is in;
- used just before the cursor (used again soon: repeated calls, arguments);
- used earlier in this scope;
- plus a bonus when defined in a file the user recently edited or opened;
then the public methods of classes in use (what `obj.` completes), then names used near the cursor
that the workspace defines elsewhere (attribute names the imports do not reach). Ties go to the
shorter stub (more of them fit). Each comes as a stub: the header, the docstring's first line
and, for a class, its fields and `__init__` signature (what a constructor call needs); past the
first few, a header alone (the budget holds more of them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from phi_lsp.core import syntax
from phi_lsp.core.documents import Snapshot
from phi_lsp.core.imports import ImportedName, imports_of
from phi_lsp.core.symbols import Definition, SymbolIndex

NEAR_CURSOR_BYTES = 1200  # "used just before the cursor"
MAX_CANDIDATES = 80
MAX_MEMBERS = 6  # methods shown for a class that is in use
MAX_MODULE_MEMBERS = 16  # definitions of an `import pkg.mod` module not referenced yet
# Scores (higher first); the order of the docstring above.
UNUSED = 4.0
UNUSED_IN_SCOPE = 3.0
USED_NEAR = 2.5
USED_IN_SCOPE = 2.0
RECENT_BONUS = 0.75
MEMBER = 1.5  # a public method of a class used before the cursor
NAME_NEAR = 1.0  # a non-imported name used near the cursor, defined elsewhere
MODULE_MEMBER_UNREFERENCED = 0.5


@dataclass(frozen=True)
class Ranked:
    definition: Definition
    score: float
    stub: str  # the text shown for it (rendered under its file's header)
    brief: str  # the header alone, when the budget is short


def ranked_definitions(
    snapshot: Snapshot,
    cursor: int,
    index: SymbolIndex,
    file_path: str | None,
    recent_paths: frozenset[str] = frozenset(),
    names_near: list[str] | None = None,
) -> list[Ranked]:
    """Definitions from other files, best first (at most MAX_CANDIDATES)."""
    if snapshot.tree is None:
        return []
    uses = _Uses(snapshot, cursor)
    scored: dict[tuple[str, int], Ranked] = {}

    def add(definition: Definition, score: float) -> None:
        if file_path is not None and definition.path == file_path:
            return
        if definition.path in recent_paths:
            score += RECENT_BONUS
        key = (definition.path, definition.line)
        if key in scored and scored[key].score >= score:
            return
        scored[key] = _ranked(definition, score, snapshot.language, index)
        if definition.kind == "class" and score in (USED_NEAR, USED_IN_SCOPE):
            members = [m for m in index.members_of(definition) if not m.name.startswith("_")]
            for member in members[:MAX_MEMBERS]:
                member_key = (member.path, member.line)
                if member_key not in scored or scored[member_key].score < MEMBER:
                    scored[member_key] = _ranked(member, MEMBER, snapshot.language, index)

    if snapshot.language == "python":
        module, is_package = index.module_of(file_path) if file_path else ("", False)
        current = imports_of(snapshot.tree, snapshot.source, module, is_package)
        # What the saved file imports too: a file broken mid-edit may not parse its imports.
        known = {i.local for i in current}
        saved = [i for i in index.imports_in(file_path) if i.local not in known] if file_path else []
        for imported in current + saved:
            _add_imported(imported, index, uses, add)
    for position, name in enumerate(names_near or []):
        for definition in index.lookup(name, exclude_path=file_path)[:2]:
            add(definition, NAME_NEAR - position * 0.01)
    ranked = sorted(scored.values(), key=lambda r: (-r.score, len(r.stub), r.definition.path, r.definition.line))
    return ranked[:MAX_CANDIDATES]


def _ranked(definition: Definition, score: float, language: str | None, index: SymbolIndex) -> Ranked:
    full = stub(definition, language, index)
    return Ranked(definition, score, full, brief(definition, language) if language == "python" else full)


def _add_imported(imported: ImportedName, index: SymbolIndex, uses: "_Uses", add) -> None:
    if imported.star:
        return  # everything of a module: no sign of what is wanted
    definitions, module_path = index.resolve(imported.module, imported.name)
    for definition in definitions:
        add(definition, uses.score(imported.local))
    if module_path is None:
        return
    # A module: its members are referred to as `local.member` (`import pkg.mod` -> `pkg.mod.x`).
    members = [d for d in index.in_file(module_path) if d.container is None]
    referenced = uses.members_used(imported.local)
    unreferenced = 0
    for definition in members:
        if definition.name in referenced:
            add(definition, uses.score(f"{imported.local}.{definition.name}"))
        elif unreferenced < MAX_MODULE_MEMBERS:
            unreferenced += 1
            add(definition, MODULE_MEMBER_UNREFERENCED)


class _Uses:
    """Where the file uses a (dotted) name, outside its import statements; searched per name
    on demand (a few dozen literal searches cost less than tokenizing the whole file)."""

    def __init__(self, snapshot: Snapshot, cursor: int):
        source = snapshot.source
        root = snapshot.tree.root_node
        blanked = bytearray(source)
        for child in root.named_children:
            if child.type in ("import_statement", "import_from_statement", "future_import_statement"):
                blanked[child.start_byte : child.end_byte] = b" " * (child.end_byte - child.start_byte)
        self.text = bytes(blanked).decode("latin-1")  # byte offsets stay character offsets
        self.cursor = cursor
        node = root.named_descendant_for_byte_range(max(0, cursor - 1), cursor)
        spec = syntax.spec_for(snapshot.language)
        scopes = syntax.enclosing(root, node, spec.functions | spec.classes)
        scope = scopes[0] if scopes else None
        self.scope_start = scope.start_byte if scope is not None else 0
        self._cache: dict[str, list[int]] = {}

    def positions(self, name: str) -> list[int]:
        found = self._cache.get(name)
        if found is None:
            # The literal first (re searches for it fast), the character before checked after.
            pattern = r"\s*\.\s*".join(map(re.escape, name.split("."))) + r"(?!\w)"
            found = self._cache[name] = [m.start() for m in re.finditer(pattern, self.text) if self._starts_word(m.start())]
        return found

    def _starts_word(self, at: int) -> bool:
        return at == 0 or not (self.text[at - 1].isalnum() or self.text[at - 1] in "_.")

    def members_used(self, module_local: str) -> set[str]:
        """The `x` of every `module_local.x` in the file."""
        pattern = r"\s*\.\s*".join(map(re.escape, module_local.split("."))) + r"\s*\.\s*([A-Za-z_]\w*)"
        return {m.group(1) for m in re.finditer(pattern, self.text) if self._starts_word(m.start())}

    def score(self, name: str) -> float:
        before = [p for p in self.positions(name) if p < self.cursor]
        if not before:
            return UNUSED
        if not any(self.scope_start <= p for p in before):
            return UNUSED_IN_SCOPE
        if any(self.cursor - NEAR_CURSOR_BYTES <= p for p in before):
            return USED_NEAR
        return USED_IN_SCOPE


def stub(d: Definition, language: str | None, index: SymbolIndex | None = None) -> str:
    """How a definition is shown: its header, the docstring's first line, a class's fields and
    `__init__` signature, and `...` for the body."""
    indent = "    " if d.container else ""
    if language != "python":
        return f"{indent}{d.signature} {{ ... }}" if d.kind != "class" else f"{indent}{d.signature}"
    lines = [f"{indent}{d.signature}"]
    if d.doc:
        lines.append(f'{indent}    """{d.doc}"""')
    if d.kind == "class":
        lines += [f"{indent}    {field}" for field in d.fields]
        init = next((m for m in index.members_of(d) if m.name == "__init__"), None) if index is not None else None
        if init is not None:
            lines.append(f"{indent}    {init.signature} ...")
        if len(lines) == 1:
            lines.append(f"{indent}    ...")
    else:
        lines.append(f"{indent}    ...")
    return "\n".join(lines)


def brief(d: Definition, language: str | None) -> str:
    """The header alone (with `...`), for definitions past the first few."""
    indent = "    " if d.container else ""
    return f"{indent}{d.signature} ..."
