"""Anthropic wire knowledge (Messages API): estimates, usage, 429 / 529 / spend-cap meaning.

Estimate: Anthropic charges input tokens against ITPM when a request starts, from its own
tokenizer, for which o200k_base stands in: the text of `system`, of every message's content
blocks (text, tool_use input as JSON, tool_result content, thinking) and the JSON of `tools` and
`tool_choice`, floored at characters / 4, times (1 + safety margin) and (1 + grounded overhead)
on a grounded call, plus Anthropic's tool-use system prompt when tools are given; an image or a
document block gets the counter's allowance per block. The output budget is `max_tokens`
(`--llm-est-tokens` when absent). `count_tokens` is never called to estimate.
`/v1/messages/count_tokens` is routed (so cassettes keep it and its 429s are retried) as one
request and no tokens: it is free, and Anthropic limits it by its own requests-per-minute.

Usage: `prompt_tokens` is all the input, `input_tokens + cache_creation_input_tokens +
cache_read_input_tokens` (the cache parts are `cache_write_tokens` and `cached_tokens`), as for
the other vendors; a stream's `message_start` carries the input counts, its `message_delta` the
final output count; a stream that ends in `event: error` keeps its error type (`error`).

Charge: Anthropic's buckets are token buckets per dimension. Admission reserves the input
estimate (`charge_estimate`) against ITPM and declares `max_tokens` for OTPM; settling charges
ITPM `input_tokens + cache_creation_input_tokens` (`charge`; never the cache reads, an
over-estimate refunded) and OTPM the output tokens produced (`output_charge`).

Refusals: a 429 `rate_limit_error` is RATE_LIMIT, its delay from `retry-after` (seconds), else
the `anthropic-ratelimit-*-reset` time (RFC 3339) of the dimension the message names (else of
the exhausted one, else the latest); the same 429 with `error.details.error_code ==
"enforced_spend_limit_reached"` is SPEND_CAP, never retried; 529 `overloaded_error` is
OVERLOADED (retried with backoff, the bucket not paused).

Rate-limit headers: `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*` per
dimension; `anthropic-ratelimit-tokens-*` is the most restrictive token limit in force, not a
sum any bucket counts, so `RateLimitHeaders.tokens` stays empty. Remaining tokens are rounded
down to thousands (`ServerLimits.rounding` 1000); requests are exact. Keys: `x-api-key` (0.x, 1.x)
or `Authorization: Bearer` (2.x), `ANTHROPIC_API_KEY` / `ANTHROPIC_AUTH_TOKEN`; the fixtures
`anthropic_client` / `async_anthropic_client` get SDK clients with the SDK's retries off.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from pytest_llm_budget.providers.base import (
    Estimate,
    ProviderDefaults,
    RateLimitHeaders,
    Rejection,
    RejectionKind,
    RoutedHTTP,
    ServerLimits,
    SSEUsageParser,
    Usage,
    as_int,
    error_object,
    load_json,
    lower_headers,
    missing_key,
    server_limits,
)
from pytest_llm_budget.providers.retry_hints import parse_retry_after
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.tokens.counting import TextMeasure, TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy

__all__ = ["DIMENSIONS", "SPEND_CAP_CODE", "AnthropicProvider", "AnthropicStreamParser"]

UNKNOWN_MODEL = "unknown"
#: The rate-limit dimensions of the `anthropic-ratelimit-<dimension>-*` headers.
DIMENSIONS = ("requests", "input-tokens", "output-tokens", "tokens")
_FIELD_OF = {
    "requests": "requests", "input-tokens": "input_tokens", "output-tokens": "output_tokens"
}
#: `error.details.error_code` of a 429 that is the organization's monthly spend cap.
SPEND_CAP_CODE = "enforced_spend_limit_reached"
#: Tokens of the system prompt Anthropic adds when a request carries tools (Claude 4 models).
TOOL_SYSTEM_PROMPT_TOKENS = 346
OVERLOADED_STATUS = 529
#: Remaining tokens in `anthropic-ratelimit-*-tokens-remaining` are rounded down to this.
TOKENS_ROUNDING = 1000
_MESSAGES = re.compile(r"/v1/messages(?P<count>/count_tokens)?/?$")
_NON_TEXT_BLOCKS = frozenset({"image", "document", "container_upload", "search_result"})
_DIMENSION_IN_MESSAGE = (
    ("input-tokens", re.compile(r"input tokens", re.IGNORECASE)),
    ("output-tokens", re.compile(r"output tokens", re.IGNORECASE)),
    ("requests", re.compile(r"\brequests\b", re.IGNORECASE)),
)
_LIMIT_IN_MESSAGE = re.compile(r"\bof ([0-9][0-9,]*) (?:input tokens|output tokens|requests)")


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _block_texts(block: object) -> list[tuple[str | None, bool]]:
    """(text, is plain text) of one content block; None stands for an image or a document."""
    if isinstance(block, str):
        return [(block, True)]
    if not isinstance(block, Mapping):
        return []
    kind = block.get("type")
    if kind in _NON_TEXT_BLOCKS:
        return [(None, False)]
    if kind == "text" and isinstance(block.get("text"), str):
        return [(block["text"], True)]
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return [(block["thinking"], True)]
    if kind == "tool_result":
        content = block.get("content")
        items = content if isinstance(content, list) else [content]
        return [t for item in items if item is not None for t in _block_texts(item)]
    if kind in ("tool_use", "server_tool_use"):
        return [(_json_text(block.get("input", {})), False)]
    if kind == "redacted_thinking":
        return []
    return [(_json_text(block), False)]


def _content_texts(content: object) -> list[tuple[str | None, bool]]:
    """The texts of a message's `content` (a string or a list of blocks) or of `system`."""
    if isinstance(content, list):
        return [t for block in content for t in _block_texts(block)]
    return _block_texts(content)


