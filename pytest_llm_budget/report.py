"""The `LLM budget` terminal summary and the JSON report, from bucket stats and call records."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .limiter import BucketStats
from .records import CallRecord, Totals

__all__ = ["build_report", "summary_lines", "write_report"]

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


def summary_lines(
    buckets: Sequence[BucketStats], totals: Totals, *, window: float, backend: str
) -> list[str]:
    """Rows of the summary section: one per bucket, then a totals line that says `429s: N`."""
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
    return lines


def build_report(
    settings: dict[str, Any],
    totals: Totals,
    buckets: Sequence[BucketStats],
    calls: Sequence[CallRecord],
) -> dict[str, Any]:
    """The JSON report's document (the shape README's "Reports and metrics" documents)."""
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
