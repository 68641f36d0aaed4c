"""Import-aware completion context: what a file imports, where it is in the workspace, which
definitions the prompt shows first, and which files the index leaves out (.gitignore)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from phi_lsp.completion.context import build_context
from phi_lsp.completion.definitions import ranked_definitions
from phi_lsp.core import syntax
from phi_lsp.core.documents import Snapshot
from phi_lsp.core.ignore import GitIgnore
from phi_lsp.core.imports import ImportedName, imports_of, module_name_of
from phi_lsp.core.symbols import SymbolIndex
from phi_lsp.core.tokens import TokenCounter


def parse_imports(text: str, module: str = "pkg.sub.mod", is_package: bool = False) -> list[ImportedName]:
    source = text.encode()
    return imports_of(syntax.parse("python", source), source, module, is_package)


def test_absolute_relative_and_aliased_imports():
    found = parse_imports(
        "import os\n"
        "import pkg.util as u, pkg.io\n"
        "from pkg.models import Model, Field as F\n"
        "from . import sibling\n"
        "from .helpers import (helper,\n    other as o)\n"
        "from ..core import Engine\n"
        "from .star import *\n"
    )
    bindings = {(i.local, i.module, i.name) for i in found}
    assert ("os", "os", None) in bindings
    assert ("u", "pkg.util", None) in bindings
    assert ("pkg.io", "pkg.io", None) in bindings  # referred to as pkg.io.<attr>
    assert ("Model", "pkg.models", "Model") in bindings
    assert ("F", "pkg.models", "Field") in bindings
    assert ("sibling", "pkg.sub", "sibling") in bindings
    assert ("helper", "pkg.sub.helpers", "helper") in bindings
    assert ("o", "pkg.sub.helpers", "other") in bindings
    assert ("Engine", "pkg.core", "Engine") in bindings
    assert any(i.star and i.module == "pkg.sub.star" for i in found)


def test_relative_imports_in_a_package_init_and_above_the_top():
    # In pkg/__init__.py, `.` is pkg itself.
    found = parse_imports("from .core import Thing\nfrom ... import nothing\n", module="pkg", is_package=True)
    assert [(i.local, i.module, i.name) for i in found] == [("Thing", "pkg.core", "Thing")]


def test_imports_inside_blocks_and_broken_files_are_found():
    found = parse_imports(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
        "try:\n    from pkg.b import B\nexcept ImportError:\n    B = None\n"
        "def f(:\n    x = (\n"
    )
    assert {"A", "B"} <= {i.local for i in found}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


WORKSPACE = {
    "src/shop/__init__.py": "from .models import Order\nfrom .pricing import *\n",
    "src/shop/models.py": (
        "class Order:\n    \"\"\"A customer's order.\"\"\"\n    id: int\n    total: float = 0.0\n\n"
        "    def __init__(self, id: int, lines: list):\n        self.id = id\n\n"
        "    def add_line(self, sku: str, qty: int) -> None:\n        pass\n\n"
        "    def _private(self):\n        pass\n"
    ),
    "src/shop/pricing.py": "def apply_discount(order, percent: float) -> float:\n    \"\"\"Percent off.\"\"\"\n    return 0.0\n",
    "src/shop/util/__init__.py": "",
    "src/shop/util/money.py": "def round_cents(value: float) -> float:\n    return value\n\ndef to_str(value) -> str:\n    return ''\n",
    "src/shop/util/unused.py": "def never_imported():\n    pass\n",
    "src/app.py": (
        "import shop.util.money\n"
        "from shop import Order, apply_discount\n"
        "from shop.util import money as m\n\n"
        "def checkout(lines):\n"
        "    order = Order(1, lines)\n"
        "    total = m.to_str(order.total)\n"
        "    \n"
    ),
}


@pytest.fixture
def workspace(tmp_path) -> tuple[Path, SymbolIndex]:
    write(tmp_path, WORKSPACE)
    index = SymbolIndex()
    asyncio.run(index.build([tmp_path]))
    return tmp_path, index


def test_module_names_follow_packages(workspace):
    root, _ = workspace
    assert module_name_of(str(root / "src/shop/util/money.py")) == ("shop.util.money", False)
    assert module_name_of(str(root / "src/shop/__init__.py")) == ("shop", True)
    assert module_name_of(str(root / "src/app.py")) == ("app", False)


def test_resolution_follows_reexports_and_submodules(workspace):
    root, index = workspace
    defs, module = index.resolve("shop", "Order")  # re-exported by shop/__init__.py
    assert [d.path for d in defs] == [str(root / "src/shop/models.py")] and module is None
    defs, _ = index.resolve("shop", "apply_discount")  # through `from .pricing import *`
    assert [d.name for d in defs] == ["apply_discount"]
    defs, module = index.resolve("shop.util", "money")  # a submodule, not a definition
    assert defs == [] and module == str(root / "src/shop/util/money.py")
    assert index.resolve("shop", "missing") == ([], None)
    assert index.resolve("elsewhere", "thing") == ([], None)  # not in the workspace (stdlib, site-packages)


def snapshot_at_end(path: Path) -> tuple[Snapshot, int]:
    source = path.read_bytes()
    return Snapshot(path.as_uri(), 1, "python", source, syntax.parse("python", source)), len(source)


def test_ranking_puts_imported_but_unused_names_first(workspace):
    root, index = workspace
    app = root / "src/app.py"
    snapshot, cursor = snapshot_at_end(app)
    ranked = ranked_definitions(snapshot, cursor, index, str(app))
    names = [r.definition.name for r in ranked]
    # apply_discount is imported and not used yet: what the next line is most likely to need.
    assert names[0] == "apply_discount"
    # Used names follow, then the public methods of the class in use; never private ones.
    assert names.index("Order") < names.index("add_line")
    assert "_private" not in names and "__init__" not in names
    # `import shop.util.money` and `money as m`: members referred to as m.to_str are found.
    assert "to_str" in names and "round_cents" in names
    assert "never_imported" not in names
    # A recently viewed file's definitions move up among equals (both used near the cursor).
    assert names.index("to_str") < names.index("Order")
    boosted = ranked_definitions(snapshot, cursor, index, str(app), frozenset({str(root / "src/shop/models.py")}))
    boosted_names = [r.definition.name for r in boosted]
    assert boosted_names.index("Order") < boosted_names.index("to_str")


def test_class_stub_shows_fields_docstring_and_init(workspace):
    root, index = workspace
    app = root / "src/app.py"
    snapshot, cursor = snapshot_at_end(app)
    order = next(r for r in ranked_definitions(snapshot, cursor, index, str(app)) if r.definition.name == "Order")
    assert order.stub.splitlines() == [
        "class Order:", '    """A customer\'s order."""', "    id: int", "    total: float = 0.0",
        "    def __init__(self, id: int, lines: list): ...",
    ]


