"""The emulator's Anthropic Messages API, its three buckets, its faults, and the [limits] additions.

Limits are tested on an injected clock (deterministic, no sleeping): first on the core alone, then
over real HTTP with the real anthropic SDK (sync, async, both streaming styles, count_tokens) and
raw httpx2 requests for headers and error details.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from pytest_llm_budget.emulator import (
    AnthropicLimitSpec,
    Emulator,
    EmulatorConfig,
    EmulatorCore,
    LimitSpec,
    ModelLimit,
    parse_fault,
    parse_limit_rule,
)
from pytest_llm_budget.emulator.__main__ import build_config
from pytest_llm_budget.emulator.wire import Answer, Request

anthropic = pytest.importorskip("anthropic")

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z: a quota day starts exactly here
ROOMY = AnthropicLimitSpec(rpm=10_000, itpm=1_000_000, otpm=1_000_000)
WIDE = LimitSpec(tpm=1_000_000, rpm=10_000)
SONNET = "claude-sonnet-4-5"


class FakeClock:
    """A settable clock."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(**changes: Any) -> EmulatorConfig:
    """A config with roomy limits everywhere and fixed 20-token replies, then `changes`."""
    base = EmulatorConfig(
        window=60.0,
        openai=WIDE,
        gemini=WIDE,
        anthropic=ROOMY,
        reply_min_tokens=20,
        reply_max_tokens=20,
    )
    return base.updated(changes) if changes else base


def body(
    text: str = "hello", model: str = SONNET, max_tokens: int | None = 1024, **extra: Any
) -> dict[str, Any]:
    """A Messages request body."""
    out: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    return {**out, **extra}


def post(
    payload: Any, path: str = "/v1/messages", key: str | None = "sk-ant-test", **headers: str
) -> Request:
    """A Request for the core."""
    hdrs = {"anthropic-version": "2023-06-01", **headers}
    if key is not None:
        hdrs["x-api-key"] = key
    return Request("POST", path, {}, hdrs, json.dumps(payload).encode())


def tokens(n: int) -> str:
    """Text the emulator counts as exactly `n` input tokens (ceil(chars / 4))."""
    return "abcd" * n


def hdr(answer: Answer) -> dict[str, str]:
    """The answer's headers as a dict."""
    return dict(answer.headers)


def sse_events(answer: Answer) -> list[tuple[str, Any]]:
    """(event name, decoded data) of an SSE answer."""
    assert answer.events is not None
    out = []
    for raw in answer.events:
        lines = raw.decode().strip().splitlines()
        name = next(line[7:] for line in lines if line.startswith("event: "))
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        out.append((name, data))
    return out


# --- the three dimensions, each limiting on its own ------------------------------------------


def test_itpm_alone_refuses_with_anthropic_message_and_retry_after() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(None, 1000, None)), clock)
    assert core.handle(post(body(tokens(600)))).status == 200
    refused = core.handle(post(body(tokens(600))))
    assert refused.status == 429
    err = refused.json()
    assert err["type"] == "error" and err["error"]["type"] == "rate_limit_error"
    assert (
        "would exceed the rate limit for your organization (org-emulator) of 1,000 input tokens"
        " per minute" in err["error"]["message"]
    )
    # 400 left, 600 needed: 200 tokens at 1000/60 per second = 12 s
    assert hdr(refused)["retry-after"] == "12"
    clock.t += 11.5
    assert core.handle(post(body(tokens(600)))).status == 429
    clock.t += 0.5
    assert core.handle(post(body(tokens(600)))).status == 200
    stats = core.stats()["buckets"]["anthropic:claude-sonnet-4*"]
    assert stats["rejected"] == {"input_tokens": 2} and stats["admitted"] == 2
    assert stats["input_tokens_charged"] == 1200 and stats["itpm"] == 1000
    assert stats["min_level_input_tokens"] >= 0 and stats["min_level_output_tokens"] is None


def test_otpm_alone_charges_output_as_produced_not_max_tokens() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(None, None, 50)), clock)
    # Each reply is 20 tokens; max_tokens=4096 would never fit 50 if it were charged.
    for _ in range(3):  # 50 -> 30 -> 10 -> -10: admitted while at least 1 token is left
        answer = core.handle(post(body(max_tokens=4096)))
        assert answer.status == 200 and answer.json()["usage"]["output_tokens"] == 20
    refused = core.handle(post(body(max_tokens=4096)))
    assert refused.status == 429
    assert "of 50 output tokens per minute" in refused.json()["error"]["message"]
    assert hdr(refused)["retry-after"] == "14"  # back to 1 token: 11 at 50/60 per s, 13.2 s
    stats = core.stats()["buckets"]["anthropic:claude-sonnet-4*"]
    assert stats["min_level_output_tokens"] == pytest.approx(-10)  # overdrawn: the proof fails
    assert stats["rejected"] == {"output_tokens": 1} and stats["output_tokens_charged"] == 60
    clock.t += 13
    assert core.handle(post(body(max_tokens=4096))).status == 429
    clock.t += 0.25
    assert core.handle(post(body(max_tokens=4096))).status == 200


