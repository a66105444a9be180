"""Installed into a suite that mocks its LLM calls, the plugin must do no harm.

Each mocking library answers a request before it reaches a real connection pool, so the call is
neither paced, counted, retried nor rewritten. The budget is set below one call's estimate
(`--llm-tpm 5000` vs max_tokens=6000): a paced call would fail at once with RequestTooLarge.
The suites run in a pytest subprocess, the way a user's suite runs with the plugin installed.
The tests follow the installed openai major (3.x on httpx2, 1.x/2.x on httpx); CI runs them on
both (`.ci/run`, tox env `openai2`).
"""

from __future__ import annotations

import json
import re
import socket
import textwrap
from typing import Any

import openai
import pytest

OPENAI_MAJOR = int(openai.__version__.split(".")[0])
LEGACY = OPENAI_MAJOR < 3
URL = "https://api.openai.com/v1/chat/completions"
COMMON = f"""
import sys
import httpx
import openai
import pytest

URL = {URL!r}
BODY = {{"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-5",
        "choices": [{{"index": 0, "finish_reason": "stop",
                      "message": {{"role": "assistant", "content": "mocked"}}}}],
        "usage": {{"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}}}
LIMITED = {{"error": {{"message": "mocked limit", "type": "tokens",
                     "code": "rate_limit_exceeded"}}}}
MSG = [{{"role": "user", "content": "hello"}}]


def ask(client):
    return client.chat.completions.create(model="gpt-5", max_tokens=6000, messages=MSG)


def assert_429_untouched(client, calls):
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert calls() == 1, "the plugin retried a mocked 429"
    assert "mocked limit" in str(info.value) and "LLM_" not in str(info.value)
"""


def run_suite(pytester: pytest.Pytester, body: str, *args: str, passed: int) -> Any:
    """Run a user's suite (COMMON + body) with a budget below one call; no key, no network."""
    pytester.makepyfile(test_user=COMMON + textwrap.dedent(body))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-tpm", "5000", "--llm-report", "r.json", *args
    )
    result.assert_outcomes(passed=passed)
    assert "LLM budget" not in result.stdout.str(), "a mocked suite grew a budget section"
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["calls"] == [] and report["totals"]["calls"] == 0
    return result


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's environment: a key, the real base URL, nothing pointing at an emulator."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)


def test_respx_mocks_are_not_paced(pytester: pytest.Pytester, user_env: None) -> None:
    if LEGACY:  # respx on httpcore, below openai 2.x's httpx transport
        body = """
            import respx

            @respx.mock
            @pytest.mark.parametrize("i", range(5))
            def test_answer(i):
                route = respx.post(URL).mock(return_value=httpx.Response(200, json=BODY))
                assert ask(openai.OpenAI(max_retries=0)).choices[0].message.content == "mocked"
                assert route.call_count == 1
                assert "tiktoken" not in sys.modules  # nothing estimated, nothing downloaded

            @respx.mock
            def test_limit_reaches_the_app():
                route = respx.post(URL).mock(return_value=httpx.Response(
                    429, headers={"retry-after": "30"}, json=LIMITED))
                assert_429_untouched(openai.OpenAI(max_retries=0), lambda: route.call_count)
        """
    else:  # pytest-httpx2: respx on httpcore2, below openai 3.x's httpx2 transport
        body = """
            @pytest.mark.parametrize("i", range(5))
            def test_answer(httpx2_mock, i):
                route = httpx2_mock.post(URL).mock(return_value=httpx.Response(200, json=BODY))
                assert ask(openai.OpenAI(max_retries=0)).choices[0].message.content == "mocked"
                assert route.call_count == 1
                assert "tiktoken" not in sys.modules  # nothing estimated, nothing downloaded

            def test_limit_reaches_the_app(httpx2_mock):
                route = httpx2_mock.post(URL).mock(return_value=httpx.Response(
                    429, headers={"retry-after": "30"}, json=LIMITED))
                assert_429_untouched(openai.OpenAI(max_retries=0), lambda: route.call_count)
        """
    run_suite(pytester, body, passed=6)


