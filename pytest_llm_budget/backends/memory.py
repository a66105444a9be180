"""In-process backend: windows in a dict guarded by one lock (the default without xdist)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pytest_llm_budget.backends.base import StateBackend
from pytest_llm_budget.backends.ledger import LedgerState
from pytest_llm_budget.limiting.token_bucket import TokenBucketState
from pytest_llm_budget.limiting.window import WindowState

__all__ = ["MemoryBackend"]


class MemoryBackend(StateBackend):
    """Thread-safe windows for one process."""

    description = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, WindowState] = {}
        self._token_buckets: dict[str, TokenBucketState] = {}
        self._ledgers: dict[str, LedgerState] = {}

    @contextmanager
    def _state(self, bucket: str, now: float) -> Iterator[WindowState]:
        with self._lock:
            state = self._states.get(bucket)
            if state is None:  # not setdefault: building a WindowState per call costs ~1 us
                state = self._states[bucket] = WindowState()
            yield state

    @contextmanager
    def _buckets_state(self, bucket: str, now: float) -> Iterator[TokenBucketState]:
        with self._lock:
            state = self._token_buckets.get(bucket)
            if state is None:
                state = self._token_buckets[bucket] = TokenBucketState()
            yield state

    @contextmanager
    def _ledger(self, ledger: str, now: float) -> Iterator[LedgerState]:
        with self._lock:
            state = self._ledgers.setdefault(ledger, LedgerState())
            state.expire(now)
            yield state
