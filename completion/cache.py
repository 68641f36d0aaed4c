"""Suggestions that can be served again without asking the model.

When the user types characters that match the suggestion on screen, the rest of the suggestion
is still right: it is served from here ("typed-through"). An entry remembers where it was made
(document, cursor offset, a stretch of text before and after the cursor); a later request
matches when the document between the two cursors holds exactly what was typed and the text
around is unchanged.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

CONTEXT_BYTES = 2048  # how much text on each side must be unchanged
MAX_ENTRIES_PER_DOCUMENT = 8
MAX_AGE_S = 120.0


@dataclass
class Entry:
    uri: str
    cursor: int
    before: bytes  # the CONTEXT_BYTES before the cursor
    after: bytes  # the CONTEXT_BYTES after the cursor
    suggestions: list[str]
    made_at: float
    suggestion_id: str = ""


def remainder(entry: Entry, source: bytes, cursor: int) -> list[str] | None:
    """What is left of the entry's suggestions at `cursor` in `source`, or None if it does not
    apply (text changed elsewhere near the cursor, or the user typed something else)."""
    if cursor < entry.cursor:
        return None
    typed = source[entry.cursor : cursor]
    if b"\n" in typed and len(typed) > 400:
        return None
    if source[max(0, entry.cursor - len(entry.before)) : entry.cursor] != entry.before:
        return None
    if source[cursor : cursor + len(entry.after)] != entry.after:
        return None
    try:
        typed_text = typed.decode("utf-8")
    except UnicodeDecodeError:
        return None
    left = [s[len(typed_text) :] for s in entry.suggestions if s.startswith(typed_text) and len(s) > len(typed_text)]
    return left or None


class SuggestionCache:
    def __init__(self) -> None:
        self._entries: dict[str, OrderedDict[int, Entry]] = {}
        self.hits = 0
        self.misses = 0

    def put(self, uri: str, source: bytes, cursor: int, suggestions: list[str], suggestion_id: str = "") -> None:
        if not suggestions:
            return
        entries = self._entries.setdefault(uri, OrderedDict())
        entries[cursor] = Entry(
            uri,
            cursor,
            source[max(0, cursor - CONTEXT_BYTES) : cursor],
            source[cursor : cursor + CONTEXT_BYTES],
            list(suggestions),
            time.monotonic(),
            suggestion_id,
        )
        entries.move_to_end(cursor)
        while len(entries) > MAX_ENTRIES_PER_DOCUMENT:
            entries.popitem(last=False)

    def get(self, uri: str, source: bytes, cursor: int) -> tuple[list[str], Entry] | None:
        now = time.monotonic()
        entries = self._entries.get(uri)
        if entries:
            # Newest first: the latest suggestion is the one on screen.
            for entry in reversed(list(entries.values())):
                if now - entry.made_at > MAX_AGE_S:
                    continue
                left = remainder(entry, source, cursor)
                if left:
                    self.hits += 1
                    return left, entry
        self.misses += 1
        return None

    def forget(self, uri: str) -> None:
        self._entries.pop(uri, None)
