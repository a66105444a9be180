"""How the generated pace suite makes each kind of call (copied into the suite as pace_calls.py).

Every function takes the client, the `gate` (the alternatives' limiter; a no-op otherwise) and
the test's calls from cases.json, makes the calls and checks that an answer came back.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

Case = dict[str, Any]


def load_cases() -> dict[str, list[Case]]:
    """cases.json beside this file: test name -> its calls."""
    return json.loads((Path(__file__).parent / "cases.json").read_text(encoding="utf-8"))


def _messages(case: Case) -> list[dict[str, str]]:
    return [{"role": "user", "content": case["prompt"]}]


def _limit(case: Case) -> dict[str, int]:
    """gpt-5 family takes max_completion_tokens on chat; older models max_tokens."""
    key = "max_completion_tokens" if case["model"].startswith("gpt-5") else "max_tokens"
    return {key: case["max_tokens"]}


def _gemini_config(case: Case) -> Any:
    from google.genai import types

    return types.GenerateContentConfig(max_output_tokens=case["max_tokens"])


def chat(client: Any, gate: Any, cases: list[Case]) -> None:
    """Chat completions, one call after the other."""
    for case in cases:
        with gate("openai", case):
            r = client.chat.completions.create(
                model=case["model"], messages=_messages(case), **_limit(case)
            )
        assert r.choices[0].message.content


def chat_stream(client: Any, gate: Any, cases: list[Case]) -> None:
    """Streamed chat completions (usage in the last chunk)."""
    for case in cases:
        with gate("openai", case):
            stream = client.chat.completions.create(
                model=case["model"],
                messages=_messages(case),
                stream=True,
                stream_options={"include_usage": True},
                **_limit(case),
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text


async def _achat(client: Any, gate: Any, case: Case) -> str:
    with gate("openai", case):
        r = await client.chat.completions.create(
            model=case["model"], messages=_messages(case), **_limit(case)
        )
    return str(r.choices[0].message.content)


def chat_async(client: Any, gate: Any, cases: list[Case]) -> None:
    """Async chat completions, one after the other, in one event loop."""

    async def main() -> list[str]:
        return [await _achat(client, gate, case) for case in cases]

    assert all(asyncio.run(main()))


def chat_async_pair(client: Any, gate: Any, cases: list[Case]) -> None:
    """Async chat completions sent at once (asyncio.gather)."""

    async def main() -> list[str]:
        return list(await asyncio.gather(*(_achat(client, gate, case) for case in cases)))

    assert all(asyncio.run(main()))


def responses(client: Any, gate: Any, cases: list[Case]) -> None:
    """The Responses API."""
    for case in cases:
        with gate("openai", case):
            r = client.responses.create(
                model=case["model"], input=case["prompt"], max_output_tokens=case["max_tokens"]
            )
        assert r.output_text


def responses_stream(client: Any, gate: Any, cases: list[Case]) -> None:
    """The Responses API, streamed; the last event carries the finished response."""
    for case in cases:
        with gate("openai", case):
            stream = client.responses.create(
                model=case["model"],
                input=case["prompt"],
                max_output_tokens=case["max_tokens"],
                stream=True,
            )
            kinds = [event.type for event in stream]
        assert "response.completed" in kinds


def gemini(client: Any, gate: Any, cases: list[Case]) -> None:
    """Gemini generateContent."""
    for case in cases:
        with gate("gemini", case):
            r = client.models.generate_content(
                model=case["model"], contents=case["prompt"], config=_gemini_config(case)
            )
        assert r.text


def gemini_stream(client: Any, gate: Any, cases: list[Case]) -> None:
    """Gemini streamGenerateContent (SSE)."""
    for case in cases:
        with gate("gemini", case):
            chunks = client.models.generate_content_stream(
                model=case["model"], contents=case["prompt"], config=_gemini_config(case)
            )
            text = "".join(c.text or "" for c in chunks)
        assert text


def gemini_async(client: Any, gate: Any, cases: list[Case]) -> None:
    """Gemini through the client's `.aio` side."""

    async def main() -> list[str]:
        out = []
        for case in cases:
            with gate("gemini", case):
                r = await client.aio.models.generate_content(
                    model=case["model"], contents=case["prompt"], config=_gemini_config(case)
                )
            out.append(r.text or "")
        return out

    assert all(asyncio.run(main()))


def claude(client: Any, gate: Any, cases: list[Case]) -> None:
    """Anthropic Messages, one call after the other."""
    for case in cases:
        with gate("anthropic", case):
            r = client.messages.create(
                model=case["model"], max_tokens=case["max_tokens"], messages=_messages(case)
            )
        assert r.content[0].text


def claude_stream(client: Any, gate: Any, cases: list[Case]) -> None:
    """Anthropic Messages streamed with the SDK's helper (usage in message_start / _delta)."""
    for case in cases:
        with gate("anthropic", case), client.messages.stream(
            model=case["model"], max_tokens=case["max_tokens"], messages=_messages(case)
        ) as stream:
            text = "".join(stream.text_stream)
        assert text


async def _aclaude(client: Any, gate: Any, case: Case) -> str:
    with gate("anthropic", case):
        r = await client.messages.create(
            model=case["model"], max_tokens=case["max_tokens"], messages=_messages(case)
        )
    return str(r.content[0].text)


def claude_async(client: Any, gate: Any, cases: list[Case]) -> None:
    """Async Anthropic Messages, one after the other, in one event loop."""

    async def main() -> list[str]:
        return [await _aclaude(client, gate, case) for case in cases]

    assert all(asyncio.run(main()))


def claude_async_pair(client: Any, gate: Any, cases: list[Case]) -> None:
    """Async Anthropic Messages sent at once (asyncio.gather)."""

    async def main() -> list[str]:
        return list(await asyncio.gather(*(_aclaude(client, gate, case) for case in cases)))

    assert all(asyncio.run(main()))