def _reset_seconds(value: str | None, now: float) -> float | None:
    """Seconds from `now` to an RFC 3339 reset time (past -> 0); None when not one."""
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _dimensions(headers: Mapping[str, str], now: float) -> dict[str, ServerLimits]:
    """The `anthropic-ratelimit-*` figures per dimension ("requests", "input-tokens", ...)."""
    lowered = lower_headers(headers)
    found: dict[str, ServerLimits] = {}
    for dimension in DIMENSIONS:
        prefix = f"anthropic-ratelimit-{dimension}-"
        reset = _reset_seconds(lowered.get(prefix + "reset"), now)
        limit, remaining = lowered.get(prefix + "limit"), lowered.get(prefix + "remaining")
        parsed = server_limits(limit, remaining, reset)
        if parsed is None and reset is not None:
            parsed = ServerLimits(reset_s=reset)
        if parsed is not None and dimension != "requests":
            parsed = dataclasses.replace(parsed, rounding=TOKENS_ROUNDING)
        if parsed is not None:
            found[dimension] = parsed
    return found


def _usage(raw: object, previous: Usage | None = None) -> Usage | None:
    """Usage from a Messages `usage` object; fields it lacks are kept from `previous`."""
    if not isinstance(raw, Mapping):
        return None
    fields = (
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    )
    counts = {name: as_int(raw.get(name)) for name in fields}
    if all(v is None for v in counts.values()):
        return None
    if previous is not None:
        last = {
            "input_tokens": previous.prompt_tokens
            - previous.cached_tokens
            - previous.cache_write_tokens,
            "output_tokens": previous.completion_tokens,
            "cache_creation_input_tokens": previous.cache_write_tokens,
            "cache_read_input_tokens": previous.cached_tokens,
        }
        counts = {k: last[k] if v is None else v for k, v in counts.items()}
    uncached = counts["input_tokens"] or 0
    written = counts["cache_creation_input_tokens"] or 0
    read = counts["cache_read_input_tokens"] or 0
    details = raw.get("output_tokens_details")
    thinking = as_int(details.get("thinking_tokens")) if isinstance(details, Mapping) else None
    if thinking is None and previous is not None:
        thinking = previous.reasoning_tokens
    return Usage.reported(
        uncached + written + read,
        counts["output_tokens"] or 0,
        None,
        cached=read,
        reasoning=thinking or 0,
        cache_write=written,
    )


