"""The `Provider` protocol (all a vendor's wire knowledge) and the records its modules share.

A provider module says everything vendor-specific once: which requests are its (`handles`), its
hosts and base-URL variables, its key variables and replay placeholder, the secrets a cassette
must drop, estimates, usage, 429 classification, rate-limit headers per dimension, the price id,
and the fixtures it builds SDK clients for. It imports its SDK only inside `client` / `sdk_errors`.
Register one with `pytest_llm_budget.providers.registry.register`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from pytest_llm_budget.tokens.counting import TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy

__all__ = [
    "UNSEEN_TOKENS",
    "Estimate",
    "LearnedLimits",
    "Provider",
    "ProviderDefaults",
    "RateLimitHeaders",
    "Rejection",
    "RejectionKind",
    "RoutedHTTP",
    "SSEUsageParser",
    "ServerLimits",
    "Usage",
    "as_int",
    "error_object",
    "load_json",
    "lower_headers",
    "missing_key",
    "plausible_usage",
    "server_limits",
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


#: Tokens a request may use beyond what its body shows (images, files, grounding): the floor of
#: `plausible_usage`'s bound.
UNSEEN_TOKENS = 200_000


def plausible_usage(usage: Usage, estimate: Estimate) -> bool:
    """Whether a reported usage fits the request: at most 8x its estimate plus UNSEEN_TOKENS.

    A provider (or a proxy) reporting more is malformed: charging it would stall the bucket for
    a window, overflow the costs and a cap, for tokens the request cannot have used.
    """
    bound = 8 * estimate.total + UNSEEN_TOKENS
    parts = usage.prompt_tokens + usage.completion_tokens
    return max(parts, usage.total_tokens) <= bound


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
    #: Part of `prompt_tokens` written to the prompt cache (Anthropic's
    #: `cache_creation_input_tokens`, billed above the input rate).
    cache_write_tokens: int = 0

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
        cache_write: int = 0,
    ) -> Usage:
        """Usage from a provider's counts: the total from the parts when it has none, and the
        cached / cache-write / reasoning details never more than the part they belong to."""
        cached = min(cached, prompt)
        return cls(
            prompt,
            completion,
            prompt + completion if total is None else total,
            cached_tokens=cached,
            reasoning_tokens=min(reasoning, completion),
            service_tier=service_tier,
            cache_write_tokens=min(cache_write, prompt - cached),
        )


class RejectionKind(enum.Enum):
    """Why a request was refused: RATE_LIMIT and OVERLOADED are worth retrying."""

    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    #: A spend cap (Anthropic `enforced_spend_limit_reached`): no retry-after, never retried.
    SPEND_CAP = "spend_cap"
    #: The provider is overloaded (Anthropic 529): retried with backoff, the bucket not paused.
    OVERLOADED = "overloaded"
    TOO_LARGE = "too_large"
    OTHER = "other"


@dataclass(frozen=True)
class Rejection:
    """A classified refusal with the provider's retry hint (seconds) and the limits it named.

    `dimension` is what `limit` counts ("tokens" or "requests", when the provider says),
    `quota` the provider's name for the quota (Gemini's `quotaId`, OpenAI's "tokens per day
    (TPD)"), `per_day` whether that quota is per day rather than per minute.
    """

    kind: RejectionKind
    retry_after_s: float | None
    message: str
    limit: int | None = None
    requested: int | None = None
    dimension: str | None = None
    quota: str | None = None
    per_day: bool = False


@dataclass(frozen=True)
class LearnedLimits:
    """Limits the provider stated for a model: tokens and requests per (its) minute, and for a
    token-bucket vendor (Anthropic) its input and output tokens."""

    tokens: int | None = None
    requests: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None

    def figures(self) -> dict[str, int]:
        """The stated dimensions only, by name ("tokens", "requests", "input_tokens", ...)."""
        return {
            name: value
            for name, value in (
                ("tokens", self.tokens), ("requests", self.requests),
                ("input_tokens", self.input_tokens), ("output_tokens", self.output_tokens),
            )
            if value is not None and value > 0
        }

    @classmethod
    def stated(
        cls,
        rejection: Rejection | None,
        tokens: int | None = None,
        requests: int | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> LearnedLimits | None:
        """Header figures completed by a per-minute 429's limit; None when nothing is stated."""
        if (
            rejection is not None
            and not rejection.per_day
            and rejection.limit
            and rejection.kind in (RejectionKind.RATE_LIMIT, RejectionKind.TOO_LARGE)
        ):
            if rejection.dimension == "tokens" and tokens is None:
                tokens = rejection.limit
            elif rejection.dimension == "requests" and requests is None:
                requests = rejection.limit
        learned = cls(tokens or None, requests or None, input_tokens or None, output_tokens or None)
        return learned if learned.figures() else None


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

    @property
    def error(self) -> str | None:
        """The error type an error event in the stream named (Anthropic `event: error`)."""


