"""When a charge may enter a bucket's window: the limits, the answers, and the rules that give them.

The rules are pure functions over a window's entries (sorted by time), the sum of their charges
and the queue of waiters (the overtaking rule: `token_wait`); `WindowState` calls them under its
backend's lock. `backends/redis_window.lua` ports them line by line (`time_to_free`, `plan_for`,
`alive`, `fits`, `wait_for`): change both together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Admitted",
    "Decision",
    "Deferred",
    "DimensionSnapshot",
    "Limits",
    "queue_ahead",
    "time_to_free",
    "token_wait",
]

# An entry is [id, time, charge, counts_as_request]: lists, so the state is plain JSON. A folded
# time slot (`window.WindowState._fold`) is an entry whose last field counts its requests.
Entry = list[Any]


@dataclass(frozen=True)
class Limits:
    """What one bucket may spend: tokens and requests per window, calls in flight at once.

    `factor_floor` / `factor_cap` bound the learned correction of the uncertain part of the
    estimates (`correction.py`).
    """

    tokens: int
    window: float
    requests: int | None = None
    concurrency: int | None = None
    margin: float = 0.0
    poll: float = 0.05
    waiter_grace: float = 2.0
    factor_floor: float = 0.5
    factor_cap: float = 2.0

    @property
    def span(self) -> float:
        """How long a charge stays in the window: the window plus the safety margin."""
        return self.window + self.margin


@dataclass(frozen=True)
class Admitted:
    """The request may leave now; `charge` tokens are recorded under `id` at time `at`.

    `fill` (token buckets only): what each dimension holds just after, in
    `token_bucket.DIMENSIONS` order (the output counting what is expected in flight).
    """

    id: str
    at: float
    charge: int = -1
    fill: tuple[float, ...] = ()


@dataclass(frozen=True)
class Deferred:
    """The request must wait `wait` seconds (at least) before asking again; `reason` says why."""

    wait: float
    reason: str


Decision = Admitted | Deferred


@dataclass(frozen=True)
class DimensionSnapshot:
    """One dimension at one instant: its capacity, what is spent (above it: debt) and, for the
    output, what the requests in flight are expected to produce."""

    limit: int
    used: float
    in_flight: float = 0.0


#: When each waiter ahead is due, and its charge: `[(time, charge), ...]` in queue order.
Plan = list[tuple[float, int]]


def queue_ahead(waiters: dict[str, list[float]], ticket: str, enqueued: float) -> list[int]:
    """The charges of the waiters ahead of `ticket`, in queue order: first come, first served,
    ties broken by ticket (by code point, as the Lua port does)."""
    if not waiters:
        return []
    return [
        int(w[2])
        for k, w in sorted(waiters.items(), key=lambda kw: (kw[1][0], kw[0]))
        if k != ticket and (w[0], k) < (enqueued, ticket)
    ]


def token_wait(
    entries: list[Entry], used: int, limits: Limits, charge: int, ahead: list[int], now: float
) -> float:
    """Seconds until `charge` tokens fit in the window (0: now) behind the waiters `ahead`.

    Waiters are served first come, first served, except that a later ticket may go first when
    that delays no one ahead of it (it fits now, and still leaves each waiter ahead its room at
    the time that waiter was due): overtaking is bounded, nobody starves.
    """
    span = limits.span
    if not ahead:
        excess = used + charge - limits.tokens
        return time_to_free(entries, excess, span, now) if excess > 0 else 0.0
    plan = _plan(entries, used, limits, ahead, now)
    if _fits(entries, used, limits, plan, now, charge):
        return 0.0
    # The earliest time we fit alone, if that delays no one; else after the queue.
    alone = now + time_to_free(entries, used + charge - limits.tokens, span, now)
    last = plan[-1][0]
    queued = entries + [[None, t, w, False] for t, w in plan]
    total = used + sum(w for _, w in plan)
    after = max(last, now + time_to_free(queued, total + charge - limits.tokens, span, now))
    if alone < after and _fits(entries, used, limits, plan, alone, charge):
        return alone - now
    return max(after - now, 1e-6)


def time_to_free(
    entries: list[Entry], excess: int, span: float, now: float, unit: bool = False
) -> float:
    """Seconds until the oldest entries whose charges (or count) add up to `excess` leave."""
    freed = 0
    for entry in entries:
        freed += int(entry[3]) if unit else int(entry[2])
        if freed >= excess:
            return max(float(entry[1]) + span - now, 1e-6)
    # Cannot happen when the caller checked estimate <= limit; wait one window to be safe.
    return max(span, 1e-6) if math.isfinite(span) else 1.0


def _plan(entries: list[Entry], used: int, limits: Limits, ahead: list[int], now: float) -> Plan:
    """When each waiter ahead will be admitted, in queue order, each as early as it fits."""
    plan: Plan = []
    queued = list(entries)
    total = used
    t = now
    for w in ahead:
        excess = total + w - limits.tokens
        if excess > 0:
            t = max(t, now + time_to_free(queued, excess, limits.span, now))
        plan.append((t, w))
        queued.append([None, t, w, False])
        total += w
    return plan


def _alive(entries: list[Entry], used: int, limits: Limits, plan: Plan, t: float) -> int:
    """Tokens in the window at time `t`: charges made by then that have not left."""
    horizon = t - limits.span
    alive = used
    for e in entries:
        if e[1] > horizon:
            break
        alive -= int(e[2])
    return alive + sum(w for at, w in plan if horizon < at <= t)


def _fits(
    entries: list[Entry], used: int, limits: Limits, plan: Plan, t: float, charge: int
) -> bool:
    """Whether `charge` taken at `t` fits, and leaves every planned waiter its room."""
    if _alive(entries, used, limits, plan, t) + charge > limits.tokens:
        return False
    return all(
        _alive(entries, used, limits, plan, at) + charge <= limits.tokens
        for at, _ in plan
        if t < at < t + limits.span
    )
