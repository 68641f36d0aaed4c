"""Counting prompt tokens: with the model's own tokenizer when its tokenizer.json is on disk
(a local model directory, the bundled demo model, or the Hugging Face cache), otherwise with an
estimate calibrated on code (about 3.9 characters per token for the Phi tokenizers on Python;
3.5 is used so the estimate errs on the short side of the budget).
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from phi_lsp.core.positions import valid_text

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_tokenizer_file(model: str) -> Path | None:
    """tokenizer.json for a model directory, a bundled model name or a cached hub id."""
    from phi_lsp.core.paths import bundled_model

    direct = Path(model).expanduser()
    candidates = [direct / "tokenizer.json"]
    bundled = bundled_model(model)
    if bundled is not None:
        candidates.append(bundled / "tokenizer.json")
    if "/" in model and not direct.exists():
        snapshots = _hub_cache() / ("models--" + model.replace("/", "--")) / "snapshots"
        if snapshots.is_dir():
            candidates += sorted(snapshots.glob("*/tokenizer.json"))
    return next((c for c in candidates if c.is_file()), None)


class TokenCounter:
    LINE_CACHE = 50_000

    def __init__(self, tokenizer=None, source: str = "estimate"):
        self._tokenizer = tokenizer
        self.source = source
        self._lines: dict[str, int] = {}

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(valid_text(text), add_special_tokens=False).ids)
        return int(len(text) / CHARS_PER_TOKEN) + 1

    def count_lines(self, text: str) -> int:
        """Tokens of a multi-line text, counted line by line with a cache.

        Lines rarely change between two keystrokes, so a prompt window costs a lookup per line
        instead of a tokenizer pass over the whole window. Each line is counted with the line
        break before it, because byte-level BPE tokenizers (Phi-4's, the test model's) make a
        line break and the next line's indentation one token. Counted with the break after it,
        every line cost a token too many (11% over on Python, which the prompt window then left
        unused); this way it is 1.5% over, still on the high side, so a window counted this way
        fits.
        """
        if self._tokenizer is None:
            return self.count(text)
        total = 0
        cache = self._lines
        first, *rest = text.split("\n")
        for piece in (first, *("\n" + line for line in rest)):
            cached = cache.get(piece)
            if cached is None:
                if len(cache) >= self.LINE_CACHE:
                    cache.clear()
                cached = cache[piece] = self.count(piece)
            total += cached
        return total

    @staticmethod
    @lru_cache(maxsize=8)
    def for_model(model: str) -> "TokenCounter":
        path = find_tokenizer_file(model)
        if path is None:
            return TokenCounter()
        try:
            from tokenizers import Tokenizer

            return TokenCounter(Tokenizer.from_file(str(path)), str(path))
        except Exception as exc:  # a broken tokenizer file must not break completion
            log.warning("could not load %s (%s); estimating token counts", path, exc)
            return TokenCounter()