@dataclass(frozen=True)
class ServerLimits:
    """One dimension's limit as a response's headers state it (None: that header was absent)."""

    limit: int | None = None
    remaining: int | None = None
    #: Seconds until the window is full again (`x-ratelimit-reset-*`), when stated.
    reset_s: float | None = None
    #: `remaining` is rounded down to a multiple of this (Anthropic's tokens: 1000): the true
    #: remainder is up to `rounding - 1` more.
    rounding: int = 1


@dataclass(frozen=True)
class RateLimitHeaders:
    """A response's rate-limit headers, parsed per dimension (None: nothing sent for it)."""

    tokens: ServerLimits | None = None
    requests: ServerLimits | None = None
    input_tokens: ServerLimits | None = None
    output_tokens: ServerLimits | None = None


class RoutedHTTP(Protocol):
    """What routing lends a provider to build its SDK clients: routed httpx2 / httpx parts."""

    @property
    def replay_only(self) -> bool:
        """True in record mode `none`: cassettes answer, so a client with no key may get the
        provider's placeholder."""

    def library(self, sdk_class: type | None = None) -> ModuleType:
        """The HTTP library (httpx2 or httpx) an SDK class is built on, else the installed one."""

    def transport(self, library: ModuleType, *, is_async: bool = False) -> Any:
        """A transport of `library` whose LLM requests are routed (structured errors raised)."""

    def client(self, library: ModuleType, *, is_async: bool = False, **kwargs: Any) -> Any:
        """A `library.Client` (or `AsyncClient`) on a routed transport."""


class Provider(Protocol):
    """Wire knowledge of one vendor: which requests are its, what they cost, what its answers
    and refusals mean, and how its SDK clients are built."""

    @property
    def vendor(self) -> str:
        """Vendor name used for buckets, rules and reports ("openai", "gemini", "anthropic")."""

    @property
    def hosts(self) -> tuple[str, ...]:
        """Default LLM hosts (globs; `host` or `host:port`)."""

    @property
    def base_url_env(self) -> tuple[str, ...]:
        """Environment variables holding a base URL whose host is then an LLM host."""

    @property
    def key_env(self) -> tuple[str, ...]:
        """API key environment variables the SDK reads; the first gets the placeholder."""

    @property
    def placeholder_key(self) -> str | None:
        """Key set in replay-only mode when none of `key_env` is set (never sent anywhere)."""

    @property
    def secret_headers(self) -> tuple[str, ...]:
        """Request headers (lower case) never written to a cassette."""

    @property
    def secret_response_headers(self) -> tuple[str, ...]:
        """Response headers (lower case) never written to a cassette."""

    @property
    def secret_query(self) -> tuple[str, ...]:
        """Query parameters never written to a cassette."""

    @property
    def price_id(self) -> str | None:
        """genai-prices' provider id of this vendor, None to let it guess."""

    @property
    def fixtures(self) -> tuple[str, ...]:
        """Names of the pytest fixtures whose clients `client` builds (they mark LLM tests);
        each ends in `_client`."""

    @property
    def counts_reported_usage(self) -> bool:
        """True when the TPM limit keeps the reported usage, not the admission charge: an
        over-estimate is then refunded at settle (Gemini); else the admission charge stays."""

    @property
    def refusal_statuses(self) -> frozenset[int]:
        """HTTP statuses `classify` decides on (429; Anthropic's 529 too), never passed on."""

    def handles(self, host: str, path: str) -> bool:
        """True when a request to this host and URL path costs tokens at this vendor."""

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

    def stream_usage_expected(self, path: str, body: bytes) -> bool:
        """False for a streamed request whose stream will carry no usage (not malformed then)."""

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """Classify a refusal (one of `refusal_statuses`) and extract when to retry."""

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitHeaders:
        """The rate-limit headers of a response, parsed per dimension."""

    def learned_limits(
        self, headers: Mapping[str, str], rejection: Rejection | None = None
    ) -> LearnedLimits | None:
        """The per-minute limits an answer (its headers) or a 429 (`rejection`) states."""

    def charge(self, usage: Usage) -> int:
        """Tokens the provider counts against its TPM limit for this usage (a token-bucket
        vendor's input limit: Anthropic's ITPM)."""

    def output_charge(self, usage: Usage) -> int:
        """Tokens a token-bucket vendor counts against its output limit (Anthropic's OTPM)."""

    def charge_estimate(self, estimate: Estimate) -> int:
        """Tokens to reserve against the TPM limit for this estimate (a token-bucket vendor's
        input estimate; the output budget is reserved apart)."""

    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        """Base classes a structured error must also be for this vendor's SDK to let it through
        unwrapped; only of an SDK already imported (never imports it), else empty."""

    def client(self, fixture: str, routed: RoutedHTTP, **kwargs: Any) -> Any:
        """The SDK client of one of `fixtures`, on routed transports (imports the SDK)."""


