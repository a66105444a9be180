"""Structured errors raised when a call cannot be admitted or keeps being refused."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "BudgetWaitTimeout",
    "CostCapExceeded",
    "LLMBudgetError",
    "QuotaExhausted",
    "RateLimitExhausted",
    "RequestTooLarge",
]


class LLMBudgetError(Exception):
    """Base of every error the plugin raises on purpose; `.code` is stable across releases."""

    code = "LLM_BUDGET_ERROR"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class RateLimitExhausted(LLMBudgetError):
    """The provider kept answering 429 until the plugin's retries ran out."""

    code = "LLM_RATE_LIMIT_EXHAUSTED"


class QuotaExhausted(LLMBudgetError):
    """The key has no quota left (OpenAI `insufficient_quota`): retrying cannot help."""

    code = "LLM_QUOTA_EXHAUSTED"


class RequestTooLarge(LLMBudgetError):
    """One request needs more tokens than a whole window allows: it can never be admitted."""

    code = "LLM_REQUEST_TOO_LARGE"


class BudgetWaitTimeout(LLMBudgetError):
    """Admission would take longer than `--llm-max-wait` allows."""

    code = "LLM_BUDGET_TIMEOUT"


class CostCapExceeded(LLMBudgetError):
    """The call's worst-case cost would take the run (or the test) past its dollar cap: not sent."""

    code = "LLM_COST_CAP"


class BackendUnavailable(RuntimeError):
    """The shared state cannot be reached (Redis down or unreachable, a lock never released)."""


class LLMBudgetMetricsWarning(UserWarning):
    """A metrics output failed (port, textfile, Pushgateway); metrics never fail a run."""
