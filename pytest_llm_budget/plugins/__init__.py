"""The plugin's rooms: one pytest plugin per concern, registered by `plugin.py` when needed."""

from __future__ import annotations

import pytest

from pytest_llm_budget.plugins.live import LiveHooks
from pytest_llm_budget.session import BudgetSession

SESSION_KEY = pytest.StashKey[BudgetSession]()
LIVE_KEY = pytest.StashKey[LiveHooks]()


def session_of(config: pytest.Config) -> BudgetSession:
    """The run's `BudgetSession`, built at configure time."""
    return config.stash[SESSION_KEY]


def live_hooks(config: pytest.Config) -> LiveHooks:
    """The run's live notices and `pytest_llm_budget_*` hooks."""
    return config.stash[LIVE_KEY]