class ProviderDefaults:
    """Neutral values for the optional parts of `Provider`, for a provider class to inherit."""

    hosts: tuple[str, ...] = ()
    base_url_env: tuple[str, ...] = ()
    key_env: tuple[str, ...] = ()
    placeholder_key: str | None = None
    secret_headers: tuple[str, ...] = ()
    secret_response_headers: tuple[str, ...] = ()
    secret_query: tuple[str, ...] = ()
    price_id: str | None = None
    fixtures: tuple[str, ...] = ()
    counts_reported_usage = False
    refusal_statuses: frozenset[int] = frozenset({429})

    def stream_usage_expected(self, path: str, body: bytes) -> bool:
        """Every stream is expected to carry usage."""
        return True

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitHeaders:
        """No rate-limit headers."""
        return RateLimitHeaders()

    def learned_limits(
        self, headers: Mapping[str, str], rejection: Rejection | None = None
    ) -> LearnedLimits | None:
        """The limits `rate_limits` reads in the headers (tokens, requests), completed by a
        per-minute 429's limit for the dimension it names (OpenAI's `Limit 30000, Used ...`,
        Gemini's QuotaFailure `quotaValue`); never a per-day figure."""
        stated = self.rate_limits(headers)

        def limit(dimension: ServerLimits | None) -> int | None:
            return dimension.limit if dimension is not None else None

        return LearnedLimits.stated(
            rejection, limit(stated.tokens), limit(stated.requests),
            limit(stated.input_tokens), limit(stated.output_tokens),
        )

    def charge(self, usage: Usage) -> int:
        """Prompt plus completion tokens."""
        return usage.prompt_tokens + usage.completion_tokens

    def output_charge(self, usage: Usage) -> int:
        """Completion tokens."""
        return usage.completion_tokens

    def charge_estimate(self, estimate: Estimate) -> int:
        """Input plus output estimate."""
        return estimate.total

    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        """No SDK error classes."""
        return ()

    def client(self, fixture: str, routed: RoutedHTTP, **kwargs: Any) -> Any:
        """No fixtures: always raises."""
        raise LookupError(f"{type(self).__name__} builds no client for fixture {fixture!r}")


def server_limits(limit: object, remaining: object, reset_s: float | None) -> ServerLimits | None:
    """One dimension's parsed figures, None when neither the limit nor the remainder is stated."""
    parsed_limit, parsed_remaining = as_int(limit), as_int(remaining)
    if parsed_limit is None and parsed_remaining is None:
        return None
    return ServerLimits(parsed_limit, parsed_remaining, reset_s)


def missing_key(provider: Provider, environ: Mapping[str, str]) -> bool:
    """True when none of a provider's key variables is set (and it has a placeholder)."""
    return provider.placeholder_key is not None and not any(
        environ.get(name) for name in provider.key_env
    )


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
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
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
