"""Prometheus metrics (metrics.py): --llm-metrics-port, --llm-metrics-textfile, pushgateway."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import pytest

from pytest_llm_budget.errors import LLMBudgetMetricsWarning
from pytest_llm_budget.redact import redact
from pytest_llm_budget.session import BudgetSession

if TYPE_CHECKING:
    from pytest_llm_budget.reporting.metrics import BudgetMetrics


def _metrics_warning(config: pytest.Config, message: str) -> None:
    """Warn about a metrics problem; when warnings are errors, print it instead of failing."""
    message = redact(message)
    try:
        warnings.warn(LLMBudgetMetricsWarning(f"pytest-llm-budget: {message}"), stacklevel=2)
    except Warning:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-llm-budget: warning: {message}")


def start_metrics(config: pytest.Config, session: BudgetSession) -> None:
    """Start metrics if an option asks for them; not in xdist workers (the controller merges)."""
    if hasattr(config, "workerinput") or not session.settings.metrics_wanted:
        return
    from pytest_llm_budget.reporting.metrics import BudgetMetrics

    metrics = BudgetMetrics(session)
    port = session.settings.metrics_port
    if port:
        try:
            metrics.serve(port)
        except OSError as exc:
            _metrics_warning(config, f"could not serve metrics on 127.0.0.1:{port}: {exc}")
    config.pluginmanager.register(MetricsHooks(metrics), "llm_budget_metrics")


class MetricsHooks:
    """Writes the textfile / pushes at the end of the session, and stops the endpoint."""

    def __init__(self, metrics: BudgetMetrics) -> None:
        self.metrics = metrics

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for problem in self.metrics.finish():
            _metrics_warning(session.config, problem)

    @pytest.hookimpl(tryfirst=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.metrics.close()