def test_prompt_holds_the_definition_in_a_stable_order(workspace):
    root, index = workspace
    app = root / "src/app.py"
    snapshot, cursor = snapshot_at_end(app)
    counter = TokenCounter()
    first = build_context(snapshot, cursor, 512, counter, "src/app.py", index=index, file_path=str(app))
    assert "def apply_discount(order, percent: float) -> float:" in "\n".join(s.text for s in first.snippets)
    # Files in path order, whatever their rank: the same set renders the same text (prefix cache).
    paths = [s.path for s in first.snippets if s.kind == "definitions"]
    assert paths == sorted(paths)
    again = build_context(snapshot, cursor, 512, counter, "src/app.py", index=index, file_path=str(app))
    assert [s.text for s in again.snippets] == [s.text for s in first.snippets]


def test_gitignore_rules_nested_and_negated(tmp_path):
    write(tmp_path, {
        ".gitignore": "build/\n*.gen.py\n!keep.gen.py\n",
        "pkg/.gitignore": "local_*.py\n",
        "pkg/a.py": "def a():\n    pass\n",
        "pkg/local_secret.py": "def hidden():\n    pass\n",
        "pkg/x.gen.py": "def generated():\n    pass\n",
        "pkg/keep.gen.py": "def kept():\n    pass\n",
        "build/lib/pkg/a.py": "def built():\n    pass\n",
        "other/local_ok.py": "def visible():\n    pass\n",
    })
    ignore = GitIgnore([tmp_path])
    assert ignore.ignored(str(tmp_path / "build/lib/pkg/a.py"))
    assert ignore.ignored(str(tmp_path / "pkg/local_secret.py"))
    assert not ignore.ignored(str(tmp_path / "pkg/keep.gen.py"))
    assert not ignore.ignored(str(tmp_path / "other/local_ok.py"))  # the nested rule stays in pkg/

    index = SymbolIndex(exclude=lambda path: path.endswith("a.py"))  # privacy.exclude
    asyncio.run(index.build([tmp_path]))
    assert not index.lookup("hidden") and not index.lookup("generated") and not index.lookup("built")
    assert index.lookup("kept") and index.lookup("visible")
    assert not index.lookup("a")
    # A file saved later is held to the same rules.
    index.index_file(tmp_path / "pkg/local_secret.py")
    assert not index.lookup("hidden")


def test_similar_chunks_come_from_other_files_with_recent_ones_weighted_up(tmp_path):
    from phi_lsp.core.chunks import ChunkIndex

    write(tmp_path, {
        "a.py": "def load_config(path):\n    with open(path) as handle:\n        return parse_toml(handle.read())\n",
        "b.py": "def load_settings(path):\n    with open(path) as handle:\n        return parse_toml(handle.read())\n",
        "c.py": "def unrelated(x):\n    return x * 2\n",
        "d.py": "def current(path):\n    with open(path) as handle:\n        return parse_toml(handle.read())\n",
    })
    index = SymbolIndex()
    index.chunks = ChunkIndex()
    asyncio.run(index.build([tmp_path]))
    query = "def current(path):\n    with open(path) as handle:\n        return parse_toml("
    found = index.chunks.similar(query, exclude_path=str(tmp_path / "d.py"), limit=3)
    assert [c.path for c, _ in found][:2] == [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert str(tmp_path / "c.py") not in [c.path for c, _ in found]
    boosted = index.chunks.similar(query, exclude_path=str(tmp_path / "d.py"), boost=frozenset({str(tmp_path / "b.py")}))
    assert boosted[0][0].path == str(tmp_path / "b.py")
    # Through the context: the similar code is in the prompt, marked as such, only when asked for.
    from phi_lsp.completion.context import Sources

    source = (tmp_path / "d.py").read_bytes()
    snapshot = Snapshot((tmp_path / "d.py").as_uri(), 1, "python", source, syntax.parse("python", source))
    on = build_context(snapshot, len(source), 1024, TokenCounter(), "d.py", index=index,
                       file_path=str(tmp_path / "d.py"), sources=Sources(chunks=True))
    assert any(s.kind == "similar" and "load_config" in s.text for s in on.snippets) and "chunks" in on.sources_used
    off = build_context(snapshot, len(source), 1024, TokenCounter(), "d.py", index=index, file_path=str(tmp_path / "d.py"))
    assert not any(s.kind == "similar" for s in off.snippets)
    # Removing a file removes its chunks.
    index.remove(str(tmp_path / "a.py"))
    assert str(tmp_path / "a.py") not in [c.path for c, _ in index.chunks.similar(query, None, limit=5)]
