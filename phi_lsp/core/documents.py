"""Open documents: UTF-8 text kept in step with the editor, and a tree-sitter tree per document.

Each didChange edit is applied to the bytes, told to the tree with `Tree.edit` (byte offsets and
tree-sitter points), and the document is reparsed once per notification with the old tree, so a
keystroke costs an incremental parse, not a full one.

Memory stays bounded: a tree costs ~0.7 MB per 1,000 lines, so only the most recently used
documents (TreeCache, default 48) keep theirs; another document's tree is rebuilt by a full
parse the next time something needs it, and is incremental again from then on.

Two kinds of "line" meet here:
- LSP lines end at "\\n", "\\r\\n" or a lone "\\r" (and nothing else: not form feeds or U+2028,
  which `str.splitlines` would split on);
- tree-sitter rows end at "\\n" only.
They differ only where a lone "\\r" occurs, so each is computed on its own terms.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

from lsprotocol import types
from tree_sitter import Parser, Point, Tree

from phi_lsp.core import positions, syntax

_LINE_END = re.compile(rb"\r\n|\r|\n")


class LineIndex:
    """Byte offsets where LSP lines start, computed lazily.

    An edit only invalidates the lines after its start; the rest is rescanned on demand. Typing
    at line 5,000 of a 10,000-line file therefore never rescans the other 5,000 lines.
    """

    def __init__(self, source: bytes):
        self._source = source
        self._starts = [0]
        self._complete = False

    def reset(self, source: bytes, edit_start: int) -> None:
        self._source = source
        # A line start equal to edit_start may change meaning (an "\n" typed after a lone "\r").
        keep = bisect.bisect_left(self._starts, edit_start)
        del self._starts[max(keep, 1) :]
        self._complete = False

    def _scan(self, until_line: int | None = None, until_offset: int | None = None) -> None:
        if self._complete:
            return
        starts = self._starts
        for match in _LINE_END.finditer(self._source, starts[-1]):
            starts.append(match.end())
            if until_line is not None and len(starts) > until_line + 1:
                return
            if until_offset is not None and match.end() > until_offset:
                return
        self._complete = True

    def line_start(self, line: int) -> int | None:
        """Byte offset where `line` starts, or None past the last line."""
        if line >= len(self._starts):
            self._scan(until_line=line)
        if line < len(self._starts):
            return self._starts[line]
        return None

    def line_of(self, offset: int) -> int:
        if not self._complete and self._starts[-1] <= offset:
            self._scan(until_offset=offset)
        return bisect.bisect_right(self._starts, offset) - 1

    def line_count(self) -> int:
        self._scan()
        return len(self._starts)


@dataclass(frozen=True)
class Limits:
    """How large a document may be and still get a syntax tree (settings `limits.*`).

    A parse costs time and memory in proportion to the text (a 5 MB minified line: 28 s and
    +925 MB for its tree); above these, the document is plain text: completion sees the text
    around the cursor, and review and the symbol index leave it out."""

    max_document_bytes: int = 2_097_152
    max_line_bytes: int = 20_000

    def exceeded_by(self, source: bytes) -> str | None:
        """Why `source` is too large, in words, or None."""
        if len(source) > self.max_document_bytes:
            return f"{len(source):,} bytes, more than limits.maxDocumentBytes ({self.max_document_bytes:,})"
        return self.long_line_in(source)

    def long_line_in(self, text: bytes) -> str | None:
        if len(text) <= self.max_line_bytes:
            return None
        longest = max(map(len, text.split(b"\n")))
        if longest > self.max_line_bytes:
            return f"a line of {longest:,} bytes, more than limits.maxLineBytes ({self.max_line_bytes:,})"
        return None


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of a document at one version, safe to use across awaits."""

    uri: str
    version: int
    language: str | None
    source: bytes
    tree: Tree | None
    encoding: str = positions.UTF16
    too_large: str | None = None  # why the document has no tree although its language has a grammar

    @cached_property
    def text(self) -> str:
        return positions.decode(self.source)

    @cached_property
    def buffer(self) -> "TextBuffer":
        """Position conversions for this version of the text."""
        return TextBuffer(self.source, self.encoding)


