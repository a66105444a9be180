"""Anthropic wire knowledge on bodies of the shapes the Messages API sends and receives."""

from __future__ import annotations

import datetime
import json
import random
from decimal import Decimal
from typing import Any

import pytest

from pytest_llm_budget.errors import ProviderOverloaded, QuotaExhausted, SpendCapReached
from pytest_llm_budget.providers.anthropic import TOOL_SYSTEM_PROMPT_TOKENS, AnthropicProvider
from pytest_llm_budget.providers.base import RateLimitHeaders, RejectionKind, Usage
from pytest_llm_budget.providers.registry import provider_for
from pytest_llm_budget.routing.retry import Retry, RetryPolicy, after_429
from pytest_llm_budget.routing.traffic import classify
from pytest_llm_budget.tokens.counting import TokenCounter
from pytest_llm_budget.tokens.policy import EstimatePolicy, chars_tokens

P = AnthropicProvider()
COUNTER = TokenCounter()
POLICY = EstimatePolicy(safety_margin=0.2, grounded_overhead=0.15, default_output_tokens=7000)
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PATH = "/v1/messages"


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "claude-sonnet-4-5", **fields}).encode()


def sse(*events: dict[str, Any]) -> bytes:
    """A Messages stream: each event's name is its data's `type`."""
    return b"".join(
        f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode() for data in events
    )


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


# -- which requests ---------------------------------------------------------------------------
def test_messages_paths_are_anthropic_on_any_host() -> None:
    direct = provider_for("api.anthropic.com", "/v1/messages")
    proxied = provider_for("127.0.0.1:9", "/proxy/v1/messages/count_tokens")
    assert direct is not None and direct.vendor == "anthropic"
    assert proxied is not None and proxied.vendor == "anthropic"
    assert provider_for("api.anthropic.com", "/v1/models") is None
    assert provider_for("example.com", "/api/messages") is None


def test_anthropic_host_and_base_url_env_are_llm_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    assert classify("api.anthropic.com", None, PATH).llm_host
    assert not classify("proxy.internal", 8443, PATH).llm_host
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://proxy.internal:8443/anthropic")
    assert classify("proxy.internal", 8443, PATH).llm_host


# -- estimates --------------------------------------------------------------------------------
def test_estimate_counts_system_messages_and_max_tokens() -> None:
    system = "You are terse. " * 20
    question = "Name three cereal brands popular in Germany."
    estimate = P.estimate(
        PATH,
        body(
            system=system,
            max_tokens=300,
            messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": [{"type": "text", "text": "Sure."}]},
            ],
        ),
        COUNTER,
        POLICY,
    )
    texts = [system, question, "Sure."]
    counted = COUNTER.measure_texts(texts, "claude-sonnet-4-5").tokens
    chars = sum(len(t) for t in texts)
    assert estimate.model == "claude-sonnet-4-5"
    assert estimate.output_tokens == 300  # max_tokens, exactly
    assert estimate.input_tokens == POLICY.counted_input(counted, chars)
    assert estimate.input_tokens >= chars_tokens(chars)


def test_estimate_of_cjk_is_above_the_character_floor() -> None:
    text = "東京で人気のあるシリアルのブランドを三つ教えてください。" * 10
    estimate = P.estimate(
        PATH, body(max_tokens=100, messages=[{"role": "user", "content": text}]), COUNTER, POLICY
    )
    assert estimate.input_tokens > chars_tokens(len(text)) * 1.2


def test_tools_add_their_json_and_the_tool_system_prompt() -> None:
    messages = [{"role": "user", "content": "weather?"}]
    tool = {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    plain = P.estimate(PATH, body(max_tokens=50, messages=messages), COUNTER, POLICY)
    with_tool = body(max_tokens=50, messages=messages, tools=[tool])
    tooled = P.estimate(PATH, with_tool, COUNTER, POLICY)
    assert tooled.input_tokens - plain.input_tokens > TOOL_SYSTEM_PROMPT_TOKENS


def test_images_get_an_allowance_and_tool_blocks_count() -> None:
    source = {"type": "base64", "media_type": "image/png", "data": "A" * 90_000}
    tool_use = event("tool_use", id="t1", name="f", input={"q": "x" * 400})
    tool_result = event("tool_result", tool_use_id="t1", content="y " * 300)
    messages = [
        {"role": "user", "content": [event("image", source=source), event("text", text="what?")]},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [tool_result]},
    ]
    estimate = P.estimate(PATH, body(max_tokens=10, messages=messages), COUNTER, POLICY)
    # the image is one allowance, not its 90,000 base64 characters
    assert 1500 < estimate.input_tokens < 1500 + 1000


