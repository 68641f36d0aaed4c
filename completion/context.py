"""What the model sees for one completion, chosen with tree-sitter and the workspace, within a
token budget.

Sources, each of which can be switched off (the quality evaluation measures them one by one):
- prefix (always) and suffix windows around the cursor, cut at line boundaries; the prefix
  window starts on a multiple of WINDOW_STEP lines so it stays put while the user types in one
  region, which keeps the prompt's start stable for vLLM's prefix cache;
- `imports`: the file's import statements when they fall outside the window;
- `scopes`: the headers of the enclosing functions/classes when they fall outside the window;
- `symbols`: definitions from other workspace files, chosen and ranked by
  completion/definitions.py (what the file imports first, then names near the cursor);
- `recent`: snippets around the latest edits in other open files;
- `chunks` (off by default): the workspace code most similar to the lines before the cursor
  (phi_lsp/core/chunks.py), for what the imports do not reach.

Budget shares are soft: what one source leaves unused goes to the prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from tree_sitter import Node

from phi_lsp.core import positions, syntax
from phi_lsp.core.documents import Snapshot
from phi_lsp.core.symbols import Definition, SymbolIndex
from phi_lsp.core.tokens import TokenCounter

from phi_lsp.completion.definitions import ranked_definitions

WINDOW_STEP = 16  # lines; the prefix window's start snaps to a multiple of this
NEAR_CURSOR_BYTES = 1200  # where to look for names whose definitions may help
MAX_DEFINITIONS = 32
FULL_STUBS = 4  # definitions shown with docstring, fields and __init__; the rest as headers
LINE_WINDOW_BYTES = 8192  # of the cursor's own line, each side of the cursor
BOUNDARY_SEARCH_LINES = 64  # how far past the snapped line a window start may move to begin a statement
STATEMENT_DEPTH = 16  # levels above a line's first token where its statement may start
# Most of the budget is the prefix's: it is what every model uses. The other sources take at
# most these shares, and only as much as they need.
# Per prompt family, from benchmarks/bench_context.py (definition recall per symbols share) and
# bench_quality.py (exact match against raw prefix continuation); docs/DECISIONS.md has the figures.
# raw (base models continue the prefix; the suffix costs nothing): the smallest definitions share
# that keeps recall >= 0.9 at the default budget, the rest stays the local prefix's.
# chat (instruct models read the definitions and the suffix): a larger definitions share.
DEFAULT_SHARES = {"suffix": 0.15, "imports": 0.08, "scopes": 0.04, "symbols": 0.15, "recent": 0.08, "chunks": 0.1}
CHUNK_QUERY_LINES = 12  # the lines before the cursor that similar code is looked up with
SHARES_BY_FAMILY = {"raw": DEFAULT_SHARES, "chat": {**DEFAULT_SHARES, "symbols": 0.2}}


def shares_for(family: str) -> dict[str, float]:
    """The budget shares for a prompt family (`raw`, or one of the chat families)."""
    return SHARES_BY_FAMILY["raw" if family == "raw" else "chat"]
SCOPES_MIN_TOKENS = 32
_IDENTIFIER_TYPES = {
    "identifier", "type_identifier", "field_identifier", "property_identifier",
    "constant", "simple_identifier", "shorthand_property_identifier",
}
_KEYWORDS = set(
    "self cls None True False return def class if else elif for while in is not and or import "
    "from as with try except finally raise pass break continue lambda yield await async this "
    "new null true false var let const function func fn struct impl pub use mod int str float "
    "bool list dict set tuple len range print super object type".split()
)


@dataclass(frozen=True)
class Sources:
    """Which context sources to use (all on by default; the evaluation turns them off)."""

    suffix: bool = True
    imports: bool = True
    scopes: bool = True
    symbols: bool = True
    recent: bool = True
    chunks: bool = False  # similar code from other workspace files (off by default)

    @classmethod
    def only_prefix(cls) -> "Sources":
        return cls(False, False, False, False, False, False)

    @classmethod
    def named(cls, names) -> "Sources":
        """From the `completion.contextSources` setting."""
        return cls(**{f: f in names for f in ("suffix", "imports", "scopes", "symbols", "recent", "chunks")})


@dataclass(frozen=True)
class Snippet:
    """Text from another file, shown before the current file."""

    path: str
    text: str
    kind: str  # "definitions" | "recent" | "similar"


@dataclass
class CompletionContext:
    path: str  # the current file, as shown to the model (workspace-relative)
    language: str | None
    prefix: str  # the window before the cursor (starts at a line start)
    suffix: str  # the window after the cursor
    preamble: list[str]  # imports and scope headers outside the window, in file order
    snippets: list[Snippet]
    line_prefix: str  # the cursor's line, up to the cursor
    line_suffix: str  # the cursor's line, after the cursor
    window_start_line: int
    sources_used: list[str] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=list)
    tokens: int = 0

    @property
    def comment(self) -> str:
        return syntax.spec_for(self.language).comment


def _decode(data: bytes) -> str:
    return positions.decode(data)


def build_context(
    snapshot: Snapshot,
    cursor: int,
    budget: int,
    counter: TokenCounter,
    display_path: str,
    index: SymbolIndex | None = None,
    file_path: str | None = None,
    recent: list[Snippet] | None = None,
    sources: Sources = Sources(),
    display: Callable[[str], str] = lambda path: path,
    suffix_in_prompt: bool = True,
    recent_paths: frozenset[str] = frozenset(),
    shares: dict[str, float] | None = None,
) -> CompletionContext:
    """The context for a completion at byte offset `cursor` of `snapshot`.

    The suffix window is always taken (post-processing needs it), but it only costs budget when
    the prompt shows it (chat prompts do; raw prefix continuation does not).
    """
    source = snapshot.source
    cursor = max(0, min(cursor, len(source)))
    line_start = source.rfind(b"\n", 0, cursor) + 1
    line_end = source.find(b"\n", cursor)
    line_end = len(source) if line_end < 0 else line_end
    # Only a window of a very long line (minified code) around the cursor: everything after
    # this (post-processing included) is then bounded by it, not by the line.
    line_prefix = _decode(source[max(line_start, cursor - LINE_WINDOW_BYTES) : cursor])
    line_suffix = _decode(source[cursor : min(line_end, cursor + LINE_WINDOW_BYTES)]).rstrip("\r")

    shares = shares or DEFAULT_SHARES
    remaining = budget - _header_cost(display_path, counter)  # the current file's header
    used: list[str] = ["prefix"]
    # The other sources take their shares first; the prefix takes the rest (less what the
    # preamble of imports and enclosing headers needs).
    suffix = ""
    if sources.suffix:
        suffix = _suffix_window(source, cursor, int(budget * shares["suffix"]), counter)
        if suffix_in_prompt:
            remaining -= counter.count_lines(suffix)
        if suffix.strip():
            used.append("suffix")

    snippets: list[Snippet] = []
    definitions: list[Definition] = []
    if sources.symbols and index is not None and snapshot.tree is not None:
        # Choose by priority (names nearest the cursor first) within the share, then render the
        # chosen ones grouped by file in a stable order (for the prefix cache).
        share = int(budget * shares["symbols"])
        stubs: dict[tuple[str, int], str] = {}
        near = names_near(snapshot, cursor)
        for ranked in ranked_definitions(snapshot, cursor, index, file_path, recent_paths, near):
            # The first few in full, the rest as headers: more names fit, and a header is what
            # a call needs most.
            for text in (ranked.stub, ranked.brief) if len(definitions) < FULL_STUBS else (ranked.brief,):
                cost = counter.count_lines(text) + 1  # line-cached: stubs repeat across requests
                if cost <= share:
                    share -= cost
                    definitions.append(ranked.definition)
                    stubs[(ranked.definition.path, ranked.definition.line)] = text
                    break
            if len(definitions) >= MAX_DEFINITIONS or share < 8:
                break
        for path, text in _render_definitions(definitions, stubs, display):
            remaining -= counter.count(text) + _header_cost(path, counter)
            snippets.append(Snippet(path, text, "definitions"))
        if snippets:
            used.append("symbols")
    if sources.recent and recent:
        share = int(budget * shares["recent"])
        for snippet in recent:
            cost = counter.count(snippet.text) + _header_cost(snippet.path, counter)
            if cost > share:
                continue
            share -= cost
            remaining -= cost
            snippets.append(snippet)
            if "recent" not in used:
                used.append("recent")

    if sources.chunks and index is not None and index.chunks is not None:
        share = int(budget * shares["chunks"])
        query_start = source.rfind(b"\n", 0, max(0, line_start - 1))
        for _ in range(CHUNK_QUERY_LINES - 1):
            query_start = source.rfind(b"\n", 0, max(0, query_start))
        query = _decode(source[max(0, query_start + 1) : cursor])
        for chunk, _score in index.chunks.similar(query, file_path, boost=recent_paths):
            text = _chunk_text(chunk.path, chunk.start_line, chunk.end_line)
            cost = counter.count_lines(text) + _header_cost(display(chunk.path), counter)
            if not text.strip() or cost > share:
                continue
            share -= cost
            remaining -= cost
            snippets.append(Snippet(display(chunk.path), text, "similar"))
            if "chunks" not in used:
                used.append("chunks")

    # With a preamble the window must start at a statement boundary, or the preamble reads
    # like a file cut in the middle of a block (which measurably confuses models).
    align = sources.scopes or sources.imports

    def window(limit: int) -> tuple[int, int]:
        return _prefix_window(source, line_start, cursor, max(limit, 32), counter, snapshot.tree if align else None)

    def preamble_for(start: int, left: int) -> tuple[list[str], list[str], int]:
        """Imports and enclosing headers above a window starting at `start`, within `left`."""
        lines: list[str] = []
        names: list[str] = []
        if start == 0 or snapshot.tree is None:
            return lines, names, left
        spec = syntax.spec_for(snapshot.language)
        if sources.imports:
            imports = _imports_before(snapshot.tree.root_node, source, spec.imports, start)
            imports, left = _fit(imports, left, int(budget * shares["imports"]), counter)
            if imports:
                lines += imports
                names.append("imports")
        if sources.scopes:
            headers = _scope_headers(snapshot, cursor, start)
            # Headers are short and say where the window is: a small floor even on tiny budgets.
            share = max(int(budget * shares["scopes"]), SCOPES_MIN_TOKENS)
            headers, left = _fit(headers, left, share, counter)
            if headers:
                lines += headers
                names.append("scopes")
        return lines, names, left

    prefix_bytes_start, prefix_tokens = window(remaining)
    if align:
        # The preamble's shares are reserved from the prefix, but only as much as it needs
        # (and may take: a long import block gets its share, not all of its length).
        wanted = remaining - preamble_for(prefix_bytes_start, remaining)[2]
        if wanted > remaining - prefix_tokens:
            prefix_bytes_start, prefix_tokens = window(remaining - wanted)
    window_start_line = source.count(b"\n", 0, prefix_bytes_start)
    prefix = _decode(source[prefix_bytes_start:cursor])
    remaining -= prefix_tokens
    preamble, preamble_sources, remaining = preamble_for(prefix_bytes_start, remaining)
    used += preamble_sources

    context = CompletionContext(
        path=display_path,
        language=snapshot.language,
        prefix=prefix,
        suffix=suffix,
        preamble=preamble,
        snippets=snippets,
        line_prefix=line_prefix,
        line_suffix=line_suffix,
        window_start_line=window_start_line,
        sources_used=used,
        definitions=definitions,
    )
    context.tokens = budget - remaining
    return context


def _header_cost(path: str, counter: TokenCounter) -> int:
    """Tokens of what introduces a file in a prompt: its `# file: path` line, and the separator
    or elision mark around it (a few tokens, counted high)."""
    return counter.count(path) + 8


def _chunk_text(path: str, start: int, end: int) -> str:
    """Lines [start, end) of a file on disk (chunks keep no text in memory)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().split("\n")
    except OSError:
        return ""
    return "\n".join(lines[start:end])