class TextBuffer:
    """UTF-8 text with LSP line/column conversions in one position encoding."""

    def __init__(self, source: bytes, encoding: str = positions.UTF16):
        self.source = source
        self.encoding = encoding
        self.lines = LineIndex(source)

    def line_count(self) -> int:
        return self.lines.line_count()

    def line_bytes(self, line: int) -> bytes:
        """The bytes of LSP line `line`, without its line ending."""
        start = self.lines.line_start(line)
        if start is None:
            return b""
        end = self.lines.line_start(line + 1)
        if end is None:
            return self.source[start:]
        chunk = self.source[start:end]
        return chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]

    def offset_at(self, position: types.Position) -> int:
        """Byte offset of an LSP position; positions past the end clamp to the end."""
        line = max(0, position.line)
        start = self.lines.line_start(line)
        if start is None:
            return len(self.source)
        column = positions.units_to_byte_column(
            self.line_bytes(line), position.character, self.encoding
        )
        return start + column

    def position_at(self, offset: int) -> types.Position:
        """LSP position of a byte offset (clamped to the document)."""
        offset = max(0, min(offset, len(self.source)))
        line = self.lines.line_of(offset)
        start = self.lines.line_start(line) or 0
        line_bytes = self.line_bytes(line)
        character = positions.byte_column_to_units(line_bytes, offset - start, self.encoding)
        return types.Position(line=line, character=character)

    def range_of(self, start: int, end: int) -> types.Range:
        return types.Range(start=self.position_at(start), end=self.position_at(end))



class TreeCache:
    """The documents that may hold a tree, least recently used first."""

    def __init__(self, limit: int = 48):
        self.limit = limit
        self._order: OrderedDict[str, "Document"] = OrderedDict()

    def touch(self, document: "Document") -> None:
        self._order[document.uri] = document
        self._order.move_to_end(document.uri)
        while len(self._order) > self.limit:
            _, oldest = self._order.popitem(last=False)
            oldest._tree = None

    def forget(self, uri: str) -> None:
        self._order.pop(uri, None)


