"""Shared test setup: an offline tiktoken cache, a fake clock, and pytester defaults."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pytest_llm_budget.tokens import seed_tiktoken_cache

# -- offline tiktoken ------------------------------------------------------------------------
# tiktoken downloads its encodings on first use; CI has no network. Seed a cache from the
# bpe-openai package (hashes checked) before anything counts tokens, and let subprocesses
# (pytester, xdist workers) inherit it through the environment.
if not os.environ.get("TIKTOKEN_CACHE_DIR"):
    _cache = Path(tempfile.gettempdir()) / "pytest-llm-budget-tiktoken"
    seed_tiktoken_cache(_cache)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)

# Settings come from the environment too: the plugin's own tests must not see a developer's.
for _name in list(os.environ):
    if _name.startswith("LLM_BUDGET_") or _name in (
        "OPENAI_TPM_LIMIT",
        "OPENAI_TPM_HEADROOM",
        "OPENAI_MAX_CONCURRENCY",
        "OPENAI_RETRY_MAX_ATTEMPTS",
        "OPENAI_BACKOFF_BASE_SECONDS",
        "OPENAI_EST_TOKENS_PER_RUN",
    ):
        del os.environ[_name]


class FakeClock:
    """A clock that only moves when something sleeps on it; records every sleep."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.t += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

