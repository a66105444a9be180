"""Clients the code under test builds: routed by the httpx2/httpx patch, never twice, reversibly."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from pytest_llm_budget import wrap
from pytest_llm_budget.routing import clients, intercept

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def routed(make_budget: Any) -> Any:
    budget = make_budget()
    intercept.install(budget)
    yield budget
    intercept.uninstall()


def test_app_built_openai_client_is_routed(emu: Any, routed: Any) -> None:
    import openai

    client = openai.OpenAI()  # OPENAI_BASE_URL / OPENAI_API_KEY point at the emulator
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=10)
    [record] = routed.calls.records()
    assert record.status == "ok" and record.completion_tokens > 0


def test_app_built_gemini_and_legacy_httpx_are_routed(emu: Any, routed: Any) -> None:
    import httpx
    from google import genai

    app = genai.Client()
    app.models.generate_content(model="gemini-2.5-flash", contents="hi")
    with httpx.Client() as http:
        http.post(f"{emu.openai_base_url}/chat/completions", headers={"authorization": "Bearer k"},
                  json={"model": "gpt-4o", "messages": MSG, "max_tokens": 5})
    assert [(r.vendor, r.status) for r in routed.calls.records()] == [
        ("gemini", "ok"), ("openai", "ok")
    ]


def test_non_llm_requests_pass_untouched(emu: Any, routed: Any) -> None:
    import httpx2

    assert httpx2.get(f"{emu.url}/__emulator/stats").status_code == 200
    assert routed.calls.records() == []


def test_fixture_clients_are_not_routed_twice(emu: Any, routed: Any) -> None:
    client = clients.fixture_client("openai_client", routed)
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=10)
    assert len(routed.calls.records()) == 1
    assert routed.bucket_stats()[0].calls == 1


def test_wrap_existing_clients(emu: Any, make_budget: Any) -> None:
    import httpx2
    import openai
    from google import genai

    budget = make_budget()
    oa = wrap(openai.OpenAI(max_retries=0), budget)
    oa.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    gem = wrap(genai.Client(), budget)
    gem.models.generate_content(model="gemini-2.5-flash", contents="hi")
    import asyncio

    asyncio.run(gem.aio.models.generate_content(model="gemini-2.5-flash", contents="hi"))
    http = wrap(httpx2.Client(), budget)
    http.post(f"{emu.openai_base_url}/chat/completions", headers={"authorization": "Bearer k"},
              json={"model": "gpt-4o", "messages": MSG, "max_tokens": 5})
    assert wrap(http, budget) is http  # idempotent
    assert [r.vendor for r in budget.calls.records()] == ["openai", "gemini", "gemini", "openai"]
    with pytest.raises(TypeError):
        wrap(object(), budget)


def test_install_is_lazy_and_reversible() -> None:
    code = (
        "import sys\n"
        "from pytest_llm_budget import BudgetSession, Settings\n"
        "from pytest_llm_budget.routing import intercept\n"
        "s = BudgetSession(Settings())\n"
        "intercept.install(s)\n"
        "assert 'httpx2' not in sys.modules\n"
        "import httpx2, httpx\n"
        "p = httpx2.HTTPTransport.handle_request\n"
        "patched = p.__name__ == 'routed_handle_request' and "
        "httpx.AsyncHTTPTransport.handle_async_request.__name__ == 'routed_handle_async_request'\n"
        "intercept.uninstall()\n"
        "print(patched, httpx2.HTTPTransport.handle_request.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "handle_request"]


def test_plugin_import_does_not_import_sdks() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import pytest_llm_budget.plugin"],
        capture_output=True, text=True, check=True,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "pytest_llm_budget.plugin" in modules
    assert not {m for m in modules if m.split(".")[0] in ("httpx2", "httpx", "openai", "google")}


INNER = """
import openai, pytest

@pytest.mark.llm_budget(tokens=400)
def test_fixture(llm_emulator, openai_client, llm_usage):
    for _ in range(2):
        openai_client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert llm_usage.calls == 2 and llm_usage.attempts == 2
    assert llm_usage.total_tokens == llm_usage.prompt_tokens + llm_usage.completion_tokens > 0
    assert [r.estimated for r in llm_usage.records] == [21, 21]  # own estimate, no floor

def test_app_client(llm_emulator, llm_usage):
    llm_emulator.queue_fault("rate_limit_no_hint", count=1)
    openai.OpenAI().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert llm_usage.calls == 1 and llm_usage.attempts == 2 and llm_usage.rate_limit_events == 1
    assert llm_usage.waited_s > 0
"""


def test_usage_fixture_and_json_report_match_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    pytester.makeini("[pytest]\nllm_backoff_base = 0.2\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llm-report", "out.json", "--llm-window", "2",
        "--llm-backoff-max", "1",
    )
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "out.json").read_text())
    totals = report["totals"]
    assert totals["calls"] == 3 and totals["rate_limit_events"] == 1 and totals["retries"] == 1
    assert totals["total_tokens"] == sum(
        c["prompt_tokens"] + c["completion_tokens"] for c in report["calls"]
    )
    result.stdout.fnmatch_lines([
        f"totals: calls: {totals['calls']} (replayed: {totals['replayed']}), "
        f"tokens: {totals['total_tokens']} (prompt {totals['prompt_tokens']}, "
        f"completion {totals['completion_tokens']}), retries: {totals['retries']}, "
        f"waited: {totals['waited_s']:.1f}s, errors: 0, 429s: 1*"
    ])


def test_route_fixtures_leaves_app_clients_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import openai

        def test_app(llm_emulator, llm_usage):
            openai.OpenAI().chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
            assert llm_usage.calls == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--llm-route", "fixtures")
    result.assert_outcomes(passed=1)