class AnthropicStreamParser:
    """SSE parser of a Messages stream: usage merged from `message_start` and `message_delta`,
    and the error type of a stream that ends in an `error` event."""

    def __init__(self) -> None:
        self._start: Usage | None = None
        self._error: str | None = None
        self._events = JSONEventUsageParser(self._event_usage)

    def _event_usage(self, event: Mapping[str, Any]) -> Usage | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = _usage(message.get("usage")) if isinstance(message, Mapping) else None
            if usage is not None:
                self._start = usage
            return usage
        if kind == "message_delta":
            return _usage(event.get("usage"), self._start)
        if kind == "error":
            self._error = str(error_object(event).get("type") or "error")
        return None

    def feed(self, chunk: bytes) -> None:
        """Consume bytes split anywhere."""
        self._events.feed(chunk)

    def close(self) -> None:
        """Flush a last event with no terminating blank line."""
        self._events.close()

    @property
    def usage(self) -> Usage | None:
        """The final usage, else the input counts of `message_start`, else None."""
        return self._events.usage

    @property
    def malformed(self) -> int:
        """Events whose data was not a JSON object."""
        return self._events.malformed

    @property
    def error(self) -> str | None:
        """The `error.type` of the stream's error event ("overloaded_error"), or None."""
        return self._error


