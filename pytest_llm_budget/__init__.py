"""pytest-llm-budget: keep an LLM test suite under the provider's token budget, no slower."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_llm_budget.api import budget_session, open_budget, summary_text, write_reports
from pytest_llm_budget.errors import (
    BudgetWaitTimeout,
    CallTimeout,
    CostCapExceeded,
    LLMBudgetError,
    ProviderOverloaded,
    QuotaExhausted,
    RateLimitExhausted,
    RequestTooLarge,
    SpendCapReached,
)
from pytest_llm_budget.events import RateLimitEvent, WaitEvent
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter, Reservation
from pytest_llm_budget.session import BudgetSession
from pytest_llm_budget.settings.resolved import Settings

__all__ = [
    "BudgetSession",
    "BudgetWaitTimeout",
    "CallTimeout",
    "CostCapExceeded",
    "LLMBudgetError",
    "LimitRule",
    "Limiter",
    "ProviderOverloaded",
    "QuotaExhausted",
    "RateLimitEvent",
    "RateLimitExhausted",
    "RequestTooLarge",
    "Reservation",
    "Settings",
    "SpendCapReached",
    "WaitEvent",
    "budget_session",
    "open_budget",
    "summary_text",
    "wrap",
    "write_reports",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from pytest_llm_budget.routing.clients import wrap


def __getattr__(name: str) -> Any:
    """`wrap` loads the routing layer, so it is imported on first use, not with the plugin."""
    if name == "wrap":
        from pytest_llm_budget.routing.clients import wrap

        return wrap
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
