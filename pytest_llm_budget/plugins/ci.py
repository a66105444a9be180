"""CI: each LLM test's figures as junit properties, the GitHub job summary, the baseline check.

The properties go on the teardown report's `user_properties`, the phase junitxml reads them from
(once per test, so no duplicates); under xdist the worker's report carries them to the controller.
The job summary and the baseline comparison are the controller's, at the end of the session:
`plugins/reports.py` calls `compare_with_baseline` before the reports are written, `finish` after,
and `summary_lines` for the terminal.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from pytest_llm_budget.errors import BaselineError
from pytest_llm_budget.plugins import session_of
from pytest_llm_budget.records import TestUsage
from pytest_llm_budget.reporting.baseline import Comparison, change_text, count_text
from pytest_llm_budget.settings.resolved import Settings
from pytest_llm_budget.suite.llm_tests import is_llm_test

__all__ = ["EXIT_BUDGET_INCREASE", "JUNIT_PROPERTIES", "junit_properties"]

#: The session's exit status when `--llm-max-increase` was passed (pytest's own are 0-5).
EXIT_BUDGET_INCREASE = 6
#: Summary lines of per-test changes against the baseline.
SUMMARY_TESTS = 10

JUNIT_PROPERTIES = (
    "llm_calls",
    "llm_prompt_tokens",
    "llm_completion_tokens",
    "llm_total_tokens",
    "llm_waited_s",
    "llm_429s",
    "llm_cost_usd",
)

_COMPARISON_KEY = pytest.StashKey[Comparison]()
_NOTES_KEY = pytest.StashKey["list[str]"]()


def _decimal(value: float, places: int) -> str:
    """Fixed-point text (`0.0000015`, not `1.5e-06`), trailing zeros dropped."""
    return f"{value:.{places}f}".rstrip("0").rstrip(".") or "0"


def junit_properties(usage: TestUsage) -> list[tuple[str, object]]:
    """One test's figures as (name, value) pairs, in JUNIT_PROPERTIES order."""
    values: tuple[object, ...] = (
        usage.calls,
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        _decimal(usage.waited_s, 3),
        usage.rate_limit_events,
        _decimal(usage.cost_usd, 9),
    )
    return list(zip(JUNIT_PROPERTIES, values, strict=True))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """An LLM test's figures on its teardown report, when every call (fixtures' too) is done."""
    report = yield
    if report.when == "teardown" and is_llm_test(item):
        report.user_properties.extend(junit_properties(session_of(item.config).usage(item.nodeid)))
    return report


def step_summary_path(settings: Settings) -> str | None:
    """The GitHub job summary file to append to, or None (not on Actions, or turned off)."""
    return (os.environ.get("GITHUB_STEP_SUMMARY") or None) if settings.step_summary else None


def wanted(settings: Settings) -> bool:
    """Whether the end of the session needs the report document for CI."""
    return settings.baseline is not None or step_summary_path(settings) is not None


def _note(config: pytest.Config, text: str) -> None:
    config.stash.setdefault(_NOTES_KEY, []).append(text)


def compare_with_baseline(config: pytest.Config, document: dict[str, Any]) -> None:
    """Add the `baseline` entry (this run against `--llm-baseline`) to the report document."""
    from pytest_llm_budget.reporting.baseline import compare, load_baseline

    settings = session_of(config).settings
    if settings.baseline is None:
        return
    try:
        earlier = load_baseline(settings.baseline)
    except BaselineError as exc:  # it was fine at configure time: say so, compare nothing
        _note(config, f"baseline {settings.baseline} not compared: {exc}")
        return
    comparison = compare(
        earlier, document, path=settings.baseline, max_increase=settings.max_increase
    )
    config.stash[_COMPARISON_KEY] = comparison
    document["baseline"] = comparison.to_json()


def finish(session: pytest.Session, document: dict[str, Any]) -> None:
    """Append the job summary (once: only the controller gets here) and apply the threshold."""
    config = session.config
    path = step_summary_path(session_of(config).settings)
    totals = document.get("totals") or {}
    if path and (totals.get("calls") or "baseline" in document):
        from pytest_llm_budget.reporting.markdown import render_markdown

        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(render_markdown(document) + "\n")
        except OSError as exc:
            _note(config, f"job summary not written to {path}: {exc}")
        else:
            _note(config, f"LLM budget job summary appended to {path}")
    comparison = config.stash.get(_COMPARISON_KEY, None)
    if comparison is not None and comparison.failure() and session.exitstatus == 0:
        session.exitstatus = EXIT_BUDGET_INCREASE


def summary_lines(config: pytest.Config) -> list[tuple[str, bool]]:
    """The terminal's baseline lines, as (text, is_failure); notes about the job summary."""
    lines = [(note, False) for note in config.stash.get(_NOTES_KEY, [])]
    comparison = config.stash.get(_COMPARISON_KEY, None)
    if comparison is None:
        return lines
    before, after = comparison.before, comparison.after
    figures = ", ".join(
        f"{label} {change_text(field, before.value(field), after.value(field))}"
        for field, label in (("tokens", "tokens"), ("cost_usd", "cost"), ("waited_s", "waited"))
    )
    entry = comparison.to_json()
    lines.append((
        f"against baseline {comparison.path}: {figures}; {count_text(entry['counts'])}", False
    ))
    shown = entry["tests"]
    for entry in shown[:SUMMARY_TESTS]:
        lines.append((f"  {entry['status']:<7} {entry['test']}: {_test_changes(entry)}", False))
    if len(shown) > SUMMARY_TESTS:
        lines.append((f"  ... {len(shown) - SUMMARY_TESTS} more in the reports", False))
    failure = comparison.failure()
    if failure:
        lines.append((f"FAILED (exit status {EXIT_BUDGET_INCREASE}): {failure}", True))
    return lines


def _test_changes(entry: dict[str, Any]) -> str:
    from pytest_llm_budget.reporting.baseline import change_cells

    cells = change_cells(entry, ("tokens", "cost_usd", "waited_s"))
    return f"tokens {cells['tokens']}, cost {cells['cost_usd']}, waited {cells['waited_s']}"
