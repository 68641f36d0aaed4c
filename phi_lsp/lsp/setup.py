"""The composition root: the one place that builds the server and its features and wires them
together. Features see the server only through `ServerContext`; the server knows features only
as `Feature` hooks."""

from __future__ import annotations

from typing import Any

from phi_lsp.lsp.features.completion import CompletionFeature
from phi_lsp.lsp.features.feedback import FeedbackFeature
from phi_lsp.lsp.features.index import IndexFeature
from phi_lsp.lsp.features.review import ReviewFeature
from phi_lsp.lsp.server import PhiServer, register_core_handlers


def create_server(config_file: str | None = None, flags: dict[str, Any] | None = None) -> PhiServer:
    """The server with its features; `config_file` and `flags` are the command line's."""
    server = PhiServer(config_file, flags)
    register_core_handlers(server)
    index = IndexFeature(server)
    completion = CompletionFeature(server, index.index)
    review = ReviewFeature(server, index.index)
    # Feedback last: it hooks into the others and reports routing and endpoint figures.
    server.features = [index, completion, review, FeedbackFeature(server, completion, review)]
    for feature in server.features:
        register = getattr(feature, "register", None)
        if register is not None:
            register()
    return server
