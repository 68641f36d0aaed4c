"""Small/large model routing: when a request escalates to the larger model, and whether the
larger model may take it now.

The rules (docs/ROUTING.md explains them, `phi.stats` and `phi-lsp stats` count them):

- review: a unit goes to `review.escalationModel` when
  - `complex`: it is large or complex by a tree-sitter measure (review/complexity.py); such a
    unit is sent to the large model directly, never to the small one first;
  - `no-answer`: the small model's answer was cut at max_tokens or did not parse;
  - `unanchored-severe`: the small model stated an error-severity finding that validation could
    not anchor on the unit's code (wrong lines, or a quote that is not there);
  - `low-confidence`: the small model's answer has a mean token probability below
    `routing.reviewMinConfidence`.
- completion: an invoked (manual) completion whose candidates were all dropped because their
  mean token probability is below `completion.minConfidence` is asked again of
  `completion.escalationModel` (`low-confidence`). Automatic completions never escalate.
- budget: every answer's `usage` is counted per model over a sliding minute; while a model has
  used `routing.maxTokensPerMinute` or more, escalations to it are skipped (the small model's
  answer stands), counted, and the user is told once.

Pure decisions are plain functions; `Router` holds the counters and the budget.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

COMPLEX = "complex"
NO_ANSWER = "no-answer"
UNANCHORED_SEVERE = "unanchored-severe"
LOW_CONFIDENCE = "low-confidence"
REASONS = (COMPLEX, NO_ANSWER, UNANCHORED_SEVERE, LOW_CONFIDENCE)

# Why an escalation that a rule asked for did not happen.
SKIPPED_BUDGET = "budget"
SKIPPED_UNAVAILABLE = "unavailable"

WINDOW_S = 60.0


# -- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerSignals:
    """What the small model's answer to one review unit says about itself."""

    confidence: float | None  # mean token probability (None: no logprobs)
    answered: bool  # parsed (not truncated, not unparseable)
    severe_unanchored: int = 0  # error-severity findings that failed validation


def review_reason(signals: AnswerSignals, min_confidence: float) -> str | None:
    """Why a unit the small model answered should go to the large model, or None."""
    if not signals.answered:
        return NO_ANSWER
    if signals.severe_unanchored > 0:
        return UNANCHORED_SEVERE
    if signals.confidence is not None and signals.confidence < min_confidence:
        return LOW_CONFIDENCE
    return None


def completion_reason(invoked: bool, kept: int, low_confidence_drops: int) -> str | None:
    """Why an invoked completion should be asked again of the large model, or None: nothing
    survived post-processing and at least one candidate fell only for its low confidence."""
    if invoked and kept == 0 and low_confidence_drops > 0:
        return LOW_CONFIDENCE
    return None


# -- budget ------------------------------------------------------------------------------------


class TokenBudget:
    """Tokens used per model over a sliding minute, from the backends' `usage` figures."""

    def __init__(self, per_minute: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._spent: dict[str, deque] = {}
        self._sums: Counter = Counter()
        self.totals: Counter = Counter()

    def add(self, model: str, tokens: int) -> None:
        if tokens <= 0:
            return
        self._spent.setdefault(model, deque()).append((self._clock(), tokens))
        self._sums[model] += tokens
        self.totals[model] += tokens
        self.used(model)  # forget what fell out of the window (nothing else may ask)

    def used(self, model: str) -> int:
        """Tokens of `model` in the last minute."""
        spent = self._spent.get(model)
        if not spent:
            return 0
        horizon = self._clock() - WINDOW_S
        while spent and spent[0][0] <= horizon:
            self._sums[model] -= spent.popleft()[1]
        return self._sums[model]

    def allows(self, model: str) -> bool:
        return self.per_minute is None or self.used(model) < self.per_minute


# -- the router --------------------------------------------------------------------------------


class Router:
    """Counts escalations by (task, model, reason), skips them when a model's budget is spent
    (telling the user once per model), and reports both."""

    def __init__(
        self,
        tell_user: Callable[[str], None] = lambda text: None,
        on_event: Callable[[str, dict], None] = lambda event, info: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget = TokenBudget(clock=clock)
        self._tell_user = tell_user
        self.on_event = on_event
        self.escalations: Counter = Counter()  # (task, model, reason) -> units/requests
        self.skipped: Counter = Counter()  # (task, model, why) -> units/requests
        self.failed: Counter = Counter()  # (task, model) -> escalations whose request failed

    def configure(self, max_tokens_per_minute: int | None) -> None:
        self.budget.per_minute = max_tokens_per_minute

    def note_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.budget.add(model, prompt_tokens + completion_tokens)

    def admit(self, task: str, model: str, reasons: Counter | dict | str, variant: str | None = None) -> bool:
        """Whether escalations to `model` may go now; counts them (by reason) either way.

        `reasons` is one reason or a count of units per reason (a review batch)."""
        if isinstance(reasons, str):
            reasons = {reasons: 1}
        if not self.budget.allows(model):
            units = sum(reasons.values())
            self.skipped[(task, model, SKIPPED_BUDGET)] += units
            self._tell_user(
                f"phi-lsp: {model} has used its budget of {self.budget.per_minute} tokens per minute "
                "(routing.maxTokensPerMinute): escalations to it are skipped until it is under the "
                "budget again, and the small model's answers are used."
            )
            for reason, count in reasons.items():
                self.on_event("escalationSkipped", {"task": task, "model": model, "reason": reason,
                                                    "why": SKIPPED_BUDGET, "count": count, "variant": variant})
            return False
        for reason, count in reasons.items():
            self.escalations[(task, model, reason)] += count
            self.on_event("escalated", {"task": task, "model": model, "reason": reason, "count": count,
                                        "variant": variant})
        return True

    def unavailable(self, task: str, model: str, units: int = 1) -> None:
        """A rule asked for an escalation but no endpoint serving the model can take it."""
        self.skipped[(task, model, SKIPPED_UNAVAILABLE)] += units

    def escalation_failed(self, task: str, model: str, units: int = 1) -> None:
        self.failed[(task, model)] += units

    def as_json(self) -> dict:
        escalations: dict = {}
        for (task, model, reason), count in sorted(self.escalations.items()):
            escalations.setdefault(task, {}).setdefault(model, {})[reason] = count
        skipped: dict = {}
        for (task, model, why), count in sorted(self.skipped.items()):
            skipped.setdefault(task, {}).setdefault(model, {})[why] = count
        failed: dict = {}
        for (task, model), count in sorted(self.failed.items()):
            failed.setdefault(task, {})[model] = count
        models = sorted(self.budget.totals)  # every model that ever spent tokens
        return {
            "escalations": escalations,
            "skipped": skipped,
            "failed": failed,
            "maxTokensPerMinute": self.budget.per_minute,
            "tokens": {m: {"lastMinute": self.budget.used(m), "total": self.budget.totals[m]} for m in models},
        }
