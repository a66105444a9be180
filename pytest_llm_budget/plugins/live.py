"""pytest side of what the budget shows while it works: notices, user hooks, run figures.

Connects the session's observers (plain callables, see session.py) to the hooks declared in
`hookspecs.py` and to the terminal, and gathers what the report needs beyond the call records:
each test's outcome and duration, the wall time, the preflight projection.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llm_budget.events import LimitLearned, RateLimitEvent, WaitEvent
from pytest_llm_budget.reporting.notices import (
    NoticeRelay,
    NoticeTail,
    limit_line,
    retry_line,
    wait_line,
)

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

__all__ = ["LiveHooks"]


class LiveHooks:
    """Registered by the plugin in every process; see the module docstring."""

    def __init__(
        self, config: pytest.Config, session: BudgetSession, shared_dir: str | None
    ) -> None:
        self.config = config
        self.session = session
        self.started = time.time()
        self.tests: dict[str, dict[str, Any]] = {}
        self.preflight: dict[str, Any] | None = None
        #: When the first test's setup began (after collection and xdist's start-up).
        self.first_test: float | None = None
        self.worker_backend: str | None = None
        self.workers = 0
        self._lock = threading.Lock()
        self._tail: NoticeTail | None = None
        quiet = config.get_verbosity() <= -2
        is_worker = hasattr(config, "workerinput")
        self.shows_notices = not quiet and session.settings.notice_after is not None
        if is_worker and shared_dir:
            self.emit: Any = NoticeRelay(shared_dir)
        else:
            self.emit = self._print
            if shared_dir and self.shows_notices:
                self._tail = NoticeTail(shared_dir, self._print).start()
        session.estimate_hooks.append(self._estimate)
        session.wait_observers.append(self._waited)
        session.rate_limit_observers.append(self._rate_limited)
        session.limit_observers.append(self._limit_learned)
        session.limiter.budget_listeners.append(self._budget_differs)

    # -- the session's observers -------------------------------------------------------------
    def _estimate(self, request: Any, vendor: str, model: str, estimate: int) -> int | None:
        hook = self.config.hook.pytest_llm_budget_estimate
        if not hook.get_hookimpls():
            return None
        result: int | None = hook(request=request, vendor=vendor, model=model, estimate=estimate)
        return result

    def _waited(self, event: WaitEvent) -> None:
        if event.finished:
            self.config.hook.pytest_llm_budget_waited(event=event)
        elif self.shows_notices:
            self.emit(wait_line(event))

    def _rate_limited(self, event: RateLimitEvent) -> None:
        if self.shows_notices and event.retrying:
            self.emit(retry_line(event))
        self.config.hook.pytest_llm_budget_rate_limited(event=event)

    def _limit_learned(self, event: LimitLearned) -> None:
        if self.shows_notices:
            self.emit(limit_line(event, self.session.worker))

    def _budget_differs(self, bucket: str, ours: int, theirs: list[int]) -> None:
        from pytest_llm_budget.limiting.limiter import budget_differs_line

        self.emit(budget_differs_line(bucket, ours, theirs))

    def _print(self, line: str) -> None:
        """Write one notice line now, outside the test's output capture."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        with self._lock:
            if capman is not None:
                with capman.global_and_fixture_disabled():
                    self._write(reporter, line)
            else:
                self._write(reporter, line)

    def _write(self, reporter: Any, line: str) -> None:
        """The notice on a line of its own, the test's progress going on after it."""
        writer = reporter._tw  # the reporter's own writer knows where its line stands
        if writer.width_of_current_line:
            writer.line()
        running = self.session.test.nodeid
        if self._tail is not None or running == "<session>":
            writer.line(line)
        else:
            # Leave the line open: pytest ends it when it next writes the test's file name
            # (or its verbose id), so no blank line follows and the test's dot has a prefix.
            writer.write(line)
            reporter.currentfspath = None
            if reporter.verbosity <= 0:
                reporter.write_fspath_result(running, "")
        writer.flush()

    # -- pytest hooks --------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Each test's outcome (its worst phase) and duration (all phases), for the report."""
        entry = self.tests.setdefault(report.nodeid, {"outcome": "passed", "duration_s": 0.0})
        began = getattr(report, "start", None)
        if report.when == "setup" and began:
            self.first_test = min(self.first_test or float(began), float(began))
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 3)
        if report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
        elif report.skipped and entry["outcome"] == "passed":
            entry["outcome"] = "skipped"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Print the relayed notices still in the file and stop the tail thread."""
        if self._tail is not None:
            self._tail.stop()
            self._tail = None

    # -- the report ----------------------------------------------------------------------------
    def wants_report(self) -> bool:
        """Whether a user hook wants the report even with no `--llm-report`."""
        return bool(self.config.hook.pytest_llm_budget_report.get_hookimpls())

    def complete(self, document: dict[str, Any]) -> dict[str, Any]:
        """Add the run's figures and each test's outcome and duration, then users' hooks."""
        finished = time.time()
        document["run"] = {
            "started": round(self.started, 3),
            "finished": round(finished, 3),
            "wall_s": round(finished - self.started, 3),
            "workers": self.workers,
            "backend": self.backend(),
            "preflight": self.preflight,
            "first_test": round(self.first_test, 3) if self.first_test else None,
        }
        for entry in document.setdefault("tests", []):
            entry.update(self.tests.get(entry.get("test", ""), {}))
        self.config.hook.pytest_llm_budget_report(report=document)
        return document

    def backend(self) -> str:
        """The backend the calls really went through (the workers' one under xdist)."""
        return self.worker_backend or self.session.backend.description
