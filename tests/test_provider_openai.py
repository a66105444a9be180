"""OpenAI wire knowledge: estimates, usage (JSON and SSE), 429s, rate-limit headers."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import JAPANESE, NOW, POLICY, dumps, split_everywhere
from hypothesis import given
from hypothesis import strategies as st

from pytest_llm_budget.providers.base import (
    Estimate,
    RateLimitHeaders,
    RejectionKind,
    ServerLimits,
    Usage,
)
from pytest_llm_budget.providers.openai import OpenAIProvider
from pytest_llm_budget.tokens import EstimatePolicy, TokenCounter

OPENAI = OpenAIProvider()


# --- OpenAI estimates ----------------------------------------------------------------------
# OpenAI admits on ceil(characters / 4) of the text it reads, plus the declared output budget:
# the estimate is exactly that (no tokenizer, no margin, no chat overhead).


def test_chat_estimate_is_chars_over_4_plus_max_tokens(counter: TokenCounter) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "name": "bob", "content": "Hi"},
        ],
        "max_tokens": 500,
    }
    estimate = OPENAI.estimate("/v1/chat/completions", dumps(body), counter, POLICY)
    chars = len("You are terse.") + len("bob") + len("Hi")
    assert estimate == Estimate("gpt-4o", math.ceil(chars / 4), 500)
    assert OPENAI.charge_estimate(estimate) == 5 + 500


def test_chat_estimate_needs_no_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_tokenizer(*args: Any) -> Any:
        raise AssertionError("an OpenAI estimate loaded an encoding")

    monkeypatch.setattr(TokenCounter, "encoding_for", no_tokenizer)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": JAPANESE}]}
    estimate = OPENAI.estimate("/v1/chat/completions", dumps(body), TokenCounter(), POLICY)
    assert estimate.input_tokens == math.ceil(len(JAPANESE) / 4)


def test_chat_estimate_counts_parts_names_and_tool_output_not_images_or_schemas(
    counter: TokenCounter,
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture."},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    body = {"model": "gpt-4o", "messages": messages, "tools": tools, "max_tokens": 10}
    estimate = OPENAI.estimate("/v1/chat/completions", dumps(body), counter, POLICY)
    chars = len("Describe this picture.") + len('{"temp": 21}')
    assert estimate == Estimate("gpt-4o", math.ceil(chars / 4), 10)


def test_chat_estimate_default_output_n_and_grounded(counter: TokenCounter) -> None:
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "Hi"}]}
    plain = OPENAI.estimate("/v1/chat/completions", dumps(body), counter, POLICY)
    assert plain == Estimate("gpt-5", 1, 7000)
    grounded = OPENAI.estimate("/v1/chat/completions", dumps(body), counter, POLICY, grounded=True)
    assert grounded == plain  # OpenAI charges what the request carries
    several = {**body, "max_completion_tokens": 300, "max_tokens": 5, "n": 3}
    assert (
        OPENAI.estimate("/v1/chat/completions", dumps(several), counter, POLICY).output_tokens
        == 900
    )


def test_margin_and_overhead_never_touch_openai(counter: TokenCounter) -> None:
    body = dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 400}]})
    wide = EstimatePolicy(safety_margin=1.0, grounded_overhead=1.0, default_output_tokens=50)
    estimate = OPENAI.estimate("/v1/chat/completions", body, counter, wide, grounded=True)
    assert estimate == Estimate("gpt-4o", 100, 50)


def test_azure_model_comes_from_deployment(counter: TokenCounter) -> None:
    body = dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})
    path = "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    assert OPENAI.estimate(path, body, counter, POLICY).model == "prod-gpt4o"


def test_responses_estimate_string_input(counter: TokenCounter) -> None:
    body = {
        "model": "gpt-4.1",
        "instructions": "Answer in one word.",
        "input": "Capital of France?",
        "max_output_tokens": 64,
    }
    estimate = OPENAI.estimate("/v1/responses", dumps(body), counter, POLICY)
    chars = len("Answer in one word.") + len("Capital of France?")
    assert estimate == Estimate("gpt-4.1", math.ceil(chars / 4), 64)


def test_responses_estimate_item_list(counter: TokenCounter) -> None:
    body = {
        "model": "o4-mini",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": JAPANESE},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/a.png",
                        "detail": "auto",
                    },
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "temp", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": '{"temp": 21}'},
        ],
    }
    estimate = OPENAI.estimate("/v1/responses", dumps(body), counter, POLICY)
    chars = len(JAPANESE) + len("temp") + len("{}") + len('{"temp": 21}')
    assert estimate == Estimate("o4-mini", math.ceil(chars / 4), 7000)


def test_embeddings_estimate_has_no_output(counter: TokenCounter) -> None:
    body = {"model": "text-embedding-3-small", "input": ["first text", "second text"]}
    estimate = OPENAI.estimate("/v1/embeddings", dumps(body), counter, POLICY)
    assert estimate == Estimate("text-embedding-3-small", math.ceil(21 / 4), 0)
    tokens = {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}
    assert OPENAI.estimate("/v1/embeddings", dumps(tokens), counter, POLICY).input_tokens == 5
    flat = {"model": "text-embedding-3-small", "input": [1, 2, 3]}
    assert OPENAI.estimate("/v1/embeddings", dumps(flat), counter, POLICY).input_tokens == 3


def test_legacy_completions_estimate(counter: TokenCounter) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test", "max_tokens": 7}
    estimate = OPENAI.estimate("/v1/completions", dumps(body), counter, POLICY)
    assert estimate == Estimate("gpt-3.5-turbo-instruct", math.ceil(18 / 4), 7)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"{"])
def test_openai_malformed_request_never_raises(counter: TokenCounter, body: bytes) -> None:
    estimate = OPENAI.estimate("/v1/chat/completions", body, counter, POLICY)
    assert estimate == Estimate("unknown", math.ceil(len(body) / 4), 7000)


@pytest.mark.parametrize(
    "body",
    [b"", b'{"messages": 5}', b'{"messages": [null, 3, {"role": 1}]}', b'{"max_tokens": "x"}'],
)
def test_openai_odd_request_shapes_never_raise(counter: TokenCounter, body: bytes) -> None:
    estimate = OPENAI.estimate("/v1/chat/completions", body, counter, POLICY)
    assert estimate == Estimate("unknown", 0, 7000)


def test_openai_unparsable_body_is_unknown_model(counter: TokenCounter) -> None:
    estimate = OPENAI.estimate("/v1/chat/completions", b"x" * 100, counter, POLICY)
    assert estimate == Estimate("unknown", 25, 7000)


# --- OpenAI usage --------------------------------------------------------------------------

CHAT_COMPLETION = {
    "id": "chatcmpl-abc",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
}

RESPONSE = {
    "id": "resp_67ccd2bed1ec8190",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Paris.", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}


def test_openai_usage_from_json() -> None:
    assert OPENAI.usage_from_json(dumps(CHAT_COMPLETION)) == Usage(
        19, 10, 29, service_tier="default"
    )
    assert OPENAI.usage_from_json(dumps(RESPONSE)) == Usage(36, 87, 123)
    embedding = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    assert OPENAI.usage_from_json(dumps(embedding)) == Usage(8, 0, 8)
    assert OPENAI.charge(Usage(19, 10, 29)) == 29


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>502</html>", b"[]", b'{"usage": null}', b'{"usage": {"foo": 1}}', b"\x80"],
)
def test_openai_usage_from_malformed_json_is_none(body: bytes) -> None:
    assert OPENAI.usage_from_json(body) is None


def chat_stream(*, crlf: bool = False) -> bytes:
    """A chat.completions stream with stream_options.include_usage, as the API sends it."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunks = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
            "usage": None,
        },
        {
            **base,
            "choices": [{"index": 0, "delta": {"content": "Grüße, 世界"}, "finish_reason": None}],
            "usage": None,
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        },
    ]
    newline = "\r\n" if crlf else "\n"
    events = [f"data: {json.dumps(c, ensure_ascii=False)}" for c in chunks] + ["data: [DONE]"]
    return "".join(e + newline * 2 for e in events).encode()


