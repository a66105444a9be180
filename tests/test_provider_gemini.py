"""Gemini wire knowledge: estimates, usageMetadata (JSON and SSE), RESOURCE_EXHAUSTED."""

from __future__ import annotations

import json
import math

import pytest
from conftest import JAPANESE, NOW, POLICY, dumps, split_everywhere
from hypothesis import given
from hypothesis import strategies as st

from pytest_llm_budget.providers.base import (
    Estimate,
    RateLimitHeaders,
    RejectionKind,
    Usage,
)
from pytest_llm_budget.providers.gemini import GeminiProvider
from pytest_llm_budget.tokens import EstimatePolicy, TokenCounter

GEMINI = GeminiProvider()


# --- Gemini --------------------------------------------------------------------------------

GEMINI_PATH = "/v1beta/models/gemini-2.0-flash:generateContent"
VERTEX_PATH = (
    "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash"
    ":streamGenerateContent?alt=sse"
)
GEMINI_BODY = {
    "contents": [
        {"role": "user", "parts": [{"text": "Explain tokens briefly."}]},
        {"role": "model", "parts": [{"text": "Tokens are pieces of text."}]},
        {"role": "user", "parts": [{"text": JAPANESE}]},
    ],
    "systemInstruction": {"parts": [{"text": "Be concise."}]},
    "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2},
}


def test_gemini_estimate_is_input_tokens_with_margin(counter: TokenCounter) -> None:
    estimate = GEMINI.estimate(GEMINI_PATH, dumps(GEMINI_BODY), counter, POLICY)
    texts = ["Be concise.", "Explain tokens briefly.", "Tokens are pieces of text.", JAPANESE]
    counted = sum(counter.count_text(t, "gemini-2.0-flash") for t in texts)
    assert counted > math.ceil(sum(map(len, texts)) / 4)  # the Japanese turn outweighs chars/4
    assert estimate == Estimate("gemini-2.0-flash", math.ceil(counted * 1.2), 256)
    assert GEMINI.charge_estimate(estimate) == estimate.input_tokens


def test_gemini_estimate_floors_at_chars_over_4(counter: TokenCounter) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "a" * 4000}]}]}
    estimate = GEMINI.estimate(GEMINI_PATH, dumps(body), counter, POLICY)
    assert estimate.input_tokens == math.ceil(1000 * 1.2)
    exact = GEMINI.estimate(GEMINI_PATH, dumps(body), counter, EstimatePolicy(safety_margin=0))
    assert exact.input_tokens == 1000


def test_gemini_vertex_estimate_snake_case_and_default_output(counter: TokenCounter) -> None:
    body = {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Hi"},
                    {"inline_data": {"mime_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            }
        ],
        "system_instruction": {"parts": [{"text": "Be concise."}]},
    }
    estimate = GEMINI.estimate(VERTEX_PATH, dumps(body), counter, POLICY)
    assert estimate.model == "gemini-2.5-flash"
    assert estimate.output_tokens == 7000
    counted = 1500 + counter.count_text("Hi", "x") + counter.count_text("Be concise.", "x")
    assert estimate.input_tokens == math.ceil(counted * 1.2)
    grounded = GEMINI.estimate(VERTEX_PATH, dumps(body), counter, POLICY, grounded=True)
    assert grounded.input_tokens == math.ceil(round(counted * 1.2 * 1.15, 6))


def test_gemini_count_tokens_and_embeddings(counter: TokenCounter) -> None:
    count = GEMINI.estimate(
        "/v1beta/models/gemini-2.0-flash:countTokens", dumps(GEMINI_BODY), counter, POLICY
    )
    assert count == Estimate("gemini-2.0-flash", 0, 0)
    embed = {"content": {"parts": [{"text": "hello world"}]}}
    estimate = GEMINI.estimate(
        "/v1beta/models/text-embedding-004:embedContent", dumps(embed), counter, POLICY
    )
    assert estimate == Estimate("text-embedding-004", math.ceil(3 * 1.2), 0)
    batch = {"requests": [{"model": "models/text-embedding-004", **embed}] * 2}
    doubled = GEMINI.estimate(
        "/v1beta/models/text-embedding-004:batchEmbedContents", dumps(batch), counter, POLICY
    )
    assert doubled.input_tokens == math.ceil(6 * 1.2)


@pytest.mark.parametrize(
    "body", [b"", b"nope", b"[]", b'{"contents": 7}', b'{"generationConfig": []}']
)
def test_gemini_malformed_request_never_raises(counter: TokenCounter, body: bytes) -> None:
    estimate = GEMINI.estimate(GEMINI_PATH, body, counter, POLICY)
    assert estimate.model == "gemini-2.0-flash"
    assert estimate.input_tokens <= max(len(body), 1)


GEMINI_RESPONSE = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Tokens are units."}]},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 27,
        "candidatesTokenCount": 5,
        "totalTokenCount": 132,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 27}],
        "thoughtsTokenCount": 100,
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "abc123",
}


