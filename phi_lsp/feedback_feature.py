"""Feedback and routing figures in the server: completion events, quick-fix events and
escalations go to the local SQLite store (phi_lsp/feedback.py); `phi.stats` gets the routing
counters, the endpoints' figures and the store's summary (what `phi-lsp stats` prints)."""

from __future__ import annotations

import logging

from .feature import Feature
from .feedback import COMPLETION, REVIEW, ROUTING, FeedbackStore

log = logging.getLogger(__name__)


def _group(suggestion_id: str) -> str:
    """Suggestions of one request share a group id ("<group>+<n>")."""
    return suggestion_id.split("+", 1)[0]


class FeedbackFeature(Feature):
    def __init__(self, server, completion=None, review=None, store: FeedbackStore | None = None):
        super().__init__(server)
        self.store = store or FeedbackStore(enabled=False)  # enabled by the settings
        if completion is not None:
            completion.on_feedback = self.completion_event
        if review is not None:
            review.on_feedback = self.review_event
        server.service.router.on_event = self.routing_event

    def settings_changed(self, settings) -> None:
        t = settings.telemetry
        self.store.configure(t.enabled, t.keep_text, t.retention_days)

    # -- events ----------------------------------------------------------------------------

    def completion_event(self, event: str, info: dict) -> None:
        text = info.get("text") or ""
        fields = dict(
            item=_group(str(info.get("id", ""))),
            model=info.get("model") or None,
            variant=info.get("variant"),
            trigger=info.get("trigger"),
            language=info.get("language"),
            served_from=info.get("servedFrom"),
            confidence=info.get("confidence"),
            escalation=info.get("escalation"),
            shown_chars=len(text) if text else None,
            text=text or None,
        )
        if event == "shown":
            fields["latency_ms"] = info.get("latencyMs")
        elif event in ("accepted", "partiallyAccepted"):
            accepted = info.get("acceptedChars")
            fields["accepted_chars"] = accepted if isinstance(accepted, int) and accepted >= 0 else len(text)
        elif event == "rejected":
            fields["accepted_chars"] = 0
        self.store.record(COMPLETION, event, **fields)

    def review_event(self, event: str, info: dict) -> None:
        self.store.record(REVIEW, event, item=info.get("findingId"), model=info.get("model"))

    def routing_event(self, event: str, info: dict) -> None:
        self.store.record(
            ROUTING, event, model=info.get("model"), trigger=info.get("task"), escalation=info.get("reason"),
            variant=info.get("variant"), count=info.get("count") or 1,
        )

    # -- figures ---------------------------------------------------------------------------

    def stats(self) -> dict:
        service = self.server.service
        figures: dict = {"routing": service.router.as_json()}
        if service.pool is not None and len(service.pool.members) > 1:
            figures["endpoints"] = {
                "members": service.pool.stats(), "retries": service.pool.retries, "moved": service.pool.moved,
            }
        if self.store.enabled:
            try:
                figures["feedback"] = self.store.summary()
            except Exception:
                log.exception("reading the feedback store failed")
        return figures

    async def shutdown(self) -> None:
        self.store.close()