def responses_stream() -> bytes:
    """A Responses API stream: typed events, the last one carrying the response's usage."""
    events = [
        (
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**RESPONSE, "status": "in_progress", "usage": None},
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "Paris",
            },
        ),
        (
            "response.completed",
            {"type": "response.completed", "sequence_number": 2, "response": RESPONSE},
        ),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


@pytest.mark.parametrize("crlf", [False, True])
def test_chat_sse_usage_with_every_split(crlf: bool) -> None:
    stream = chat_stream(crlf=crlf)
    for chunks in split_everywhere(stream):
        parser = OPENAI.sse_usage_parser()
        for chunk in chunks:
            parser.feed(chunk)
        assert parser.usage == Usage(12, 5, 17)
        assert parser.malformed == 0


def test_responses_sse_usage_with_every_split() -> None:
    stream = responses_stream()
    for chunks in split_everywhere(stream):
        parser = OPENAI.sse_usage_parser()
        for chunk in chunks:
            parser.feed(chunk)
        assert parser.usage == Usage(36, 87, 123)
        assert parser.malformed == 0


@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_chat_sse_usage_with_arbitrary_splits(cuts: list[int]) -> None:
    stream = chat_stream()
    points = sorted({min(c, len(stream)) for c in cuts})
    parser = OPENAI.sse_usage_parser()
    start = 0
    for point in [*points, len(stream)]:
        parser.feed(stream[start:point])
        start = point
    assert parser.usage == Usage(12, 5, 17)
    assert parser.malformed == 0


