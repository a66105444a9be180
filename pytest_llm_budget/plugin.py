"""The pytest layer: options, the marker, fixtures, the summary. Everything else is delegated."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Generator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, cast

import pytest

from .cost import PriceFileError
from .limiter import BucketStats
from .live import LiveHooks, calls_by_bucket
from .llm_tests import MARKER, MATRIX_ARGS, is_llm_test
from .records import CallRecord, TestUsage
from .redact import mask_loggers, redact, redact_report
from .report import bucket_costs, build_report, cost_line, summary_lines, write_report
from .session import BudgetSession, TestContext
from .settings import OPTIONS, Settings, SettingsError

# Cassettes, the matrix, the preflight and metrics are imported where they are first needed:
# a run with no LLM test (or no record mode, no metrics option) never loads them.
if TYPE_CHECKING:
    from .cassettes import Cassettes, CassetteUse  # noqa: F401 - named in a StashKey string
    from .matrix import LLMModel, Scenario
    from .metrics import BudgetMetrics

SESSION_KEY = pytest.StashKey[BudgetSession]()
LIVE_KEY = pytest.StashKey[LiveHooks]()
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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Declare the `pytest_llm_budget_*` hooks users implement (hookspecs.py)."""
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _settings(config: pytest.Config) -> Settings:
    cli = {o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS if o.cli}
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if o.ini}
    try:
        return Settings.resolve(cli, os.environ, ini)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-llm-budget: {redact(str(exc))}") from None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(tokens=None, vendor=None, model=None, grounded=False): an LLM test and the "
        "tokens it expects to spend (pytest-llm-budget)",
    )
    config.addinivalue_line(
        "markers",
        "llm_emulator(**limits): the llm_emulator's limits for this test, e.g. tpm=6000, "
        "window=10 (pytest-llm-budget)",
    )
    settings = _settings(config)
    if settings.prices and settings.sources.get("prices", "").startswith("ini") and config.inipath:
        settings = replace(settings, prices=str(config.inipath.parent / settings.prices))
    config.add_cleanup(mask_loggers(("httpx2", "httpx")))  # they log each request's URL
    if settings.record_mode == "none":  # replay only: the SDKs need no key (see cassettes.py)
        from .cassettes import use_placeholder_keys

        config.add_cleanup(use_placeholder_keys(os.environ))
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    shared_dir = None
    if workerinput is not None:
        shared_dir = workerinput.get("llm_budget_dir")
        if workerinput["workerid"] == "gw0" and shared_dir:
            config.pluginmanager.register(_WorkerPreflight(shared_dir), "llm_budget_preflight")
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
    except PriceFileError as exc:
        raise pytest.UsageError(f"pytest-llm-budget: {exc}") from None
    except (ValueError, OSError, RuntimeError) as exc:
        raise pytest.UsageError(
            f"pytest-llm-budget: --llm-backend: {redact(str(exc))}"
        ) from None
    config.stash[SESSION_KEY] = session
    if workerinput is not None and shared_dir:  # a crashed worker's finished calls still count
        from .shared_dir import RecordSpool

        spool = RecordSpool(shared_dir, session.worker, session.limiter.stats)
        session.observers.append(spool)
        config.add_cleanup(spool.close)
        workerinput["llm_budget_spool"] = spool.name
    distributing = workerinput is not None or config.getoption("dist", "no") not in (None, "no")
    live = LiveHooks(config, session, shared_dir if distributing else None)
    config.stash[LIVE_KEY] = live
    config.pluginmanager.register(live, "llm_budget_live")
    _start_metrics(config, session)  # Prometheus metrics: see the section at the end


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
    context = TestContext(
        nodeid=item.nodeid,
        tokens=kwargs.get("tokens"),
        vendor=kwargs.get("vendor"),
        model=kwargs.get("model"),
        grounded=bool(kwargs.get("grounded", False)),
    )
    return _with_scenario(item, context)  # grounded llm_scenario: see the matrix section


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, Any, Any]:
    session = _session(item.config)
    session.test = _test_context(item)
    session.calls.declare(item.nodeid, session.test.tokens)
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
                "declared": budget.calls.declared(),
                "spool": config.workerinput.get("llm_budget_spool"),  # type: ignore[attr-defined]
                "backend": budget.backend.description,
            }
        )
        return
    live = config.stash[LIVE_KEY]
    if budget.settings.reports or live.wants_report():
        document = build_report(
            budget.settings.public(),
            budget.calls.totals(),
            budget.bucket_stats(),
            budget.calls.records(),
            budget.settings.rules,
            budget.calls.overspent(),
            calls_by_bucket(budget),
        )
        live.complete(document)
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
    live = config.stash[LIVE_KEY]
    records = budget.calls.records()
    for line in summary_lines(
        buckets,
        totals,
        window=budget.settings.window,
        backend=live.backend(),
        costs=bucket_costs(records, budget.settings.rules),
        overspent=budget.calls.overspent(),
        calls_by_bucket=calls_by_bucket(budget),
        workers=live.workers,
    ):
        terminalreporter.write_line(line)
    terminalreporter.write_line(cost_line(totals, records, budget.settings.max_cost))
    for path in budget.settings.reports:
        terminalreporter.write_line(f"LLM budget report: {path}")


