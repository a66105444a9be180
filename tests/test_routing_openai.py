"""OpenAI calls through routed clients, against the emulator over real HTTP with the real SDK."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
from pytest_llm_budget.routing import clients

MSG = [{"role": "user", "content": "Say something short."}]


def test_sync_chat_settles_reported_usage(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    reply = client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=30)
    [record] = budget.calls.records()
    assert record.status == "ok" and record.attempts == 1 and not record.malformed
    assert (record.prompt_tokens, record.completion_tokens) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    [seen] = emu.log
    assert seen.status == 200 and seen.charge == record.estimated  # the admission charge, exactly
    [bucket] = budget.bucket_stats()
    assert bucket.actual == reply.usage.total_tokens


def test_stream_is_not_buffered_and_settles_at_the_end(emu: Any, make_budget: Any) -> None:
    emu.configure(stream_delay=0.05)
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    start = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o", messages=MSG, max_tokens=30, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    next(chunks)
    first = time.monotonic() - start
    assert budget.calls.records() == []  # not settled before the stream ends
    rest = list(chunks)
    total = time.monotonic() - start
    assert first < total / 2, (first, total)
    usage = rest[-1].usage
    [record] = budget.calls.records()
    assert record.status == "ok" and not record.malformed
    assert record.prompt_tokens == usage.prompt_tokens
    assert record.completion_tokens == usage.completion_tokens


def test_chat_stream_without_usage_settles_the_estimate(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    list(client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=20, stream=True))
    [record] = budget.calls.records()
    assert record.status == "ok" and not record.malformed and record.total_tokens == 0
    [bucket] = budget.bucket_stats()
    assert bucket.actual == record.estimated


def test_responses_api_json_and_stream(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    plain = client.responses.create(model="gpt-4o", input="hello", max_output_tokens=40)
    events = list(
        client.responses.create(model="gpt-4o", input="hello", max_output_tokens=40, stream=True)
    )
    final = events[-1].response.usage
    first, second = budget.calls.records()
    assert (first.prompt_tokens, first.completion_tokens) == (
        plain.usage.input_tokens,
        plain.usage.output_tokens,
    )
    assert (second.prompt_tokens, second.completion_tokens) == (
        final.input_tokens,
        final.output_tokens,
    )
    assert first.status == second.status == "ok"


def test_async_chat_and_stream(emu: Any, make_budget: Any) -> None:
    budget = make_budget()

    async def main() -> tuple[Any, list[Any]]:
        client = clients.fixture_client("async_openai_client", budget)
        reply = await client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=25)
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=MSG, max_tokens=25, stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
        return reply, chunks

    reply, chunks = asyncio.run(main())
    first, second = budget.calls.records()
    assert first.completion_tokens == reply.usage.completion_tokens
    assert second.completion_tokens == chunks[-1].usage.completion_tokens
    assert len(emu.log) == 2


def test_burst_of_30_at_5_per_window_sees_no_429(emu: Any, make_budget: Any) -> None:
    # Our budget: 700 * (1 - 0.15) = 595 per 1 s window, ~112 per call -> 5 per window.
    emu.configure(EmulatorConfig(window=1.0, openai=LimitSpec(tpm=700, rpm=None)))
    budget = make_budget(tpm=700, headroom=0.15)
    client = clients.fixture_client("openai_client", budget)

    def one(i: int) -> int:
        messages = [{"role": "user", "content": f"call {i}"}]
        reply = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=100)
        return reply.usage.total_tokens

    start = time.monotonic()
    with ThreadPoolExecutor(30) as pool:
        assert all(list(pool.map(one, range(30))))
    elapsed = time.monotonic() - start
    stats = emu.stats()
    assert stats["totals"]["rejected"] == 0, stats
    assert stats["totals"]["admitted"] == 30
    records = budget.calls.records()
    assert len(records) == 30 and {r.status for r in records} == {"ok"}
    assert sum(r.rate_limit_events for r in records) == 0
    per_call = records[0].estimated
    assert 595 // per_call == 5, per_call
    assert elapsed >= 4.5  # 30 calls at 5 per 1 s window: the budget, not the server, paced it
    assert budget.bucket_stats()[0].deferrals > 0


def test_429s_are_retried_when_our_tpm_is_above_the_servers(
    emu: Any, make_budget: Any
) -> None:
    # Without limit headers: else the first reply can teach the plugin the server's 250 before
    # the other calls leave, and none is ever refused (that is test_limits_learned's subject).
    emu.configure(
        EmulatorConfig(window=1.0, openai=LimitSpec(tpm=250, rpm=None), limit_headers=False)
    )
    budget = make_budget(tpm=100_000)
    client = clients.fixture_client("openai_client", budget)

    def one(i: int) -> str:
        messages = [{"role": "user", "content": f"call {i}"}]
        reply = client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=100)
        return reply.id

    with ThreadPoolExecutor(6) as pool:
        assert len(list(pool.map(one, range(6)))) == 6
    records = budget.calls.records()
    assert {r.status for r in records} == {"ok"}
    events = sum(r.rate_limit_events for r in records)
    assert events > 0
    stats = emu.stats()["totals"]
    assert stats["admitted"] == 6 and stats["rejected"] == events
    assert sum(r.attempts for r in records) == 6 + events
    assert budget.bucket_stats()[0].rate_limit_events == events


def test_fixture_client_never_lets_the_sdk_retry(emu: Any, make_budget: Any) -> None:
    import openai

    budget = make_budget()
    sent: list[str] = []
    client = clients.fixture_client("openai_client", budget)
    client._client.event_hooks["request"].append(
        lambda request: sent.append(request.headers.get("x-stainless-retry-count", "?"))
    )
    emu.queue_fault("status=500", count=1)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=10)
    emu.queue_fault("rate_limit_no_hint", count=2)
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=10)
    assert sent == ["0", "0"]  # one SDK attempt per call, however many plugin retries
    assert [r.status for r in emu.log] == [500, 429, 429, 200]
    first, second = budget.calls.records()
    assert first.status == "http_500" and first.attempts == 1
    assert second.status == "ok" and second.attempts == 3 and second.rate_limit_events == 2
