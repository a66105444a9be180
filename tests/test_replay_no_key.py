"""Replay-only mode needs no key and, when asked, no matching base URL (issue 10, defect 9)."""

from __future__ import annotations

import pytest

from pytest_llm_budget.emulator import Emulator
from pytest_llm_budget.providers.registry import placeholder_keys
from pytest_llm_budget.replay.cassettes import use_placeholder_keys

PLACEHOLDER_KEYS = placeholder_keys({})

SUITE = """
import asyncio
import openai, pytest
from google import genai


def ask(client):
    reply = client.chat.completions.create(
        model="gpt-5", max_tokens=20, messages=[{"role": "user", "content": "hello"}])
    return reply.choices[0].message.content


def test_openai_fixture(openai_client):
    assert ask(openai_client)


def test_async_openai_fixture(async_openai_client):
    async def go():
        reply = await async_openai_client.chat.completions.create(
            model="gpt-5", max_tokens=20, messages=[{"role": "user", "content": "async"}])
        return reply.choices[0].message.content
    assert asyncio.run(go())


def test_gemini_fixture(gemini_client):
    assert gemini_client.models.generate_content(model="gemini-2.5-pro", contents="gem").text


@pytest.mark.llm_budget
def test_clients_the_app_builds():
    assert ask(openai.OpenAI(max_retries=0))
    assert genai.Client().models.generate_content(model="gemini-2.5-pro", contents="app").text
"""
KEYS = ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
URLS = ("OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> pytest.Pytester:
    """SUITE recorded against an emulator (then stopped), with keys; keys unset afterwards."""
    pytester.makepyfile(test_replay=SUITE)
    env = pytester._monkeypatch
    with Emulator() as emulator:
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        env.setenv("GOOGLE_GEMINI_BASE_URL", emulator.gemini_base_url)
        env.setenv("OPENAI_API_KEY", "sk-recording")
        env.setenv("GEMINI_API_KEY", "recording")
        _run(pytester, "--llm-record-mode", "all").assert_outcomes(passed=4)
    for name in KEYS:
        env.delenv(name, raising=False)
    return pytester


def test_replay_only_needs_no_key(recorded: pytest.Pytester) -> None:
    env = recorded._monkeypatch
    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the emulator's host, a dead port
    env.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    result = _run(recorded, "--llm-record-mode", "none")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["totals: calls: 5 (replayed: 5)*"])
    cassettes = "".join(p.read_text() for p in (recorded.path / "cassettes").rglob("*.yaml"))
    assert not any(key in cassettes for key in PLACEHOLDER_KEYS.values())


def test_replay_under_another_base_url_when_asked(recorded: pytest.Pytester) -> None:
    env = recorded._monkeypatch
    for name in URLS:  # the SDKs' defaults: api.openai.com, generativelanguage.googleapis.com
        env.delenv(name, raising=False)
    strict = _run(recorded, "--llm-record-mode", "none")
    strict.assert_outcomes(failed=4)  # the host is part of the match by default
    strict.stdout.fnmatch_lines(["*POST https://api.openai.com/v1/chat/completions"])
    loose = _run(recorded, "--llm-record-mode", "none", "-o", "llm_match_host=false")
    loose.assert_outcomes(passed=4)
    loose.stdout.fnmatch_lines(["totals: calls: 5 (replayed: 5)*"])


def test_placeholders_fill_only_missing_keys() -> None:
    environ = {"GOOGLE_API_KEY": "real"}
    assert "GEMINI_API_KEY" not in placeholder_keys(environ)
    undo = use_placeholder_keys(environ)
    assert environ == {
        "GOOGLE_API_KEY": "real",
        "OPENAI_API_KEY": PLACEHOLDER_KEYS["OPENAI_API_KEY"],
        "ANTHROPIC_API_KEY": PLACEHOLDER_KEYS["ANTHROPIC_API_KEY"],
    }
    with_token = {"ANTHROPIC_AUTH_TOKEN": "real"}
    assert "ANTHROPIC_API_KEY" not in placeholder_keys(with_token)
    undo()
    assert environ == {"GOOGLE_API_KEY": "real"}


def test_the_placeholder_is_set_in_replay_only_mode_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os

        def test_env():
            print("KEY=%s" % os.environ.get("OPENAI_API_KEY"))
        """
    )
    for name in KEYS:
        pytester._monkeypatch.delenv(name, raising=False)
    none = _run(pytester, "--llm-record-mode", "none", "-s")
    assert f"KEY={PLACEHOLDER_KEYS['OPENAI_API_KEY']}" in none.stdout.str()
    live = _run(pytester, "-s")
    assert "KEY=None" in live.stdout.str()
