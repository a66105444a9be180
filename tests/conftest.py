"""Shared test setup: an offline tiktoken cache, a fake clock, and pytester defaults."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget.tokens import EstimatePolicy, TokenCounter, seed_tiktoken_cache

# -- offline tiktoken ------------------------------------------------------------------------
# The plugin loads encodings from bpe-openai when tiktoken's cache lacks them; seeding one cache
# up front (hashes checked) spares every subprocess (pytester, xdist workers) that step.
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



# -- backend contract tests (test_backend_*.py, test_window_scale.py) --------------------------
@pytest.fixture
def new_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Open an empty backend of a kind (memory, file, file-rename, redis, redis-cluster), each on
    its own file or key prefix; closed at teardown."""
    from pytest_llm_budget.backends.file import FileBackend
    from pytest_llm_budget.backends.memory import MemoryBackend

    made: list[Any] = []

    def open_kind(kind: str) -> Any:
        if kind == "memory":
            backend: Any = MemoryBackend()
        elif kind in ("file", "file-rename"):
            backend = FileBackend(tmp_path / "state.json", atomic_rename=kind == "file-rename")
        elif kind in ("redis", "redis-cluster"):
            from pytest_llm_budget.backends.redis import RedisBackend

            server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
            backend = RedisBackend.from_url(server.url, prefix=f"t-{uuid.uuid4().hex[:8]}")
        else:
            raise ValueError(f"no backend kind {kind!r}")
        made.append(backend)
        return backend

    yield open_kind
    for backend in made:
        backend.close()


# -- routing tests (test_routing_*.py): emulator reset per test, small budgets, scripted server --
@pytest.fixture
def emu(llm_emulator: Any) -> Any:
    """The session emulator, reset to roomy limits (1 s window) before each test."""
    from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec

    llm_emulator.configure(
        EmulatorConfig(
            window=1.0, openai=LimitSpec(tpm=1_000_000, rpm=None),
            gemini=LimitSpec(tpm=1_000_000, rpm=None),
        )
    )
    llm_emulator.reset()
    return llm_emulator


@pytest.fixture
def make_budget() -> Any:
    """Build a BudgetSession (no pytest) with small, fast settings; closed at teardown."""
    from pytest_llm_budget import BudgetSession, Settings

    made: list[Any] = []

    def build(**overrides: Any) -> Any:
        values: dict[str, Any] = {
            "tpm": 1_000_000, "window": 1.0, "headroom": 0.0, "backoff_base": 0.05,
            "backoff_max": 0.5, "retries": 5, "est_tokens": 200,
        }
        values.update(overrides)
        session = BudgetSession(Settings(**values), backend=None)
        made.append(session)
        return session

    yield build
    for session in made:
        session.close()


# -- shared by the provider tests (test_provider_*.py) ----------------------------------------
POLICY = EstimatePolicy()
NOW = 1_700_000_000.0
JAPANESE = (
    "東京都の天気予報によると、明日は午前中から雨が降り、午後には雷を伴う激しい雨になる見込みです。"
)


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenCounter]:
    """A counter reading a freshly seeded offline tiktoken cache."""
    path: Path = tmp_path_factory.mktemp("tiktoken-cache")
    seed_tiktoken_cache(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(path))
        yield TokenCounter()


def dumps(value: object) -> bytes:
    """JSON bytes as an SDK would send them."""
    return json.dumps(value).encode()


def split_everywhere(data: bytes) -> Iterator[list[bytes]]:
    """Every way of cutting data into two chunks (including empty ones)."""
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
