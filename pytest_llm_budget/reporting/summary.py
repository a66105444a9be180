"""What a `BudgetSession` has seen, as the report document and the `LLM budget` summary lines.

One implementation for the plugin (`plugins/reports.py`) and for scripts (`api.py`). No pytest.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.reporting.report import (
    bucket_costs,
    build_report,
    cost_line,
    summary_lines,
)

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

__all__ = ["calls_by_bucket", "session_report", "session_summary"]


def calls_by_bucket(session: BudgetSession) -> dict[str, int]:
    """Logical live calls per bucket (a bucket's own count is of admissions, one per try)."""
    bucket_for = session.limiter.bucket_for
    records = session.calls.records()
    return dict(Counter(bucket_for(r.vendor, r.model) for r in records if not r.replayed))


def session_report(session: BudgetSession) -> dict[str, Any]:
    """The report document (report.py) of what the session has seen so far."""
    return build_report(
        session.settings.public(),
        session.calls.totals(),
        session.bucket_stats(),
        session.calls.records(),
        session.settings.rules,
        session.calls.overspent(),
        calls_by_bucket(session),
    )


def session_summary(
    session: BudgetSession, *, backend: str | None = None, workers: int = 0
) -> list[str]:
    """The summary's lines: one row per bucket, the totals, the cost line."""
    records = session.calls.records()
    totals = session.calls.totals()
    lines = summary_lines(
        session.bucket_stats(),
        totals,
        window=session.settings.window,
        backend=backend or session.backend.description,
        costs=bucket_costs(records, session.settings.rules),
        overspent=session.calls.overspent(),
        calls_by_bucket=calls_by_bucket(session),
        workers=workers,
    )
    lines.append(cost_line(totals, records, session.settings.max_cost))
    return lines