def test_rpm_alone() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(2, None, None)), clock)
    assert [core.handle(post(body())).status for _ in range(2)] == [200, 200]
    refused = core.handle(post(body(tokens(1))))
    assert refused.status == 429 and hdr(refused)["retry-after"] == "30"  # 1 request per 30 s
    assert "of 2 requests per minute" in refused.json()["error"]["message"]
    clock.t += 30
    assert core.handle(post(body())).status == 200
    assert core.stats()["buckets"]["anthropic:claude-sonnet-4*"]["rejected"] == {"requests": 1}


def test_buckets_refill_continuously_even_in_sliding_mode() -> None:
    clock = FakeClock()
    cfg = config(mode="sliding", anthropic=AnthropicLimitSpec(None, 600, None))
    core = EmulatorCore(cfg, clock)
    assert core.handle(post(body(tokens(600)))).status == 200  # the whole bucket
    assert core.handle(post(body(tokens(10)))).status == 429
    clock.t += 1  # 10 tokens back after 1 s: a sliding window would wait 60 s
    assert core.handle(post(body(tokens(10)))).status == 200


def test_input_above_itpm_never_fits_and_says_do_not_retry() -> None:
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(None, 1000, None)), FakeClock())
    refused = core.handle(post(body(tokens(1001))))
    assert refused.status == 429 and "retry-after" not in hdr(refused)
    assert hdr(refused)["x-should-retry"] == "false"
    assert "1,001 input tokens: it can never succeed" in refused.json()["error"]["message"]
    stats = core.stats()["buckets"]["anthropic:claude-sonnet-4*"]
    assert stats["rejected"] == {"too_large": 1}


# --- headers ------------------------------------------------------------------------------------


def test_ratelimit_headers_on_success_rounded_down_to_thousands() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(50, 1500, 8000)), clock)
    answer = core.handle(post(body(tokens(100))))
    h = hdr(answer)
    assert answer.status == 200 and h["request-id"].startswith("req_")
    assert (
        h["anthropic-ratelimit-requests-limit"],
        h["anthropic-ratelimit-requests-remaining"],
    ) == (
        "50",
        "49",
    )
    # 1400 input tokens left: shown as 1000 (rounded down to thousands, as Anthropic does)
    assert h["anthropic-ratelimit-input-tokens-limit"] == "1500"
    assert h["anthropic-ratelimit-input-tokens-remaining"] == "1000"
    assert h["anthropic-ratelimit-output-tokens-remaining"] == "7000"  # 7980
    # `tokens` is the tighter of the two: input here
    assert h["anthropic-ratelimit-tokens-limit"] == "1500"
    assert h["anthropic-ratelimit-tokens-remaining"] == "1000"
    # full again in 100 / (1500/60) = 4 s; T0 is 08:00:00Z
    assert h["anthropic-ratelimit-input-tokens-reset"] == "2027-01-15T08:00:04Z"
    assert h["anthropic-ratelimit-requests-reset"] == "2027-01-15T08:00:02Z"  # 1 / (50/60) s
    assert h["anthropic-ratelimit-output-tokens-reset"] == "2027-01-15T08:00:01Z"  # 20 / 133.3
    clock.t += 0.5
    later = hdr(core.handle(post(body(tokens(500)))))
    assert later["anthropic-ratelimit-input-tokens-remaining"] == "0"  # 912.5 left: below 1000


def test_429_carries_the_headers_too_and_limit_headers_off_drops_them() -> None:
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(1, None, None)), FakeClock())
    core.handle(post(body()))
    refused = hdr(core.handle(post(body())))
    assert refused["anthropic-ratelimit-requests-remaining"] == "0"
    assert "anthropic-ratelimit-input-tokens-limit" not in refused  # unlimited: no header
    off = EmulatorCore(
        config(anthropic=AnthropicLimitSpec(1, 1000, 1000), limit_headers=False), FakeClock()
    )
    ok, no = off.handle(post(body())), off.handle(post(body()))
    assert ok.status == 200 and no.status == 429
    for answer in (ok, no):
        assert not [k for k, _ in answer.headers if k.startswith("anthropic-ratelimit")]
    assert hdr(no)["retry-after"] == "60"
    assert "of 1 requests per minute" in no.json()["error"]["message"]


# --- model classes and rules --------------------------------------------------------------------


def test_model_classes_share_pools_by_default() -> None:
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(1, None, None)), FakeClock())
    assert core.handle(post(body(model="claude-sonnet-4-5"))).status == 200
    assert core.handle(post(body(model="claude-sonnet-4-0"))).status == 429  # same pool
    assert core.handle(post(body(model="claude-opus-4-1"))).status == 200
    assert core.handle(post(body(model="claude-opus-4-5"))).status == 429
    assert core.handle(post(body(model="claude-haiku-4-5"))).status == 200  # its own
    assert core.handle(post(body(model="claude-3-5-haiku"))).status == 200
    assert set(core.stats()["buckets"]) == {
        "anthropic:claude-sonnet-4*",
        "anthropic:claude-opus-4*",
        "anthropic:claude-haiku-4-5",
        "anthropic:claude-3-5-haiku",
    }


def test_one_pool_per_vendor_when_not_per_model() -> None:
    core = EmulatorCore(
        config(per_model=False, anthropic=AnthropicLimitSpec(1, None, None)), FakeClock()
    )
    assert core.handle(post(body(model="claude-opus-4-1"))).status == 200
    assert core.handle(post(body(model="claude-haiku-4-5"))).status == 429