def test_gemini_usage_from_json() -> None:
    assert GEMINI.usage_from_json(dumps(GEMINI_RESPONSE)) == Usage(
        27, 105, 132, reasoning_tokens=100
    )
    assert GEMINI.charge(Usage(27, 105, 132)) == 27
    array_stream = [
        {
            "candidates": GEMINI_RESPONSE["candidates"],
            "usageMetadata": {"promptTokenCount": 27, "totalTokenCount": 27},
        },
        GEMINI_RESPONSE,
    ]
    assert GEMINI.usage_from_json(dumps(array_stream)) == Usage(
        27, 105, 132, reasoning_tokens=100
    )
    no_output = {"usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4}}
    assert GEMINI.usage_from_json(dumps(no_output)) == Usage(4, 0, 4)


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"usageMetadata": {}}', b'{"usageMetadata": 3}', b"[1]", b"\xff"]
)
def test_gemini_usage_from_malformed_json_is_none(body: bytes) -> None:
    assert GEMINI.usage_from_json(body) is None


def gemini_stream() -> bytes:
    """An alt=sse stream as the Gemini API sends it (CRLF framing, usage on every chunk)."""
    chunks = [
        {
            "candidates": [{"content": {"role": "model", "parts": [{"text": "Tok"}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 27, "totalTokenCount": 27},
            "modelVersion": "gemini-2.5-flash",
        },
        {
            "candidates": [
                {"content": {"role": "model", "parts": [{"text": "ens — 世界"}]}, "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": 27,
                "candidatesTokenCount": 3,
                "totalTokenCount": 30,
            },
            "modelVersion": "gemini-2.5-flash",
        },
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "."}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 27,
                "candidatesTokenCount": 5,
                "thoughtsTokenCount": 100,
                "totalTokenCount": 132,
            },
            "modelVersion": "gemini-2.5-flash",
        },
    ]
    return "".join(f"data: {json.dumps(c, ensure_ascii=False)}\r\n\r\n" for c in chunks).encode()


def test_gemini_sse_usage_with_every_split() -> None:
    stream = gemini_stream()
    for chunks in split_everywhere(stream):
        parser = GEMINI.sse_usage_parser()
        for chunk in chunks:
            parser.feed(chunk)
        assert parser.usage == Usage(27, 105, 132, reasoning_tokens=100)
        assert parser.malformed == 0


@given(st.lists(st.integers(min_value=0, max_value=1200), max_size=20))
def test_gemini_sse_usage_with_arbitrary_splits(cuts: list[int]) -> None:
    stream = gemini_stream()
    parser = GEMINI.sse_usage_parser()
    start = 0
    for point in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        parser.feed(stream[start:point])
        start = point
    assert parser.usage == Usage(27, 105, 132, reasoning_tokens=100)


def test_gemini_sse_malformed_event_is_counted() -> None:
    parser = GEMINI.sse_usage_parser()
    parser.feed(gemini_stream()[:40] + b"\r\n\r\n")
    parser.feed(b"data: [DONE]\r\n\r\n")
    assert parser.malformed == 2
    assert parser.usage is None


GEMINI_429 = {
    "error": {
        "code": 429,
        "message": (
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n"
            "* Quota exceeded for metric: generativelanguage.googleapis.com/"
            "generate_content_free_tier_input_token_count, limit: 250000, model: gemini-2.0-flash\n"
            "Please retry in 26.577437859s."
        ),
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": (
                            "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_input_token_count"
                        ),
                        "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                        "quotaValue": "250000",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
        ],
    }
}


def test_gemini_rate_limit_with_retry_info() -> None:
    rejection = GEMINI.classify(429, {}, dumps(GEMINI_429), NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.retry_after_s == 26.0
    assert rejection.limit == 250000


def test_gemini_message_hint_when_retry_info_is_missing() -> None:
    error = {**GEMINI_429["error"], "details": []}
    rejection = GEMINI.classify(429, {}, dumps({"error": error}), NOW)
    assert rejection.retry_after_s == pytest.approx(26.577437859)


def test_vertex_rate_limit_without_retry_info() -> None:
    body = {
        "error": {
            "code": 429,
            "message": (
                "Resource exhausted. Please try again later. Please refer to "
                "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more "
                "details."
            ),
            "status": "RESOURCE_EXHAUSTED",
        }
    }
    rejection = GEMINI.classify(429, {}, dumps(body), NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.retry_after_s is None
    assert rejection.message.startswith("Resource exhausted")


def test_gemini_per_day_quota_is_not_retryable() -> None:
    error = json.loads(json.dumps(GEMINI_429["error"]))
    violation = error["details"][0]["violations"][0]
    violation["quotaId"] = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    violation["quotaValue"] = "50"
    rejection = GEMINI.classify(429, {}, dumps({"error": error}), NOW)
    assert rejection.kind is RejectionKind.QUOTA
    assert rejection.kind is not RejectionKind.RATE_LIMIT  # not retried
    assert rejection.limit == 50


def test_gemini_zero_limit_is_quota() -> None:
    error = {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "message": (
            "You exceeded your current quota.\n* Quota exceeded for metric: "
            "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, "
            "model: gemini-2.5-pro\nPlease retry in 40s."
        ),
    }
    rejection = GEMINI.classify(429, {}, dumps({"error": error}), NOW)
    assert rejection.kind is RejectionKind.QUOTA
    assert rejection.limit == 0
    assert rejection.retry_after_s == 40.0


@pytest.mark.parametrize("body", [b"", b"upstream connect error", b"[]", b'{"error": []}'])
def test_gemini_malformed_429_is_a_rate_limit(body: bytes) -> None:
    rejection = GEMINI.classify(429, {"Retry-After": "5"}, body, NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.retry_after_s == 5.0


def test_gemini_has_no_rate_limit_headers() -> None:
    assert GEMINI.rate_limits({"x-ratelimit-remaining-tokens": "5"}) == RateLimitHeaders()
