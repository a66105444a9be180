"""OpenAI wire knowledge: chat/responses/completions/embeddings estimates, usage, 429 meaning.

`declared_tokens` (the `llm_budget(tokens=...)` marker) is a floor on `Estimate.total`; any
shortfall is added to the input side, since the output budget is exact and the input is the
uncertain part. A 429's retry delay comes from `retry-after-ms`, then `retry-after`, then the
message's "Please try again in 1.5s", then the `x-ratelimit-reset-*` headers. A body that is not
a JSON object is estimated as its byte length (an upper bound on its tokens) with the policy's
margin, the default output budget and model "unknown".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pytest_llm_budget.providers.base import (
    Estimate,
    Rejection,
    RejectionKind,
    SSEUsageParser,
    Usage,
    as_int,
    load_json,
    lower_headers,
)
from pytest_llm_budget.providers.retry_hints import (
    parse_retry_hint_in_message,
    retry_delay_from_headers,
)
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.tokens import EstimatePolicy, TextMeasure, TokenCounter

__all__ = ["OpenAIProvider", "apply_declared_floor", "estimate_unparsable"]

UNKNOWN_MODEL = "unknown"
_ENDPOINTS = ("chat/completions", "responses", "completions", "embeddings")
_AZURE_DEPLOYMENT = re.compile(r"/deployments/([^/]+)/")
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})
_LIMIT = re.compile(r"\bLimit:?\s*([0-9][0-9,]*)", re.IGNORECASE)
_REQUESTED = re.compile(r"\bRequested:?\s*([0-9][0-9,]*)", re.IGNORECASE)
_FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_JSON_FIELDS_COUNTED = ("tools", "functions", "response_format", "text", "tool_choice")


def _endpoint(path: str) -> str | None:
    """The token-spending endpoint a path ends with ("chat/completions", ...), or None."""
    clean = path.split("?", 1)[0].rstrip("/")
    for name in _ENDPOINTS:
        if clean == f"/{name}" or clean == name or clean.endswith(f"/{name}"):
            return name
    return None


def _json_text(value: object) -> str:
    """Compact JSON of a structured field, as a stand-in for the text the model receives."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _add(*measures: TextMeasure) -> TextMeasure:
    """Sum token and character counts."""
    return TextMeasure(sum(m.tokens for m in measures), sum(m.chars for m in measures))


def apply_declared_floor(estimate: Estimate, declared_tokens: int | None) -> Estimate:
    """Raise the input side so that `total` is at least the user's declared tokens."""
    if declared_tokens is None or declared_tokens <= estimate.total:
        return estimate
    return Estimate(
        estimate.model, declared_tokens - estimate.output_tokens, estimate.output_tokens
    )


def estimate_unparsable(
    body: bytes, model: str, policy: EstimatePolicy, grounded: bool, output: int | None = None
) -> Estimate:
    """Safe estimate of a body we cannot read: its byte length bounds its token count."""
    return Estimate(
        model,
        policy.input_tokens(len(body), len(body), grounded=grounded),
        policy.output_tokens(output),
    )


def _declared_output(body: Mapping[str, Any], *keys: str) -> int | None:
    """The first non-negative integer among keys, multiplied by `n` choices when given."""
    budget = next((v for v in (as_int(body.get(k)) for k in keys) if v is not None), None)
    choices = as_int(body.get("n"))
    if budget is not None and choices is not None and choices > 1:
        return budget * choices
    return budget


