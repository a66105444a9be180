"""Routing (transport.py, intercept.py, clients.py): interception, client fixtures, the emulator."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_llm_budget.plugins import session_of
from pytest_llm_budget.redact import redact_report


@pytest.hookimpl(trylast=True)  # after the matrix and the record mode are checked
def pytest_sessionstart(session: pytest.Session) -> None:
    """Gate the connection pools, and route clients the code under test builds (`--llm-route
    all`); undone at unconfigure."""
    from pytest_llm_budget.routing import intercept

    config = session.config
    intercept.install(session_of(config), apps=session_of(config).settings.route == "all")
    config.add_cleanup(intercept.uninstall)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the structured errors that ended a failed test's LLM calls to its report, and take
    credentials (a `?key=` in a request URL, say) out of what the report shows and saves."""
    report = yield
    if report.failed:
        from pytest_llm_budget.routing.retry import errors_for

        errors = errors_for(session_of(item.config), item.nodeid)
        if errors:
            report.sections.append(("LLM budget", "\n".join(str(e) for e in errors)))
    redact_report(report)
    return report


def _client(config: pytest.Config, fixture: str) -> Any:
    """The SDK client of a fixture, built by the provider that declares it."""
    from pytest_llm_budget.routing.clients import fixture_client

    return fixture_client(fixture, session_of(config))


def _closed_after(config: pytest.Config, fixture: str) -> Generator[Any, None, None]:
    """`_client`, closed when the test is done."""
    client = _client(config, fixture)
    yield client
    client.close()


@pytest.fixture
def openai_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """`openai.OpenAI` routed through the budget, SDK retries off (OPENAI_API_KEY/BASE_URL)."""
    yield from _closed_after(pytestconfig, "openai_client")


@pytest.fixture
def async_openai_client(pytestconfig: pytest.Config) -> Any:
    """`openai.AsyncOpenAI` routed through the budget, SDK retries off; bound to one loop."""
    return _client(pytestconfig, "async_openai_client")


@pytest.fixture
def anthropic_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """`anthropic.Anthropic` routed through the budget, SDK retries off (ANTHROPIC_API_KEY/
    BASE_URL)."""
    yield from _closed_after(pytestconfig, "anthropic_client")


@pytest.fixture
def async_anthropic_client(pytestconfig: pytest.Config) -> Any:
    """`anthropic.AsyncAnthropic` routed through the budget, SDK retries off; bound to one loop."""
    return _client(pytestconfig, "async_anthropic_client")


@pytest.fixture
def gemini_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """`genai.Client` whose sync and `.aio` calls are routed (GEMINI_API_KEY, base URL env)."""
    yield from _closed_after(pytestconfig, "gemini_client")


@pytest.fixture
def llm_http_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """An `httpx2.Client` whose LLM requests are routed, for any other SDK."""
    from pytest_llm_budget.routing.clients import http_client

    with http_client(session_of(pytestconfig)) as client:
        yield client


@pytest.fixture
def llm_async_http_client(pytestconfig: pytest.Config) -> Any:
    """An `httpx2.AsyncClient` whose LLM requests are routed, for any other SDK."""
    from pytest_llm_budget.routing.clients import async_http_client

    return async_http_client(session_of(pytestconfig))


@pytest.fixture(scope="session")
def llm_emulator_config() -> dict[str, Any]:
    """Override to change `llm_emulator`'s limits: emulator keys (`tpm`, `window`, `limits`...)."""
    return {}


@pytest.fixture(scope="session")
def llm_emulator(
    pytestconfig: pytest.Config, llm_emulator_config: Any
) -> Generator[Any, None, None]:
    """A provider emulator on a free port with the plugin's limits (see `llm_emulator_config`);
    the SDKs' base-URL and key env vars point at it."""
    from pytest_llm_budget.emulator import Emulator
    from pytest_llm_budget.emulator_setup import emulator_config
    from pytest_llm_budget.routing import traffic

    try:
        config = emulator_config(session_of(pytestconfig).settings, llm_emulator_config)
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"pytest-llm-budget: llm_emulator_config: {exc}") from None
    emulator = Emulator(config).start()
    host = f"127.0.0.1:{emulator.port}"
    traffic.add_host(host)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        env.setenv("OPENAI_API_KEY", "sk-emulator")
        env.setenv("GOOGLE_GEMINI_BASE_URL", emulator.gemini_base_url)
        env.setenv("GOOGLE_VERTEX_BASE_URL", emulator.vertex_base_url)
        env.setenv("GEMINI_API_KEY", "emulator-key")
        env.delenv("GOOGLE_API_KEY", raising=False)
        env.setenv("ANTHROPIC_BASE_URL", emulator.anthropic_base_url)
        env.setenv("ANTHROPIC_API_KEY", "sk-ant-emulator")
        env.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
        try:
            yield emulator
        finally:
            traffic.remove_host(host)
            emulator.stop()


@pytest.fixture(autouse=True)
def _llm_emulator_marker(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """`@pytest.mark.llm_emulator(tpm=..., window=...)`: the emulator's limits for one test."""
    mark = request.node.get_closest_marker("llm_emulator")
    if mark is None:
        yield
        return
    emulator = request.getfixturevalue("llm_emulator")
    before = emulator.configure()
    try:
        emulator.configure(**mark.kwargs)
    except ValueError as exc:
        pytest.fail(f"@pytest.mark.llm_emulator: {exc}", pytrace=False)
    try:
        yield
    finally:
        emulator.configure(before)
