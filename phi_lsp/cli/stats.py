"""`phi-lsp stats`: the locally recorded completion and review figures, as text or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from phi_lsp.core.telemetry import ALL_DAYS, FeedbackStore, default_path, summarize

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(interval: list[float] | None) -> str:
    return "" if not interval else f" ({100 * interval[0]:.1f}-{100 * interval[1]:.1f}%)"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_text(summary: dict[str, Any]) -> str:
    days = summary.get("days")
    span = "all recorded events" if not days or days >= ALL_DAYS else f"last {days} days"
    lines = [f"phi-lsp stats: {span}, {summary['events']} events ({summary.get('path', '')})"]
    if not summary["events"]:
        lines.append("No events recorded yet (telemetry.enabled records completions and quick fixes locally).")
        return "\n".join(lines) + "\n"
    completion = summary["completion"]
    header = (f"  {'':<28} {'shown':>6} {'accept':>6} {'partial':>7} {'reject':>6}  {'acceptance (95% CI)':<24}"
              f" {'p50/p90/p99 ms':>16} {'cache hits':>10} {'escalated':>9}")
    for title, table in (("Completions by model", completion["byModel"]), ("Completions by prompt variant", completion["byVariant"])):
        lines += ["", title, header]
        for name, f in table.items():
            latency = "/".join(_ms(f["latencyMs"][k]) for k in ("p50", "p90", "p99"))
            lines.append(
                f"  {name[:28]:<28} {f['shown']:>6} {f['accepted']:>6} {f['partiallyAccepted']:>7} {f['rejected']:>6}"
                f"  {(_pct(f['acceptanceRate']) + _ci(f['acceptanceCI95'])):<24} {latency:>16}"
                f" {_pct(f['cacheHitRate']):>10} {f['escalated']:>9}"
            )
    total = completion["total"]
    lines.append(f"  all: acceptance {_pct(total['acceptanceRate'])}{_ci(total['acceptanceCI95'])}, "
                 f"cache hit rate {_pct(total['cacheHitRate'])}, accepted {total['acceptedChars']} of "
                 f"{total['shownChars']} characters shown")
    fixes = summary["review"]["fixesByModel"]
    if fixes:
        lines += ["", "Review quick fixes by model", f"  {'':<28} {'shown':>6} {'applied':>7} {'dismissed':>9}  apply rate (95% CI)"]
        for model, f in fixes.items():
            lines.append(f"  {model[:28]:<28} {f['fixesShown']:>6} {f['applied']:>7} {f['dismissed']:>9}"
                         f"  {_pct(f['applyRate'])}{_ci(f['applyCI95'])}")
    for title, table in (("Escalations", summary["escalations"]), ("Escalations skipped", summary["escalationsSkipped"])):
        if table:
            lines += ["", title]
            for task, models in table.items():
                for model, reasons in models.items():
                    detail = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
                    lines.append(f"  {task:<10} -> {model}: {detail}")
    if summary["escalationsByVariant"]:
        lines += ["", "Escalations by prompt variant"]
        for variant, reasons in summary["escalationsByVariant"].items():
            lines.append(f"  {variant}: " + ", ".join(f"{r} {c}" for r, c in sorted(reasons.items())))
    return "\n".join(lines) + "\n"


def run_stats(fmt: str = "text", days: int | None = None, path: Path | None = None) -> int:
    """`phi-lsp stats`: print the local figures (exit 0; 0 as well when nothing is recorded)."""
    if days is not None and days < 1:
        print("phi-lsp stats: --days must be 1 or more", file=sys.stderr)
        return 2
    path = path or default_path()
    if not path.is_file():
        summary = summarize([])
        summary.update(days=days or ALL_DAYS, path=str(path))
    else:
        # Reading never purges: the retention limit is the server's to apply.
        store = FeedbackStore(path, retention_days=ALL_DAYS)
        try:
            summary = store.summary(days or ALL_DAYS)
        finally:
            store.close()
    if fmt == "json":
        print(json.dumps(summary, indent=2))
    else:
        sys.stdout.write(format_text(summary))
    return 0
