"""Incremental sync: the document store against a plain-string model and a from-scratch parse."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from lsprotocol import types

from phi_lsp.core import syntax
from phi_lsp.core.documents import Document
from tests import text_model

ENCODINGS = ["utf-8", "utf-16", "utf-32"]
# Incremental edits per CI run: >= 10,000 over the three encodings (counted and asserted
# below; each step is one didChange of one to six edits, and a whole-document replace now
# and then). PHI_LSP_FUZZ_EXAMPLES scales the run (and the asserted count) up or down.
EXAMPLES = int(os.environ.get("PHI_LSP_FUZZ_EXAMPLES", "70"))
STEPS = 50
MIN_EDITS = 10_000 * EXAMPLES // 70

# Characters that stress every conversion: multibyte, astral (surrogate pairs in UTF-16),
# CR/LF in every combination, form feed and Unicode line separators (NOT line ends in LSP).
PIECES = st.sampled_from(
    ["a", "x", " ", "    ", "def f():\n", "return 1", "(", ")", ":", "\n", "\r\n", "\r", "\f",
     "\u2028", "é", "ß", "中", "😀", "𝔘", "\t", "#", '"', "'''", "class A:\n    pass\n", "[", "]",
     # lone surrogates, as a client's JSON may carry them ("\ud83d" then "\ude00" may meet)
     "\ud83d", "\ude00", "\x00"]
)
TEXT = st.lists(PIECES, max_size=8).map("".join)


def tree_shape(node):
    """Every node's type, byte range, points and error/missing flags, depth first."""
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        out.append((n.type, n.start_byte, n.end_byte, n.start_point, n.end_point, n.is_missing, n.is_error))
        stack.extend(reversed(n.children))
    return out


def make_machine(encoding: str, language: str):
    class SyncMachine(RuleBasedStateMachine):
        @initialize(text=TEXT)
        def open(self, text):
            self.text = text
            self.doc = Document("file:///t.py" if language == "python" else "file:///t.txt", text, 1, language, encoding)

        def draw_change(self, data) -> types.TextDocumentContentChangePartial:
            """One edit at random positions (past the end of a line or of the document, inside
            a character), applied to the plain-string model."""
            lines = text_model.lines_with_starts(self.text)

            def position():
                line = data.draw(st.integers(0, len(lines)))  # one past the end too
                width = sum(text_model.unit_width(c, encoding) for c in lines[line][1]) if line < len(lines) else 0
                return line, data.draw(st.integers(0, width + 2))  # past the end too

            start, end, new = position(), position(), data.draw(TEXT)
            self.text = text_model.apply_edit(self.text, start, end, new, encoding)
            counts[encoding, language] += 1
            return types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(*start), types.Position(*end)), text=new
            )

        @rule(data=st.data(), n=st.integers(1, 6))
        def edit(self, data, n):
            # One didChange of n edits, each relative to the text the previous one left.
            changes = [self.draw_change(data) for _ in range(n)]
            self.doc.apply_changes(changes, self.doc.version + 1)

        @rule(new=TEXT)
        def replace_all(self, new):
            self.text = new
            self.doc.apply_changes([types.TextDocumentContentChangeWholeDocument(text=new)], self.doc.version + 1)

        @invariant()
        def same_text_and_tree(self):
            assert self.doc.text == self.text
            assert self.doc.line_count() == len(text_model.lines_with_starts(self.text))
            if self.doc.tree is not None:
                fresh = syntax.parse(self.doc.language, self.doc.source)
                assert tree_shape(self.doc.tree.root_node) == tree_shape(fresh.root_node)

        @invariant()
        def positions_round_trip(self):
            # The end of the document maps back to the model's last position.
            end = self.doc.position_at(len(self.doc.source))
            assert (end.line, end.character) == text_model.position_of(self.text, len(self.text), encoding)

    SyncMachine.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    return SyncMachine


counts: Counter = Counter()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_random_edits_python(encoding):
    # A third of the >= 10,000 incremental edits of a run in each encoding. Hypothesis varies
    # the length of its runs a lot (1,900 to 6,300 edits for the same settings), so it runs
    # again, with new random edits, until the count is reached.
    counts[encoding, "python"] = 0
    for _ in range(6):
        make_machine(encoding, "python").TestCase().runTest()
        if counts[encoding, "python"] >= MIN_EDITS // 3:
            break
    assert counts[encoding, "python"] >= MIN_EDITS // 3, counts


def test_random_edits_plain_text():
    make_machine("utf-16", None).TestCase().runTest()