class XdistHooks:
    """Controller-side xdist hooks, registered only when xdist is present."""

    def __init__(self) -> None:
        from .shared_dir import Handover, make_shared_dir

        self.dir = make_shared_dir()  # stale folders of dead controllers are removed first
        self.handover = Handover(self.dir)

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llm_budget_dir"] = self.dir

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Report gw0's preflight before any test is sent to a worker."""
        path = os.path.join(self.dir, _PREFLIGHT_FILE)
        if node.workerinput["workerid"] != "gw0" or not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as handle:
            preflight = json.load(handle)
        if preflight is not None:
            _report_preflight(node.config, *preflight)

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Merge a worker's records: from `workeroutput`, else (it crashed) from its spool."""
        raw = getattr(node, "workeroutput", {}).get("llm_budget")
        budget = _session(node.config)
        declared = None
        live = node.config.stash[LIVE_KEY]
        if not raw:
            records, buckets = self.handover.lost(node.workerinput["workerid"])
        else:
            data = json.loads(raw)
            self.handover.delivered(data.get("spool"))
            records = [CallRecord.from_json(c) for c in data["calls"]]
            buckets = [BucketStats(**b) for b in data["buckets"]]
            declared = data.get("declared")
            live.worker_backend = data.get("backend", live.worker_backend)
        live.workers += 1
        budget.merged_stats.extend(buckets)
        budget.calls.extend(records, declared)

    @pytest.hookimpl(tryfirst=True)  # before the reports are written
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Merge the spools of workers that never reported (crashed, never replaced)."""
        records, buckets = self.handover.lost()
        budget = _session(session.config)
        budget.merged_stats.extend(buckets)
        budget.calls.extend(records)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# == record/replay, scenario x model matrix, preflight (cassettes.py, matrix.py, preflight.py) ==
_MATRIX_KEY = pytest.StashKey["tuple[tuple[LLMModel, ...], tuple[Scenario, ...]]"]()
_CASSETTES_KEY = pytest.StashKey["Cassettes"]()
_CASSETTE_USE_KEY = pytest.StashKey["CassetteUse"]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load a configured matrix (models, scenario file) now: a bad one is a usage error."""
    settings = _session(session.config).settings
    if settings.record_mode != "off" and importlib.util.find_spec("vcr") is None:
        raise pytest.UsageError(
            f"pytest-llm-budget: --llm-record-mode={settings.record_mode} needs vcrpy: "
            "pip install 'pytest-llm-budget[cassettes]'"
        )
    if settings.scenarios or settings.sources.get("models") != "default":
        _matrix(session.config)
    _start_routing(session.config)  # app-built clients: see the routing section


def _matrix(config: pytest.Config) -> tuple[tuple[LLMModel, ...], tuple[Scenario, ...]]:
    """The session's models and scenarios (ini `llm_models`, `llm_scenarios`), loaded once."""
    from .matrix import MatrixError, load_scenarios, parse_models

    if _MATRIX_KEY not in config.stash:
        settings = _session(config).settings
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
    from .matrix import argnames, matrix_params

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


