"""Hook specifications users implement in a conftest.py or plugin (registered by the plugin).

Every hook also runs in xdist workers (where the calls happen), except `pytest_llm_budget_report`,
which runs where the report is written: the controller, or the only process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pytest_llm_budget.events import RateLimitEvent, WaitEvent

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_llm_budget_estimate(request: Any, vendor: str, model: str, estimate: int) -> int | None:
    """Return an int to replace the tokens a call reserves before it leaves, or None to keep
    `estimate`. `request` is the outgoing HTTP request (httpx2 or httpx: `.url`, `.content`)."""


@hookspec
def pytest_llm_budget_rate_limited(event: RateLimitEvent) -> None:
    """Observe each 429 the provider sent (`event.retry_in` is None when the call ends there)."""


@hookspec
def pytest_llm_budget_waited(event: WaitEvent) -> None:
    """Observe each wait for budget, once it is over (`event.seconds` waited)."""


@hookspec
def pytest_llm_budget_report(report: dict[str, Any]) -> None:
    """Extend or export the final report (the JSON report's dict) before it is written."""
