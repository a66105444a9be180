"""Limits learned from the provider: parsing, the limiter's buckets, the backends, whole runs."""

from __future__ import annotations

import json

import pytest

from pytest_llm_budget.providers import (
    GeminiProvider,
    LearnedLimits,
    OpenAIProvider,
    RejectionKind,
)

OPENAI = OpenAIProvider()
GEMINI = GeminiProvider()


def _openai_429(message: str, type_: str = "tokens") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "code": "rate_limit_exceeded"}}
    ).encode()


def _gemini_429(quota_id: str, value: str | None, message: str = "quota") -> bytes:
    violation: dict[str, object] = {"quotaId": quota_id, "quotaMetric": "x"}
    if value is not None:
        violation["quotaValue"] = value
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
    ]
    error = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": message, "details": details}
    return json.dumps({"error": error}).encode()


# -- providers ------------------------------------------------------------------------------------
def test_openai_states_its_limits_on_every_answer() -> None:
    headers = {"X-RateLimit-Limit-Tokens": "6000", "x-ratelimit-limit-requests": "500"}
    assert OPENAI.learned_limits(headers) == LearnedLimits(tokens=6000, requests=500)
    assert OPENAI.learned_limits({"x-ratelimit-limit-tokens": "n/a"}) is None
    assert OPENAI.learned_limits({}) is None


@pytest.mark.parametrize(
    ("message", "type_", "learned"),
    [
        (
            "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
            "Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s.",
            "tokens",
            LearnedLimits(tokens=30000),
        ),
        (
            "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests",
            LearnedLimits(requests=3),
        ),
        ("Limit 6,000, Used 5,500, Requested 1,200.", "tokens", LearnedLimits(tokens=6000)),
        (  # a daily limit is no per-window limit
            "Rate limit reached for gpt-4o-mini on tokens per day (TPD): Limit 90000, Used 89000,"
            " Requested 1200. Please try again in 7m12s.",
            "tokens",
            None,
        ),
    ],
)
def test_openai_429_message_states_a_limit(
    message: str, type_: str, learned: LearnedLimits | None
) -> None:
    rejection = OPENAI.classify(429, {}, _openai_429(message, type_), 0.0)
    assert OPENAI.learned_limits({}, rejection) == learned


def test_openai_per_day_429_is_named() -> None:
    message = "Rate limit reached on tokens per day (TPD): Limit 90000, Used 89000, Requested 9."
    rejection = OPENAI.classify(429, {}, _openai_429(message), 0.0)
    assert rejection.per_day and rejection.quota == "tokens per day (TPD)"
    assert rejection.dimension == "tokens" and rejection.limit == 90000


def test_gemini_quota_failure_states_a_per_minute_limit() -> None:
    body = _gemini_429("GenerateContentPaidTierInputTokensPerModelPerMinute", "1000000")
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.quota == "GenerateContentPaidTierInputTokensPerModelPerMinute"
    assert GEMINI.learned_limits({}, rejection) == LearnedLimits(tokens=1000000)
    body = _gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10")
    assert GEMINI.learned_limits({}, GEMINI.classify(429, {}, body, 0.0)) == LearnedLimits(
        requests=10
    )
    assert GEMINI.learned_limits({"x-ratelimit-limit-tokens": "5"}) is None  # no such headers


def test_gemini_message_states_a_limit_without_quota_value() -> None:
    message = (
        "You exceeded your current quota.\n* Quota exceeded for metric: generativelanguage."
        "googleapis.com/generate_content_input_token_count, limit: 250000, model: gemini-2.5-pro"
    )
    body = _gemini_429("", None, message).replace(b'"quotaId": ""', b'"x": 1')
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.dimension == "tokens" and rejection.limit == 250000
    assert GEMINI.learned_limits({}, rejection) == LearnedLimits(tokens=250000)


def test_gemini_per_day_quota_is_a_quota_and_no_limit() -> None:
    body = _gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250")
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.kind is RejectionKind.QUOTA and rejection.per_day
    assert rejection.quota == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert GEMINI.learned_limits({}, rejection) is None
