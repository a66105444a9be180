"""One logical LLM call's bookkeeping across its attempts: its charge, cost hold and record."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.records import CallRecord

if TYPE_CHECKING:
    from pytest_llm_budget.cost.caps import CostHold
    from pytest_llm_budget.errors import LLMBudgetError
    from pytest_llm_budget.providers.base import Estimate, Provider, Rejection, Usage
    from pytest_llm_budget.session import BudgetSession

__all__ = ["Call"]


@dataclass(eq=False)
class Call:
    """One call's state: what it reserves (`charge`), its cost hold, its 429s; records itself."""

    session: BudgetSession
    provider: Provider
    vendor: str
    path: str
    body: bytes
    test: str
    grounded: bool
    stream_usage_expected: bool
    model: str = "*"
    charge: int = 0
    estimate: Estimate | None = None
    cost: CostHold | None = None
    t: float = field(default_factory=time.time)
    attempts: int = 0
    waited_s: float = 0.0
    rate_limit_events: int = 0
    #: Overloaded answers (Anthropic 529) retried; never rate limits of the bucket.
    overloaded: int = 0
    request: Any = None
    rejection: Rejection | None = None
    retry_in: float | None = None
    #: When the attempt in flight must have ended (`--llm-call-timeout` after it was admitted).
    deadline: float = math.inf
    #: Admitted and not yet recorded (the session's count of calls in flight includes it).
    flying: bool = False
    #: Tokens the window keeps for this call's attempts (settled, released or 429'd).
    charged: int = 0
    #: Its record was made (a call is recorded once: see `BudgetSession.record_unfinished`).
    recorded: bool = False

    def timed_out(self, exc: BaseException) -> bool:
        """Whether `exc` ended the call because `--llm-call-timeout` ran out."""
        from pytest_llm_budget.errors import CallTimeout

        if isinstance(exc, CallTimeout):
            return True
        is_timeout = any(c.__name__ == "TimeoutException" for c in type(exc).__mro__)
        return is_timeout and time.monotonic() >= self.deadline - 0.05

    def timeout_error(self) -> LLMBudgetError:
        """The structured error of a call past `--llm-call-timeout` (remembered for its test)."""
        from pytest_llm_budget.errors import CallTimeout
        from pytest_llm_budget.routing.retry import passable, remember

        seconds = self.session.settings.call_timeout
        err = CallTimeout(
            f"{self.vendor} model {self.model}: no complete answer within "
            f"--llm-call-timeout={seconds:g}s; the call's reservation was released",
            vendor=self.vendor, model=self.model, timeout_s=seconds,
        )
        remember(self.session, self.test, err)
        return passable(err)

    def release_cost(self) -> None:
        """The attempt was not billed (refused, or never sent): its cost hold is dropped."""
        if self.cost is not None:
            self.session.costs.release(self.cost)

    def record(
        self,
        usage: Usage | None,
        status: str,
        *,
        malformed: bool,
        error_code: str | None = None,
        cost_usd: float | None = 0.0,
    ) -> None:
        """Record the call in its session, with the usage the provider reported (if any), once."""
        if self.recorded:
            return
        self.recorded = True
        try:
            self._record(usage, status, malformed, error_code, cost_usd)
        finally:
            self.landed()

    def landed(self) -> None:
        """The call is no longer in flight (recorded, or it never reached the provider)."""
        if self.flying:
            self.flying = False
            self.session.call_ended(self)

    def _record(
        self,
        usage: Usage | None,
        status: str,
        malformed: bool,
        error_code: str | None,
        cost_usd: float | None,
    ) -> None:
        self.session.record(
            CallRecord(
                t=self.t,
                test=self.test,
                vendor=self.vendor,
                model=self.model,
                estimated=self.charge,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                status=status,
                attempts=self.attempts,
                waited_s=round(self.waited_s, 3),
                worker=self.session.worker,
                rate_limit_events=self.rate_limit_events,
                overloaded=self.overloaded,
                malformed=malformed,
                error_code=error_code,
                cached_tokens=usage.cached_tokens if usage else 0,
                cache_write_tokens=usage.cache_write_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                service_tier=usage.service_tier if usage else None,
                cost_usd=cost_usd,
                charged=self.charged,
            )
        )
