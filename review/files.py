"""Files on disk as review jobs (for the command line and workspace review)."""

from __future__ import annotations

from pathlib import Path

from phi_lsp.core import positions, syntax
from phi_lsp.core.documents import Limits, Snapshot
from phi_lsp.core.symbols import MAX_FILE_BYTES
from phi_lsp.review import formats
from phi_lsp.review.pipeline import FileJob


def load_job(path: Path, limits: Limits = Limits()) -> FileJob | None:
    """A file as a review job (None when it has no grammar, cannot be read or is too large)."""
    return load(path, limits)[0]


def load(path: Path, limits: Limits = Limits()) -> tuple[FileJob | None, str | None]:
    """(the file as a review job, or None and why not when it is too large to review)."""
    language = syntax.language_for(str(path))
    if language is None:
        return None, None
    cap = min(MAX_FILE_BYTES, limits.max_document_bytes)
    try:
        size = path.stat().st_size
        if size > cap:
            return None, f"too large to review: {size:,} bytes, more than {cap:,}"
        source = path.read_bytes()
    except OSError:
        return None, None
    too_large = limits.long_line_in(source)
    if too_large is not None:
        return None, f"too large to review: {too_large}"
    tree = syntax.parse(language, source)
    snapshot = Snapshot(path.resolve().as_uri(), 0, language, source, tree, positions.UTF16)
    return FileJob(snapshot, formats.display_path(str(path))), None
