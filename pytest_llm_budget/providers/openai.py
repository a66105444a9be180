"""OpenAI wire knowledge: chat/responses/completions/embeddings estimates, usage, 429 meaning.

OpenAI admits a request on ceil(characters / 4) of the text it carries plus its declared output
budget (`max_completion_tokens` / `max_tokens` / `max_output_tokens`, times `n`), and the
estimate is exactly that: no tokenizer, no margin. The characters are those of the text parts
the provider reads (`request_chars`): message content and text parts, names, instructions,
Responses input items' text, function-call arguments and tool outputs; images, audio and files
count none, nor do tool schemas or the roles. A request with no declared output budget gets
`--llm-est-tokens`. A body that is not a JSON object is estimated from its byte length (at least
its characters). A 429's retry delay comes from `retry-after-ms`, then `retry-after`, then the
message's "Please try again in 1.5s", then the `x-ratelimit-reset-*` headers. The fixtures
`openai_client` / `async_openai_client` get SDK clients with the SDK's retries off.
"""

from __future__ import annotations

import json
import os
import re
import sys
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
    times_choices,
)
from pytest_llm_budget.providers.retry_hints import (
    parse_go_duration,
    parse_retry_hint_in_message,
    retry_delay_from_headers,
)
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.tokens.counting import TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy, chars_tokens

__all__ = ["OpenAIProvider", "request_chars"]

UNKNOWN_MODEL = "unknown"
_ENDPOINTS = ("chat/completions", "responses", "completions", "embeddings")
_AZURE_DEPLOYMENT = re.compile(r"/deployments/([^/]+)/")
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
_LIMIT = re.compile(r"\bLimit:?\s*([0-9][0-9,]*)", re.IGNORECASE)
_REQUESTED = re.compile(r"\bRequested:?\s*([0-9][0-9,]*)", re.IGNORECASE)
#: "on tokens per min (TPM)", "on requests per day (RPD)": the dimension and span of a limit.
_LIMIT_KIND = re.compile(r"\b(tokens|requests) per (min|day)\w*(?: \((TPM|RPM|TPD|RPD)\))?", re.I)
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_JSON_FIELDS_COUNTED = ("tools", "functions", "response_format", "text", "tool_choice")


def _endpoint(path: str) -> str | None:
    """The token-spending endpoint a path ends with ("chat/completions", ...), or None."""
    clean = path.split("?", 1)[0].rstrip("/")
    for name in _ENDPOINTS:
        if clean == f"/{name}" or clean == name or clean.endswith(f"/{name}"):
            return name
    return None


_TEXT_KEYS = frozenset(
    {"content", "text", "input", "instructions", "arguments", "output", "parts", "name"}
)
_NON_TEXT_TYPES = frozenset({"image_url", "input_image", "input_file", "input_audio", "file"})


