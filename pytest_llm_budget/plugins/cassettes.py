"""Record/replay (cassettes.py): one cassette per LLM test; registered when a record mode is set."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llm_budget.plugins import session_of
from pytest_llm_budget.redact import redact
from pytest_llm_budget.suite.llm_tests import is_llm_test

if TYPE_CHECKING:
    from pytest_llm_budget.replay.cassettes import Cassettes, CassetteUse  # noqa: F401 - named in a StashKey string

_CASSETTES_KEY = pytest.StashKey["Cassettes"]()
_CASSETTE_USE_KEY = pytest.StashKey["CassetteUse"]()


def _cassettes(config: pytest.Config) -> Cassettes | None:
    """The session's cassette opener, or None when the policy records nothing."""
    from pytest_llm_budget.replay.cassettes import CassettePolicy, Cassettes

    session = session_of(config)
    policy = CassettePolicy.from_settings(session.settings)
    if not policy.active:
        return None
    if _CASSETTES_KEY not in config.stash:
        config.stash[_CASSETTES_KEY] = Cassettes(policy, session.record, session.worker)
    return config.stash[_CASSETTES_KEY]


@pytest.fixture(autouse=True)
def _llm_budget_cassette(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """One cassette per LLM test when a record mode is set (`vcr`-marked tests left alone)."""
    item, cassettes = request.node, _cassettes(request.config)
    if cassettes is None or not is_llm_test(item) or item.get_closest_marker("vcr"):
        yield
        return
    from pytest_llm_budget.replay.cassettes import cassette_path

    path = cassette_path(item.path, session_of(request.config).settings.cassette_dir, item.nodeid)
    with cassettes.use(path, item.nodeid) as use:
        item.stash[_CASSETTE_USE_KEY] = use
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Fail a test that asked a cassette for a request it lacks (even if the app caught it)."""
    report = yield
    use = item.stash.get(_CASSETTE_USE_KEY, None)
    if report.when == "call" and use is not None and use.misses:
        report.outcome = "failed"
        # vcr's frames show the request (and any `?key=`) among their arguments: masked here
        rest = f"\n\n{redact(str(report.longrepr))}" if report.longrepr else ""
        report.longrepr = use.miss_message() + rest
    return report
