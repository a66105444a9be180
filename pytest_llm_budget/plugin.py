"""The switchboard: options, configure/unconfigure, and the registration of each concern's plugin.

The rooms live in `plugins/`: `core` (marker, `llm_budget`, `llm_usage`), `recording` (matrix,
preflight), `cassettes` (record/replay, only with a record mode), `routing` (interception, client
fixtures, `llm_emulator`), `reports` (end of session), `ci` (junit properties, job summary,
baseline), `xdist` (only with pytest-xdist), `metrics` (only when asked for); live notices are
`live.LiveHooks`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from pytest_llm_budget.errors import PriceFileError, SettingsError
from pytest_llm_budget.redact import mask_loggers, redact
from pytest_llm_budget.settings.resolved import OPTIONS, Settings
from pytest_llm_budget.suite.llm_tests import MARKER


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-budget", "LLM token budget (pytest-llm-budget)")
    for option in OPTIONS:
        where = ", ".join([*(f"env {e}" for e in option.env[:1]), f"ini {option.ini}"])
        if option.cli:
            default = option.shown_default or (
                "none" if option.default in (None, ()) else option.default
            )
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
    from pytest_llm_budget import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _settings(config: pytest.Config) -> Settings:
    cli = {o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS if o.cli}
    ini = {o.name: config.getini(o.ini) for o in OPTIONS if o.ini}
    try:
        settings = Settings.resolve(cli, os.environ, ini)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-llm-budget: {redact(str(exc))}") from None
    if settings.prices and settings.sources.get("prices", "").startswith("ini") and config.inipath:
        settings = replace(settings, prices=str(config.inipath.parent / settings.prices))
    return settings


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    from pytest_llm_budget import plugins
    from pytest_llm_budget.plugins import (
        cassettes,
        ci,
        core,
        metrics,
        recording,
        reports,
        routing,
        xdist,
    )
    from pytest_llm_budget.plugins.live import LiveHooks
    from pytest_llm_budget.plugins.signals import handle_sigterm
    from pytest_llm_budget.session import BudgetSession

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
    config.add_cleanup(mask_loggers(("httpx2", "httpx")))  # they log each request's URL
    if settings.record_mode == "none":  # replay only: the SDKs need no key (see cassettes.py)
        from pytest_llm_budget.replay.cassettes import use_placeholder_keys

        config.add_cleanup(use_placeholder_keys(os.environ))
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    shared_dir = None
    if workerinput is not None:
        shared_dir = workerinput.get("llm_budget_dir")
        if workerinput["workerid"] == "gw0" and shared_dir:
            preflight = xdist.WorkerPreflight(shared_dir)
            config.pluginmanager.register(preflight, "llm_budget_preflight")
    elif config.pluginmanager.hasplugin("xdist"):
        xdist_hooks = xdist.XdistHooks()
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
    config.stash[plugins.SESSION_KEY] = session
    if workerinput is None:
        handle_sigterm(config)
    if workerinput is not None and shared_dir:
        xdist.start_spool(config, session, workerinput, shared_dir)
    distributing = workerinput is not None or config.getoption("dist", "no") not in (None, "no")
    live_hooks = LiveHooks(config, session, shared_dir if distributing else None)
    config.stash[plugins.LIVE_KEY] = live_hooks
    config.pluginmanager.register(live_hooks, "llm_budget_live")
    for room in (core, reports, recording, ci):
        config.pluginmanager.register(room, f"llm_budget_{room.__name__.rsplit('.', 1)[-1]}")
    if settings.record_mode != "off":
        config.pluginmanager.register(cassettes, "llm_budget_cassettes")
    config.pluginmanager.register(routing, "llm_budget_routing")
    metrics.start_metrics(config, session)


def pytest_unconfigure(config: pytest.Config) -> None:
    from pytest_llm_budget import plugins
    from pytest_llm_budget.plugins.xdist import XdistHooks

    session = config.stash.get(plugins.SESSION_KEY, None)
    if session is not None:
        session.close()
    hooks = config.pluginmanager.get_plugin("llm_budget_xdist")
    if isinstance(hooks, XdistHooks):
        hooks.cleanup()