def request_chars(value: object) -> int:
    """Characters of the text OpenAI's admission estimate reads in a request fragment."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(request_chars(v) for v in value)
    if isinstance(value, Mapping):
        if value.get("type") in _NON_TEXT_TYPES:
            return 0
        return sum(request_chars(v) for k, v in value.items() if k in _TEXT_KEYS)
    return 0


def _declared_output(body: Mapping[str, Any], *keys: str) -> int | None:
    """The first non-negative integer among keys, multiplied by `n` choices when given."""
    budget = next((v for v in (as_int(body.get(k)) for k in keys) if v is not None), None)
    return times_choices(budget, as_int(body.get("n")))


class OpenAIProvider(ProviderDefaults):
    """OpenAI (and OpenAI-compatible, e.g. Azure) wire format."""

    vendor = "openai"
    hosts: tuple[str, ...] = ("api.openai.com", "*.openai.azure.com")
    base_url_env: tuple[str, ...] = ("OPENAI_BASE_URL",)
    key_env: tuple[str, ...] = ("OPENAI_API_KEY",)
    placeholder_key: str | None = "sk-llm-budget-replay-placeholder"
    secret_headers: tuple[str, ...] = (
        "authorization", "api-key", "openai-organization", "openai-project",
    )
    secret_response_headers: tuple[str, ...] = ("openai-organization", "openai-project")
    price_id: str | None = "openai"
    fixtures: tuple[str, ...] = ("openai_client", "async_openai_client")
    #: OpenAI charges input estimate + max_tokens at admission, whatever the call then used.
    counts_reported_usage = False

    def handles(self, host: str, path: str) -> bool:
        """True for .../chat/completions, .../responses, .../completions, .../embeddings."""
        return _endpoint(path) is not None

    def estimate(
        self,
        path: str,
        body: bytes,
        counter: TokenCounter,
        policy: EstimatePolicy,
        *,
        grounded: bool = False,
    ) -> Estimate:
        """Admission charge: ceil(characters / 4) plus the declared output budget, exactly."""
        # No tokenizer (`counter` unused) and no grounded overhead: OpenAI charges what the
        # request carries, whatever a search adds later.
        data = load_json(body) if body else {}
        if not isinstance(data, dict):
            return Estimate(UNKNOWN_MODEL, chars_tokens(len(body)), policy.output_tokens(None))
        model = self._model(path, data)
        endpoint = _endpoint(path)
        if endpoint == "responses":
            chars = request_chars([data.get("input"), data.get("instructions")])
            output = _declared_output(data, "max_output_tokens")
        elif endpoint in ("completions", "embeddings"):
            key = "prompt" if endpoint == "completions" else "input"
            return self._prompt_estimate(model, endpoint, data.get(key), data, policy)
        else:
            chars = request_chars(data.get("messages"))
            output = _declared_output(data, "max_completion_tokens", "max_tokens")
        return Estimate(model, chars_tokens(chars), policy.output_tokens(output))

    def _model(self, path: str, data: Mapping[str, Any]) -> str:
        """Model from the body, else the Azure deployment name, else "unknown"."""
        model = data.get("model")
        if isinstance(model, str) and model:
            return model
        deployment = _AZURE_DEPLOYMENT.search(path)
        return deployment.group(1) if deployment else UNKNOWN_MODEL

    def _prompt_estimate(
        self,
        model: str,
        endpoint: str,
        prompt: object,
        data: Mapping[str, Any],
        policy: EstimatePolicy,
    ) -> Estimate:
        """Completions `prompt` / embeddings `input`: strings by characters, token ids as given."""
        items = prompt if isinstance(prompt, list) else [prompt]
        ids = [i for i in items if isinstance(i, list) and all(isinstance(t, int) for t in i)]
        if items and all(isinstance(t, int) for t in items):
            ids, items = [items], []
        tokens = chars_tokens(request_chars(items)) + sum(len(i) for i in ids)
        if endpoint == "embeddings":
            return Estimate(model, tokens, 0)
        return Estimate(model, tokens, policy.output_tokens(_declared_output(data, "max_tokens")))

    def usage_from_json(self, body: bytes) -> Usage | None:
        """Usage of a chat/completions/embeddings or responses body, or None."""
        data = load_json(body)
        if not isinstance(data, dict):
            return None
        return _usage(data.get("usage"), data.get("service_tier"))

    def sse_usage_parser(self) -> SSEUsageParser:
        """Parser for chat chunks carrying `usage` and responses' final `response.*` events."""
        return JSONEventUsageParser(_event_usage, ignore_data=frozenset({"[DONE]"}))

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """Quota (never retry), request too large (never retry), or a rate limit with its delay."""
        error = error_object(load_json(body))
        message = str(error.get("message") or "")
        code = str(error.get("code") or "")
        limit_type = str(error.get("type") or "") or None
        lowered = lower_headers(headers)
        limit = _number(_LIMIT, message) or as_int(lowered.get("x-ratelimit-limit-tokens"))
        requested = _number(_REQUESTED, message)
        kind_match = _LIMIT_KIND.search(message)
        dimension = limit_type if limit_type in ("tokens", "requests") else None
        per_day = False
        quota = None
        if kind_match is not None:
            dimension = kind_match.group(1).lower()
            per_day = kind_match.group(2).lower() == "day"
            quota = kind_match.group(0)
        if code in _QUOTA_CODES or limit_type in _QUOTA_CODES:
            return Rejection(
                RejectionKind.QUOTA, None, message or code, limit, requested, None,
                quota or code or limit_type, per_day,
            )
        if message.lower().startswith("request too large"):
            return Rejection(
                RejectionKind.TOO_LARGE, None, message, limit, requested, dimension, quota, per_day
            )
        explicit = "retry-after" in lowered or "retry-after-ms" in lowered
        hint = None if explicit else parse_retry_hint_in_message(message)
        delay = (
            hint
            if hint is not None
            else retry_delay_from_headers(lowered, now, limit_type=limit_type)
        )
        kind = RejectionKind.RATE_LIMIT if status == 429 else RejectionKind.OTHER
        return Rejection(
            kind, delay, message or f"HTTP {status}", limit, requested, dimension, quota, per_day
        )

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitHeaders:
        """`x-ratelimit-{limit,remaining,reset}-{tokens,requests}` (resets are Go durations)."""
        lowered = lower_headers(headers)

        def dimension(name: str) -> ServerLimits | None:
            reset = parse_go_duration(lowered.get(f"x-ratelimit-reset-{name}", ""))
            return server_limits(
                lowered.get(f"x-ratelimit-limit-{name}"),
                lowered.get(f"x-ratelimit-remaining-{name}"),
                reset,
            )

        return RateLimitHeaders(tokens=dimension("tokens"), requests=dimension("requests"))

    def stream_usage_expected(self, path: str, body: bytes) -> bool:
        """False for a chat stream that did not ask for usage (`stream_options.include_usage`)."""
        if not path.rstrip("/").endswith("chat/completions") or b'"stream"' not in body:
            return True
        try:
            data = json.loads(body)
        except ValueError:
            return True
        if not isinstance(data, dict) or not data.get("stream"):
            return True
        options = data.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        """`openai.OpenAIError`: openai < 3 turns any other exception of its transport into
        APIConnectionError (and retries it), which would hide the structured error."""
        base = getattr(sys.modules.get("openai"), "OpenAIError", None)
        return (base,) if isinstance(base, type) and issubclass(base, BaseException) else ()

    def client(self, fixture: str, routed: RoutedHTTP, **kwargs: Any) -> Any:
        """`openai.OpenAI` (`async_openai_client`: `AsyncOpenAI`), the SDK's retries off."""
        import openai

        if fixture not in self.fixtures:
            return super().client(fixture, routed, **kwargs)
        is_async = fixture == "async_openai_client"
        if routed.replay_only and "api_key" not in kwargs and missing_key(self, os.environ):
            kwargs["api_key"] = self.placeholder_key
        kwargs.setdefault("max_retries", 0)
        if is_async:
            library = routed.library(openai.DefaultAsyncHttpxClient)
            transport = routed.transport(library, is_async=True)
            http = openai.DefaultAsyncHttpxClient(transport=transport)
            return openai.AsyncOpenAI(http_client=http, **kwargs)
        library = routed.library(openai.DefaultHttpxClient)
        sync_http = openai.DefaultHttpxClient(transport=routed.transport(library))
        return openai.OpenAI(http_client=sync_http, **kwargs)


