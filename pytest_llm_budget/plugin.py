"""The pytest layer: options, the marker, fixtures, the summary. Everything else is delegated."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Generator
from dataclasses import asdict
from typing import Any

import pytest

from .limiter import BucketStats
from .records import CallRecord, TestUsage
from .report import build_report, summary_lines, write_report
from .session import BudgetSession, TestContext
from .settings import OPTIONS, Settings, SettingsError

SESSION_KEY = pytest.StashKey[BudgetSession]()
MARKER = "llm_budget"
_MARKER_ARGS = ("tokens", "vendor", "model", "grounded")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-budget", "LLM token budget (pytest-llm-budget)")
    for option in OPTIONS:
        where = ", ".join([*(f"env {e}" for e in option.env[:1]), f"ini {option.ini}"])
        if option.cli:
            default = "none" if option.default in (None, ()) else option.default
            group.addoption(
                option.cli,
                dest=f"llm_{option.name}",
                action="append" if option.repeatable else "store",
                default=None,
                metavar=option.metavar,
                help=f"{option.help} (default {default}; {where})",
            )
        if option.ini:
            parser.addini(option.ini, option.help, type=option.ini_type)  # type: ignore[arg-type]


def _settings(config: pytest.Config) -> Settings:
    cli = {o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS if o.cli}
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if o.ini}
    try:
        return Settings.resolve(cli, os.environ, ini)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-llm-budget: {exc}") from None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(tokens=None, vendor=None, model=None, grounded=False): an LLM test and the "
        "tokens it expects to spend (pytest-llm-budget)",
    )
    settings = _settings(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    shared_dir = None
    if workerinput is not None:
        shared_dir = workerinput.get("llm_budget_dir")
    elif config.pluginmanager.hasplugin("xdist"):
        xdist_hooks = XdistHooks()
        config.pluginmanager.register(xdist_hooks, "llm_budget_xdist")
        shared_dir = xdist_hooks.dir
    try:
        session = BudgetSession(
            settings,
            worker=workerinput["workerid"] if workerinput else "main",
            shared_dir=shared_dir,
            xdist=workerinput is not None,
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise pytest.UsageError(f"pytest-llm-budget: --llm-backend: {exc}") from None
    config.stash[SESSION_KEY] = session


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
    hooks = config.pluginmanager.get_plugin("llm_budget_xdist")
    if isinstance(hooks, XdistHooks):
        hooks.cleanup()


def _session(config: pytest.Config) -> BudgetSession:
    return config.stash[SESSION_KEY]


# -- the marker ------------------------------------------------------------------------------
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


def _test_context(item: pytest.Item) -> TestContext:
    mark = item.get_closest_marker(MARKER)
    kwargs = mark.kwargs if mark else {}
    return TestContext(
        nodeid=item.nodeid,
        tokens=kwargs.get("tokens"),
        vendor=kwargs.get("vendor"),
        model=kwargs.get("model"),
        grounded=bool(kwargs.get("grounded", False)),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, Any]:
    session = _session(item.config)
    session.test = _test_context(item)
    try:
        return (yield)
    finally:
        session.test = TestContext()


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llm_budget(pytestconfig: pytest.Config) -> BudgetSession:
    """The session budget: `reserve(tokens, vendor=, model=)` as a context manager, `snapshot()`."""
    return _session(pytestconfig)


@pytest.fixture
def llm_usage(request: pytest.FixtureRequest) -> TestUsage:
    """This test's LLM calls, attempts, tokens, 429s and seconds waited; live."""
    return _session(request.config).usage(request.node.nodeid)


# -- end of session --------------------------------------------------------------------------
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    budget = _session(config)
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["llm_budget"] = json.dumps(
            {
                "buckets": [asdict(b) for b in budget.limiter.stats()],
                "calls": [r.to_json() for r in budget.calls.records()],
            }
        )
        return
    if budget.settings.reports:
        document = build_report(
            budget.settings.public(),
            budget.calls.totals(),
            budget.bucket_stats(),
            budget.calls.records(),
        )
        for path in budget.settings.reports:
            write_report(path, document)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    budget = _session(config)
    buckets = budget.bucket_stats()
    totals = budget.calls.totals()
    if not buckets and not totals.calls:
        return
    terminalreporter.write_sep("=", "LLM budget")
    for line in summary_lines(
        buckets, totals, window=budget.settings.window, backend=budget.backend.description
    ):
        terminalreporter.write_line(line)
    for path in budget.settings.reports:
        terminalreporter.write_line(f"LLM budget report: {path}")


class XdistHooks:
    """Controller-side xdist hooks, registered only when xdist is present."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="llm-budget-")

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llm_budget_dir"] = self.dir

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        raw = getattr(node, "workeroutput", {}).get("llm_budget")
        if not raw:
            return
        data = json.loads(raw)
        budget = _session(node.config)
        budget.merged_stats.extend(BucketStats(**b) for b in data["buckets"])
        budget.calls.extend([CallRecord.from_json(c) for c in data["calls"]])

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
