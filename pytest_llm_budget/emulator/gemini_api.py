"""Gemini wire format: parse generateContent requests, build responses, SSE chunks and errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .call import Call, text_chars
from .limits import Decision
from .synth import chars_tokens, request_digest, synthesize
from .wire import Answer, json_answer, proto_duration, sse_answer, sse_event

__all__ = [
    "BadRequest",
    "auth_error",
    "bad_request",
    "count_tokens_answer",
    "daily_quota_error",
    "generate_answer",
    "models_answer",
    "not_found",
    "parse_generate",
    "quota_error",
    "rate_limit_error",
    "server_error",
    "stream_error_event",
]

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_RATE_DOCS = "https://ai.google.dev/gemini-api/docs/rate-limits"


class BadRequest(ValueError):
    """The request body is not a GenerateContentRequest (400)."""


def _error(code: int, message: str, details: Sequence[dict[str, Any]] | None = None) -> Answer:
    err: dict[str, Any] = {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = list(details)
    return json_answer(code, {"error": err})


def bad_request(message: str) -> Answer:
    """400 INVALID_ARGUMENT."""
    return _error(400, message)


def not_found(path: str) -> Answer:
    """404 NOT_FOUND."""
    return _error(404, f"Requested entity was not found: {path}")


def auth_error(key: str | None) -> Answer:
    """401 UNAUTHENTICATED without a key; 400 API_KEY_INVALID for an unknown key (as Google)."""
    if not key:
        return _error(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access"
            " token, login cookie or other valid authentication credential. See"
            " https://developers.google.com/identity/sign-in/web/devconsole-project.",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "CREDENTIALS_MISSING",
                    "domain": "googleapis.com",
                }
            ],
        )
    return _error(
        400,
        "API key not valid. Please pass a valid API key.",
        [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ],
    )


def server_error(status: int) -> Answer:
    """Injected 5xx (or other status) in Google's shape."""
    msg = {
        503: "The model is overloaded. Please try again later.",
        500: "An internal error has occurred. Please retry or report in"
        " https://developers.generativeai.google/guide/troubleshooting",
    }.get(status, "Injected error.")
    return _error(status, msg)


def _quota_failure(quota_id: str, metric: str, model: str, value: int | None) -> dict[str, Any]:
    violation: dict[str, Any] = {
        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": model},
    }
    if value is not None:
        violation["quotaValue"] = str(value)
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]}


def _help() -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [{"description": "Learn more about Gemini API quotas", "url": _RATE_DOCS}],
    }


def quota_error(model: str) -> Answer:
    """429 for an exhausted (daily/billing) quota: waiting a minute does not help."""
    return _error(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more"
        f" information on this error, head to: {_RATE_DOCS}.\n* Quota exceeded for metric:"
        f" generativelanguage.googleapis.com/generate_content_requests_per_day, limit: 0,"
        f" model: {model}",
        [
            _quota_failure(
                "GenerateRequestsPerDayPerProjectPerModel", "generate_content_requests", model, 0
            ),
            _help(),
        ],
    )


def _retry_info(seconds: float) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": proto_duration(seconds),
    }


def daily_quota_error(model: str, limit: int | None, retry_after: float) -> Answer:
    """429 for a spent requests-per-day quota: QuotaFailure `...PerDay...`, RetryInfo in hours."""
    metric = "generate_content_free_tier_requests"
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more"
        f" information on this error, head to: {_RATE_DOCS}.\n* Quota exceeded for metric:"
        f" generativelanguage.googleapis.com/{metric}, limit: {limit}, model: {model}"
        f"\nPlease retry in {retry_after:.3f}s."
    )
    qid = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    details = [_quota_failure(qid, metric, model, limit), _help(), _retry_info(retry_after)]
    return _error(429, msg, details)


def stream_error_event() -> bytes:
    """The error chunk that ends a stream cut by the `stream_error` fault."""
    err = {"code": 503, "message": "The model is overloaded. Please try again later.",
           "status": "UNAVAILABLE"}  # fmt: skip
    return sse_event({"error": err})


