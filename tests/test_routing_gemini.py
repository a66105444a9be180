"""Gemini calls (google-genai, sync and `.aio`, JSON and SSE) through the routed client."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
from pytest_llm_budget.routing import clients

MODEL = "gemini-2.5-flash"


def test_generate_and_stream(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("gemini_client", budget)
    reply = client.models.generate_content(model=MODEL, contents="Say hi")
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Say hi twice"))
    plain, streamed = budget.calls.records()
    assert plain.vendor == "gemini" and plain.model == MODEL
    assert plain.prompt_tokens == reply.usage_metadata.prompt_token_count
    assert plain.completion_tokens == reply.usage_metadata.candidates_token_count
    final = chunks[-1].usage_metadata
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (
        final.prompt_token_count,
        final.candidates_token_count,
    )
    assert plain.status == streamed.status == "ok" and not streamed.malformed
    assert [r.stream for r in emu.log] == [False, True]


def test_aio_path_is_routed_not_aiohttp(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("gemini_client", budget)

    async def main() -> tuple[Any, list[Any]]:
        reply = await client.aio.models.generate_content(model=MODEL, contents="Say hi")
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents="More")
        return reply, [chunk async for chunk in stream]

    reply, chunks = asyncio.run(main())
    assert not client._api_client._use_aiohttp()
    first, second = budget.calls.records()
    assert first.completion_tokens == reply.usage_metadata.candidates_token_count
    assert second.completion_tokens == chunks[-1].usage_metadata.candidates_token_count
    assert len(emu.log) == 2


def test_gemini_429s_are_retried_with_retry_info(emu: Any, make_budget: Any) -> None:
    emu.configure(
        EmulatorConfig(window=1.0, gemini=LimitSpec(tpm=60, rpm=None), reply_max_tokens=10)
    )
    budget = make_budget(tpm=100_000)
    client = clients.fixture_client("gemini_client", budget)
    text = "x" * 100  # 25 input tokens: the emulator admits 2 per second

    def one(i: int) -> int:
        reply = client.models.generate_content(model=MODEL, contents=f"{text} {i}")
        return int(reply.usage_metadata.prompt_token_count)

    with ThreadPoolExecutor(5) as pool:
        assert all(pool.map(one, range(5)))
    records = budget.calls.records()
    assert {r.status for r in records} == {"ok"}
    events = sum(r.rate_limit_events for r in records)
    assert events > 0 and emu.stats()["totals"]["rejected"] == events
