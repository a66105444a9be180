"""The core's side of the user hooks: estimate overrides and 429 events. No pytest here.

The plugin connects `BudgetSession.estimate_hooks` / `rate_limit_observers` to the pytest hooks
declared in `hookspecs.py`; a library user may append plain callables instead.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.events import RateLimitEvent

if TYPE_CHECKING:
    from pytest_llm_budget.errors import LLMBudgetError
    from pytest_llm_budget.routing.call import Call
    from pytest_llm_budget.session import BudgetSession

__all__ = ["estimate_override", "rate_limit_event"]


def estimate_override(session: BudgetSession, request: Any, call: Call) -> int:
    """The call's charge after the estimate hooks: the first int answer wins, None passes."""
    for hook in list(session.estimate_hooks):
        value = hook(request, call.vendor, call.model, call.charge)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TypeError(
                f"pytest_llm_budget_estimate returned {value!r} for {call.vendor} model "
                f"{call.model}: return a whole number of tokens above 0, or None"
            )
        return value
    return call.charge


def rate_limit_event(session: BudgetSession, call: Call, outcome: LLMBudgetError | None) -> None:
    """Build the event of the 429 a call just got and tell the observers."""
    from pytest_llm_budget.limiting.watch import notify

    rejection = call.rejection
    limit = getattr(rejection, "limit", None)
    event = RateLimitEvent(
        test=call.test,
        vendor=call.vendor,
        model=call.model,
        attempt=call.attempts,
        kind=str(getattr(getattr(rejection, "kind", None), "value", "rate_limit")),
        limit=None if limit is None else str(limit),
        retry_in=None if outcome is not None else call.retry_in,
        message=str(getattr(rejection, "message", "")),
        worker=session.worker,
        t=time.time(),
        error_code=outcome.code if outcome is not None else None,
    )
    notify(session.rate_limit_observers, event)
