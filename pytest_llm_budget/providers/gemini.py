"""Gemini wire knowledge (Gemini API and Vertex AI): estimates, usageMetadata, RESOURCE_EXHAUSTED.

Gemini's TPM quota counts input tokens only: `charge` and `charge_estimate` are input-only, while
`Estimate.output_tokens` still carries `maxOutputTokens` (times `candidateCount`) for reports.
Token counts use o200k_base as a proxy for Gemini's tokenizer, floored at chars/4 with the margin.
`countTokens` is handled (its 429s deserve retries) but costs nothing against TPM; embeddings
cost input only. A 429 is QUOTA, not retryable, when its quota is per day (a QuotaFailure
`quotaId` or message naming a per-day quota) or its limit is 0 (the model has no quota on this
tier): waiting inside a test run cannot help. Every other 429 is RATE_LIMIT with RetryInfo's
delay, else the message's "Please retry in 26.5s", else Retry-After, else None (Vertex).
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
from pytest_llm_budget.providers.openai import apply_declared_floor, estimate_unparsable
from pytest_llm_budget.providers.retry_hints import (
    parse_gemini_retry_info,
    parse_retry_hint_in_message,
    retry_delay_from_headers,
)
from pytest_llm_budget.providers.sse import JSONEventUsageParser
from pytest_llm_budget.tokens import EstimatePolicy, TextMeasure, TokenCounter

__all__ = ["GeminiProvider", "gemini_method", "gemini_model"]

_PATH = re.compile(
    r"/(?:models|tunedModels|endpoints)/(?P<model>[^/:?]+):(?P<method>[A-Za-z]+)(?:\?.*)?$"
)
_GENERATE = frozenset({"generateContent", "streamGenerateContent"})
_EMBED = frozenset({"embedContent", "batchEmbedContents"})
_METHODS = _GENERATE | _EMBED | {"countTokens"}
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_LIMIT_IN_MESSAGE = re.compile(r"\blimit:\s*([0-9]+)", re.IGNORECASE)
_PER_DAY = re.compile(r"per ?day", re.IGNORECASE)


def _match(path: str) -> re.Match[str] | None:
    """The model/method match of a Gemini or Vertex path, if its method costs tokens."""
    match = _PATH.search(path)
    return match if match and match.group("method") in _METHODS else None


def gemini_model(path: str) -> str | None:
    """Model name in a Gemini/Vertex path (".../models/gemini-2.5-flash:generateContent")."""
    match = _match(path)
    return match.group("model") if match else None


def gemini_method(path: str) -> str | None:
    """RPC method in a Gemini/Vertex path ("generateContent", "countTokens", ...)."""
    match = _match(path)
    return match.group("method") if match else None


def _get(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field by its JSON (camelCase) or proto (snake_case) name; the REST API accepts both."""
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _as_part(part: object) -> Mapping[str, Any]:
    """A Gemini part as a chat content part: text, a non-text allowance, or JSON text."""
    if not isinstance(part, Mapping):
        return {"type": "text", "text": str(part)}
    text = part.get("text")
    if isinstance(text, str):
        return {"type": "text", "text": text}
    if _get(part, "inlineData", "inline_data") is not None:
        return {"type": "inline_data"}
    if _get(part, "fileData", "file_data") is not None:
        return {"type": "file_data"}
    return {"type": "text", "text": json.dumps(part, ensure_ascii=False, separators=(",", ":"))}


def _as_message(content: object, role: str) -> Mapping[str, Any]:
    """A Gemini Content ({role, parts}) as a chat message for the shared counter."""
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, Mapping):
        return {"role": role, "content": None}
    parts = content.get("parts")
    listed = parts if isinstance(parts, list) else []
    return {
        "role": str(content.get("role") or role),
        "content": [_as_part(p) for p in listed],
    }


