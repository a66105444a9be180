"""Credentials never reach pytest's output: failure tracebacks, captured logs, junit XML."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llm_budget.redact import redact

GEMINI_KEY = "AIzaSyD-FAKEKEY0123456789abcdefghijklmn"
OPENAI_KEY = "sk-proj-FAKEFAKE0123456789abcdefghijklmnop"


def test_redact_masks_urls_and_keys() -> None:
    assert redact(f"POST https://h/v1/m:generate?alt=sse&key={GEMINI_KEY}") == (
        "POST https://h/v1/m:generate?alt=sse&key=***"
    )
    assert redact("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("redis://h:6379/0?password=s3cret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert redact(f"Authorization: Bearer {OPENAI_KEY}") == "Authorization: Bearer ***"
    assert redact(f"<Request('POST', 'https://x/y?key={GEMINI_KEY}')>") == (
        "<Request('POST', 'https://x/y?key=***')>"
    )
    plain = "nothing secret: https://api.openai.com/v1/chat/completions?model=gpt-5 sk-short"
    assert redact(plain) == plain


def test_a_failing_call_shows_no_key_in_terminal_or_junit(
    pytester: pytest.Pytester, emu: Any
) -> None:
    """The structured error is raised from frames that hold the request (and its URL)."""
    emu.queue_fault("rate_limit_no_hint", count=5)
    url = f"{emu.url}/v1beta/models/gemini-2.5-flash:generateContent?key={GEMINI_KEY}"
    pytester.makepyfile(
        f"""
        import logging

        def test_limited(llm_http_client):
            logging.getLogger("app").warning("calling %s with %s", {url!r}, {OPENAI_KEY!r})
            llm_http_client.post({url!r}, json={{"contents": [{{"parts": [{{"text": "hi"}}]}}]}})
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-retries", "0", "--junitxml", "junit.xml", "-rA",
        "--tb", "long", "--showlocals",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "LLM_RATE_LIMIT_EXHAUSTED" in out and "key=***" in out
    junit = (pytester.path / "junit.xml").read_text()
    for text in (out, junit, result.stderr.str()):
        assert GEMINI_KEY not in text and OPENAI_KEY not in text
