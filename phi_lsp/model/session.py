"""Session keys: which document a model request is for, in a form a router can use and nobody
can read.

Every model request names its document in a header (`backend.sessionHeader`, default
`X-Session-ID`). vLLM's router (`vllm-router --policy consistent_hash`) hashes that header to
pick a replica, so all the requests of one document go to the replica whose prefix cache already
holds that document's context, and different documents spread over the replicas.

The key is a hash of the workspace folder and the document's URI: stable across requests and
restarts, different for every document, and it shows no path (routers log it).
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import Iterable
from urllib.parse import unquote, urlsplit

DEFAULT_HEADER = "X-Session-ID"
KEY_HEX_DIGITS = 32  # 128 bits: no two documents share a key by chance


def session_key(workspace: str, document: str) -> str:
    """The key of `document` (a URI) opened in `workspace` (a folder path, or "")."""
    data = f"{workspace}\0{document}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:KEY_HEX_DIGITS]


class SessionKeys:
    """Keys for the documents of a set of workspace folders (the editor's, or the command
    line's project root); a document outside all of them is keyed by its URI alone."""

    def __init__(self, roots: Iterable[object] = ()):
        self.set_roots(roots)

    def set_roots(self, roots: Iterable[object]) -> None:
        # Longest first: a document in a nested folder belongs to the innermost one.
        self._roots = sorted({str(PurePosixPath(str(r))) for r in roots}, key=len, reverse=True)

    def key(self, document: str) -> str:
        return session_key(self.workspace_of(document), document)

    def workspace_of(self, document: str) -> str:
        path = unquote(urlsplit(document).path) if "://" in document else document
        for root in self._roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return root
        return ""
