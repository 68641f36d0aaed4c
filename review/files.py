"""Files on disk as review jobs (for the command line and workspace review)."""

from __future__ import annotations

from pathlib import Path

from phi_lsp.core import positions, syntax
from phi_lsp.core.documents import Snapshot
from phi_lsp.core.symbols import MAX_FILE_BYTES
from phi_lsp.review import formats
from phi_lsp.review.pipeline import FileJob


def load_job(path: Path) -> FileJob | None:
    """A file as a review job (None when it has no grammar or cannot be read)."""
    language = syntax.language_for(str(path))
    if language is None:
        return None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        source = path.read_bytes()
    except OSError:
        return None
    tree = syntax.parse(language, source)
    snapshot = Snapshot(path.resolve().as_uri(), 0, language, source, tree, positions.UTF16)
    return FileJob(snapshot, formats.display_path(str(path)))