def test_sse_counts_malformed_events_and_keeps_going() -> None:
    parser = OPENAI.sse_usage_parser()
    parser.feed(
        b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}\n\n'
    )
    parser.feed(b"data: {truncated\n\ndata: 42\n\n: keep-alive comment\n\n")
    assert parser.malformed == 2
    assert parser.usage == Usage(1, 1, 2)
    parser.feed(
        b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}\n\n'
    )
    assert parser.usage == Usage(3, 4, 7)


def test_sse_final_event_without_blank_line() -> None:
    parser = OPENAI.sse_usage_parser()
    parser.feed(
        b'data: {"usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}\n'
    )
    assert parser.usage == Usage(2, 3, 5)
    parser.close()
    assert parser.usage == Usage(2, 3, 5)
    assert parser.malformed == 0


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_multiline_data_is_joined(newline: bytes) -> None:
    lines = [b'data: {"usage":', b'data: {"prompt_tokens": 4, "completion_tokens": 0}}', b"", b""]
    stream = newline.join(lines)
    for chunks in split_everywhere(stream):
        parser = OPENAI.sse_usage_parser()
        for chunk in chunks:
            parser.feed(chunk)
        parser.close()
        assert parser.usage == Usage(4, 0, 4)
        assert parser.malformed == 0


# --- OpenAI classification -----------------------------------------------------------------

RATE_LIMIT_BODY = {
    "error": {
        "message": (
            "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): "
            "Limit 30000, Used 27310, Requested 6104. Please try again in 6.828s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more."
        ),
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
QUOTA_BODY = {
    "error": {
        "message": (
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors."
        ),
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
TOO_LARGE_BODY = {
    "error": {
        "message": (
            "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): "
            "Limit 30000, Requested 36000. The input or output tokens must be reduced in order "
            "to run successfully. Visit https://platform.openai.com/account/rate-limits to "
            "learn more."
        ),
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_429_HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-remaining-tokens": "2690",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-reset-tokens": "6.828s",
}


def test_openai_rate_limit_uses_retry_after_ms_first() -> None:
    headers = {**OPENAI_429_HEADERS, "retry-after": "7", "retry-after-ms": "6828"}
    rejection = OPENAI.classify(429, headers, dumps(RATE_LIMIT_BODY), NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.kind is RejectionKind.RATE_LIMIT  # retried
    assert rejection.retry_after_s == pytest.approx(6.828)
    assert (rejection.limit, rejection.requested) == (30000, 6104)
    assert rejection.message.startswith("Rate limit reached")


def test_openai_rate_limit_hint_from_message_then_reset_headers() -> None:
    rejection = OPENAI.classify(
        429, {"X-RateLimit-Reset-Tokens": "1m0s"}, dumps(RATE_LIMIT_BODY), NOW
    )
    assert rejection.retry_after_s == pytest.approx(6.828)
    no_hint = {"error": {**RATE_LIMIT_BODY["error"], "message": "Rate limit reached."}}
    rejection = OPENAI.classify(429, OPENAI_429_HEADERS, dumps(no_hint), NOW)
    assert rejection.retry_after_s == pytest.approx(6.828)
    assert rejection.limit == 30000


def test_openai_quota_is_not_retryable() -> None:
    rejection = OPENAI.classify(429, {"retry-after": "20"}, dumps(QUOTA_BODY), NOW)
    assert rejection.kind is RejectionKind.QUOTA
    assert rejection.kind is not RejectionKind.RATE_LIMIT  # not retried
    assert rejection.retry_after_s is None


def test_openai_request_too_large() -> None:
    rejection = OPENAI.classify(429, OPENAI_429_HEADERS, dumps(TOO_LARGE_BODY), NOW)
    assert rejection.kind is RejectionKind.TOO_LARGE
    assert (rejection.limit, rejection.requested) == (30000, 36000)


@pytest.mark.parametrize("body", [b"", b"<html>Too Many Requests</html>", b'{"error": "x"}', b"[]"])
def test_openai_malformed_429_is_a_rate_limit(body: bytes) -> None:
    rejection = OPENAI.classify(429, {"retry-after": "3"}, body, NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.retry_after_s == 3.0
    assert rejection.message


def test_openai_rate_limit_headers_per_dimension() -> None:
    parsed = OPENAI.rate_limits(OPENAI_429_HEADERS)
    assert parsed.tokens == ServerLimits(30000, 2690, 6.828)
    assert parsed.requests == ServerLimits(500, 499, 0.12)
    assert parsed.input_tokens is None and parsed.output_tokens is None
    assert OPENAI.rate_limits({"X-RateLimit-Remaining-Tokens": "15"}).tokens == ServerLimits(
        None, 15, None
    )
    assert OPENAI.rate_limits({"x-ratelimit-remaining-tokens": "lots"}).tokens is None
    assert OPENAI.rate_limits({}) == RateLimitHeaders()