def test_grounded_call_gets_the_overhead() -> None:
    request = body(max_tokens=10, messages=[{"role": "user", "content": "news " * 200}])
    plain = P.estimate(PATH, request, COUNTER, POLICY)
    grounded = P.estimate(PATH, request, COUNTER, POLICY, grounded=True)
    assert grounded.input_tokens > plain.input_tokens * 1.1


def test_no_max_tokens_gets_the_default_output_and_bad_bodies_never_raise() -> None:
    request = body(messages=[{"role": "user", "content": "hi"}])
    estimate = P.estimate(PATH, request, COUNTER, POLICY)
    assert estimate.output_tokens == 7000
    junk = b"\xff\xfe not json"
    assert P.estimate(PATH, junk, COUNTER, POLICY).input_tokens == len(junk)
    odd = body(messages="not a list", system=[{"type": "text", "text": 5}], max_tokens="x")
    assert P.estimate(PATH, odd, COUNTER, POLICY).output_tokens == 7000


def test_count_tokens_is_one_request_and_no_tokens() -> None:
    path = "/v1/messages/count_tokens"
    request = body(messages=[{"role": "user", "content": "x" * 4000}])
    estimate = P.estimate(path, request, COUNTER, POLICY)
    assert (estimate.input_tokens, estimate.output_tokens) == (0, 0)
    assert P.usage_from_json(b'{"input_tokens": 1012}') == Usage(0, 0, 0)


# -- usage ------------------------------------------------------------------------------------
MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hi."}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 120,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 3000,
        "output_tokens": 45,
    },
}


def test_json_usage_keeps_the_cache_parts() -> None:
    usage = P.usage_from_json(json.dumps(MESSAGE).encode())
    assert usage == Usage(
        5120, 45, 5165, cached_tokens=3000, cache_write_tokens=2000
    )
    assert P.input_charge(usage) == 2120  # ITPM: input + cache writes, never cache reads
    assert P.output_charge(usage) == 45
    assert P.charge(usage) == 2120  # the input bucket is settled to the ITPM figure
    assert P.usage_from_json(b'{"type": "message"}') is None
    assert P.usage_from_json(b"[]") is None


def test_stream_usage_merges_message_start_and_message_delta() -> None:
    start_usage = dict(MESSAGE["usage"], output_tokens=1)  # type: ignore[arg-type]
    stream = sse(
        event("message_start", message=dict(MESSAGE, usage=start_usage)),
        event("content_block_start", index=0, content_block=event("text", text="")),
        event("ping"),
        event("content_block_delta", index=0, delta=event("text_delta", text="Hi.")),
        event("content_block_stop", index=0),
        event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 45}),
        event("message_stop"),
    )
    parser = P.sse_usage_parser()
    for i in range(0, len(stream), 7):  # split anywhere
        parser.feed(stream[i : i + 7])
    parser.close()
    assert parser.usage == Usage(5120, 45, 5165, cached_tokens=3000, cache_write_tokens=2000)
    assert parser.malformed == 0 and parser.error is None


def test_stream_ending_in_an_error_event_keeps_the_input_and_names_the_error() -> None:
    usage = {"input_tokens": 80, "output_tokens": 1}
    stream = sse(
        event("message_start", message=dict(MESSAGE, usage=usage)),
        event("error", error=event("overloaded_error", message="Overloaded")),
    )
    parser = P.sse_usage_parser()
    parser.feed(stream)
    parser.close()
    assert parser.error == "overloaded_error"
    assert parser.usage == Usage(80, 1, 81)


# -- refusals ---------------------------------------------------------------------------------
def rate_limit_body(message: str, **error: Any) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": message, **error}}
    ).encode()


ITPM_429 = rate_limit_body(
    "This request would exceed the rate limit for your organization (1a2b) of 50,000 input "
    "tokens per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
)


def reset_headers(**resets: float) -> dict[str, str]:
    headers = {}
    for dimension, seconds in resets.items():
        name = dimension.replace("_", "-")
        stamp = datetime.datetime.fromtimestamp(NOW + seconds, datetime.timezone.utc)
        headers[f"anthropic-ratelimit-{name}-reset"] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        headers[f"anthropic-ratelimit-{name}-limit"] = "50000"
        headers[f"anthropic-ratelimit-{name}-remaining"] = "0" if name == "input-tokens" else "9000"
    return headers


def test_429_takes_retry_after_and_the_limit_from_the_message() -> None:
    headers = {"retry-after": "7", **reset_headers(input_tokens=30)}
    rejection = P.classify(429, headers, ITPM_429, NOW)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.retry_after_s == 7.0
    assert rejection.limit == 50_000


def test_429_without_retry_after_uses_the_named_dimensions_reset() -> None:
    headers = reset_headers(input_tokens=12, output_tokens=40, requests=3)
    assert P.classify(429, headers, ITPM_429, NOW).retry_after_s == pytest.approx(12)
    vague = rate_limit_body("Rate limited.")
    # no dimension named: the exhausted one (input-tokens remaining 0)
    assert P.classify(429, headers, vague, NOW).retry_after_s == pytest.approx(12)
    no_reset = P.classify(429, {}, vague, NOW)
    assert no_reset.kind is RejectionKind.RATE_LIMIT and no_reset.retry_after_s is None