class GeminiProvider:
    """Google Gemini API and Vertex AI generateContent wire format."""

    vendor = "gemini"

    def handles(self, path: str) -> bool:
        """True for models/M:generateContent|streamGenerateContent|countTokens|embed* paths."""
        return _match(path) is not None

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
        """Estimate input (counted, with margin) and output (maxOutputTokens) of a request."""
        model = gemini_model(path) or "unknown"
        method = gemini_method(path)
        data = load_json(body) if body else {}
        if not isinstance(data, dict):
            return apply_declared_floor(
                estimate_unparsable(body, model, policy, grounded), declared_tokens
            )
        if method == "countTokens":
            return apply_declared_floor(Estimate(model, 0, 0), declared_tokens)
        try:
            if method in _EMBED:
                measure = counter.measure_messages(self._embed_messages(data), model)
                output = 0
            else:
                measure = self._measure_generate(data, model, counter)
                output = policy.output_tokens(self._declared_output(data))
        except (TypeError, ValueError, AttributeError):
            return apply_declared_floor(
                estimate_unparsable(body, model, policy, grounded), declared_tokens
            )
        estimate = Estimate(
            model, policy.input_tokens(measure.tokens, measure.chars, grounded=grounded), output
        )
        return apply_declared_floor(estimate, declared_tokens)

    def _measure_generate(
        self, data: Mapping[str, Any], model: str, counter: TokenCounter
    ) -> TextMeasure:
        """Contents, system instruction, tools and tool config of a generateContent body."""
        messages: list[Mapping[str, Any]] = []
        system = _get(data, "systemInstruction", "system_instruction")
        if system is not None:
            messages.append(_as_message(system, "system"))
        contents = data.get("contents")
        if isinstance(contents, list):
            messages.extend(_as_message(c, "user") for c in contents)
        elif contents is not None:
            messages.append(_as_message(contents, "user"))
        measure = counter.measure_messages(messages, model)
        extras = [
            json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            for v in (data.get("tools"), _get(data, "toolConfig", "tool_config"))
            if v
        ]
        more = counter.measure_texts(extras, model)
        return TextMeasure(measure.tokens + more.tokens, measure.chars + more.chars)

    def _embed_messages(self, data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """embedContent's `content`, or every request of batchEmbedContents."""
        requests = data.get("requests")
        if isinstance(requests, list):
            return [
                _as_message(r.get("content"), "user") for r in requests if isinstance(r, Mapping)
            ]
        return [_as_message(data.get("content"), "user")]

    def _declared_output(self, data: Mapping[str, Any]) -> int | None:
        """generationConfig.maxOutputTokens times candidateCount, when declared."""
        config = _get(data, "generationConfig", "generation_config")
        if not isinstance(config, Mapping):
            return None
        budget = as_int(_get(config, "maxOutputTokens", "max_output_tokens"))
        candidates = as_int(_get(config, "candidateCount", "candidate_count"))
        if budget is not None and candidates is not None and candidates > 1:
            return budget * candidates
        return budget

    def usage_from_json(self, body: bytes) -> Usage | None:
        """usageMetadata of a response, or of the last element of a JSON-array stream."""
        data = load_json(body)
        if isinstance(data, list):
            found = [u for u in (_response_usage(item) for item in data) if u is not None]
            return found[-1] if found else None
        return _response_usage(data)

    def sse_usage_parser(self) -> SSEUsageParser:
        """Parser for `alt=sse` streams: each event is a response; the last usageMetadata wins."""
        return JSONEventUsageParser(_response_usage)

    def classify(
        self, status: int, headers: Mapping[str, str], body: bytes, now: float
    ) -> Rejection:
        """RATE_LIMIT with RetryInfo's delay, or QUOTA for per-day / zero-limit quotas."""
        data = load_json(body)
        error = data.get("error") if isinstance(data, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or "") or f"HTTP {status}"
        violations = _quota_violations(error)
        limit = next(
            (
                v
                for v in (as_int(_get(x, "quotaValue", "quota_value")) for x in violations)
                if v is not None
            ),
            None,
        )
        if limit is None:
            match = _LIMIT_IN_MESSAGE.search(message)
            limit = int(match.group(1)) if match else None
        delay = parse_gemini_retry_info(data) if isinstance(data, dict) else None
        if delay is None:
            delay = parse_retry_hint_in_message(message)
        if delay is None:
            delay = retry_delay_from_headers(lower_headers(headers), now)
        quota_ids = " ".join(str(_get(v, "quotaId", "quota_id") or "") for v in violations)
        if status != 429 and error.get("status") != "RESOURCE_EXHAUSTED":
            return Rejection(RejectionKind.OTHER, delay, message, limit, None)
        if limit == 0 or _PER_DAY.search(quota_ids) or _PER_DAY.search(message):
            return Rejection(RejectionKind.QUOTA, delay, message, limit, None)
        return Rejection(RejectionKind.RATE_LIMIT, delay, message, limit, None)

    def remaining_tokens(self, headers: Mapping[str, str]) -> int | None:
        """Gemini sends no remaining-quota headers."""
        return None

    def charge(self, usage: Usage) -> int:
        """Gemini's TPM quota counts input (prompt) tokens."""
        return usage.prompt_tokens

    def charge_estimate(self, estimate: Estimate) -> int:
        """Gemini admits against input tokens only."""
        return estimate.input_tokens


def _quota_violations(error: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The violations of every google.rpc.QuotaFailure detail of an error."""
    details = error.get("details")
    found: list[Mapping[str, Any]] = []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping) and detail.get("@type") == _QUOTA_FAILURE:
            violations = detail.get("violations")
            if isinstance(violations, list):
                found.extend(v for v in violations if isinstance(v, Mapping))
    return found


def _response_usage(response: object) -> Usage | None:
    """Usage from a GenerateContentResponse's usageMetadata (thoughts count as completion)."""
    if not isinstance(response, Mapping):
        return None
    meta = _get(response, "usageMetadata", "usage_metadata")
    if not isinstance(meta, Mapping):
        return None
    prompt = as_int(_get(meta, "promptTokenCount", "prompt_token_count"))
    candidates = as_int(_get(meta, "candidatesTokenCount", "candidates_token_count"))
    thoughts = as_int(_get(meta, "thoughtsTokenCount", "thoughts_token_count"))
    total = as_int(_get(meta, "totalTokenCount", "total_token_count"))
    if prompt is None and candidates is None and total is None:
        return None
    cached = as_int(_get(meta, "cachedContentTokenCount", "cached_content_token_count")) or 0
    completion = (candidates or 0) + (thoughts or 0)
    prompt = prompt or 0
    return Usage(
        prompt,
        completion,
        prompt + completion if total is None else total,
        cached_tokens=min(cached, prompt),
        reasoning_tokens=thoughts or 0,
    )
