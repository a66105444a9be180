"""Record/replay (cassettes.py): one cassette per LLM test; registered when a record mode is set."""

from __future__ import annotations

import warnings
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
_WARNED_KEY = pytest.StashKey[bool]()


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
    if cassettes is None or item.get_closest_marker("vcr"):
        yield
        return
    if not is_llm_test(item):
        yield
        _warn_live_outside(request.config, item)
        return
    from pytest_llm_budget.replay.cassettes import cassette_path

    path = cassette_path(item.path, session_of(request.config).settings.cassette_dir, item.nodeid)
    with cassettes.use(path, item.nodeid) as use:
        item.stash[_CASSETTE_USE_KEY] = use
        yield


def _warn_live_outside(config: pytest.Config, item: pytest.Item) -> None:
    """Once a session: a test that is not an LLM test made live LLM calls no cassette holds.

    Warned rather than recorded: a cassette around every test would load vcrpy's patchers for
    each of a suite's plain tests, and under `none` fail any of them that reaches an LLM host;
    the marker says which tests a cassette is for.
    """
    if config.stash.get(_WARNED_KEY, False):
        return
    session = session_of(config)
    usage = session.calls.tests().get(item.nodeid)
    live = usage.calls - usage.replayed if usage is not None else 0
    if not live:
        return
    config.stash[_WARNED_KEY] = True
    from pytest_llm_budget.errors import CassetteWarning

    mode = session.settings.record_mode
    message = (
        f"pytest-llm-budget: {item.nodeid} made {live} live LLM call(s) that no cassette holds "
        f"(record mode {mode!r}): only LLM tests, those with the llm_budget marker or an LLM "
        "fixture, get a cassette. Mark the test (@pytest.mark.llm_budget) or its module "
        "(pytestmark = pytest.mark.llm_budget). Warned once per session."
    )
    path, line, _ = item.reportinfo()
    warnings.warn_explicit(
        CassetteWarning(message), CassetteWarning, str(path), (line or 0) + 1
    )


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
