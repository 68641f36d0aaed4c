"""Position conversions in every encoding, at the awkward places."""

import pytest
from lsprotocol import types

from phi_lsp.core import positions, syntax
from phi_lsp.core.documents import Document


@pytest.mark.parametrize(
    "encoding, units, byte_col",
    [
        ("utf-8", 0, 0), ("utf-8", 1, 1), ("utf-8", 2, 1), ("utf-8", 5, 5), ("utf-8", 9, 9), ("utf-8", 99, 9),
        ("utf-16", 1, 1), ("utf-16", 2, 1), ("utf-16", 3, 5), ("utf-16", 4, 6), ("utf-16", 99, 9),
        ("utf-32", 1, 1), ("utf-32", 2, 5), ("utf-32", 3, 6), ("utf-32", 5, 9),
    ],
)
def test_units_to_byte_column(encoding, units, byte_col):
    line = "a😀b中".encode()  # 1 + 4 + 1 + 3 bytes; utf-16: 1 + 2 + 1 + 1
    # Inside the astral character (utf-16 unit 2, utf-8 bytes 2..4) rounds down to its start.
    assert positions.units_to_byte_column(line, units, encoding) == byte_col


@pytest.mark.parametrize("encoding, expected", [("utf-8", 9), ("utf-16", 5), ("utf-32", 4)])
def test_byte_column_to_units(encoding, expected):
    line = "a😀b中".encode()
    assert positions.byte_column_to_units(line, len(line), encoding) == expected
    assert positions.byte_column_to_units(line, 3, encoding) == 1  # inside 😀: counts "a" only


def test_form_feed_and_line_separator_are_not_line_ends():
    doc = Document("file:///a.py", "a\fb\u2028c\nd\re\r\nf", 1, "python")
    assert doc.line_count() == 4
    assert doc.line_bytes(0) == "a\fb\u2028c".encode()
    assert doc.line_bytes(1) == b"d"
    assert doc.line_bytes(3) == b"f"
    assert doc.offset_at(types.Position(2, 1)) == len("a\fb\u2028c\nd\re".encode())


def test_positions_past_the_end_clamp():
    doc = Document("file:///a.py", "ab\ncd", 1, "python")
    assert doc.offset_at(types.Position(0, 99)) == 2
    assert doc.offset_at(types.Position(7, 3)) == 5
    assert doc.position_at(99) == types.Position(1, 2)


def test_lone_cr_rows_differ_between_lsp_and_tree_sitter():
    # LSP sees 3 lines; tree-sitter rows end at \n only, so it sees 2.
    doc = Document("file:///a.py", "x = 1\ry = 2\nz = 3", 1, "python")
    assert doc.line_count() == 3
    assert doc.tree.root_node.end_point.row == 1
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(2, 0), types.Position(2, 1)), text="w"
    )
    doc.apply_changes([change], 2)
    assert doc.text == "x = 1\ry = 2\nw = 3"
    fresh = syntax.parse("python", doc.source)
    assert str(doc.tree.root_node) == str(fresh.root_node)
    assert doc.tree.root_node.end_point == fresh.root_node.end_point


def test_typing_newline_after_lone_cr_joins_the_line_end():
    doc = Document("file:///a.txt", "a\rb", 1, None)
    assert doc.line_count() == 2
    change = types.TextDocumentContentChangePartial(
        range=types.Range(types.Position(1, 0), types.Position(1, 0)), text="\n"
    )
    doc.apply_changes([change], 2)
    assert doc.text == "a\r\nb"
    assert doc.line_count() == 2  # "\r\n" is one line end