def test_mocked_fixture_clients_are_not_paced_under_route_fixtures(
    pytester: pytest.Pytester, user_env: None
) -> None:
    """`--llm-route fixtures` routes no app client, but the pools still gate the plugin's own."""
    mock = "respx_mock" if LEGACY else "httpx2_mock"
    body = f"""
        @pytest.mark.parametrize("i", range(3))
        def test_answer({mock}, openai_client, i):
            route = {mock}.post(URL).mock(return_value=httpx.Response(200, json=BODY))
            assert ask(openai_client).choices[0].message.content == "mocked"
            assert route.call_count == 1
    """
    pytester.makepyfile(test_user=COMMON + textwrap.dedent(body))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-tpm", "5000", "--llm-route", "fixtures",
        "--llm-report", "r.json",
    )
    result.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["calls"] == [] and report["totals"]["calls"] == 0


def test_pytest_httpx_mocks_are_not_paced(pytester: pytest.Pytester, user_env: None) -> None:
    # pytest-httpx mocks httpx only: openai 2.x itself, or (openai 3.x) a legacy httpx client
    # that the app points at the OpenAI API, which the plugin routes as well.
    client = "openai.OpenAI(max_retries=0)" if LEGACY else "None"
    body = f"""
        import json

        def call(client):
            if client is not None:
                return ask(client).choices[0].message.content
            with httpx.Client() as http:
                reply = http.post(URL, json={{"model": "gpt-5", "max_tokens": 6000,
                                              "messages": MSG}})
                if reply.status_code == 429:
                    raise openai.RateLimitError(reply.json()["error"]["message"],
                                                response=reply, body=None)
                return reply.json()["choices"][0]["message"]["content"]

        @pytest.mark.parametrize("i", range(5))
        def test_answer(httpx_mock, i):
            httpx_mock.add_response(url=URL, json=BODY)
            assert call({client}) == "mocked"
            assert len(httpx_mock.get_requests()) == 1

        def test_limit_reaches_the_app(httpx_mock):
            httpx_mock.add_response(url=URL, status_code=429, headers={{"retry-after": "30"}},
                                    json=LIMITED)
            with pytest.raises(openai.RateLimitError) as info:
                call({client})
            assert len(httpx_mock.get_requests()) == 1
            assert "mocked limit" in str(info.value) and "LLM_" not in str(info.value)
    """
    run_suite(pytester, body, passed=6)


def test_mock_transports_are_not_paced(pytester: pytest.Pytester, user_env: None) -> None:
    library = "httpx" if LEGACY else "httpx2"
    body = f"""
        import {library} as lib

        def client_answering(status, payload, seen):
            def handler(request):
                seen.append(request)
                return lib.Response(status, json=payload, headers={{"retry-after": "30"}})
            http = openai.DefaultHttpxClient(transport=lib.MockTransport(handler))
            return openai.OpenAI(max_retries=0, http_client=http)

        @pytest.mark.parametrize("i", range(5))
        def test_answer(i):
            seen = []
            assert ask(client_answering(200, BODY, seen)).choices[0].message.content == "mocked"
            assert len(seen) == 1

        def test_limit_reaches_the_app():
            seen = []
            assert_429_untouched(client_answering(429, LIMITED, seen), lambda: len(seen))
    """
    run_suite(pytester, body, passed=6)


@pytest.mark.skipif(not LEGACY, reason="openai-responses supports openai < 3 only (tox -e openai2)")
def test_openai_responses_mocks_are_not_paced(pytester: pytest.Pytester, user_env: None) -> None:
    body = """
        import openai_responses

        @openai_responses.mock()
        @pytest.mark.parametrize("i", range(5))
        def test_answer(openai_mock, i):
            openai_mock.chat.completions.create.response = {
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "mocked"}}]
            }
            assert ask(openai.OpenAI(max_retries=0)).choices[0].message.content == "mocked"
            assert openai_mock.chat.completions.create.route.call_count == 1
    """
    run_suite(pytester, body, passed=5)