def test_limit_rules_for_all_three_vendors() -> None:
    rules = [
        "openai:gpt-4o-mini tpm=6000",
        "gemini:gemini-2.5-pro tpm=300 rpm=none",
        "anthropic:claude-sonnet-4* itpm=1500 otpm=800 rpm=50",
        "anthropic:claude-haiku* tpm=100",
    ]
    parsed = [parse_limit_rule(r) for r in rules]
    assert parsed[2].limits == AnthropicLimitSpec(rpm=50, itpm=1500, otpm=800)
    assert parsed[3].limits == AnthropicLimitSpec(rpm=None, itpm=100, otpm=None)  # tpm = itpm
    assert str(parsed[2]) == "anthropic:claude-sonnet-4* itpm=1500 otpm=800 rpm=50"
    assert parse_limit_rule(str(parsed[2])) == parsed[2]
    assert ModelLimit("anthropic", "x", LimitSpec(10, 2)).limits == AnthropicLimitSpec(2, 10, None)
    with pytest.raises(ValueError, match="itpm"):
        ModelLimit("openai", "x", AnthropicLimitSpec())
    with pytest.raises(ValueError, match="want tpm=N or rpm=N or itpm=N or otpm=N"):
        parse_limit_rule("anthropic:* xtpm=1")

    core = EmulatorCore(config(limits=rules), FakeClock())
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    oai = Request(
        "POST",
        "/v1/chat/completions",
        {},
        {"authorization": "Bearer sk"},
        json.dumps(chat).encode(),
    )
    first = core.handle(oai)  # charged 1 + the 4096 default output: fits 6000 once
    assert first.status == 200 and core.handle(oai).status == 429
    gem_body = json.dumps({"contents": [{"parts": [{"text": tokens(200)}]}]}).encode()
    gem = Request(
        "POST", "/v1/models/gemini-2.5-pro:generateContent", {}, {"x-goog-api-key": "k"}, gem_body
    )
    assert core.handle(gem).status == 200 and core.handle(gem).status == 429
    assert core.handle(post(body(tokens(1400)))).status == 200
    refused = core.handle(post(body(tokens(200), model="claude-sonnet-4-0")))
    assert refused.status == 429 and "of 1,500 input tokens" in refused.json()["error"]["message"]
    assert core.handle(post(body(tokens(101), model="claude-haiku-4-5"))).status == 429
    buckets = core.stats()["buckets"]
    assert buckets["anthropic:claude-sonnet-4*"]["otpm"] == 800
    assert buckets["anthropic:claude-sonnet-4*"]["rpm"] == 50
    assert core.stats()["config"]["model_limits"][2] == str(parsed[2])


def test_configure_changes_anthropic_limits_in_place_and_top_level_keys() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(None, 1000, None)), clock)
    assert core.handle(post(body(tokens(500)))).status == 200
    core.configure({"itpm": 600})  # 500 already spent: 100 left
    assert core.handle(post(body(tokens(200)))).status == 429
    core.configure({"anthropic": {"itpm": None, "otpm": 30, "rpm": None}})
    assert core.config.anthropic == AnthropicLimitSpec(None, None, 30)
    assert core.handle(post(body(tokens(200)))).status == 200
    assert core.handle(post(body())).status == 200  # 30 -> 10 -> -10
    assert core.handle(post(body())).status == 429
    core.configure({"tpm": 5000, "rpm": 7})  # every vendor: Anthropic's ITPM and RPM
    assert core.config.anthropic == AnthropicLimitSpec(7, 5000, 30)
    assert core.config.openai == LimitSpec(5000, 7)


# --- the Messages API ---------------------------------------------------------------------------


def test_message_json_shape_usage_and_determinism() -> None:
    core = EmulatorCore(config(reply_min_tokens=8, reply_max_tokens=40), FakeClock())
    first = core.handle(post(body(tokens(30))))
    msg = first.json()
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["model"] == SONNET
    assert msg["id"].startswith("msg_") and msg["stop_reason"] == "end_turn"
    assert msg["content"][0]["type"] == "text" and msg["content"][0]["text"]
    usage = msg["usage"]
    assert usage["input_tokens"] == 30
    assert usage["cache_creation_input_tokens"] == 0 and usage["cache_read_input_tokens"] == 0
    assert 8 <= usage["output_tokens"] <= 40
    assert usage["output_tokens"] == len(msg["content"][0]["text"].split())
    assert core.handle(post(body(tokens(30)))).json()["content"] == msg["content"]
    capped = core.handle(post(body(tokens(30), max_tokens=3))).json()
    assert capped["usage"]["output_tokens"] == 3 and capped["stop_reason"] == "max_tokens"


def test_system_prompt_counts_as_input() -> None:
    core = EmulatorCore(config(), FakeClock())
    answer = core.handle(post(body(tokens(10), system=[{"type": "text", "text": tokens(5)}])))
    assert answer.json()["usage"]["input_tokens"] == 15


def test_stream_event_sequence() -> None:
    core = EmulatorCore(config(), FakeClock())
    events = sse_events(core.handle(post(body(tokens(12), stream=True))))
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == 12 and start["usage"]["output_tokens"] == 1
    assert start["content"] == [] and start["stop_reason"] is None
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert all(d["delta"]["type"] == "text_delta" for n, d in events if n == "content_block_delta")
    delta = events[-2][1]
    assert delta["usage"]["output_tokens"] == 20 == len(text.split())
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert text == core.handle(post(body(tokens(12)))).json()["content"][0]["text"]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (body(max_tokens=None), "max_tokens: Field required"),
        (body(max_tokens=0), "max_tokens"),
        ({"model": SONNET, "max_tokens": 5}, "messages: Field required"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}, "model"),
    ],
)
def test_bad_requests_are_invalid_request_errors(payload: dict[str, Any], needle: str) -> None:
    answer = EmulatorCore(config(), FakeClock()).handle(post(payload))
    assert answer.status == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert needle in answer.json()["error"]["message"]


