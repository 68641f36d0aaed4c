"""Review units: what is reviewed together, and what identifies it across edits."""

from __future__ import annotations

from lsprotocol import types

from phi_lsp.core.documents import Document
from phi_lsp.review.units import MAX_UNIT_BYTES, extract_units

PY = '''import os
from pathlib import Path

# Loads the thing.
@cache
def load(path):
    return Path(path).read_text()


class Store:
    """Keeps items."""

    limit = 10

    def add(self, item):
        self.items.append(item)

    # A comment inside the class.
    def get(self, key):
        return self.items[key]

    later = load("x")


print(load("y"))
'''


def units_of(text: str, name: str = "file:///w/m.py", language: str | None = "python"):
    return {u.name: u for u in extract_units(Document(name, text, 1, language).snapshot())}


def test_python_split_into_functions_methods_classes_and_module_code():
    units = units_of(PY)
    assert set(units) == {"<module>", "load", "Store", "Store.add", "Store.get"}
    assert units["load"].kind == "function"
    assert units["load"].lines == (3, 4, 5, 6)  # the comment right above and the decorator belong to it
    assert units["Store.add"].kind == "method" and units["Store.add"].header == "class Store:"
    assert units["Store.get"].lines[0] == 17  # with its leading comment
    # The class keeps its header, docstring and attributes, not its methods' lines.
    store = units["Store"]
    assert store.lines[:5] == (9, 10, 11, 12, 13) and 21 in store.lines
    assert not any(line in store.lines for line in units["Store.add"].lines)
    assert not store.contiguous(0, len(store.lines) - 1)
    assert units["<module>"].lines == (0, 1, 24)
    assert "load" in units["<module>"].calls and "load" in units["Store"].calls
    assert units["load"].calls == ("read_text", "Path")
    # Every line belongs to at most one unit.
    seen = [line for u in units.values() for line in u.lines]
    assert len(seen) == len(set(seen))


def test_digest_survives_edits_elsewhere_and_changes_with_the_unit():
    before = units_of(PY)
    document = Document("file:///w/m.py", PY, 1, "python")
    document.apply_changes([
        types.TextDocumentContentChangePartial(  # new lines at the top: everything moves
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="import sys\n\n\n"),
        types.TextDocumentContentChangePartial(  # and a change inside Store.get (now line 22)
            range=types.Range(start=types.Position(line=22, character=25), end=types.Position(line=22, character=25)),
            text=".copy()"),
    ], 2)
    after = {u.name: u for u in extract_units(document.snapshot())}
    assert after["Store.get"].text[-1].endswith(b".copy()[key]")
    assert after["load"].digest == before["load"].digest
    assert after["load"].lines[0] == before["load"].lines[0] + 3
    assert after["Store.add"].digest == before["Store.add"].digest
    assert after["Store"].digest == before["Store"].digest
    assert after["Store.get"].digest != before["Store.get"].digest
    assert after["<module>"].digest != before["<module>"].digest  # the import was added there


def test_other_languages():
    js = 'import x from "y";\nexport function f(a) {\n  return g(a);\n}\nclass K extends Z {\n  m() { return new Q(); }\n}\n'
    units = units_of(js, "file:///w/a.js", "javascript")
    assert {(u.kind, n) for n, u in units.items()} == {
        ("module", "<module>"), ("function", "f"), ("class", "K"), ("method", "K.m")}
    assert units["K.m"].calls == ("Q",)
    go = "package main\n\nimport \"fmt\"\n\nfunc (s *S) Run() {\n\tfmt.Println(s)\n}\n\nfunc main() {}\n"
    units = units_of(go, "file:///w/m.go", "go")
    assert {"Run", "main", "<module>"} <= set(units)
    rust = "use std::io;\n\nstruct P { x: i32 }\n\nimpl P {\n    fn get(&self) -> i32 { self.x }\n}\n"
    units = units_of(rust, "file:///w/m.rs", "rust")
    assert any(u.kind == "method" and u.name.endswith(".get") for u in units.values())


def test_plain_text_has_no_units():
    assert units_of("just some notes\n", "file:///w/notes.txt", None) == {}


def test_large_units_are_split_and_huge_lines_left_out():
    body = "".join(f"    value_{i} = compute({i}) + other_function_name({i})\n" for i in range(200))
    text = "def big():\n" + body + "\n\ndef small():\n    return " + "x" * (MAX_UNIT_BYTES + 10) + "\n"
    units = units_of(text)
    parts = [u for name, u in units.items() if name.startswith("big (part ")]
    assert len(parts) >= 4
    assert all(len(u.joined()) <= MAX_UNIT_BYTES for u in parts)
    assert sorted(line for u in parts for line in u.lines) == list(range(201))
    assert len({u.digest for u in parts}) == len(parts)
    # The minified line is not reviewed; the rest of its unit is.
    assert units["small"].lines == (203,)


def test_line_ends_of_every_kind():
    # A lone CR ends an LSP line but not a tree-sitter row; a form feed ends neither.
    text = "def a():\r\n    return 1\r\n\r\n\x0c\r\ndef b():\r    return 2\n"
    units = units_of(text)
    assert units["a"].text == (b"def a():", b"    return 1")
    assert units["a"].lines == (0, 1)
    b = units["b"]
    assert b.text == (b"def b():", b"    return 2") and b.lines == (4, 5)