def _fit(items: list[str], remaining: int, share: int, counter: TokenCounter) -> tuple[list[str], int]:
    kept = []
    for item in items:
        cost = counter.count(item) + 1
        if cost > share or cost > remaining:
            break
        share -= cost
        remaining -= cost
        kept.append(item)
    return kept, remaining


def _prefix_window(
    source: bytes, line_start: int, cursor: int, budget: int, counter: TokenCounter, tree=None
) -> tuple[int, int]:
    """(byte offset where the prefix window starts, its tokens): a line start within the budget,
    snapped to WINDOW_STEP lines so it stays put while the user types, and (given the tree) where
    a statement starts, so that the preamble's headers followed by the window read like real
    code with some statements left out."""
    if cursor <= budget:  # every token is at least one byte: it all fits
        return 0, counter.count_lines(_decode(source[:cursor]))
    earliest = _earliest_start(source, line_start, cursor, budget, counter)
    if earliest is None:
        # The cursor's line alone is over the budget (minified code): keep its tail only.
        start = max(line_start, cursor - budget * 3)
        return start, counter.count(_decode(source[start:cursor]))
    earliest_line = source.count(b"\n", 0, earliest)
    cursor_line = source.count(b"\n", 0, cursor)
    snapped_line = min(-(-earliest_line // WINDOW_STEP) * WINDOW_STEP, cursor_line)
    start = _line_offset(source, snapped_line, earliest)
    if tree is not None:
        start = min(_statement_boundary(tree, source, earliest, start, line_start), line_start)
    return start, counter.count_lines(_decode(source[start:cursor]))


def _earliest_start(source: bytes, line_start: int, cursor: int, budget: int, counter: TokenCounter) -> int | None:
    """The earliest line start from which the text up to the cursor fits in `budget` tokens
    (None when the cursor's own line does not): counted back a line at a time, each line's count
    cached, so this costs a lookup per line of the window, not a pass of the tokenizer."""
    first = _decode(source[line_start:cursor])  # the window's first line
    used = counter.count_lines(first)
    if used > budget:
        return None
    start = line_start
    while start > 0:
        previous_start = source.rfind(b"\n", 0, start - 1) + 1
        previous = _decode(source[previous_start : start - 1])
        # What the window costs more with `previous` in front (the old first line is counted
        # with its line break now).
        more = counter.count_lines(previous + "\n" + first) - counter.count_lines(first)
        if used + more > budget:
            break
        used += more
        start, first = previous_start, previous
    return start


def _statement_boundary(tree, source: bytes, earliest: int, preferred: int, line_start: int) -> int:
    """A window start where a statement begins (not inside a multi-line expression, not between
    a decorator and its definition): the last such line start from `preferred` (the snapped
    line) back to `earliest` (as far back as the budget reaches), else the first after
    `preferred` and before the cursor's line; `preferred` itself when there is none nearby."""
    offset = preferred
    while offset >= earliest:
        if _begins_statement(tree.root_node, source, offset):
            return offset
        if offset == 0:
            break
        offset = source.rfind(b"\n", 0, offset - 1) + 1
    offset = preferred
    for _ in range(BOUNDARY_SEARCH_LINES):
        offset = source.find(b"\n", offset, line_start) + 1
        if offset <= 0 or offset >= line_start:
            break
        if _begins_statement(tree.root_node, source, offset):
            return offset
    return preferred


def _begins_statement(root: Node, source: bytes, line_start: int) -> bool:
    """Whether a statement (a child of a block or of the file) starts on the line at `line_start`."""
    head = source[line_start : line_start + 1024].split(b"\n", 1)[0]  # enough for any indentation
    if not head.strip():
        return False  # a blank line
    first = line_start + len(head) - len(head.lstrip())
    # The chain is walked down from the root once (Node.parent walks down on every call), and
    # only a few levels up are looked at: a statement is near the first token of its line, and a
    # hostile chain of nodes all starting there (`a.b.c...` thousands deep) must not cost more.
    chain = syntax.ancestors(root, root.descendant_for_byte_range(first, first))
    for node, parent in list(zip(chain, chain[1:]))[:STATEMENT_DEPTH]:
        if node.start_byte != first:
            break
        if node.is_named and (parent == root or parent.type in _BODY_TYPES):
            return True
    return False


# Nodes whose children are statements (a function's or class's body, a module).
_BODY_TYPES = {"block", "statement_block", "compound_statement", "class_body", "declaration_list", "field_declaration_list"}


def _line_offset(source: bytes, line: int, hint: int) -> int:
    """Byte offset of tree-sitter row `line`, searching from `hint` (a line start)."""
    current = source.count(b"\n", 0, hint)
    offset = hint
    while current < line:
        nxt = source.find(b"\n", offset)
        if nxt < 0:
            break
        offset = nxt + 1
        current += 1
    return offset


def _suffix_window(source: bytes, cursor: int, budget: int, counter: TokenCounter) -> str:
    end = min(len(source), cursor + budget * 3)
    if end < len(source):
        end = source.rfind(b"\n", cursor, end) + 1 or end
    text = _decode(source[cursor:end])
    while text and counter.count_lines(text) > budget:
        text = text[: max(0, text.rfind("\n", 0, len(text) - 1) + 1)] if "\n" in text[:-1] else ""
    return text


def _imports_before(root: Node, source: bytes, types: frozenset[str], before: int) -> list[str]:
    found = []
    for child in root.named_children:
        if child.start_byte >= before:
            break
        if child.type in types:
            found.append(_decode(source[child.start_byte : child.end_byte]))
    return found


def _scope_headers(snapshot: Snapshot, cursor: int, before: int) -> list[str]:
    """Headers (with their indentation) of enclosing definitions that start before `before`."""
    spec = syntax.spec_for(snapshot.language)
    node = snapshot.tree.root_node.named_descendant_for_byte_range(max(0, cursor - 1), cursor)
    scopes = syntax.enclosing(snapshot.tree.root_node, node, spec.functions | spec.classes)
    headers = []
    source = snapshot.source
    for scope in reversed(scopes):  # outermost first
        if scope.start_byte >= before:
            continue
        line_start = source.rfind(b"\n", 0, scope.start_byte) + 1
        body = scope.child_by_field_name("body")
        end = body.start_byte if body is not None and body.start_byte > scope.start_byte else None
        if end is None:
            end = source.find(b"\n", scope.start_byte)
            end = scope.end_byte if end < 0 else end
        headers.append(_decode(source[line_start:end]).rstrip())
    return headers


def names_near(snapshot: Snapshot, cursor: int) -> list[str]:
    """Identifiers just before the cursor (nearest first), without keywords and duplicates."""
    root = snapshot.tree.root_node
    start = max(0, cursor - NEAR_CURSOR_BYTES)
    names: list[str] = []
    seen: set[str] = set()
    stack = [root.named_descendant_for_byte_range(start, cursor) or root]
    found: list[tuple[int, str]] = []
    while stack:
        node = stack.pop()
        if node.end_byte < start or node.start_byte > cursor:
            continue
        if node.type in _IDENTIFIER_TYPES and node.start_byte >= start:
            found.append((node.start_byte, snapshot.source[node.start_byte : node.end_byte].decode("utf-8", "replace")))
        stack.extend(node.named_children)
    if not found and root.start_byte <= start:
        # The window is inside one big node (or text failed to parse): fall back to a regex.
        text = _decode(snapshot.source[start:cursor])
        found = [(m.start(), m.group(0)) for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", text)]
    for _, name in sorted(found, reverse=True):
        if name not in seen and name not in _KEYWORDS and len(name) > 1:
            seen.add(name)
            names.append(name)
    return names


def _render_definitions(
    definitions: list[Definition], stubs: dict[tuple[str, int], str], display: Callable[[str], str]
) -> list[tuple[str, str]]:
    """Definitions grouped by file, files and definitions in a stable order (path, line) rather
    than by rank: the same set renders the same text, which keeps vLLM's prefix cache warm."""
    by_file: dict[str, list[Definition]] = {}
    for d in definitions:
        by_file.setdefault(d.path, []).append(d)
    rendered = []
    for path in sorted(by_file):
        lines = [stubs[(d.path, d.line)] for d in sorted(by_file[path], key=lambda d: d.line)]
        rendered.append((display(path), "\n".join(lines)))
    return rendered