class OpenAIProvider:
    """OpenAI (and OpenAI-compatible, e.g. Azure) wire format."""

    def __init__(self, vendor: str = "openai") -> None:
        self.vendor = vendor

    def handles(self, path: str) -> bool:
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
        declared_tokens: int | None = None,
    ) -> Estimate:
        """Estimate input (counted, with margin) and output (declared budget) of a request."""
        data = load_json(body) if body else {}
        if not isinstance(data, dict):
            return apply_declared_floor(
                estimate_unparsable(body, UNKNOWN_MODEL, policy, grounded), declared_tokens
            )
        model = self._model(path, data)
        endpoint = _endpoint(path)
        try:
            measure, output = self._measure(endpoint, data, model, counter)
        except (TypeError, ValueError, AttributeError):
            return apply_declared_floor(
                estimate_unparsable(body, model, policy, grounded), declared_tokens
            )
        estimate = Estimate(
            model,
            policy.input_tokens(measure.tokens, measure.chars, grounded=grounded),
            0 if endpoint == "embeddings" else policy.output_tokens(output),
        )
        return apply_declared_floor(estimate, declared_tokens)

    def _model(self, path: str, data: Mapping[str, Any]) -> str:
        """Model from the body, else the Azure deployment name, else "unknown"."""
        model = data.get("model")
        if isinstance(model, str) and model:
            return model
        deployment = _AZURE_DEPLOYMENT.search(path)
        return deployment.group(1) if deployment else UNKNOWN_MODEL

    def _measure(
        self, endpoint: str | None, data: Mapping[str, Any], model: str, counter: TokenCounter
    ) -> tuple[TextMeasure, int | None]:
        """Input measure and declared output budget for one endpoint's body shape."""
        extras = counter.measure_texts(
            [_json_text(data[k]) for k in _JSON_FIELDS_COUNTED if data.get(k)], model
        )
        if endpoint == "responses":
            measure = _add(self._responses_input(data, model, counter), extras)
            return measure, _declared_output(data, "max_output_tokens")
        if endpoint in ("completions", "embeddings"):
            key = "prompt" if endpoint == "completions" else "input"
            measure = _add(self._prompt_input(data.get(key), model, counter), extras)
            return measure, _declared_output(data, "max_tokens")
        messages = data.get("messages")
        listed = messages if isinstance(messages, list) else []
        measure = _add(counter.measure_messages(listed, model), extras)
        return measure, _declared_output(data, "max_completion_tokens", "max_tokens")

    def _responses_input(
        self, data: Mapping[str, Any], model: str, counter: TokenCounter
    ) -> TextMeasure:
        """Responses API: `instructions` plus `input` (a string or a list of items)."""
        messages: list[Mapping[str, Any]] = []
        instructions = data.get("instructions")
        if isinstance(instructions, str) and instructions:
            messages.append({"role": "developer", "content": instructions})
        items = data.get("input")
        if isinstance(items, str):
            messages.append({"role": "user", "content": items})
        elif isinstance(items, list):
            for item in items:
                if isinstance(item, Mapping):
                    messages.append({k: v for k, v in item.items() if k not in ("id", "status")})
                elif isinstance(item, str):
                    messages.append({"role": "user", "content": item})
        return counter.measure_messages(messages, model)

    def _prompt_input(self, prompt: object, model: str, counter: TokenCounter) -> TextMeasure:
        """Completions `prompt` / embeddings `input`: string, strings, or token-id arrays."""
        if isinstance(prompt, str):
            return counter.measure_texts([prompt], model)
        if not isinstance(prompt, list):
            return TextMeasure(0, 0)
        if all(isinstance(t, int) for t in prompt):
            return TextMeasure(len(prompt), 4 * len(prompt))
        measures = [self._prompt_input(item, model, counter) for item in prompt]
        return _add(*measures)

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
        data = load_json(body)
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or "")
        code = str(error.get("code") or "")
        limit_type = str(error.get("type") or "") or None
        lowered = lower_headers(headers)
        limit = _number(_LIMIT, message) or as_int(lowered.get("x-ratelimit-limit-tokens"))
        requested = _number(_REQUESTED, message)
        if code in _QUOTA_CODES or limit_type in _QUOTA_CODES:
            return Rejection(RejectionKind.QUOTA, None, message or code, limit, requested)
        if message.lower().startswith("request too large"):
            return Rejection(RejectionKind.TOO_LARGE, None, message, limit, requested)
        explicit = "retry-after" in lowered or "retry-after-ms" in lowered
        hint = None if explicit else parse_retry_hint_in_message(message)
        delay = (
            hint
            if hint is not None
            else retry_delay_from_headers(lowered, now, limit_type=limit_type)
        )
        kind = RejectionKind.RATE_LIMIT if status == 429 else RejectionKind.OTHER
        return Rejection(kind, delay, message or f"HTTP {status}", limit, requested)

    def remaining_tokens(self, headers: Mapping[str, str]) -> int | None:
        """x-ratelimit-remaining-tokens, when present and numeric."""
        return as_int(lower_headers(headers).get("x-ratelimit-remaining-tokens"))

    def charge(self, usage: Usage) -> int:
        """OpenAI counts prompt and completion tokens against TPM."""
        return usage.prompt_tokens + usage.completion_tokens

    def charge_estimate(self, estimate: Estimate) -> int:
        """OpenAI admits a request against input estimate plus the output budget."""
        return estimate.total


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
    return Usage(
        prompt,
        completion,
        prompt + completion if total is None else total,
        cached_tokens=min(cached, prompt),
        reasoning_tokens=min(reasoning, completion),
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
