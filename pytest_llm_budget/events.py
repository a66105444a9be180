"""What the budget tells observers while it works: waits and 429s, as frozen events. No pytest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RateLimitEvent", "WaitEvent", "WaitTick"]


@dataclass(frozen=True)
class WaitTick:
    """The limiter's raw signal: a reservation was deferred (`admitted` False) or got in."""

    bucket: str
    ticket: str
    vendor: str
    model: str
    estimate: int
    started: float
    now: float
    ready_at: float
    reason: str
    admitted: bool


@dataclass(frozen=True)
class WaitEvent:
    """A call waits (or waited) for budget: the `pytest_llm_budget_waited` hook's argument.

    `seconds` is the expected wait when the wait starts (notices) and the real one when it ends
    (the hook); `used_tokens` / `budget` are the bucket's window when the wait began.
    """

    test: str
    bucket: str
    vendor: str
    model: str
    estimate: int
    seconds: float
    reason: str
    used_tokens: int
    budget: int
    worker: str
    t: float
    finished: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RateLimitEvent:
    """A 429 the provider sent: the `pytest_llm_budget_rate_limited` hook's argument.

    `retry_in` is the delay before the retry, or None when the call ends here (`error_code`).
    """

    test: str
    vendor: str
    model: str
    attempt: int
    kind: str
    limit: str | None
    retry_in: float | None
    message: str
    worker: str
    t: float
    error_code: str | None = None

    @property
    def retrying(self) -> bool:
        return self.retry_in is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