def test_pytest_recording_replays_are_not_paced(
    pytester: pytest.Pytester, emu: Any, user_env: None
) -> None:
    """Recorded live against the emulator (paced, roomy budget), replayed under a tiny one."""
    pytester.makepyfile(
        test_rec=f"""
        import openai, pytest

        @pytest.mark.vcr
        @pytest.mark.parametrize("i", range(3))
        def test_answer(i):
            client = openai.OpenAI(base_url={emu.openai_base_url!r}, max_retries=0)
            reply = client.chat.completions.create(
                model="gpt-5", max_tokens=6000, messages=[{{"role": "user", "content": str(i)}}])
            assert reply.choices[0].message.content
        """
    )
    pytester.makeconftest(
        f"""
        import pytest
        pytest_plugins = []

        def pytest_configure(config):
            from pytest_llm_budget.routing import traffic
            traffic.add_host("127.0.0.1:{emu.port}")
        """
    )
    recorded = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--record-mode=once")
    recorded.assert_outcomes(passed=3)
    assert emu.stats()["totals"]["admitted"] == 3
    replayed = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--record-mode=none", "--llm-tpm", "5000",
        "--llm-report", "r.json",
    )
    replayed.assert_outcomes(passed=3)
    assert emu.stats()["totals"]["admitted"] == 3  # nothing reached the emulator
    assert json.loads((pytester.path / "r.json").read_text())["calls"] == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_request_that_cannot_connect_gives_its_charge_back(make_budget: Any) -> None:
    """A call that escapes its mock and finds no server must not hold the budget."""
    from pytest_llm_budget import wrap

    budget = make_budget(tpm=7000, window=60.0, max_wait=0.5)
    client = wrap(
        openai.OpenAI(
            api_key="sk-test", base_url=f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0
        ),
        budget,
    )
    for _ in range(3):  # 6000 tokens each: a kept charge would make the next one time out
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(
                model="gpt-5", max_tokens=6000, messages=[{"role": "user", "content": "hi"}]
            )
    snapshot = budget.snapshot("openai", "gpt-5")
    assert (snapshot.used_tokens, snapshot.in_flight, snapshot.stats.calls) == (0, 0, 0)
    assert budget.calls.records() == []


def test_genai_async_client_built_by_the_app_is_routed_despite_aiohttp(
    emu: Any, make_budget: Any
) -> None:
    """With aiohttp importable google-genai would send `.aio` calls through it, unrouted."""
    import asyncio

    import aiohttp  # noqa: F401 - the point: it is importable
    from google import genai

    from pytest_llm_budget.routing import intercept

    budget = make_budget()
    intercept.install(budget)
    try:
        app = genai.Client()  # GEMINI_API_KEY / GOOGLE_GEMINI_BASE_URL point at the emulator
        asyncio.run(app.aio.models.generate_content(model="gemini-2.5-flash", contents="hi"))
    finally:
        intercept.uninstall()
    [record] = budget.calls.records()
    assert (record.vendor, record.status) == ("gemini", "ok") and record.prompt_tokens > 0
    assert emu.stats()["totals"]["admitted"] == 1


def test_the_plugin_never_requires_an_sdk() -> None:
    """The SDKs are extras: installing the plugin leaves a project's openai major alone."""
    from importlib.metadata import requires

    hard = [r for r in requires("pytest-llm-budget") or [] if "extra ==" not in r]
    names = {re.split(r"[;<>=~! \[]", r, maxsplit=1)[0].lower() for r in hard}
    assert names.isdisjoint({"openai", "google-genai", "httpx2", "httpx", "vcrpy"}), names
