"""What users do with what phi-lsp shows, recorded locally: a SQLite file in the user's state
directory (`$XDG_STATE_HOME/phi-lsp/feedback.sqlite3`), never sent anywhere.

Recorded (with `telemetry.enabled`, the default):
- completions: `shown` (one row per request that showed something), `accepted`,
  `partiallyAccepted`, `rejected`; with the model that produced it, the prompt variant, the
  trigger, the language, the latency, whether it was served from the cache, the confidence,
  the characters shown and accepted, and the escalation reason when the large model answered;
- review quick fixes: `fixShown`, `fixApplied`, `fixDismissed`, with the model;
- routing: `escalated` and `escalationSkipped` with task, model, reason and prompt variant.
No code, no file names: the suggestion text is kept only with `telemetry.keepText`. Rows older
than `telemetry.retentionDays` are deleted when the store opens and every hour after.

`phi-lsp stats` (phi_lsp.cli.stats) and the `phi.stats` command (summary) report acceptance rate with a
Wilson 95% interval, latency percentiles, cache hit rate and escalations per model and per
prompt variant.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from phi_lsp.core.paths import state_dir

log = logging.getLogger(__name__)

DB_NAME = "feedback.sqlite3"
PURGE_EVERY_S = 3_600
ALL_DAYS = 3_650
MAX_PENDING = 10_000  # events kept in memory between flushes (a flush failing for long drops more)
COMPLETION, REVIEW, ROUTING = "completion", "review", "routing"
ACCEPTED_EVENTS = ("accepted", "partiallyAccepted")
CACHE_SOURCES = ("cache", "in-flight")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    event TEXT NOT NULL,
    item TEXT,
    model TEXT,
    variant TEXT,
    trigger TEXT,
    language TEXT,
    latency_ms REAL,
    served_from TEXT,
    confidence REAL,
    shown_chars INTEGER,
    accepted_chars INTEGER,
    escalation TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    text TEXT
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
"""
_COLUMNS = ("at", "kind", "event", "item", "model", "variant", "trigger", "language", "latency_ms",
            "served_from", "confidence", "shown_chars", "accepted_chars", "escalation", "count", "text")


def default_path() -> Path:
    return state_dir() / DB_NAME


