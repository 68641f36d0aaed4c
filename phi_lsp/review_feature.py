"""Review feature (wired in the review issue)."""

from .feature import Feature


class ReviewFeature(Feature):
    pass
