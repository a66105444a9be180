"""conftest of the generated pace suite (copied there as conftest.py).

With pytest-llm-budget on, the clients are its fixtures. With `-p no:llm_budget` they are plain
SDK clients built from the environment (OPENAI_BASE_URL, GOOGLE_GEMINI_BASE_URL, keys), with the
retries the benchmark asks for:

- PACE_OPENAI_RETRIES: the openai SDK's `max_retries` (unset: its default, 2);
- PACE_GENAI_ATTEMPTS: google-genai `HttpRetryOptions(attempts=N)` (unset: no retries, its default);
- PACE_ANTHROPIC_RETRIES: the anthropic SDK's `max_retries` (unset: its default, 2);
- PACE_LIMITER: the limiter in front of every call (`gate`): unset = none,
  `pyrate` = pyrate-limiter, token-weighted (ceil(chars/4) + max_tokens), SQLite bucket with a
  file lock shared by all xdist workers; `calls` = pytest-xdist-rate-limit's pacer, calls per
  window hand-tuned from the suite's mean weight (PACE_CALLS_PER_WINDOW_<VENDOR>).
  PACE_BUDGET / PACE_WINDOW give the limit they enforce and PACE_STATE_DIR where pyrate's files go.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def _plugin_on(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("llm_budget")


def pytest_configure(config: pytest.Config) -> None:
    if not _plugin_on(config):
        config.addinivalue_line("markers", "llm_budget(tokens, vendor): declared LLM spend")


@pytest.fixture
def oa(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync OpenAI client."""
    if _plugin_on(request.config):
        yield request.getfixturevalue("openai_client")
        return
    import openai

    client = openai.OpenAI(**_openai_kwargs())
    yield client
    client.close()


@pytest.fixture
def aoa(request: pytest.FixtureRequest) -> Any:
    """An async OpenAI client (used in one `asyncio.run`)."""
    if _plugin_on(request.config):
        return request.getfixturevalue("async_openai_client")
    import openai

    return openai.AsyncOpenAI(**_openai_kwargs())


@pytest.fixture
def gem(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A google-genai client (its `.aio` too)."""
    if _plugin_on(request.config):
        yield request.getfixturevalue("gemini_client")
        return
    from google import genai
    from google.genai import types

    attempts = os.environ.get("PACE_GENAI_ATTEMPTS")
    options = (
        types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=int(attempts)))
        if attempts
        else None
    )
    client = genai.Client(http_options=options)
    yield client
    client.close()


@pytest.fixture
def cl(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A sync Anthropic client."""
    if _plugin_on(request.config):
        yield request.getfixturevalue("anthropic_client")
        return
    import anthropic

    client = anthropic.Anthropic(**_anthropic_kwargs())
    yield client
    client.close()


@pytest.fixture
def acl(request: pytest.FixtureRequest) -> Any:
    """An async Anthropic client (used in one `asyncio.run`)."""
    if _plugin_on(request.config):
        return request.getfixturevalue("async_anthropic_client")
    import anthropic

    return anthropic.AsyncAnthropic(**_anthropic_kwargs())


def _anthropic_kwargs() -> dict[str, Any]:
    retries = os.environ.get("PACE_ANTHROPIC_RETRIES")
    return {"max_retries": int(retries)} if retries else {}


def _openai_kwargs() -> dict[str, Any]:
    retries = os.environ.get("PACE_OPENAI_RETRIES")
    return {"max_retries": int(retries)} if retries else {}


Gate = Callable[[str, dict[str, Any]], contextlib.AbstractContextManager[Any]]


def _weight(case: dict[str, Any]) -> int:
    return math.ceil(len(case["prompt"]) / 4) + int(case["max_tokens"])


@pytest.fixture(scope="session")
def gate(request: pytest.FixtureRequest) -> Gate:
    """The limiter the alternatives put in front of every call (none by default)."""
    kind = os.environ.get("PACE_LIMITER", "")
    if not kind or _plugin_on(request.config):
        return lambda vendor, case: contextlib.nullcontext()
    budget = int(os.environ["PACE_BUDGET"])
    window = float(os.environ["PACE_WINDOW"])
    if kind == "pyrate":
        return _pyrate_gate(budget, window, Path(os.environ["PACE_STATE_DIR"]))
    if kind == "calls":
        return _calls_gate(request, window)
    raise pytest.UsageError(f"PACE_LIMITER must be pyrate or calls, got {kind!r}")


def _pyrate_gate(budget: int, window: float, state: Path) -> Gate:
    from pyrate_limiter import limiter_factory

    limiters: dict[str, Any] = {}

    def limiter(vendor: str) -> Any:
        if vendor not in limiters:
            limiters[vendor] = limiter_factory.create_sqlite_limiter(
                rate_per_duration=budget,
                duration=int(window * 1000),
                db_path=str(state / f"pyrate-{vendor}.sqlite"),
                table_name=f"pace_{vendor}",
                use_file_lock=True,
            )
        return limiters[vendor]

    @contextlib.contextmanager
    def gate(vendor: str, case: dict[str, Any]) -> Iterator[None]:
        if not limiter(vendor).try_acquire(vendor, weight=_weight(case)):
            raise RuntimeError("pyrate-limiter refused the call")
        yield

    return gate


def _calls_gate(request: pytest.FixtureRequest, window: float) -> Gate:
    from pytest_xdist_rate_limit import Rate

    make_pacer = request.getfixturevalue("make_pacer")
    pacers: dict[str, Any] = {}

    def pacer(vendor: str) -> Any:
        if vendor not in pacers:
            per_window = float(os.environ[f"PACE_CALLS_PER_WINDOW_{vendor.upper()}"])
            pacers[vendor] = make_pacer(
                name=f"pace_{vendor}",
                hourly_rate=Rate.per_second(per_window / window),
                burst_capacity=max(1, math.floor(per_window)),
                seconds_before_first_check=3600.0,
            )
        return pacers[vendor]

    def gate(vendor: str, case: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
        return pacer(vendor)()  # type: ignore[no-any-return]

    return gate