class Document(TextBuffer):
    def __init__(
        self,
        uri: str,
        text: str,
        version: int = 0,
        language_id: str | None = None,
        encoding: str = positions.UTF16,
        trees: TreeCache | None = None,
        limits: Limits = Limits(),
    ):
        self.uri = uri
        self.version = version
        self.language_id = language_id
        self.language = syntax.language_for(uri, language_id)
        super().__init__(positions.encode(text), encoding)
        self._tree: Tree | None = None
        self._trees = trees
        self._parser: Parser | None = syntax.parser_for(self.language) if self.language else None
        self._text: str | None = None
        self.limits = limits
        self.too_large: str | None = limits.exceeded_by(self.source)

    @property
    def tree(self) -> Tree | None:
        """The document's syntax tree (parsed now if it was evicted to save memory); None for
        plain text and documents over the limits."""
        if self.too_large is not None:
            return None
        if self._tree is None and self._parser is not None:
            self._tree = self._parser.parse(self.source)
        if self._trees is not None and self._tree is not None:
            self._trees.touch(self)
        return self._tree

    # -- reading ---------------------------------------------------------------------------

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = positions.decode(self.source)
        return self._text

    def snapshot(self) -> Snapshot:
        tree = self.tree
        tree = tree.copy() if tree is not None else None
        return Snapshot(self.uri, self.version, self.language, self.source, tree, self.encoding, self.too_large)

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits
        self.too_large = limits.exceeded_by(self.source)
        if self.too_large is not None:
            self._tree = None

    # -- editing ---------------------------------------------------------------------------

    def apply_changes(
        self, changes: Iterable[types.TextDocumentContentChangeEvent], version: int | None
    ) -> None:
        """Apply didChange content changes in order, then reparse once."""
        incremental = self._tree is not None
        was_too_large = self.too_large is not None
        for change in changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                self._apply_partial(change.range, change.text)
            else:
                self._replace_all(change.text)
                incremental = False
        if version is not None:
            self.version = version
        if was_too_large:  # it may fit again: look at it all (it is at most a few MB, or over at once)
            self.too_large = self.limits.exceeded_by(self.source)
        self._reparse(incremental)

    def _replace_all(self, text: str) -> None:
        self.source = positions.encode(text)
        self.lines = LineIndex(self.source)
        self._text = text
        self.too_large = self.limits.exceeded_by(self.source)

    def _check_edit(self, start: int, end: int) -> None:
        """Whether the edit that left [start, end) in the text made the document too large
        (only the lines it touched can have grown: cheap per keystroke)."""
        if self.too_large is not None:
            return
        if len(self.source) > self.limits.max_document_bytes:
            self.too_large = self.limits.exceeded_by(self.source)
            return
        line_start = self.source.rfind(b"\n", 0, start) + 1
        line_end = self.source.find(b"\n", end)
        self.too_large = self.limits.long_line_in(self.source[line_start : len(self.source) if line_end < 0 else line_end])

    def _apply_partial(self, rng: types.Range, text: str) -> None:
        start = self.offset_at(rng.start)
        end = self.offset_at(rng.end)
        if end < start:
            start, end = end, start
        new_bytes = positions.encode(text)
        old_source = self.source
        start_point = _point_at(old_source, start)
        old_end_point = _point_at(old_source, end)
        self.source = old_source[:start] + new_bytes + old_source[end:]
        new_end = start + len(new_bytes)
        self._text = None
        self.lines.reset(self.source, start)
        self._check_edit(start, new_end)
        if self._tree is not None:
            self._tree.edit(

                start_byte=start,
                old_end_byte=end,
                new_end_byte=new_end,
                start_point=start_point,
                old_end_point=old_end_point,
                new_end_point=_point_at(self.source, new_end),
            )

    def _reparse(self, incremental: bool) -> None:
        if self._parser is None:
            return
        if self.too_large is not None:
            self._tree = None  # and no parse: that is what the limits are for
            return
        if incremental and self._tree is not None:
            self._tree = self._parser.parse(self.source, self._tree)
        else:
            # No tree to reuse: parse when next needed (a document being typed in soon is).
            self._tree = None


def _point_at(source: bytes, offset: int) -> Point:
    """tree-sitter point (row counted in "\\n", column in bytes) of a byte offset."""
    row = source.count(b"\n", 0, offset)
    line_start = source.rfind(b"\n", 0, offset) + 1
    return Point(row, offset - line_start)


class DocumentStore:
    """The open documents, by URI. Only the LSP sync handlers change them."""

    def __init__(self, encoding: str = positions.UTF16, max_trees: int = 48):
        self.encoding = encoding
        self.trees = TreeCache(max_trees)
        self.limits = Limits()
        self._documents: dict[str, Document] = {}

    def set_limits(self, limits: Limits) -> list[Document]:
        """Apply new limits to every open document; the ones now too large."""
        if limits == self.limits:
            return []
        self.limits = limits
        newly = []
        for document in self._documents.values():
            before = document.too_large
            document.set_limits(limits)
            if before is None and document.too_large is not None:
                newly.append(document)
        return newly

    def open(self, uri: str, text: str, version: int, language_id: str | None) -> Document:
        document = Document(uri, text, version, language_id, self.encoding, self.trees, self.limits)
        self._documents[uri] = document
        return document

    def close(self, uri: str) -> Document | None:
        self.trees.forget(uri)
        return self._documents.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._documents.get(uri)

    def __contains__(self, uri: str) -> bool:
        return uri in self._documents

    def __iter__(self):
        return iter(list(self._documents.values()))

    def __len__(self) -> int:
        return len(self._documents)
