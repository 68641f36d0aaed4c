"""Feedback and routing figures in the server: completion events, quick-fix events and
escalations go to the local SQLite store (phi_lsp.core.telemetry), written in batches a moment
after the answer that caused them, never on the way to it; `phi.stats` gets the routing
counters, the endpoints' figures and the store's summary (what `phi-lsp stats` prints)."""

from __future__ import annotations

import asyncio
import logging

from phi_lsp.lsp.features.base import Feature
from phi_lsp.core.telemetry import COMPLETION, REVIEW, ROUTING, FeedbackStore

log = logging.getLogger(__name__)
FLUSH_DELAY_S = 2.0


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
        self._flush_timer: asyncio.TimerHandle | None = None

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
        self._record(COMPLETION, event, **fields)

    def review_event(self, event: str, info: dict) -> None:
        self._record(REVIEW, event, item=info.get("findingId"), model=info.get("model"))

    def routing_event(self, event: str, info: dict) -> None:
        self._record(
            ROUTING, event, model=info.get("model"), trigger=info.get("task"), escalation=info.get("reason"),
            variant=info.get("variant"), count=info.get("count") or 1,
        )

    def _record(self, kind: str, event: str, **fields) -> None:
        self.store.record(kind, event, **fields)
        if self.store.pending and self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a unit test calling the hooks directly)
                self.store.flush()
                return
            self._flush_timer = loop.call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        self.store.flush()

    # -- figures ---------------------------------------------------------------------------

    def stats(self) -> dict:
        service = self.server.service
        figures: dict = {"routing": service.router.as_json()}
        if service.endpoints is not None and len(service.endpoints.members) > 1:
            figures["endpoints"] = {"members": service.endpoints.stats()}
        if self.store.enabled:
            try:
                figures["feedback"] = self.store.summary()
            except Exception:
                log.exception("reading the feedback store failed")
        return figures

    async def shutdown(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self.store.close()
