"""The end of the session: a worker's output for the controller, the reports, the summary."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import Any

import pytest

from pytest_llm_budget.errors import LLMBudgetWarning, RunInterrupted
from pytest_llm_budget.plugins import ci, live_hooks, session_of
from pytest_llm_budget.reporting.report import write_report
from pytest_llm_budget.reporting.summary import session_report, session_summary

_UNWRITTEN = pytest.StashKey[dict[str, str]]()


def _warn(config: pytest.Config, message: str) -> None:
    """A warning in pytest's summary; printed instead when warnings are errors (-W error)."""
    try:
        warnings.warn(LLMBudgetWarning(f"pytest-llm-budget: {message}"), stacklevel=2)
    except Warning:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-llm-budget: warning: {message}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    budget_session = session_of(config)
    if exitstatus == pytest.ExitCode.INTERRUPTED:  # an interrupt can land after a call's send
        budget_session.record_unfinished(RunInterrupted.code)
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["llm_budget"] = json.dumps(
            {
                "buckets": [asdict(b) for b in budget_session.limiter.stats()],
                "calls": [r.to_json() for r in budget_session.calls.records()],
                "declared": budget_session.calls.declared(),
                "spool": config.workerinput.get("llm_budget_spool"),  # type: ignore[attr-defined]
                "backend": budget_session.backend.description,
            }
        )
        return
    hooks = live_hooks(config)
    settings = budget_session.settings
    if settings.reports or hooks.wants_report() or ci.wanted(settings):
        document = session_report(budget_session)
        ci.compare_with_baseline(config, document)
        hooks.complete(document)
        unwritten = config.stash.setdefault(_UNWRITTEN, {})
        for path in settings.reports:
            try:
                write_report(path, document)
            except OSError as exc:  # a full or read-only disk: warn, never fail the run
                unwritten[path] = exc.strerror or str(exc)
                _warn(config, f"could not write the LLM budget report {path}: {unwritten[path]}")
        ci.finish(session, document)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    session = session_of(config)
    if not session.bucket_stats() and not session.calls.totals().calls:
        return
    terminalreporter.write_sep("=", "LLM budget")
    hooks = live_hooks(config)
    for line in session_summary(session, backend=hooks.backend(), workers=hooks.workers):
        terminalreporter.write_line(line)
    if hooks.preflight is None and any(
        not r.replayed and r.attempts for r in session.calls.records()
    ):
        # live calls, but no LLM test collected to project (an app's own clients, unmarked)
        terminalreporter.write_line(
            "LLM budget preflight: none: the tests that made these live calls have neither the "
            "llm_budget marker nor an LLM fixture; mark them (pytestmark = "
            "pytest.mark.llm_budget) for a projection before the next run's first call"
        )
    for line, failed in ci.summary_lines(config):
        terminalreporter.write_line(line, red=failed, bold=failed)
    unwritten = config.stash.get(_UNWRITTEN, {})
    for path in session.settings.reports:
        why = f" (not written: {unwritten[path]})" if path in unwritten else ""
        terminalreporter.write_line(f"LLM budget report: {path}{why}")