def rate_limit_error(call: Call, d: Decision, retry_info: bool = True) -> Answer:
    """429 RESOURCE_EXHAUSTED; with QuotaFailure + RetryInfo, or Vertex-style bare (no hint)."""
    if not retry_info:
        return _error(
            429,
            "Resource exhausted. Please try again later. Please refer to"
            " https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more"
            " details.",
        )
    if d.verdict == "requests":
        qid, metric = "GenerateRequestsPerMinutePerProjectPerModel", "generate_content_requests"
    else:
        qid = "GenerateContentPaidTierInputTokensPerModelPerMinute"
        metric = "generate_content_paid_tier_input_token_count"
    msg = (
        "You exceeded your current quota, please check your plan and billing details. For more"
        f" information on this error, head to: {_RATE_DOCS}.\n* Quota exceeded for metric:"
        f" generativelanguage.googleapis.com/{metric}, limit: {d.limit}, model: {call.model}"
    )
    details = [_quota_failure(qid, metric, call.model, d.limit), _help()]
    if d.verdict != "too_large" and math.isfinite(d.retry_after):
        msg += f"\nPlease retry in {max(d.retry_after, 0.001):.3f}s."
        details.append(_retry_info(d.retry_after))
    return _error(429, msg, details)


def parse_generate(raw: Any, model: str, stream: bool, lo: int, hi: int) -> Call:
    """A GenerateContentRequest -> Call (Gemini charges input tokens only)."""
    if not isinstance(raw, dict):
        raise BadRequest("Invalid JSON payload received.")
    contents = raw.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    chars = text_chars([contents, raw.get("systemInstruction") or raw.get("system_instruction")])
    config = raw.get("generationConfig") or raw.get("generation_config") or {}
    max_out = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if max_out is not None and (not isinstance(max_out, int) or max_out < 1):
        raise BadRequest(f"* GenerateContentRequest.generation_config.max_output_tokens: {max_out}")
    prompt = chars_tokens(chars)
    reply = synthesize(request_digest(raw, "gemini", model), max_out, lo, hi)
    return Call(
        vendor="gemini",
        api="generateContent",
        model=model,
        stream=stream,
        prompt_chars=chars,
        prompt_tokens=prompt,
        max_output=max_out,
        charge=prompt,
        reply=reply,
        payload=raw,
    )


def _usage(call: Call, final: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": call.prompt_tokens,
        "totalTokenCount": call.prompt_tokens + (call.completion_tokens if final else 0),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": call.prompt_tokens}],
    }
    if final:
        usage["candidatesTokenCount"] = call.completion_tokens
    return usage


def _chunk(call: Call, text: str, finish: str | None, usage: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"parts": [{"text": text}], "role": "model"},
        "index": 0,
    }
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate]}
    if usage:
        out["usageMetadata"] = _usage(call, True)
    out["modelVersion"] = call.model
    out["responseId"] = f"emu{call.reply.digest}"
    return out


def generate_answer(call: Call, sse: bool, delay: float = 0.0) -> Answer:
    """generateContent JSON, or streamGenerateContent as SSE (or a JSON array without alt=sse)."""
    finish = "MAX_TOKENS" if call.reply.truncated else "STOP"
    if not call.stream:
        return json_answer(200, _chunk(call, call.reply.text, finish, True))
    pieces = call.reply.pieces()
    chunks = [
        _chunk(call, p, finish if i == len(pieces) - 1 else None, i == len(pieces) - 1)
        for i, p in enumerate(pieces)
    ]
    if not sse:
        return json_answer(200, chunks)
    return sse_answer([sse_event(c) for c in chunks], delay=delay)


def count_tokens_answer(call: Call) -> Answer:
    """countTokens: the prompt's tokens as generateContent would report them."""
    return json_answer(
        200,
        {
            "totalTokens": call.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": call.prompt_tokens}],
        },
    )


def models_answer(models: Sequence[str]) -> Answer:
    """GET /v1/models in Gemini's shape (chosen when the caller sends a Google key)."""
    return json_answer(
        200,
        {
            "models": [
                {
                    "name": f"models/{m}",
                    "displayName": m,
                    "version": "001",
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                    "inputTokenLimit": 1_048_576,
                    "outputTokenLimit": 65_536,
                }
                for m in models
            ]
        },
    )
