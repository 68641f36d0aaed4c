"""Similar code from elsewhere in the workspace, for what imports do not reach: tree-sitter chunks
(functions, methods, classes' heads) scored by the Jaccard similarity of their identifier sets to
the lines before the cursor, as llama.vim's ring buffer and Cody's local retrieval do.

Only identifier sets and line ranges are kept (the text is read back when a chunk is chosen), and
an inverted index from identifier to chunks limits scoring to chunks that share a rare one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tree_sitter import Tree

from phi_lsp.core import syntax

MAX_CHUNK_LINES = 40
MIN_TOKEN_CHARS = 3
COMMON_SHARE = 0.05  # identifiers in more chunks than this share say nothing about similarity
MAX_CANDIDATES = 400
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STOP = set("self cls None True False return def class import from pass elif else while with try except finally "
            "raise yield await async lambda not and for".split())


@dataclass(frozen=True)
class Chunk:
    path: str
    start_line: int  # 0-based, inclusive
    end_line: int  # exclusive
    tokens: frozenset[str]


def identifiers(text: str) -> set[str]:
    return {w for w in _WORD.findall(text) if len(w) >= MIN_TOKEN_CHARS and w not in _STOP}


def chunks_in(tree: Tree, source: bytes, language: str | None, path: str) -> list[Chunk]:
    spec = syntax.spec_for(language)
    kinds = spec.functions | spec.classes
    if not kinds:
        return []
    found: list[Chunk] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        for child in node.named_children:
            if child.type in kinds:
                start = child.start_point.row
                end = min(child.end_point.row + 1, start + MAX_CHUNK_LINES)
                text = source[child.start_byte : child.end_byte].decode("utf-8", "replace")
                text = "\n".join(text.split("\n")[: end - start])
                found.append(Chunk(path, start, end, frozenset(identifiers(text))))
                if child.type in spec.classes:
                    stack.append(child)  # methods are chunks of their own
            elif child.type in ("decorated_definition", "block", "class_body", "declaration_list", "export_statement"):
                stack.append(child)
    return found


class ChunkIndex:
    def __init__(self):
        self._by_file: dict[str, list[int]] = {}
        self._chunks: dict[int, Chunk] = {}
        self._postings: dict[str, set[int]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def update(self, path: str, tree: Tree | None, source: bytes, language: str | None) -> None:
        self.remove(path)
        if tree is None:
            return
        ids = []
        for chunk in chunks_in(tree, source, language, path):
            cid = self._next
            self._next += 1
            self._chunks[cid] = chunk
            ids.append(cid)
            for token in chunk.tokens:
                self._postings.setdefault(token, set()).add(cid)
        self._by_file[path] = ids

    def remove(self, path: str) -> None:
        for cid in self._by_file.pop(path, ()):
            chunk = self._chunks.pop(cid)
            for token in chunk.tokens:
                posting = self._postings.get(token)
                if posting is not None:
                    posting.discard(cid)
                    if not posting:
                        del self._postings[token]

    def similar(self, query: str, exclude_path: str | None, limit: int = 2,
                boost: frozenset[str] = frozenset(), boost_factor: float = 1.5) -> list[tuple[Chunk, float]]:
        """The chunks most like `query` (Jaccard of identifier sets), recent files weighted up."""
        wanted = identifiers(query)
        if not wanted or not self._chunks:
            return []
        common = max(50, int(len(self._chunks) * COMMON_SHARE))
        counts: dict[int, int] = {}
        for token in wanted:
            posting = self._postings.get(token)
            if posting is None or len(posting) > common:
                continue
            for cid in posting:
                counts[cid] = counts.get(cid, 0) + 1
        best = sorted(counts.items(), key=lambda item: -item[1])[:MAX_CANDIDATES]
        scored = []
        for cid, _ in best:
            chunk = self._chunks[cid]
            if chunk.path == exclude_path:
                continue
            score = len(wanted & chunk.tokens) / len(wanted | chunk.tokens)
            if chunk.path in boost:
                score *= boost_factor
            scored.append((chunk, score))
        scored.sort(key=lambda item: (-item[1], item[0].path, item[0].start_line))
        return scored[:limit]
