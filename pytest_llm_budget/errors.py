"""Every exception and warning the plugin raises, in one place (`LLMBudgetError`s carry `.code`)."""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "BaselineError",
    "BudgetWaitTimeout",
    "CallTimeout",
    "CassetteWarning",
    "CostCapExceeded",
    "CostWarning",
    "LLMBudgetError",
    "LLMBudgetWarning",
    "MatrixError",
    "PriceFileError",
    "ProviderOverloaded",
    "QuotaExhausted",
    "RateLimitExhausted",
    "RequestTooLarge",
    "RunInterrupted",
    "SettingsError",
    "SpendCapReached",
    "StateFileLocked",
    "StateFileWarning",
    "TiktokenSeedError",
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
    """The key has no quota left (OpenAI `insufficient_quota`, a per-day quota, or a quota whose
    retry delay is past `--llm-max-wait`): retrying cannot help; `.quota` names it."""

    code = "LLM_QUOTA_EXHAUSTED"

    @property
    def quota(self) -> str | None:
        """The provider's name of the quota (Gemini's `quotaId`), when it gave one."""
        quota = self.details.get("quota")
        return None if quota is None else str(quota)


class SpendCapReached(QuotaExhausted):
    """The organization's spend cap is reached (Anthropic `enforced_spend_limit_reached`): never
    retried; a `QuotaExhausted` with its own code."""

    code = "LLM_SPEND_CAP"


class ProviderOverloaded(LLMBudgetError):
    """The provider stayed overloaded (Anthropic 529) through every retry; not a rate limit."""

    code = "LLM_PROVIDER_OVERLOADED"


class RequestTooLarge(LLMBudgetError):
    """One request needs more tokens than a whole window allows: it can never be admitted."""

    code = "LLM_REQUEST_TOO_LARGE"


class BudgetWaitTimeout(LLMBudgetError):
    """Admission would take longer than `--llm-max-wait` allows."""

    code = "LLM_BUDGET_TIMEOUT"


class CallTimeout(LLMBudgetError):
    """A routed call's answer did not come, or did not end, within `--llm-call-timeout`."""

    code = "LLM_CALL_TIMEOUT"


class CostCapExceeded(LLMBudgetError):
    """The call's worst-case cost would take the run (or the test) past its dollar cap: not sent."""

    code = "LLM_COST_CAP"


class RunInterrupted(LLMBudgetError):
    """The run is being interrupted (Ctrl-C, SIGTERM): no new call is sent."""

    code = "LLM_RUN_INTERRUPTED"


class BackendUnavailable(RuntimeError):
    """The shared state cannot be reached (Redis down or unreachable, a lock never released)."""


class LLMBudgetMetricsWarning(UserWarning):
    """A metrics output failed (port, textfile, Pushgateway); metrics never fail a run."""


class LLMBudgetWarning(UserWarning):
    """Something degraded the plugin's accuracy without stopping it (e.g. no tiktoken encoding)."""


class TiktokenSeedError(RuntimeError):
    """The tiktoken cache could not be seeded from bpe-openai (package missing or hash mismatch)."""


class SettingsError(ValueError):
    """A bad option value; the message names the option and the value."""


class CostWarning(UserWarning):
    """A call's cost cannot be known (its model has no price)."""


class BaselineError(ValueError):
    """The `--llm-baseline` report is missing or malformed; the message says what is wrong."""


class PriceFileError(ValueError):
    """The price file is missing or malformed; the message names the file and the fault."""


class MatrixError(ValueError):
    """A bad scenario file or model entry; the message names the file or entry and the fault."""


class StateFileWarning(UserWarning):
    """The state file was unreadable (corrupt, truncated, empty) and was rebuilt empty."""


class StateFileLocked(BackendUnavailable):
    """The state file's lock could not be taken in time (another process holds it too long)."""


class CassetteWarning(LLMBudgetWarning):
    """Live LLM calls were made outside any cassette while a record mode is set."""