class AnthropicProvider(ProviderDefaults):
    """Anthropic Messages API wire format (`POST /v1/messages`, `/v1/messages/count_tokens`)."""

    vendor = "anthropic"
    hosts: tuple[str, ...] = ("api.anthropic.com",)
    base_url_env: tuple[str, ...] = ("ANTHROPIC_BASE_URL",)
    key_env: tuple[str, ...] = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    placeholder_key: str | None = "sk-ant-llm-budget-replay-placeholder"
    secret_headers: tuple[str, ...] = ("x-api-key", "authorization")
    secret_response_headers: tuple[str, ...] = ("anthropic-organization-id",)
    price_id: str | None = "anthropic"
    fixtures: tuple[str, ...] = ("anthropic_client", "async_anthropic_client")
    #: Anthropic's limits count the reported usage, not `max_tokens`.
    counts_reported_usage = True
    #: Statuses whose answer is a refusal to classify: 429, and 529 `overloaded_error`.
    refusal_statuses: frozenset[int] = frozenset({429, OVERLOADED_STATUS})

    def handles(self, host: str, path: str) -> bool:
        """True for .../v1/messages and .../v1/messages/count_tokens."""
        return _MESSAGES.search(path.split("?", 1)[0]) is not None

    def estimate(
        self,
        path: str,
        body: bytes,
        counter: TokenCounter,
        policy: EstimatePolicy,
        *,
        grounded: bool = False,
    ) -> Estimate:
        """Input counted with a margin (module docstring) and `max_tokens` as the output."""
        data = load_json(body) if body else {}
        if not isinstance(data, dict):
            return Estimate(UNKNOWN_MODEL, len(body), policy.output_tokens(None))  # bytes >= tokens
        model = data.get("model")
        model = model if isinstance(model, str) and model else UNKNOWN_MODEL
        match = _MESSAGES.search(path.split("?", 1)[0])
        if match is not None and match.group("count"):
            return Estimate(model, 0, 0)
        try:
            texts = _content_texts(data.get("system"))
            messages = data.get("messages")
            for message in messages if isinstance(messages, list) else []:
                if isinstance(message, Mapping):
                    texts += _content_texts(message.get("content"))
            tools = data.get("tools")
            for extra in (tools, data.get("tool_choice")):
                if extra:
                    texts.append((_json_text(extra), False))
            counted = counter.measure_texts([t for t, _ in texts], model).tokens
            chars = sum(len(t) for t, plain in texts if plain and t is not None)
        except (TypeError, ValueError, AttributeError):
            return Estimate(model, len(body), policy.output_tokens(None))
        measure = TextMeasure(counted, chars)
        tokens = policy.counted_input(measure.tokens, measure.chars, grounded=grounded)
        if tools:
            tokens += TOOL_SYSTEM_PROMPT_TOKENS
        return Estimate(model, tokens, policy.output_tokens(as_int(data.get("max_tokens"))))

    def usage_from_json(self, body: bytes) -> Usage | None:
        """The `usage` of a Message (or of a count_tokens answer's `input_tokens`), or None."""
        data = load_json(body)
        if not isinstance(data, dict):
            return None
        if "usage" not in data and as_int(data.get("input_tokens")) is not None:
            return Usage(0, 0, 0)  # count_tokens: free
        return _usage(data.get("usage"))

    def sse_usage_parser(self) -> SSEUsageParser:
        """A parser for one Messages stream."""
        return AnthropicStreamParser()

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """SPEND_CAP (never retried), RATE_LIMIT with its delay, OVERLOADED, or OTHER."""
        error = error_object(load_json(body))
        message = str(error.get("message") or "") or f"HTTP {status}"
        kind = str(error.get("type") or "")
        details = error.get("details")
        code = details.get("error_code") if isinstance(details, Mapping) else None
        lowered = lower_headers(headers)
        limits = _dimensions(lowered, now)
        dimension = _dimension(message, limits)
        limit = _limit_in_message(message)
        if limit is None and dimension in limits:
            limit = limits[dimension].limit
        if code == SPEND_CAP_CODE:
            return Rejection(RejectionKind.SPEND_CAP, None, message, limit, None)
        raw = lowered.get("retry-after")
        delay = parse_retry_after(raw, now) if raw is not None else None
        if status == OVERLOADED_STATUS or kind == "overloaded_error":
            return Rejection(RejectionKind.OVERLOADED, delay, message, None, None)
        if status != 429 and kind != "rate_limit_error":
            return Rejection(RejectionKind.OTHER, delay, message, limit, None)
        if delay is None:
            delay = _reset_hint(limits, dimension)
        return Rejection(RejectionKind.RATE_LIMIT, delay, message, limit, None)

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitHeaders:
        """Requests, input and output tokens of `anthropic-ratelimit-*` (resets from now)."""
        found = _dimensions(headers, time.time())
        return RateLimitHeaders(**{_FIELD_OF[d]: v for d, v in found.items() if d in _FIELD_OF})

    def input_charge(self, usage: Usage) -> int:
        """What ITPM counts: `input_tokens + cache_creation_input_tokens`, no cache reads."""
        return usage.prompt_tokens - usage.cached_tokens

    def output_charge(self, usage: Usage) -> int:
        """What OTPM counts: the output tokens produced."""
        return usage.completion_tokens

    def charge(self, usage: Usage) -> int:
        """What the input bucket (ITPM) is settled to: `input_charge`."""
        return self.input_charge(usage)

    def charge_estimate(self, estimate: Estimate) -> int:
        """The input estimate (ITPM); `max_tokens` is declared to the output bucket apart."""
        return estimate.input_tokens

    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        """`anthropic.AnthropicError`: the SDK turns any other exception of its transport into
        APIConnectionError (and retries it), which would hide the structured error."""
        base = getattr(sys.modules.get("anthropic"), "AnthropicError", None)
        return (base,) if isinstance(base, type) and issubclass(base, BaseException) else ()

    def client(self, fixture: str, routed: RoutedHTTP, **kwargs: Any) -> Any:
        """`anthropic.Anthropic` (`async_anthropic_client`: `AsyncAnthropic`, on httpx2 or
        httpx, never aiohttp), the SDK's retries off."""
        import anthropic

        if fixture not in self.fixtures:
            return super().client(fixture, routed, **kwargs)
        no_key = "api_key" not in kwargs and "auth_token" not in kwargs
        if routed.replay_only and no_key and missing_key(self, os.environ):
            kwargs["api_key"] = self.placeholder_key
        kwargs.setdefault("max_retries", 0)
        if fixture == "async_anthropic_client":
            library = routed.library(anthropic.DefaultAsyncHttpxClient)
            transport = routed.transport(library, is_async=True)
            http = anthropic.DefaultAsyncHttpxClient(transport=transport)
            return anthropic.AsyncAnthropic(http_client=http, **kwargs)
        library = routed.library(anthropic.DefaultHttpxClient)
        sync_http = anthropic.DefaultHttpxClient(transport=routed.transport(library))
        return anthropic.Anthropic(http_client=sync_http, **kwargs)


def _dimension(message: str, limits: Mapping[str, ServerLimits]) -> str | None:
    """The dimension a 429 is about: named in its message, else the one with nothing left."""
    for dimension, pattern in _DIMENSION_IN_MESSAGE:
        if pattern.search(message):
            return dimension
    exhausted = [d for d, v in limits.items() if v.remaining == 0 and d != "tokens"]
    return exhausted[0] if len(exhausted) == 1 else None


def _limit_in_message(message: str) -> int | None:
    """The limit in "...of 50,000 input tokens per minute", or None."""
    match = _LIMIT_IN_MESSAGE.search(message)
    return int(match.group(1).replace(",", "")) if match else None


def _reset_hint(limits: Mapping[str, ServerLimits], dimension: str | None) -> float | None:
    """The reset delay of the named dimension, else the latest of all (every one has room)."""
    named = limits.get(dimension) if dimension is not None else None
    if named is not None and named.reset_s is not None:
        return named.reset_s
    resets = [v.reset_s for v in limits.values() if v.reset_s is not None]
    return max(resets) if resets else None
