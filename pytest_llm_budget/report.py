"""The `LLM budget` terminal summary and the JSON report, from bucket stats and call records."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .limiter import BucketStats
from .records import CallRecord, Overspend, Totals

__all__ = ["build_report", "overspend_lines", "summary_lines", "write_report"]

MAX_OVERSPEND_LINES = 10

_HEADER = (
    "bucket",
    "budget",
    "calls",
    "estimated",
    "actual",
    "debt",
    "deferrals",
    "waited",
    "429s",
)


def overspend_lines(overspent: Sequence[Overspend]) -> list[str]:
    """One line per test that spent more than its marker declared (the first ten, then a count)."""
    lines = [
        f"overspent: {o.test} declared {o.declared} tokens, spent {o.spent} "
        f"(+{(o.spent - o.declared) / o.declared:.0%}); raise its llm_budget(tokens=...)"
        for o in overspent[:MAX_OVERSPEND_LINES]
    ]
    if len(overspent) > MAX_OVERSPEND_LINES:
        rest = len(overspent) - MAX_OVERSPEND_LINES
        lines.append(f"overspent: {rest} more test(s), listed in the JSON report's `overspent`")
    return lines


def summary_lines(
    buckets: Sequence[BucketStats],
    totals: Totals,
    *,
    window: float,
    backend: str,
    overspent: Sequence[Overspend] = (),
) -> list[str]:
    """Rows of the summary: one per bucket, a totals line that says `429s: N`, then overspends."""
    rows = [
        (
            b.name,
            f"{b.budget}/{window:g}s",
            str(b.calls),
            str(b.estimated),
            str(b.actual),
            str(b.debt),
            str(b.deferrals),
            f"{b.waited_s:.1f}s",
            str(b.rate_limit_events),
        )
        for b in buckets
    ]
    lines: list[str] = []
    if rows:
        table = [_HEADER, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
    else:
        lines.append("no live LLM call reserved budget")
    rate_limits = max(totals.rate_limit_events, sum(b.rate_limit_events for b in buckets))
    lines.append(
        f"totals: calls: {totals.calls} (replayed: {totals.replayed}), "
        f"tokens: {totals.total_tokens} (prompt {totals.prompt_tokens}, "
        f"completion {totals.completion_tokens}), retries: {totals.retries}, "
        f"waited: {totals.waited_s:.1f}s, errors: {totals.errors}, 429s: {rate_limits}"
        f" [backend {backend}]"
    )
    return lines + overspend_lines(overspent)


def build_report(
    settings: dict[str, Any],
    totals: Totals,
    buckets: Sequence[BucketStats],
    calls: Sequence[CallRecord],
    overspent: Sequence[Overspend] = (),
) -> dict[str, Any]:
    """The JSON report's document (DESIGN.md section 4), plus `overspent` tests."""
    return {
        "settings": settings,
        "totals": totals.to_json(),
        "buckets": [
            {
                "name": b.name,
                "rule": b.rule,
                "budget": b.budget,
                "calls": b.calls,
                "estimated": b.estimated,
                "actual": b.actual,
                "debt": b.debt,
                "deferrals": b.deferrals,
                "waited_s": round(b.waited_s, 3),
                "rate_limit_events": b.rate_limit_events,
            }
            for b in buckets
        ],
        "calls": [c.to_json() for c in calls],
        "overspent": [o.to_json() for o in overspent],
    }


def write_report(path: str, document: dict[str, Any]) -> None:
    """Write the report as JSON (.json) or as a self-contained HTML page (.html)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if path.lower().endswith((".html", ".htm")):
        from .html_report import render_html

        text = render_html(document)
    else:
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
