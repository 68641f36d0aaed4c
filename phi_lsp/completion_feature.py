"""Inline completion feature (wired in the completion issue)."""

from .feature import Feature


class CompletionFeature(Feature):
    pass