def _with_scenario(item: pytest.Item, context: TestContext) -> TestContext:
    """The test context, grounded when the test's `llm_scenario` is (the estimate adds overhead)."""
    if "llm_scenario" not in getattr(item, "fixturenames", ()):
        return context
    from .matrix import scenario_of

    scenario = scenario_of(item)
    return replace(context, grounded=True) if scenario and scenario.grounded else context


def _cassettes(config: pytest.Config) -> Cassettes | None:
    """The session's cassette opener, or None when the record mode is `off`."""
    session = _session(config)
    if session.settings.record_mode == "off":
        return None
    from .cassettes import CassettePolicy, Cassettes

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
    from .cassettes import cassette_path

    path = cassette_path(item.path, _session(request.config).settings.cassette_dir, item.nodeid)
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


_PREFLIGHT_FILE = "preflight.json"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Print the preflight projection; stop a run longer than --llm-max-duration before any call.

    Under xdist the controller collects nothing: worker gw0 (every worker collects every test)
    leaves the projection in the shared folder (`_WorkerPreflight`) and the controller reports
    it (`XdistHooks`).
    """
    if hasattr(session.config, "workerinput"):
        return
    preflight = _preflight(session)
    if preflight is not None:
        _report_preflight(session.config, *preflight)


class _WorkerPreflight:
    """Registered in xdist worker gw0 only: hands the projection to the controller."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, _PREFLIGHT_FILE)

    @pytest.hookimpl(tryfirst=True)  # before the worker tells the controller it collected
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump(_preflight(session), handle)


def _report_preflight(
    config: pytest.Config, line: str, problem: str | None, figures: Any = None
) -> None:
    """Show the projection line; a projection over --llm-max-duration stops the run."""
    config.stash[LIVE_KEY].preflight = figures
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    if problem:
        raise pytest.UsageError(problem)


def _preflight(session: pytest.Session) -> tuple[str, str | None, dict[str, Any]] | None:
    """The projection line of the collected LLM tests and, if too long, why; None if none."""
    config = session.config
    llm_items = [i for i in session.items if is_llm_test(i)]
    if not llm_items:
        return None
    from .cassettes import CassettePolicy
    from .preflight import cost_note, estimate_item, over_budget_message, project

    budget = _session(config)
    settings = budget.settings
    policy = CassettePolicy.from_settings(settings)
    aside = sum(1 for i in llm_items if policy.active and i.get_closest_marker("vcr"))
    estimates = [estimate_item(i, settings, policy) for i in llm_items]
    projection = project(estimates, settings, aside)
    if not projection.tests:
        return None
    limit = settings.max_duration
    problem = over_budget_message(projection, limit) if limit else None
    cost = cost_note(estimates, budget.costs.prices, settings.max_cost)
    line = "\n".join(filter(None, (projection.line(settings.budget), cost)))
    return line, problem, projection.figures()


# -- Prometheus metrics (metrics.py): --llm-metrics-port, --llm-metrics-textfile, --llm-pushgateway
class LLMBudgetMetricsWarning(UserWarning):
    """A metrics output failed (port, textfile, Pushgateway); metrics never fail a run."""


def _metrics_warning(config: pytest.Config, message: str) -> None:
    """Warn about a metrics problem; when warnings are errors, print it instead of failing."""
    message = redact(message)
    try:
        warnings.warn(LLMBudgetMetricsWarning(f"pytest-llm-budget: {message}"), stacklevel=2)
    except Warning:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-llm-budget: warning: {message}")


def _start_metrics(config: pytest.Config, session: BudgetSession) -> None:
    """Start metrics if an option asks for them; not in xdist workers (the controller merges)."""
    if hasattr(config, "workerinput") or not session.settings.metrics_wanted:
        return
    from .metrics import BudgetMetrics

    metrics = BudgetMetrics(session)
    port = session.settings.metrics_port
    if port:
        try:
            metrics.serve(port)
        except OSError as exc:
            _metrics_warning(config, f"could not serve metrics on 127.0.0.1:{port}: {exc}")
    config.pluginmanager.register(_MetricsHooks(metrics), "llm_budget_metrics")


