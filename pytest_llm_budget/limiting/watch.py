"""Turn the limiter's wait ticks into `WaitEvent`s for the session's observers. No pytest here.

A wait is announced once (`finished=False`) when its expected length (from when the call asked
to when the backend says it may go) first reaches the session's `notice_after`, and reported once
more when it ends (`finished=True`, the real seconds), whatever its length. A token wait is
announced at its first deferral; a concurrency wait, whose end nobody knows, once it has lasted
the threshold. Observers must not block; one that raises is reported as a warning.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, TypeVar

from pytest_llm_budget.events import WaitEvent, WaitTick
from pytest_llm_budget.limiting.buckets import UNKNOWN_TOKENS
from pytest_llm_budget.limiting.token_bucket import DIMENSIONS, TokenBucketLimits

if TYPE_CHECKING:
    from pytest_llm_budget.limiting.limiter import Limiter

__all__ = ["WaitWatch", "Watched", "notify"]

E = TypeVar("E")


class _Running(Protocol):
    @property
    def nodeid(self) -> str:
        """The test id."""


class Watched(Protocol):
    """What a `WaitWatch` reads of its session (a `BudgetSession`)."""

    @property
    def limiter(self) -> Limiter:
        """The session's limiter."""

    @property
    def wait_observers(self) -> list[Callable[[WaitEvent], None]]:
        """Who hears of waits."""

    @property
    def notice_after(self) -> float | None:
        """Seconds a wait must last to be announced (None: never)."""

    @property
    def test(self) -> _Running:
        """The test now running."""

    @property
    def worker(self) -> str:
        """The worker's name."""


def notify(observers: Iterable[Callable[[E], None]], event: E) -> None:
    """Call each observer with `event`; an observer's bug becomes a warning, not a failed call."""
    for observer in list(observers):
        try:
            observer(event)
        except Exception as exc:
            warnings.warn(
                f"pytest-llm-budget: observer {observer!r} failed: {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )


class WaitWatch:
    """Listens to one session's limiter and tells `session.wait_observers` about waits."""

    def __init__(self, session: Watched) -> None:
        self.session = session
        self._lock = threading.Lock()
        #: ticket -> (the test it waits for, the fill when the wait was announced)
        self._announced: dict[str, tuple[str, int]] = {}

    def attach(self) -> WaitWatch:
        self.session.limiter.wait_listeners.append(self.on_tick)
        return self

    def on_tick(self, tick: WaitTick) -> None:
        session = self.session
        if not session.wait_observers:
            return
        if tick.admitted:
            with self._lock:
                announced = self._announced.pop(tick.ticket, None)
            used = announced[1] if announced else -1
            notify(session.wait_observers, self._event(tick, tick.now - tick.started, used, True))
            return
        threshold = session.notice_after
        if threshold is None or tick.ready_at - tick.started < threshold:
            return
        with self._lock:
            if tick.ticket in self._announced:
                return
            self._announced[tick.ticket] = (session.test.nodeid, -1)
        used = self._used(tick)
        with self._lock:
            if tick.ticket in self._announced:
                self._announced[tick.ticket] = (session.test.nodeid, used)
        event = self._event(tick, tick.ready_at - tick.started, used, False)
        notify(session.wait_observers, event)

    def _used(self, tick: WaitTick) -> int:
        """The bucket's window now, or the figure of the token bucket the call waits for."""
        snapshot = self.session.limiter.window_snapshot(tick.bucket)
        dimension = snapshot.dimensions.get(tick.reason) if snapshot.dimensions else None
        if dimension is None:
            return snapshot.used_tokens
        return math.ceil(dimension.used + dimension.in_flight - 1e-6)

    def _event(self, tick: WaitTick, seconds: float, used: int, finished: bool) -> WaitEvent:
        session = self.session
        limits = session.limiter.limits(tick.bucket)
        budget, dimension = session.limiter.budget(tick.bucket), ""
        if isinstance(limits, TokenBucketLimits) and tick.reason in DIMENSIONS:
            dimension = tick.reason
            capacity = limits.capacities()[DIMENSIONS.index(dimension)]
            budget = capacity if capacity is not None and capacity < UNKNOWN_TOKENS else None
        return WaitEvent(
            test=session.test.nodeid,
            bucket=tick.bucket,
            vendor=tick.vendor,
            model=tick.model,
            estimate=tick.estimate,
            seconds=round(seconds, 3),
            reason=tick.reason,
            used_tokens=used,
            budget=budget,
            worker=session.worker,
            t=time.time(),
            finished=finished,
            dimension=dimension,
        )

