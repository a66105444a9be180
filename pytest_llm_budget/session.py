"""The session-wide budget: settings, limiter, call log and the test now running. No pytest here."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_llm_budget.backends import Backend, open_backend
from pytest_llm_budget.cost.caps import CostGuard
from pytest_llm_budget.events import LimitLearned, RateLimitEvent, WaitEvent
from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.limiting.limiter import Limiter, Reservation
from pytest_llm_budget.limiting.watch import WaitWatch, notify
from pytest_llm_budget.records import CallLog, CallRecord, TestUsage
from pytest_llm_budget.settings.resolved import Settings
from pytest_llm_budget.suite.llm_tests import MARKER

__all__ = ["BudgetSession", "BudgetSnapshot", "TestContext"]


@dataclass(frozen=True)
class TestContext:
    """The test now running, and what its `llm_budget` marker declares."""

    __test__ = False

    nodeid: str = "<session>"
    tokens: int | None = None
    vendor: str | None = None
    model: str | None = None
    grounded: bool = False

    @classmethod
    def of(cls, item: Any) -> TestContext:
        """A test item's `llm_budget` marker arguments, grounded too when its scenario is."""
        mark = item.get_closest_marker(MARKER)
        kwargs = mark.kwargs if mark is not None else {}
        grounded = bool(kwargs.get("grounded", False))
        if not grounded and "llm_scenario" in getattr(item, "fixturenames", ()):
            from pytest_llm_budget.suite.matrix import scenario_of

            scenario = scenario_of(item)
            grounded = scenario is not None and scenario.grounded
        return cls(
            item.nodeid, kwargs.get("tokens"), kwargs.get("vendor"), kwargs.get("model"), grounded
        )


@dataclass(frozen=True)
class BudgetSnapshot:
    """A bucket's figures and its window right now (the `llm_budget.snapshot()` answer)."""

    bucket: str
    budget: int | None
    used_tokens: int
    in_flight: int
    waiting: int
    paused_for: float
    stats: BucketStats


class InFlight(Protocol):
    """What the session needs of a call in flight (`routing.call.Call`)."""

    charge: int
    charged: int

    def record(
        self, usage: None, status: str, *, malformed: bool, error_code: str | None = None,
        cost_usd: float | None = 0.0,
    ) -> None: ...


