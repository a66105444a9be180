"""Records and protocols shared by the provider modules: estimates, usage, 429 classification."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_llm_budget.tokens.counting import TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy

__all__ = [
    "Estimate",
    "Provider",
    "Rejection",
    "RejectionKind",
    "SSEUsageParser",
    "Usage",
    "as_int",
    "error_object",
    "load_json",
    "lower_headers",
    "times_choices",
]


@dataclass(frozen=True)
class Estimate:
    """What a request is expected to cost before it is sent (input, and the output budget)."""

    model: str
    input_tokens: int
    output_tokens: int

    @property
    def total(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Usage:
    """What the provider reported a request actually used (the detail fields price it)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Part of `prompt_tokens` read from the provider's prompt cache (billed at a lower rate).
    cached_tokens: int = 0
    #: Part of `completion_tokens` spent on reasoning / thinking.
    reasoning_tokens: int = 0
    #: OpenAI's `service_tier` of the response ("default", "flex", "priority"), when reported.
    service_tier: str | None = None

    @classmethod
    def reported(
        cls,
        prompt: int,
        completion: int,
        total: int | None,
        *,
        cached: int = 0,
        reasoning: int = 0,
        service_tier: str | None = None,
    ) -> Usage:
        """Usage from a provider's counts: the total from the parts when it has none, and the
        cached / reasoning details never more than the part they belong to."""
        return cls(
            prompt,
            completion,
            prompt + completion if total is None else total,
            cached_tokens=min(cached, prompt),
            reasoning_tokens=min(reasoning, completion),
            service_tier=service_tier,
        )


class RejectionKind(enum.Enum):
    """Why a request was refused: only RATE_LIMIT is worth retrying."""

    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    TOO_LARGE = "too_large"
    OTHER = "other"


@dataclass(frozen=True)
class Rejection:
    """A classified refusal with the provider's retry hint (seconds) and the limits it named."""

    kind: RejectionKind
    retry_after_s: float | None
    message: str
    limit: int | None = None
    requested: int | None = None


class SSEUsageParser(Protocol):
    """Incremental reader of a server-sent-event stream that keeps the last usage it saw."""

    def feed(self, chunk: bytes) -> None:
        """Consume bytes split anywhere (mid-line, mid-UTF-8)."""

    def close(self) -> None:
        """Flush a final event that had no terminating blank line."""

    @property
    def usage(self) -> Usage | None:
        """The last usage seen so far, or None."""

    @property
    def malformed(self) -> int:
        """How many events could not be parsed (counted, never raised)."""


class Provider(Protocol):
    """Wire knowledge of one vendor: request estimate, reported usage, 429 meaning, TPM charge."""

    @property
    def vendor(self) -> str:
        """Vendor name used for buckets and reports ("openai", "gemini")."""

    def handles(self, path: str) -> bool:
        """True when a request to this URL path costs tokens at this vendor."""

    def estimate(
        self,
        path: str,
        body: bytes,
        counter: TokenCounter,
        policy: EstimatePolicy,
        *,
        grounded: bool = False,
    ) -> Estimate:
        """Estimate a request's admission charge from the request alone; never raises."""

    def usage_from_json(self, body: bytes) -> Usage | None:
        """Usage from a non-streamed response body, or None."""

    def sse_usage_parser(self) -> SSEUsageParser:
        """A fresh parser for one streamed response."""

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """Classify a refusal (429) and extract when to retry."""

    def remaining_tokens(self, headers: Mapping[str, str]) -> int | None:
        """Tokens the provider says are left in its window, when it says so."""

    @property
    def counts_reported_usage(self) -> bool:
        """True when the TPM limit keeps the reported usage, not the admission charge: an
        over-estimate is then refunded at settle (Gemini); else the admission charge stays."""

    def charge(self, usage: Usage) -> int:
        """Tokens the provider counts against its TPM limit for this usage."""

    def charge_estimate(self, estimate: Estimate) -> int:
        """Tokens to reserve against the TPM limit for this estimate."""


def load_json(body: bytes | str) -> Any:
    """Parse JSON, returning None for anything that is not valid JSON."""
    try:
        return json.loads(body)
    except (ValueError, TypeError):
        return None


def as_int(value: object) -> int | None:
    """Return a non-negative int from an int or numeric string (protobuf int64 is a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def error_object(data: object) -> dict[str, Any]:
    """The `error` object of a parsed error body (both vendors nest it so), else empty."""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


def times_choices(budget: int | None, choices: int | None) -> int | None:
    """A declared output budget for all the answers asked for (OpenAI `n`, `candidateCount`)."""
    if budget is not None and choices is not None and choices > 1:
        return budget * choices
    return budget


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header mapping with lower-case names, whatever mapping type the transport passes."""
    return {str(name).lower(): str(value) for name, value in headers.items()}
