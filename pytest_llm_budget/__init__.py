"""pytest-llm-budget: keep an LLM test suite under the provider's token budget, no slower."""

from __future__ import annotations

from .clients import wrap
from .errors import (
    BudgetWaitTimeout,
    LLMBudgetError,
    QuotaExhausted,
    RateLimitExhausted,
    RequestTooLarge,
)
from .limiter import Limiter, LimitRule, Reservation
from .session import BudgetSession
from .settings import Settings

__all__ = [
    "BudgetSession",
    "BudgetWaitTimeout",
    "LLMBudgetError",
    "LimitRule",
    "Limiter",
    "QuotaExhausted",
    "RateLimitExhausted",
    "RequestTooLarge",
    "Reservation",
    "Settings",
    "wrap",
]
__version__ = "0.1.0"
