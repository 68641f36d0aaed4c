"""How hard a review unit is, by tree-sitter: its decision points, its control-flow nesting and
its length. A unit past any threshold is "complex" and goes to the review escalation model
directly (phi_lsp/routing.py, docs/ROUTING.md).

- branches: decision points whose node starts on one of the unit's lines: if/elif/else-if,
  loops, except/catch, switch/match cases, conditional expressions, `and`/`or`/`&&`/`||`
  (McCabe's cyclomatic complexity is branches + 1);
- nesting: the deepest chain of nested control-flow statements (if, loops, try, with, switch,
  match) inside the unit; function and class bodies do not count;
- lines: the unit's non-blank lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi_lsp.core.documents import Snapshot

from phi_lsp.review.units import Unit

BRANCHES_AT_LEAST = 10  # cyclomatic complexity 11 and more: "complex" in McCabe's terms
NESTING_AT_LEAST = 4
LINES_AT_LEAST = 60

# Control-flow statements that nest (and count as a decision point themselves where they
# branch), across the bundled grammars.
_NESTING = frozenset({
    "if_statement", "for_statement", "for_in_statement", "enhanced_for_statement", "while_statement",
    "do_statement", "try_statement", "with_statement", "match_statement", "switch_statement",
    "switch_expression", "if_expression", "for_expression", "while_expression", "loop_expression",
    "match_expression", "select_statement", "expression_switch_statement", "type_switch_statement",
    "if", "unless", "while", "until", "for", "case",  # ruby
})
_DECISIONS = frozenset({
    "if_statement", "elif_clause", "for_statement", "for_in_statement", "enhanced_for_statement",
    "while_statement", "do_statement", "except_clause", "catch_clause", "case_clause", "switch_case",
    "switch_label", "case_statement", "expression_case", "type_case", "communication_case",
    "match_arm", "conditional_expression", "ternary_expression", "if_expression", "for_expression",
    "while_expression", "loop_expression", "for_in_clause", "if_clause", "boolean_operator",
    "if", "elsif", "unless", "while", "until", "for", "when", "rescue",  # ruby
})
_LOGICAL = (b"&&", b"||", b"and", b"or")
_MAX_NODES = 50_000


@dataclass(frozen=True)
class Complexity:
    branches: int
    nesting: int
    lines: int

    @property
    def cyclomatic(self) -> int:
        return self.branches + 1

    def is_complex(self) -> bool:
        return (
            self.branches >= BRANCHES_AT_LEAST
            or self.nesting >= NESTING_AT_LEAST
            or self.lines >= LINES_AT_LEAST
        )

    def as_json(self) -> dict:
        return {"branches": self.branches, "nesting": self.nesting, "lines": self.lines}


def measure(snapshot: Snapshot, unit: Unit) -> Complexity:
    """The unit's complexity on the file's tree (lines only when the file has no tree)."""
    lines = sum(1 for text in unit.text if text.strip())
    tree = snapshot.tree
    if tree is None:
        return Complexity(0, 0, lines)
    buffer = snapshot.buffer
    start = buffer.lines.line_start(unit.first_line) or 0
    after = buffer.lines.line_start(unit.last_line + 1)
    end = len(snapshot.source) if after is None else after
    owned = unit.owns
    line_of = buffer.lines.line_of
    source = snapshot.source
    branches = nesting = visited = 0
    stack = [(tree.root_node, 0)]
    while stack and visited < _MAX_NODES:
        node, depth = stack.pop()
        visited += 1
        if node.end_byte <= start or node.start_byte >= end:
            continue
        kind = node.type
        mine = start <= node.start_byte < end and owned(line_of(node.start_byte))
        if kind in _NESTING and mine:
            depth += 1
            nesting = max(nesting, depth)
        if mine and (kind in _DECISIONS or (kind == "binary_expression" and _logical(node, source))):
            branches += 1
        for child in node.named_children:
            stack.append((child, depth))
    return Complexity(branches, nesting, lines)


def _logical(node, source: bytes) -> bool:
    operator = node.child_by_field_name("operator")
    return operator is not None and source[operator.start_byte : operator.end_byte] in _LOGICAL