def test_auth_x_api_key_or_bearer_and_401_shape() -> None:
    core = EmulatorCore(config(valid_keys=("sk-ant-good",)), FakeClock())
    assert core.handle(post(body(), key="sk-ant-good")).status == 200
    bearer = post(body(), key=None, authorization="Bearer sk-ant-good")
    assert core.handle(bearer).status == 200
    missing = core.handle(post(body(), key=None))
    assert missing.status == 401
    assert missing.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    wrong = core.handle(post(body(), key="sk-ant-bad"))
    assert wrong.status == 401 and wrong.json()["error"]["message"] == "invalid x-api-key"
    open_core = EmulatorCore(config(require_key=False), FakeClock())
    assert open_core.handle(post(body(), key=None)).status == 200


def test_count_tokens_is_free_of_the_message_buckets_but_logged() -> None:
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(1, 100, 1)), FakeClock())
    payload = {"model": SONNET, "messages": [{"role": "user", "content": tokens(90)}]}
    for _ in range(5):
        counted = core.handle(post(payload, "/v1/messages/count_tokens"))
        assert counted.status == 200 and counted.json() == {"input_tokens": 90}
    assert core.handle(post(body(tokens(90)))).status == 200  # nothing was charged
    assert core.handle(post({"model": SONNET}, "/v1/messages/count_tokens")).status == 400
    buckets = core.stats()["buckets"]
    assert buckets["anthropic:count_tokens"]["requests"] == 5
    assert buckets["anthropic:claude-sonnet-4*"]["requests"] == 1


# --- prompt caching -----------------------------------------------------------------------------


def cached(model: str = SONNET, ttl: str | None = None, tail: str = "question") -> dict[str, Any]:
    """A request whose 1000-token system prompt is marked for caching."""
    mark: dict[str, Any] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    system = [{"type": "text", "text": tokens(1000), "cache_control": mark}]
    return body(tokens(50) + tail, model=model, system=system)


def test_cache_write_then_read_and_itpm_ignores_reads() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(anthropic=AnthropicLimitSpec(None, 1300, None)), clock)
    first = core.handle(post(cached()))
    assert first.status == 200
    usage = first.json()["usage"]
    assert usage["cache_creation_input_tokens"] == 1000 and usage["cache_read_input_tokens"] == 0
    assert usage["input_tokens"] == 52  # 200 + 8 chars of the message
    # 1052 charged of 1300: a second uncached request would not fit, a cached one does
    second = core.handle(post(cached(tail="another")))
    assert second.status == 200
    usage2 = second.json()["usage"]
    assert usage2["cache_read_input_tokens"] == 1000 and usage2["cache_creation_input_tokens"] == 0
    assert usage2["input_tokens"] == 52
    stats = core.stats()["buckets"]["anthropic:claude-sonnet-4*"]
    assert stats["input_tokens_charged"] == 1052 + 52
    assert stats["cache_read_input_tokens"] == 1000
    assert stats["cache_creation_input_tokens"] == 1000
    other_model = core.handle(post(cached(model="claude-sonnet-4-0")))
    assert other_model.status == 429  # another model's cache: a write of 1000 again


def test_cache_expires_after_its_ttl_and_reads_refresh_it() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(), clock)
    core.handle(post(cached()))
    clock.t += 299
    assert core.handle(post(cached())).json()["usage"]["cache_read_input_tokens"] == 1000
    clock.t += 299  # 598 s after the write, 299 after the refreshing read
    assert core.handle(post(cached())).json()["usage"]["cache_read_input_tokens"] == 1000
    clock.t += 301
    expired = core.handle(post(cached())).json()["usage"]
    assert (
        expired["cache_read_input_tokens"] == 0 and expired["cache_creation_input_tokens"] == 1000
    )
    opus = "claude-opus-4-1"  # a fresh cache entry, written with a 1-hour TTL
    assert core.handle(post(cached(opus, ttl="1h"))).json()["usage"]["cache_read_input_tokens"] == 0
    clock.t += 3000
    assert core.handle(post(cached(opus))).json()["usage"]["cache_read_input_tokens"] == 1000


def test_cache_reads_the_longest_cached_prefix_and_writes_the_rest() -> None:
    core = EmulatorCore(config(), FakeClock())
    core.handle(post(cached()))
    longer = cached()
    longer["messages"] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": tokens(300), "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": tokens(7)},
            ],
        }
    ]
    usage = core.handle(post(longer)).json()["usage"]
    assert (
        usage["cache_read_input_tokens"],
        usage["cache_creation_input_tokens"],
        usage["input_tokens"],
    ) == (1000, 300, 7)
    too_many = body(system=[{"type": "text", "text": "x", "cache_control": {}}] * 5)
    assert core.handle(post(too_many)).status == 400
    limited = EmulatorCore(config(anthropic=AnthropicLimitSpec(1, None, None)), FakeClock())
    assert limited.handle(post(body())).status == 200
    assert limited.handle(post(cached())).status == 429  # refused: caches nothing
    assert limited.cache.resolve(_call(cached()), T0).cache_read == 0
    assert core.cache.resolve(_call(cached()), T0).cache_read == 1000


