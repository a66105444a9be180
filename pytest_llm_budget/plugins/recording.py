"""The scenario x model matrix and the preflight projection (matrix.py, preflight.py)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, cast

import pytest

from pytest_llm_budget.plugins import live_hooks, session_of
from pytest_llm_budget.suite.llm_tests import MATRIX_ARGS, is_llm_test

# matrix.py and preflight.py are imported where first needed: a run without them never loads them
if TYPE_CHECKING:
    from pytest_llm_budget.suite.matrix import LLMModel, Scenario

_MATRIX_KEY = pytest.StashKey["tuple[tuple[LLMModel, ...], tuple[Scenario, ...]]"]()
PREFLIGHT_FILE = "preflight.json"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load a configured matrix (models, scenario file) now: a bad one is a usage error."""
    settings = session_of(session.config).settings
    if settings.record_mode != "off" and importlib.util.find_spec("vcr") is None:
        raise pytest.UsageError(
            f"pytest-llm-budget: --llm-record-mode={settings.record_mode} needs vcrpy: "
            "pip install 'pytest-llm-budget[cassettes]'"
        )
    if settings.scenarios or settings.sources.get("models") != "default":
        _matrix(session.config)


def _matrix(config: pytest.Config) -> tuple[tuple[LLMModel, ...], tuple[Scenario, ...]]:
    """The session's models and scenarios (ini `llm_models`, `llm_scenarios`), loaded once."""
    from pytest_llm_budget.suite.matrix import MatrixError, load_scenarios, parse_models

    if _MATRIX_KEY not in config.stash:
        settings = session_of(config).settings
        path = settings.scenarios
        if path and settings.sources.get("scenarios", "").startswith("ini") and config.inipath:
            path = str(config.inipath.parent / path)
        try:
            config.stash[_MATRIX_KEY] = (parse_models(settings.models), load_scenarios(path))
        except MatrixError as exc:
            raise pytest.UsageError(f"pytest-llm-budget: {exc}") from None
    return config.stash[_MATRIX_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests taking `llm_model` / `llm_scenario` over the matrix (models outer)."""
    if not any(name in metafunc.fixturenames for name in MATRIX_ARGS):
        return
    from pytest_llm_budget.suite.matrix import argnames, matrix_params

    marks = metafunc.definition.iter_markers("parametrize")
    taken = {name for mark in marks for name in argnames(mark.args[0])}
    model, scenario = (n not in taken and n in metafunc.fixturenames for n in MATRIX_ARGS)
    if model or scenario:
        names, values, ids = matrix_params(model, scenario, *_matrix(metafunc.config))
        metafunc.parametrize(names, values, ids=ids, indirect=True)


@pytest.fixture
def llm_scenario(request: pytest.FixtureRequest) -> Scenario:
    """This case's scenario (vantage policy, grounding; `.grounded`); tests are parametrized."""
    return cast("Scenario", request.param)


@pytest.fixture
def llm_model(request: pytest.FixtureRequest) -> LLMModel:
    """This case's model (`.vendor`, `.name`, `.id` = vendor:name); tests are parametrized."""
    return cast("LLMModel", request.param)


@pytest.hookimpl(trylast=True)  # after the terminal lists the collected tests
def pytest_collection_finish(session: pytest.Session) -> None:
    """Print the preflight projection; stop a run longer than --llm-max-duration before any call.

    Under xdist the controller collects nothing: worker gw0 (every worker collects every test)
    leaves the projection in the shared folder and the controller reports it (plugins/xdist.py).
    """
    if hasattr(session.config, "workerinput"):
        return
    projection = preflight(session)
    if projection is not None:
        report_preflight(session.config, *projection)


def report_preflight(
    config: pytest.Config, line: str, problem: str | None, figures: Any = None
) -> None:
    """Show the projection line; a projection over --llm-max-duration stops the run."""
    live_hooks(config).preflight = figures
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    if problem:
        raise pytest.UsageError(problem)


def preflight(session: pytest.Session) -> tuple[str, str | None, dict[str, Any]] | None:
    """The projection line of the collected LLM tests and, if too long, why; None if none."""
    llm_items = [i for i in session.items if is_llm_test(i)]
    if not llm_items:
        return None
    from pytest_llm_budget.replay.cassettes import CassettePolicy
    from pytest_llm_budget.suite.preflight import (
        cost_note,
        estimate_item,
        over_budget_message,
        project,
    )

    budget_session = session_of(session.config)
    settings = budget_session.settings
    policy = CassettePolicy.from_settings(settings)
    aside = sum(1 for i in llm_items if policy.active and i.get_closest_marker("vcr"))
    estimates = [estimate_item(i, settings, policy) for i in llm_items]
    projection = project(estimates, settings, aside, budget_session.limiter.known_budget)
    if not projection.tests:
        return None
    limit = settings.max_duration
    problem = over_budget_message(projection, limit) if limit else None
    cost = cost_note(estimates, budget_session.costs.prices, settings.max_cost)
    line = "\n".join(filter(None, (projection.line(settings.budget), cost)))
    return line, problem, projection.figures()
