"""What the budget tells observers while it works: waits and 429s, as frozen events. No pytest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LimitLearned", "RateLimitEvent", "WaitEvent", "WaitTick"]


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
    (the hook); `used_tokens` / `budget` are the bucket's window when the wait began. In a
    token-bucket bucket (Anthropic) `dimension` names the one the call waited for
    (`input_tokens`, `output_tokens`, `requests`) and `used_tokens` / `budget` are its figures
    (output: produced plus expected in flight); empty for a sliding window.
    """

    test: str
    bucket: str
    vendor: str
    model: str
    estimate: int
    seconds: float
    reason: str
    used_tokens: int
    budget: int | None
    worker: str
    t: float
    finished: bool
    dimension: str = ""

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


@dataclass(frozen=True)
class LimitLearned:
    """A server stated a limit that now sets a bucket's pace (lower than configured, or none was).

    `configured` is the configured figure (None: `--llm-tpm auto`, or no `--llm-rpm`), `using`
    the limit the bucket now keeps to (its budget is that, less the headroom, for tokens).
    """

    bucket: str
    vendor: str
    model: str
    dimension: str
    server: int
    configured: int | None
    using: int

    @property
    def where(self) -> str:
        """`openai:gpt-4o-mini`, or `openai:* (gpt-4o-mini)` when the bucket spans models."""
        own = f"{self.vendor}:{self.model}"
        return own if self.bucket == own else f"{self.bucket} ({self.model})"

    def line(self) -> str:
        """`openai:gpt-4o-mini: the server allows 6000 tokens per window, configured 30000:
        using 6000`."""
        if self.configured is not None:
            configured = f"configured {self.configured}"
        else:
            configured = "configured auto" if self.dimension == "tokens" else "configured none"
        return (
            f"{self.where}: the server allows {self.server} {self.dimension} per window, "
            f"{configured}: using {self.using}"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line()}