def _number(pattern: re.Pattern[str], message: str) -> int | None:
    """An integer the pattern finds in a message ("Limit 30000" / "Requested 36,000")."""
    match = pattern.search(message)
    return int(match.group(1).replace(",", "")) if match else None


def _usage(raw: object, tier: object = None) -> Usage | None:
    """Usage from a chat-style or responses-style usage object (with the response's tier)."""
    if not isinstance(raw, Mapping):
        return None
    prompt = as_int(raw.get("prompt_tokens"))
    if prompt is None:
        prompt = as_int(raw.get("input_tokens"))
    completion = as_int(raw.get("completion_tokens"))
    if completion is None:
        completion = as_int(raw.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    total = as_int(raw.get("total_tokens"))
    cached = _detail(raw, ("prompt_tokens_details", "input_tokens_details"), "cached_tokens")
    reasoning = _detail(
        raw, ("completion_tokens_details", "output_tokens_details"), "reasoning_tokens"
    )
    return Usage.reported(
        prompt,
        completion,
        total,
        cached=cached,
        reasoning=reasoning,
        service_tier=tier if isinstance(tier, str) and tier else None,
    )


def _detail(raw: Mapping[str, Any], holders: tuple[str, ...], key: str) -> int:
    """A count inside the first `*_tokens_details` object that has it, else 0."""
    for holder in holders:
        details = raw.get(holder)
        if isinstance(details, Mapping):
            value = as_int(details.get(key))
            if value is not None:
                return value
    return 0


def _event_usage(event: Mapping[str, Any]) -> Usage | None:
    """Usage in one stream event: a chat chunk's `usage` or a final responses event's."""
    if event.get("type") in _FINAL_RESPONSE_EVENTS:
        response = event.get("response")
        if not isinstance(response, Mapping):
            return None
        return _usage(response.get("usage"), response.get("service_tier"))
    return _usage(event.get("usage"), event.get("service_tier"))