def _call(payload: dict[str, Any]) -> Any:
    from pytest_llm_budget.emulator.anthropic_api import parse_messages

    return parse_messages(payload, 20, 20)


# --- faults -------------------------------------------------------------------------------------


def test_fault_overloaded_529_per_vendor() -> None:
    core = EmulatorCore(config(), FakeClock())
    answer = core.handle(post(body(), **{"x-emulator-fault": "overloaded"}))
    assert answer.status == 529
    assert answer.json()["type"] == "error"
    assert answer.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    chat = json.dumps({"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}).encode()
    oai = Request(
        "POST",
        "/v1/chat/completions",
        {},
        {"authorization": "Bearer k", "x-emulator-fault": "overloaded"},
        chat,
    )
    assert core.handle(oai).status == 503  # OpenAI's overload answer
    assert (
        core.handle(post(body(), **{"x-emulator-fault": "status=500"})).json()["error"]["type"]
        == "api_error"
    )
    assert core.stats()["buckets"]["anthropic:claude-sonnet-4*"]["rejected"] == {
        "overloaded": 1,
        "fault": 1,
    }


def test_fault_spend_limit_has_error_code_and_no_retry_after() -> None:
    core = EmulatorCore(config(), FakeClock())
    for spec in ("spend_limit", "insufficient_quota", "daily_quota"):
        answer = core.handle(post(body(), **{"x-emulator-fault": spec}))
        assert answer.status == 429 and "retry-after" not in hdr(answer)
        err = answer.json()["error"]
        assert err["type"] == "rate_limit_error"
        assert err["details"] == {"error_code": "enforced_spend_limit_reached"}
    quota = EmulatorCore(config(insufficient_quota=True), FakeClock()).handle(post(body()))
    assert quota.status == 429 and quota.json()["error"]["details"]["error_code"]


def test_fault_stream_error_ends_the_stream_in_an_error_event() -> None:
    core = EmulatorCore(config(), FakeClock())
    answer = core.handle(post(body(stream=True), **{"x-emulator-fault": "stream_error"}))
    assert answer.status == 200
    events = sse_events(answer)
    assert events[0][0] == "message_start" and "content_block_delta" in [n for n, _ in events]
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    )
    plain = core.handle(post(body(), **{"x-emulator-fault": "stream_error"}))
    assert plain.status == 200 and plain.json()["type"] == "message"  # not a stream: served


def test_fault_malformed_json_and_drop_stream_on_anthropic_streams() -> None:
    from pytest_llm_budget.emulator.anthropic_api import BROKEN_EVENT

    core = EmulatorCore(config(), FakeClock())
    broken = core.handle(post(body(stream=True), **{"x-emulator-fault": "malformed_json"}))
    assert broken.events is not None and broken.events[1] == BROKEN_EVENT
    assert broken.events[1].startswith(b"event: content_block_delta")  # the SDK parses it
    dropped = core.handle(post(body(stream=True), **{"x-emulator-fault": "drop_stream=2"}))
    assert dropped.drop_after == 2


def test_fault_rate_limit_no_hint_and_queue() -> None:
    core = EmulatorCore(config(), FakeClock())
    core.faults.push(parse_fault("rate_limit_no_hint"), 2)
    for _ in range(2):
        answer = core.handle(post(body()))
        assert answer.status == 429 and answer.json()["error"]["type"] == "rate_limit_error"
        assert "retry-after" not in hdr(answer)
        assert not [k for k, _ in answer.headers if k.startswith("anthropic-ratelimit")]
    assert core.handle(post(body())).status == 200


def test_parse_new_fault_flags() -> None:
    f = parse_fault("overloaded,spend_limit;stream_error,daily_quota")
    assert (f.overloaded, f.spend_limit, f.stream_error, f.daily_quota) == (True,) * 4
    assert f.rejects and not parse_fault("stream_error").rejects
    merged = parse_fault("overloaded").merged(parse_fault("stream_error"))
    assert merged.overloaded and merged.stream_error
    with pytest.raises(ValueError, match="bad fault item"):
        parse_fault("overloaded=1")


# --- Gemini: QuotaFailure, per-day quota; OpenAI and Gemini without limit headers --------------


def gemini(model: str = "gemini-2.5-flash", n: int = 10, **headers: str) -> Request:
    """A generateContent request of `n` input tokens."""
    payload = json.dumps({"contents": [{"parts": [{"text": tokens(n)}]}]}).encode()
    hdrs = {"x-goog-api-key": "k", **headers}
    return Request("POST", f"/v1/models/{model}:generateContent", {}, hdrs, payload)


def chat(model: str = "gpt-4o-mini", max_tokens: int = 100, **headers: str) -> Request:
    """A chat completion request."""
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    payload["max_tokens"] = max_tokens
    hdrs = {"authorization": "Bearer sk", **headers}
    return Request("POST", "/v1/chat/completions", {}, hdrs, json.dumps(payload).encode())


def test_gemini_429_has_paid_tier_quota_failure_beside_retry_info() -> None:
    core = EmulatorCore(config(gemini=LimitSpec(tpm=300, rpm=None)), FakeClock())
    assert core.handle(gemini(n=200)).status == 200
    refused = core.handle(gemini(n=200))
    details = refused.json()["error"]["details"]
    quota = next(d for d in details if d["@type"].endswith("google.rpc.QuotaFailure"))
    assert quota["violations"] == [
        {
            "quotaMetric": "generativelanguage.googleapis.com/"
            "generate_content_paid_tier_input_token_count",
            "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute",
            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
            "quotaValue": "300",
        }
    ]
    retry = next(d for d in details if d["@type"].endswith("google.rpc.RetryInfo"))
    assert retry["retryDelay"] == "60s"  # sliding window: the first 200 leave after 60 s


def test_gemini_requests_per_day_quota() -> None:
    clock = FakeClock(T0 + 12 * 3600)  # 20:00 UTC: 12 h before the quota day turns
    core = EmulatorCore(config(gemini_rpd=2), clock)
    assert [core.handle(gemini()).status for _ in range(2)] == [200, 200]
    refused = core.handle(gemini())
    assert refused.status == 429 and refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    details = refused.json()["error"]["details"]
    violation = details[0]["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert "PerDay" in violation["quotaId"] and violation["quotaValue"] == "2"
    retry = next(d for d in details if d["@type"].endswith("RetryInfo"))
    assert retry["retryDelay"] == f"{12 * 3600}s"
    assert core.handle(gemini(model="gemini-2.5-pro")).status == 200  # per model
    assert core.stats()["buckets"]["gemini:gemini-2.5-flash"]["rejected"] == {"daily_quota": 1}
    clock.t += 12 * 3600 - 1
    assert core.handle(gemini()).status == 429
    clock.t += 1  # midnight Pacific: a new quota day
    assert core.handle(gemini()).status == 200


def test_rejected_minute_requests_do_not_spend_the_daily_quota() -> None:
    clock = FakeClock()
    core = EmulatorCore(config(gemini_rpd=2, gemini=LimitSpec(tpm=None, rpm=1)), clock)
    assert core.handle(gemini()).status == 200
    assert core.handle(gemini()).status == 429  # RPM, not the day
    clock.t += 60
    assert core.handle(gemini()).status == 200
    clock.t += 60
    assert "PerDay" in json.dumps(core.handle(gemini()).json())


def test_daily_quota_fault_for_gemini_and_openai() -> None:
    core = EmulatorCore(config(), FakeClock(T0 + 3600))  # 09:00 UTC: 23 h to go
    g = core.handle(gemini(**{"x-emulator-fault": "daily_quota"}))
    assert (
        g.status == 429 and "PerDay" in g.json()["error"]["details"][0]["violations"][0]["quotaId"]
    )
    assert any(d.get("retryDelay") == f"{23 * 3600}s" for d in g.json()["error"]["details"])
    o = core.handle(chat(**{"x-emulator-fault": "daily_quota"}))
    assert o.status == 429 and o.json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per day (RPD)" in o.json()["error"]["message"]
    assert hdr(o)["retry-after"] == str(23 * 3600)


def test_no_limit_headers_for_openai_but_429_bodies_still_name_the_limit() -> None:
    core = EmulatorCore(
        config(limit_headers=False, openai=LimitSpec(tpm=150, rpm=None)), FakeClock()
    )
    ok = core.handle(chat())
    refused = core.handle(chat())
    assert ok.status == 200 and refused.status == 429
    for answer in (ok, refused):
        assert not [k for k, _ in answer.headers if k.startswith("x-ratelimit")]
    assert "Limit 150, Used 101, Requested 101" in refused.json()["error"]["message"]
    assert hdr(refused)["retry-after"]  # the hint is not a limit header
    with_headers = EmulatorCore(config(openai=LimitSpec(tpm=150, rpm=None)), FakeClock())
    assert hdr(with_headers.handle(chat()))["x-ratelimit-limit-tokens"] == "150"


def test_no_limit_headers_for_gemini_keeps_quota_failure() -> None:
    core = EmulatorCore(
        config(limit_headers=False, gemini=LimitSpec(tpm=15, rpm=None)), FakeClock()
    )
    assert core.handle(gemini()).status == 200
    refused = core.handle(gemini())
    assert refused.status == 429 and not [k for k, _ in refused.headers if "ratelimit" in k]
    assert refused.json()["error"]["details"][0]["violations"][0]["quotaValue"] == "15"


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_flags() -> None:
    cfg = build_config(
        [
            "--anthropic-itpm", "1500", "--anthropic-otpm", "800", "--anthropic-rpm", "5",
            "--gemini-rpd", "100", "--no-limit-headers",
            "--limit", "anthropic:claude-opus-4* itpm=900 otpm=90 rpm=9",
            "--limit", "openai:gpt-4o-mini tpm=6000",
            "--limit", "gemini:gemini-2.5-pro tpm=1000",
        ]
    )  # fmt: skip
    assert cfg.anthropic == AnthropicLimitSpec(rpm=5, itpm=1500, otpm=800)
    assert cfg.gemini_rpd == 100 and cfg.limit_headers is False
    assert [r.vendor for r in cfg.model_limits] == ["anthropic", "openai", "gemini"]
    assert cfg.anthropic_limits_for("claude-opus-4-1") == (
        "anthropic:claude-opus-4*",
        AnthropicLimitSpec(rpm=9, itpm=900, otpm=90),
    )
    defaults = build_config([])
    assert defaults.anthropic == AnthropicLimitSpec(rpm=50, itpm=30_000, otpm=8_000)
    assert defaults.limit_headers is True and defaults.gemini_rpd is None
    with pytest.raises(SystemExit):
        build_config(["--limit", "openai:* otpm=3"])


# --- over real HTTP with the anthropic SDK ------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Emulator, FakeClock]]:
    clock = FakeClock()
    with Emulator(config(), clock=clock) as emu:
        yield emu, clock


@pytest.fixture
def emu(server: tuple[Emulator, FakeClock]) -> Iterator[Emulator]:
    emu, clock = server
    clock.t = T0
    emu.configure(config())
    emu.reset()
    yield emu
    emu.configure(config())
    emu.reset()


@pytest.fixture
def client(emu: Emulator) -> Iterator[Any]:
    c = anthropic.Anthropic(api_key="sk-ant-test", base_url=emu.anthropic_base_url, max_retries=0)
    yield c
    c.close()


MSGS = [{"role": "user", "content": "Say something deterministic, please."}]


def test_base_url_is_the_root(emu: Emulator) -> None:
    assert emu.anthropic_base_url == emu.url and not emu.anthropic_base_url.endswith("/v1")


def test_sdk_create_shape_usage_and_headers(client: Any) -> None:
    raw = client.messages.with_raw_response.create(model=SONNET, max_tokens=64, messages=MSGS)
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant" and msg.model == SONNET
    assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"
    assert msg.usage.input_tokens == math.ceil(len(MSGS[0]["content"]) / 4)
    assert msg.usage.output_tokens == 20 == len(msg.content[0].text.split())
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "10000"
    assert raw.headers["request-id"].startswith("req_")
    assert raw.headers["anthropic-organization-id"] == "org-emulator"


def test_sdk_async_create(emu: Emulator) -> None:
    async def run() -> Any:
        async with anthropic.AsyncAnthropic(
            api_key="k", base_url=emu.anthropic_base_url, max_retries=0
        ) as c:
            return await c.messages.create(model=SONNET, max_tokens=5, messages=MSGS)

    msg = asyncio.run(run())
    assert msg.usage.output_tokens == 5 and msg.stop_reason == "max_tokens"


def test_sdk_stream_helper_and_raw_stream_agree_with_create(client: Any) -> None:
    whole = client.messages.create(model=SONNET, max_tokens=64, messages=MSGS)
    with client.messages.stream(model=SONNET, max_tokens=64, messages=MSGS) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    events = list(client.messages.create(model=SONNET, max_tokens=64, messages=MSGS, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2].usage.output_tokens == whole.usage.output_tokens


def test_sdk_count_tokens_matches_create(client: Any) -> None:
    counted = client.messages.count_tokens(model=SONNET, messages=MSGS)
    msg = client.messages.create(model=SONNET, max_tokens=8, messages=MSGS)
    assert counted.input_tokens == msg.usage.input_tokens


def test_sdk_prompt_cache_read_on_the_second_call(client: Any) -> None:
    system = [{"type": "text", "text": tokens(1200), "cache_control": {"type": "ephemeral"}}]
    first = client.messages.create(model=SONNET, max_tokens=8, system=system, messages=MSGS)
    second = client.messages.create(model=SONNET, max_tokens=8, system=system, messages=MSGS)
    assert first.usage.cache_creation_input_tokens == 1200
    assert second.usage.cache_read_input_tokens == 1200
    assert second.usage.cache_creation_input_tokens == 0


def test_sdk_rate_limit_error_each_dimension(emu: Emulator, client: Any) -> None:
    for spec, needle in (
        (AnthropicLimitSpec(1, None, None), "of 1 requests per minute"),
        (AnthropicLimitSpec(None, 15, None), "of 15 input tokens per minute"),  # 9 a call
        (AnthropicLimitSpec(None, None, 15), "of 15 output tokens per minute"),
    ):
        emu.reset()
        emu.configure(anthropic=spec)
        client.messages.create(model=SONNET, max_tokens=64, messages=MSGS)
        with pytest.raises(anthropic.RateLimitError) as info:
            client.messages.create(model=SONNET, max_tokens=64, messages=MSGS)
        err = info.value
        assert err.status_code == 429 and needle in err.message
        assert err.body["error"]["type"] == "rate_limit_error"
        assert int(err.response.headers["retry-after"]) >= 1


def test_sdk_retries_529_then_succeeds(emu: Emulator) -> None:
    emu.queue_fault("overloaded", 1)
    with anthropic.Anthropic(api_key="k", base_url=emu.anthropic_base_url, max_retries=1) as c:
        started = time.monotonic()
        msg = c.messages.create(model=SONNET, max_tokens=8, messages=MSGS)
    assert msg.usage.output_tokens == 8 and time.monotonic() - started < 10
    assert [r.status for r in emu.log] == [529, 200]


def test_sdk_overloaded_and_stream_error(emu: Emulator, client: Any) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model=SONNET,
            max_tokens=8,
            messages=MSGS,
            extra_headers={"x-emulator-fault": "overloaded"},
        )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    got: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as stream_info,
        client.messages.stream(
            model=SONNET,
            max_tokens=64,
            messages=MSGS,
            extra_headers={"x-emulator-fault": "stream_error"},
        ) as stream,
    ):
        got.extend(stream.text_stream)
    assert got  # some text came before the error event
    assert stream_info.value.body["error"]["type"] == "overloaded_error"


def test_sdk_auth_error(emu: Emulator) -> None:
    raw = httpx2.post(
        f"{emu.url}/v1/messages",
        json=body(),
        headers={"anthropic-version": "2023-06-01"},
        timeout=5,
    )
    assert raw.status_code == 401 and raw.json()["error"]["type"] == "authentication_error"
    emu.configure(valid_keys=["sk-ant-good"])
    with (
        anthropic.Anthropic(
            api_key="sk-ant-bad", base_url=emu.anthropic_base_url, max_retries=0
        ) as c,
        pytest.raises(anthropic.AuthenticationError),
    ):
        c.messages.create(model=SONNET, max_tokens=8, messages=MSGS)


def test_raw_spend_limit_over_http(emu: Emulator) -> None:
    emu.queue_fault("spend_limit")
    raw = httpx2.post(f"{emu.url}/v1/messages", json=body(), headers={"x-api-key": "k"}, timeout=5)
    assert raw.status_code == 429 and "retry-after" not in raw.headers
    assert raw.json()["error"]["details"]["error_code"] == "enforced_spend_limit_reached"


def test_raw_headers_and_429_over_http_on_the_fake_clock(
    server: tuple[Emulator, FakeClock], emu: Emulator
) -> None:
    _, clock = server
    emu.configure(anthropic={"rpm": 50, "itpm": 1500, "otpm": 800})
    url, headers = f"{emu.url}/v1/messages", {"x-api-key": "k"}
    ok = httpx2.post(url, json=body(tokens(1000)), headers=headers, timeout=5)
    assert ok.status_code == 200
    assert ok.headers["anthropic-ratelimit-input-tokens-remaining"] == "0"  # 500 left
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "1500"  # input is the tighter
    assert ok.headers["anthropic-ratelimit-input-tokens-reset"] == "2027-01-15T08:00:40Z"
    refused = httpx2.post(url, json=body(tokens(1000)), headers=headers, timeout=5)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "20"
    assert "1,500 input tokens per minute" in refused.json()["error"]["message"]
    clock.t += 20
    assert httpx2.post(url, json=body(tokens(1000)), headers=headers, timeout=5).status_code == 200
    stats = emu.stats()["buckets"]["anthropic:claude-sonnet-4*"]
    assert stats["rejected"] == {"input_tokens": 1} and stats["min_level_output_tokens"] >= 0
    assert httpx2.get(f"{emu.url}/__emulator/stats", timeout=5).json()["buckets"][
        "anthropic:claude-sonnet-4*"
    ]["min_level_input_tokens"] == pytest.approx(0, abs=1e-6)


def test_no_limit_headers_over_http_for_all_vendors(emu: Emulator) -> None:
    emu.configure(limit_headers=False)
    answers = [
        httpx2.post(f"{emu.url}/v1/messages", json=body(), headers={"x-api-key": "k"}, timeout=5),
        httpx2.post(
            f"{emu.url}/v1/chat/completions",
            json={"model": "gpt-5", "messages": MSGS},
            headers={"authorization": "Bearer sk"},
            timeout=5,
        ),
        httpx2.post(
            f"{emu.url}/v1/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "k"},
            timeout=5,
        ),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    for answer in answers:
        assert not [k for k in answer.headers if "ratelimit" in k.lower()]
    emu.configure(limit_headers=True)
    again = httpx2.post(
        f"{emu.url}/v1/chat/completions",
        json={"model": "gpt-5", "messages": MSGS},
        headers={"authorization": "Bearer sk"},
        timeout=5,
    )
    assert "x-ratelimit-limit-tokens" in again.headers


def test_anthropic_models_list(emu: Emulator, client: Any) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == list(emu.config.anthropic_models)


def test_openai_and_gemini_stream_error_fault_through_their_sdks(emu: Emulator) -> None:
    import openai
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types

    oai = openai.OpenAI(api_key="sk", base_url=emu.openai_base_url, max_retries=0)
    fault = {"x-emulator-fault": "stream_error"}
    with pytest.raises(openai.APIError, match="server had an error"):
        list(
            oai.chat.completions.create(
                model="gpt-5", messages=MSGS, stream=True, extra_headers=fault
            )
        )
    oai.close()
    opts = types.HttpOptions(base_url=emu.gemini_base_url, api_version="v1", headers=fault)
    gem = genai.Client(api_key="k", http_options=opts)
    with pytest.raises(genai_errors.APIError) as info:
        list(gem.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert info.value.code == 503
    assert [(r.vendor, r.status, r.fault) for r in emu.log] == [
        ("openai", 200, "stream_error"),
        ("gemini", 200, "stream_error"),
    ]  # one try each: the error came inside a 200 stream


def test_llm_emulator_fixture_config_gives_anthropic_the_plugins_limits() -> None:
    from pytest_llm_budget.emulator_setup import emulator_config
    from pytest_llm_budget.settings.resolved import Settings

    cfg = emulator_config(Settings(tpm=12_000, rpm=40), None)
    assert cfg.anthropic == AnthropicLimitSpec(rpm=40, itpm=12_000, otpm=None)
    assert cfg.anthropic_limits_for("claude-opus-4-1")[0] == "anthropic:*"  # one vendor bucket
