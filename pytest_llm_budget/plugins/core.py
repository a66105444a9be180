"""The marker and the session fixtures: every test's context, `llm_budget`, `llm_usage`."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from pytest_llm_budget.plugins import session_of
from pytest_llm_budget.records import TestUsage
from pytest_llm_budget.session import BudgetSession, TestContext
from pytest_llm_budget.suite.llm_tests import MARKER

_MARKER_ARGS = ("tokens", "vendor", "model", "grounded")


def _marker_problem(item: pytest.Item) -> str | None:
    """Why an item's `llm_budget` marker is malformed, or None."""
    for mark in item.iter_markers(MARKER):
        if mark.args:
            return f"{MARKER} takes keyword arguments only ({', '.join(_MARKER_ARGS)})"
        unknown = sorted(set(mark.kwargs) - set(_MARKER_ARGS))
        if unknown:
            return f"{MARKER}: unknown argument(s) {', '.join(unknown)}"
        tokens = mark.kwargs.get("tokens")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0
        ):
            return f"{MARKER}(tokens={tokens!r}): tokens must be a whole number above 0"
        for key in ("vendor", "model"):
            value = mark.kwargs.get(key)
            if value is not None and not (isinstance(value, str) and value):
                return f"{MARKER}({key}={value!r}): {key} must be a non-empty string"
        vendor = mark.kwargs.get("vendor")
        if vendor is not None:
            from pytest_llm_budget.providers.registry import unknown_vendor

            problem = unknown_vendor(vendor)
            if problem:
                return f"{MARKER}(vendor={vendor!r}): {problem}"
        if not isinstance(mark.kwargs.get("grounded", False), bool):
            return f"{MARKER}(grounded={mark.kwargs['grounded']!r}): grounded must be True/False"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, Any]:
    """Turn a malformed `llm_budget` marker into a collection error of its module."""
    report = yield
    if report.outcome == "passed":
        problems = [
            f"{item.nodeid}: {problem}"
            for item in report.result
            if isinstance(item, pytest.Item) and (problem := _marker_problem(item))
        ]
        if problems:
            report.outcome = "failed"
            report.longrepr = "\n".join(problems)
            report.result = []
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, Any]:
    session = session_of(item.config)
    session.test = TestContext.of(item)
    session.calls.declare(item.nodeid, session.test.tokens)
    try:
        return (yield)
    finally:
        session.test = TestContext()


@pytest.fixture(scope="session")
def llm_budget(pytestconfig: pytest.Config) -> BudgetSession:
    """The session budget: `reserve(tokens, vendor=, model=)` as a context manager, `snapshot()`."""
    return session_of(pytestconfig)


@pytest.fixture
def llm_usage(request: pytest.FixtureRequest) -> TestUsage:
    """This test's LLM calls, attempts, tokens, 429s and seconds waited; live."""
    return session_of(request.config).usage(request.node.nodeid)
