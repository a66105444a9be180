"""The end of the session: a worker's output for the controller, the reports, the summary."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import Any

import pytest

from pytest_llm_budget.errors import LLMBudgetWarning
from pytest_llm_budget.plugins import budget, ci, live
from pytest_llm_budget.plugins.live import calls_by_bucket, session_report
from pytest_llm_budget.reporting.report import bucket_costs, cost_line, summary_lines, write_report

_UNWRITTEN = pytest.StashKey[dict[str, str]]()


def _warn(config: pytest.Config, message: str) -> None:
    """A warning in pytest's summary; printed instead when warnings are errors (-W error)."""
    try:
        warnings.warn(LLMBudgetWarning(f"pytest-llm-budget: {message}"), stacklevel=2)
    except Warning:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-llm-budget: warning: {message}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    run = budget(config)
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["llm_budget"] = json.dumps(
            {
                "buckets": [asdict(b) for b in run.limiter.stats()],
                "calls": [r.to_json() for r in run.calls.records()],
                "declared": run.calls.declared(),
                "spool": config.workerinput.get("llm_budget_spool"),  # type: ignore[attr-defined]
                "backend": run.backend.description,
            }
        )
        return
    notices = live(config)
    if run.settings.reports or notices.wants_report() or ci.wanted(run.settings):
        document = session_report(run)
        ci.compare_with_baseline(config, document)
        notices.complete(document)
        unwritten = config.stash.setdefault(_UNWRITTEN, {})
        for path in run.settings.reports:
            try:
                write_report(path, document)
            except OSError as exc:  # a full or read-only disk: warn, never fail the run
                unwritten[path] = exc.strerror or str(exc)
                _warn(config, f"could not write the LLM budget report {path}: {unwritten[path]}")
        ci.finish(session, document)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    run = budget(config)
    buckets = run.bucket_stats()
    totals = run.calls.totals()
    if not buckets and not totals.calls:
        return
    terminalreporter.write_sep("=", "LLM budget")
    notices = live(config)
    records = run.calls.records()
    for line in summary_lines(
        buckets,
        totals,
        window=run.settings.window,
        backend=notices.backend(),
        costs=bucket_costs(records, run.settings.rules),
        overspent=run.calls.overspent(),
        calls_by_bucket=calls_by_bucket(run),
        workers=notices.workers,
    ):
        terminalreporter.write_line(line)
    terminalreporter.write_line(cost_line(totals, records, run.settings.max_cost))
    for line, failed in ci.summary_lines(config):
        terminalreporter.write_line(line, red=failed, bold=failed)
    unwritten = config.stash.get(_UNWRITTEN, {})
    for path in run.settings.reports:
        why = f" (not written: {unwritten[path]})" if path in unwritten else ""
        terminalreporter.write_line(f"LLM budget report: {path}{why}")