def test_spend_cap_is_never_retried_and_is_a_quota_error_of_its_own() -> None:
    cap = rate_limit_body(
        "You have reached your specified workspace API usage limits.",
        details={"error_code": "enforced_spend_limit_reached"},
    )
    rejection = P.classify(429, {}, cap, NOW)
    assert rejection.kind is RejectionKind.SPEND_CAP and rejection.retry_after_s is None
    outcome = after_429(
        rejection, 1, 0.0, RetryPolicy(), random.Random(0), vendor="anthropic", model="m"
    )
    assert isinstance(outcome, SpendCapReached) and isinstance(outcome, QuotaExhausted)
    assert outcome.code == "LLM_SPEND_CAP"


def test_529_is_overloaded_retried_with_backoff_then_a_structured_error() -> None:
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    rejection = P.classify(529, {}, overloaded, NOW)
    assert rejection.kind is RejectionKind.OVERLOADED and rejection.retry_after_s is None
    policy = RetryPolicy(retries=2, backoff_base=2.0, backoff_max=30.0)
    rng = random.Random(0)
    first = after_429(rejection, 1, 0.0, policy, rng, vendor="anthropic", model="m")
    second = after_429(rejection, 2, 2.0, policy, rng, vendor="anthropic", model="m")
    assert isinstance(first, Retry) and 2.0 <= first.after_s <= 2.2
    assert isinstance(second, Retry) and 4.0 <= second.after_s <= 4.4
    last = after_429(rejection, 3, 6.0, policy, rng, vendor="anthropic", model="m")
    assert isinstance(last, ProviderOverloaded) and last.code == "LLM_PROVIDER_OVERLOADED"
    assert P.classify(529, {"retry-after": "3"}, overloaded, NOW).retry_after_s == 3.0
    assert P.refusal_statuses == frozenset({429, 529})


def test_other_statuses_are_other() -> None:
    bad = b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens"}}'
    assert P.classify(400, {}, bad, NOW).kind is RejectionKind.OTHER
    assert P.classify(429, {}, b"<html>", NOW).kind is RejectionKind.RATE_LIMIT


def test_rate_limit_headers_per_dimension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_llm_budget.providers.anthropic.time.time", lambda: NOW)
    headers = {
        "Anthropic-RateLimit-Requests-Limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "30000",
        "anthropic-ratelimit-input-tokens-remaining": "29000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T00:00:02.500000+00:00",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-remaining": "8000",
        "anthropic-ratelimit-output-tokens-reset": "2025-12-31T23:59:00Z",  # past
        "anthropic-ratelimit-tokens-remaining": "8000",
        "anthropic-ratelimit-tokens-reset": "not a time",
    }
    limits = P.rate_limits(headers)
    assert limits.requests is not None and limits.input_tokens is not None
    assert limits.output_tokens is not None
    assert (limits.requests.limit, limits.requests.remaining) == (50, 49)
    assert limits.requests.reset_s == pytest.approx(1.0)
    assert (limits.input_tokens.limit, limits.input_tokens.remaining) == (30000, 29000)
    assert limits.input_tokens.reset_s == pytest.approx(2.5)
    assert limits.output_tokens.reset_s == 0.0  # a past reset
    # remaining tokens are rounded down to thousands; requests are exact
    assert (limits.input_tokens.rounding, limits.output_tokens.rounding) == (1000, 1000)
    assert limits.requests.rounding == 1
    # the most restrictive token limit is no sum a bucket counts: never calibrates one
    assert limits.tokens is None
    assert P.rate_limits({"x-ratelimit-limit-tokens": "5"}) == RateLimitHeaders()


# -- prices -----------------------------------------------------------------------------------
def test_cost_equals_genai_prices_with_cache_reads_and_writes() -> None:
    genai_prices = pytest.importorskip("genai_prices")
    from pytest_llm_budget.cost.prices import PriceBook

    usage = P.usage_from_json(json.dumps(MESSAGE).encode())
    assert usage is not None
    ours = PriceBook(genai=True).price("anthropic", "claude-sonnet-4-5", usage)
    theirs = genai_prices.calc_price(
        genai_prices.extract_usage(MESSAGE, provider_id="anthropic").usage,
        model_ref="claude-sonnet-4-5",
        provider_id="anthropic",
    ).total_price
    assert ours == Decimal(theirs)
    uncached = PriceBook(genai=True).price("anthropic", "claude-sonnet-4-5", Usage(5120, 45, 5165))
    assert uncached is not None and ours is not None and ours != uncached