class FeedbackStore:
    """The local event store. Every failure is logged and swallowed: feedback never costs the
    user a completion."""

    def __init__(self, path: Path | None = None, keep_text: bool = False, retention_days: int = 30,
                 enabled: bool = True, clock=time.time):
        self.path = Path(path) if path is not None else default_path()
        self.keep_text = keep_text
        self.retention_days = retention_days
        self.enabled = enabled
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._last_purge = 0.0
        self._pending: list[list[Any]] = []  # recorded, not yet written (see flush)
        self.written = 0
        self.errors = 0

    def configure(self, enabled: bool, keep_text: bool, retention_days: int) -> None:
        self.enabled, self.keep_text, self.retention_days = enabled, keep_text, retention_days
        if not enabled:
            self.close()

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                # The events can hold code (keepText): the user's eyes only.
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.path.touch(mode=0o600, exist_ok=True)
                os.chmod(self.path, 0o600)
                db = sqlite3.connect(str(self.path), timeout=1.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(_SCHEMA)
                self._db = db
            except (sqlite3.Error, OSError) as exc:
                self.errors += 1
                log.warning("feedback store %s unavailable: %s", self.path, exc)
                return None
            self.purge()
        return self._db

    def record(self, kind: str, event: str, **fields: Any) -> None:
        """One event (unknown fields are ignored; `text` is dropped unless keepText). Kept in
        memory until `flush`: recording runs on the completion path and must not touch disk."""
        if not self.enabled:
            return
        row = {name: fields.get(name) for name in _COLUMNS}
        row.update(at=fields.get("at") or self._clock(), kind=kind, event=event, count=int(fields.get("count") or 1))
        if not self.keep_text:
            row["text"] = None
        if len(self._pending) < MAX_PENDING:
            self._pending.append([row[name] for name in _COLUMNS])

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write the recorded events in one transaction."""
        if not self._pending or not self.enabled:
            self._pending.clear()
            return
        rows, self._pending = self._pending, []
        db = self._connect()
        if db is None:
            return
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(
                    f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows
                )
            self.written += len(rows)
        except sqlite3.Error as exc:
            self.errors += 1
            log.warning("could not record feedback: %s", exc)
            return
        if self._clock() - self._last_purge > PURGE_EVERY_S:
            self.purge()

    def purge(self) -> int:
        """Delete rows older than the retention limit; returns how many went."""
        db = self._db
        if db is None:
            return 0
        self._last_purge = self._clock()
        try:
            cursor = db.execute("DELETE FROM events WHERE at < ?", (self._clock() - self.retention_days * 86_400,))
            return cursor.rowcount
        except sqlite3.Error as exc:
            log.warning("could not purge feedback: %s", exc)
            return 0

    def rows(self, days: int | None = None) -> list[dict[str, Any]]:
        self.flush()
        db = self._connect()
        if db is None:
            return []
        days = days or self.retention_days
        cursor = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM events WHERE at >= ? ORDER BY at", (self._clock() - days * 86_400,)
        )
        return [dict(zip(_COLUMNS, row)) for row in cursor.fetchall()]

    def summary(self, days: int | None = None) -> dict[str, Any]:
        days = days or self.retention_days
        summary = summarize(self.rows(days))
        summary.update(days=days, path=str(self.path))
        return summary

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None


# -- figures -----------------------------------------------------------------------------------


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% by default); None for n = 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _completion_figures(rows: list[dict]) -> dict[str, Any]:
    shown_items: set = set()
    outcome: dict[str, str] = {}
    latencies: list[float] = []
    shown_rows = cache_rows = 0
    shown_chars = accepted_chars = 0
    escalated = 0
    for row in rows:
        item = row["item"] or f"row{id(row)}"
        if row["event"] == "shown":
            shown_rows += 1
            if row["served_from"] in CACHE_SOURCES:
                cache_rows += 1
            elif row["latency_ms"] is not None:
                latencies.append(row["latency_ms"])
            if item not in shown_items:
                shown_items.add(item)
                shown_chars += row["shown_chars"] or 0
                if row["escalation"]:
                    escalated += 1
        elif row["event"] in ACCEPTED_EVENTS + ("rejected",):
            previous = outcome.get(item)
            # An accept wins over a reject of the same suggestion (several clients send both).
            if previous is None or (previous == "rejected" and row["event"] != "rejected"):
                outcome[item] = row["event"]
            if row["event"] in ACCEPTED_EVENTS:
                accepted_chars += row["accepted_chars"] or 0
    shown = len(shown_items | set(outcome))
    counts = Counter(outcome.values())
    accepted = counts["accepted"] + counts["partiallyAccepted"]
    interval = wilson(accepted, shown)
    return {
        "shown": shown,
        "accepted": counts["accepted"],
        "partiallyAccepted": counts["partiallyAccepted"],
        "rejected": counts["rejected"],
        "acceptanceRate": round(accepted / shown, 4) if shown else None,
        "acceptanceCI95": [round(interval[0], 4), round(interval[1], 4)] if interval else None,
        "latencyMs": {name: _round(percentile(latencies, q)) for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))},
        "cacheHitRate": round(cache_rows / shown_rows, 4) if shown_rows else None,
        "shownChars": shown_chars,
        "acceptedChars": accepted_chars,
        "escalated": escalated,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _grouped(rows: Iterable[dict], key: str, unknown: str) -> dict[str, list[dict]]:
    """Rows by `key`; feedback rows (accept/reject) join the group of their shown row."""
    rows = list(rows)
    group_of: dict[str, str] = {}
    for row in rows:
        if row["event"] == "shown" and row["item"]:
            group_of.setdefault(row["item"], row[key] or unknown)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        name = group_of.get(row["item"] or "", row[key] or unknown)
        groups[name].append(row)
    return dict(groups)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    completion_rows = [r for r in rows if r["kind"] == COMPLETION]
    review_rows = [r for r in rows if r["kind"] == REVIEW]
    routing_rows = [r for r in rows if r["kind"] == ROUTING]

    fixes: dict[str, Counter] = defaultdict(Counter)
    fix_model: dict[str, str] = {}
    for row in review_rows:
        if row["event"] == "fixShown" and row["item"]:
            fix_model.setdefault(row["item"], row["model"] or "unknown")
    for row in review_rows:
        model = fix_model.get(row["item"] or "", row["model"] or "unknown")
        fixes[model][row["event"]] += 1
    review = {}
    for model, counts in sorted(fixes.items()):
        decided = counts["fixApplied"] + counts["fixDismissed"]
        interval = wilson(counts["fixApplied"], decided)
        review[model] = {
            "fixesShown": counts["fixShown"],
            "applied": counts["fixApplied"],
            "dismissed": counts["fixDismissed"],
            "applyRate": round(counts["fixApplied"] / decided, 4) if decided else None,
            "applyCI95": [round(interval[0], 4), round(interval[1], 4)] if interval else None,
        }

    escalations: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    by_variant: dict[str, dict] = {}
    for row in routing_rows:
        task = row["trigger"] or "?"
        target = escalations if row["event"] == "escalated" else skipped
        per_model = target.setdefault(task, {}).setdefault(row["model"] or "?", {})
        per_model[row["escalation"] or "?"] = per_model.get(row["escalation"] or "?", 0) + (row["count"] or 1)
        if row["event"] == "escalated" and row["variant"]:
            per = by_variant.setdefault(row["variant"], {})
            per[row["escalation"] or "?"] = per.get(row["escalation"] or "?", 0) + (row["count"] or 1)

    return {
        "events": len(rows),
        "completion": {
            "total": _completion_figures(completion_rows),
            "byModel": {m: _completion_figures(r) for m, r in sorted(_grouped(completion_rows, "model", "unknown").items())},
            "byVariant": {v: _completion_figures(r) for v, r in sorted(_grouped(completion_rows, "variant", "default").items())},
        },
        "review": {"fixesByModel": review},
        "escalations": escalations,
        "escalationsSkipped": skipped,
        "escalationsByVariant": by_variant,
    }