class BudgetSession:
    """Everything one pytest session (or one library user) shares: one limiter, one call log."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        worker: str = "main",
        shared_dir: str | None = None,
        xdist: bool = False,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker
        self.backend = backend or open_backend(settings.backend, shared_dir=shared_dir, xdist=xdist)
        self.limiter = Limiter(
            self.backend,
            settings.rules,
            headroom=settings.headroom,
            window=settings.window,
            max_concurrency=settings.max_concurrency,
            max_wait=settings.max_wait,
            clock=clock,
            sleep=sleep,
            owner=f"{os.getpid()}:{worker}",
        )
        #: Prices and dollar caps (cost/): the router holds and settles every call here.
        self.costs = CostGuard(settings, self.backend)
        self.calls = CallLog()
        self.merged_stats: list[BucketStats] = []
        #: Set by the plugin around each test; one process runs one test at a time, so a plain
        #: attribute (unlike a context variable) also reaches threads the test starts.
        self.test = TestContext()
        #: Called with every record `record` logs (metrics use this); an observer must not block,
        #: and one that raises is reported as a warning, never as a failure of the LLM call.
        self.observers: list[Callable[[CallRecord], None]] = []
        #: Called with a `WaitEvent` when a wait longer than `notice_after` starts, and when
        #: any wait ends (`finished`); with a `RateLimitEvent` on every 429 (watch.py).
        self.wait_observers: list[Callable[[WaitEvent], None]] = []
        self.rate_limit_observers: list[Callable[[RateLimitEvent], None]] = []
        #: Called with a `LimitLearned` when a server's stated limit starts to set a bucket's
        #: pace (told once, by the process whose answer taught it).
        self.limit_observers: list[Callable[[LimitLearned], None]] = []
        #: `hook(request, vendor, model, estimate)` -> an int overrides a call's estimate.
        self.estimate_hooks: list[Callable[[Any, str, str, int], int | None]] = []
        self.notice_after: float | None = settings.notice_after
        self.started = time.time()
        #: Set when the run is interrupted: no new call is sent; the calls in flight end.
        self.stopping = False
        self._flying: set[InFlight] = set()
        self._flight_lock = threading.Lock()
        WaitWatch(self).attach()
        self.limiter.limit_listeners.append(lambda event: notify(self.limit_observers, event))

    def reserve(
        self, tokens: int | None = None, *, vendor: str = "openai", model: str = "*"
    ) -> Reservation:
        """Hold `tokens` (default `--llm-est-tokens`) of the bucket's budget; use as `with`."""
        estimate = self.settings.est_tokens if tokens is None else int(tokens)
        if estimate <= 0:
            raise ValueError(f"reserve(tokens={tokens!r}): tokens must be above 0")
        return self.limiter.reserve(estimate, vendor=vendor, model=model)

    async def areserve(
        self, tokens: int | None = None, *, vendor: str = "openai", model: str = "*"
    ) -> Reservation:
        """`reserve` for event loops."""
        estimate = self.settings.est_tokens if tokens is None else int(tokens)
        if estimate <= 0:
            raise ValueError(f"areserve(tokens={tokens!r}): tokens must be above 0")
        return await self.limiter.areserve(estimate, vendor=vendor, model=model)

    def snapshot(self, vendor: str = "openai", model: str = "*") -> BudgetSnapshot:
        """The bucket of (vendor, model): budget, tokens in the window, calls in flight."""
        bucket = self.limiter.bucket_for(vendor, model)
        window = self.limiter.window_snapshot(bucket)
        stats = next(s for s in self.limiter.stats() if s.name == bucket)
        return BudgetSnapshot(
            bucket=bucket,
            budget=self.limiter.budget(bucket),
            used_tokens=window.used_tokens,
            in_flight=window.in_flight,
            waiting=window.waiting,
            paused_for=window.paused_for,
            stats=stats,
        )

    def record(self, record: CallRecord) -> None:
        """Log one finished call (a replayed one priced as if live) and tell the observers."""
        record = self.costs.complete(record)
        self.calls.add(record)
        notify(self.observers, record)  # an observer's bug must not fail the test's LLM call

    def call_started(self, call: InFlight) -> None:
        """A call was admitted: it is in flight until `call_ended`."""
        with self._flight_lock:
            self._flying.add(call)

    def call_ended(self, call: InFlight) -> None:
        """An admitted call ended and was recorded."""
        with self._flight_lock:
            self._flying.discard(call)

    @property
    def calls_in_flight(self) -> int:
        """Admitted calls not yet recorded."""
        return len(self._flying)

    def record_unfinished(self, error_code: str) -> int:
        """Record every call still in flight as an error with `error_code` (the run ended
        under it: an interrupt that landed between its answer and its record, a response never
        read); its estimate stays charged. Returns how many."""
        with self._flight_lock:
            calls = list(self._flying)
        for call in calls:
            call.charged += call.charge
            call.record(None, "error", malformed=False, error_code=error_code, cost_usd=None)
        return len(calls)

    def usage(self, test: str | None = None) -> TestUsage:
        """Live usage of a test (default: the one running)."""
        return self.calls.usage(test or self.test.nodeid)

    def bucket_stats(self) -> list[BucketStats]:
        """Per-bucket figures: this process's, merged with any xdist workers' that reported."""
        merged: dict[str, BucketStats] = {}
        for stats in [*self.limiter.stats(), *self.merged_stats]:
            merged[stats.name] = merged[stats.name].merged(stats) if stats.name in merged else stats
        return [merged[k] for k in sorted(merged)]

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