class _MetricsHooks:
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


# -- routing (transport.py, intercept.py, clients.py): interception, client fixtures, emulator --
def _start_routing(config: pytest.Config) -> None:
    """Route clients the code under test builds (`--llm-route all`); undone at unconfigure."""
    budget = _session(config)
    if budget.settings.route == "all":
        from . import intercept

        intercept.install(budget)
        config.add_cleanup(intercept.uninstall)
    config.pluginmanager.register(_RoutingHooks(), "llm_budget_routing")


class _RoutingHooks:
    """Adds the structured errors that ended a failed test's LLM calls to its report, and takes
    credentials (a `?key=` in a request URL, say) out of what the report shows and saves."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed:
            from .transport import errors_for

            errors = errors_for(_session(item.config), item.nodeid)
            if errors:
                report.sections.append(("LLM budget", "\n".join(str(e) for e in errors)))
        redact_report(report)
        return report


@pytest.fixture
def openai_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """`openai.OpenAI` routed through the budget, SDK retries off (OPENAI_API_KEY/BASE_URL)."""
    from .clients import openai_client as build

    client = build(_session(pytestconfig))
    yield client
    client.close()


@pytest.fixture
def async_openai_client(pytestconfig: pytest.Config) -> Any:
    """`openai.AsyncOpenAI` routed through the budget, SDK retries off; bound to one loop."""
    from .clients import async_openai_client as build

    return build(_session(pytestconfig))


@pytest.fixture
def gemini_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """`genai.Client` whose sync and `.aio` calls are routed (GEMINI_API_KEY, base URL env)."""
    from .clients import gemini_client as build

    client = build(_session(pytestconfig))
    yield client
    client.close()


@pytest.fixture
def llm_http_client(pytestconfig: pytest.Config) -> Generator[Any, None, None]:
    """An `httpx2.Client` whose LLM requests are routed, for any other SDK."""
    from .clients import http_client

    with http_client(_session(pytestconfig)) as client:
        yield client


@pytest.fixture
def llm_async_http_client(pytestconfig: pytest.Config) -> Any:
    """An `httpx2.AsyncClient` whose LLM requests are routed, for any other SDK."""
    from .clients import async_http_client

    return async_http_client(_session(pytestconfig))


@pytest.fixture(scope="session")
def llm_emulator_config() -> dict[str, Any]:
    """Override to change `llm_emulator`'s limits: emulator keys (`tpm`, `window`, `limits`...)."""
    return {}


@pytest.fixture(scope="session")
def llm_emulator(
    pytestconfig: pytest.Config, llm_emulator_config: Any
) -> Generator[Any, None, None]:
    """A provider emulator on a free port with the plugin's limits (see `llm_emulator_config`);
    the SDKs' base-URL and key env vars point at it."""
    from . import intercept
    from .emulator import Emulator
    from .emulator_setup import emulator_config

    try:
        config = emulator_config(_session(pytestconfig).settings, llm_emulator_config)
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"pytest-llm-budget: llm_emulator_config: {exc}") from None
    emulator = Emulator(config).start()
    host = f"127.0.0.1:{emulator.port}"
    intercept.add_host(host)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        env.setenv("OPENAI_API_KEY", "sk-emulator")
        env.setenv("GOOGLE_GEMINI_BASE_URL", emulator.gemini_base_url)
        env.setenv("GEMINI_API_KEY", "emulator-key")
        env.delenv("GOOGLE_API_KEY", raising=False)
        try:
            yield emulator
        finally:
            intercept.remove_host(host)
            emulator.stop()


@pytest.fixture(autouse=True)
def _llm_emulator_marker(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """`@pytest.mark.llm_emulator(tpm=..., window=...)`: the emulator's limits for one test."""
    mark = request.node.get_closest_marker("llm_emulator")
    if mark is None:
        yield
        return
    emulator = request.getfixturevalue("llm_emulator")
    before = emulator.configure()
    try:
        emulator.configure(**mark.kwargs)
    except ValueError as exc:
        pytest.fail(f"@pytest.mark.llm_emulator: {exc}", pytrace=False)
    try:
        yield
    finally:
        emulator.configure(before)
