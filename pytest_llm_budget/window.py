"""The state of one bucket's sliding window and the pure rules that admit, settle and penalise.

Every backend keeps a `WindowState` somewhere (memory, a JSON file, Redis) and applies these
functions to it under its own lock, so all backends admit exactly the same way.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Admitted",
    "Decision",
    "Deferred",
    "Limits",
    "WindowSnapshot",
    "WindowState",
]

# An entry is [id, time, charge, counts_as_request]: lists, so the state is plain JSON.
Entry = list[Any]


@dataclass(frozen=True)
class Limits:
    """What one bucket may spend: tokens and requests per window, calls in flight at once."""

    tokens: int
    window: float
    requests: int | None = None
    concurrency: int | None = None
    margin: float = 0.0
    poll: float = 0.05
    waiter_grace: float = 2.0

    @property
    def span(self) -> float:
        """How long a charge stays in the window: the window plus the safety margin."""
        return self.window + self.margin


@dataclass(frozen=True)
class Admitted:
    """The request may leave now; its charge is recorded under `id` at time `at`."""

    id: str
    at: float


@dataclass(frozen=True)
class Deferred:
    """The request must wait `wait` seconds (at least) before asking again; `reason` says why."""

    wait: float
    reason: str


Decision = Admitted | Deferred


@dataclass(frozen=True)
class WindowSnapshot:
    """What a bucket holds at one instant."""

    used_tokens: int
    requests: int
    in_flight: int
    waiting: int
    paused_for: float


@dataclass
class WindowState:
    """Charges in the window, leases of calls in flight, the queue of waiters and any pause.

    `entries` stays sorted by time; the running sums and the ticket index are caches rebuilt by
    `from_json`, so admission costs O(1) when nothing has to wait.
    """

    entries: list[Entry] = field(default_factory=list)
    leases: dict[str, list[Any]] = field(default_factory=dict)
    waiters: dict[str, list[float]] = field(default_factory=dict)
    paused_until: float = 0.0
    _used: int = field(default=0, repr=False, compare=False)
    _requests: int = field(default=0, repr=False, compare=False)
    _index: dict[str, Entry] = field(default_factory=dict, repr=False, compare=False)
    _latest: float = field(default=0.0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.entries.sort(key=lambda e: e[1])
        self._used = sum(int(e[2]) for e in self.entries)
        self._requests = sum(1 for e in self.entries if e[3])
        self._index = {e[0]: e for e in self.entries if e[3]}

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form for file and Redis backends."""
        return {
            "entries": self.entries,
            "leases": self.leases,
            "waiters": self.waiters,
            "paused_until": self.paused_until,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowState:
        """Rebuild from `to_json`; raises ValueError on anything malformed."""
        try:
            entries = [[str(e[0]), float(e[1]), int(e[2]), bool(e[3])] for e in data["entries"]]
            leases = {str(k): list(v) for k, v in dict(data["leases"]).items()}
            waiters = {
                str(k): [float(v[0]), float(v[1]), float(v[2])]
                for k, v in dict(data["waiters"]).items()
            }
            paused = float(data["paused_until"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"malformed window state: {exc}") from exc
        return cls(entries=entries, leases=leases, waiters=waiters, paused_until=paused)

    # -- rules -----------------------------------------------------------------------------
    def _add(self, entry: Entry) -> None:
        entries = self.entries
        if entries and entry[1] < entries[-1][1]:
            bisect.insort(entries, entry, key=lambda e: e[1])
        else:
            entries.append(entry)
        self._used += int(entry[2])
        if entry[3]:
            self._requests += 1
            self._index[entry[0]] = entry

    def prune(self, limits: Limits, now: float) -> None:
        """Forget charges older than the window and waiters that stopped coming back."""
        horizon = now - limits.span
        entries = self.entries
        gone = 0
        while gone < len(entries) and entries[gone][1] <= horizon:
            entry = entries[gone]
            self._used -= int(entry[2])
            if entry[3]:
                self._requests -= 1
                self._index.pop(entry[0], None)
            gone += 1
        if gone:
            del entries[:gone]
        if self.waiters:
            self.waiters = {k: w for k, w in self.waiters.items() if w[1] >= now}

    def _tick(self, now: float) -> float:
        """Never let time run backwards: a caller that read the clock before waiting for the
        lock must not judge a window that a later caller already pruned."""
        self._latest = max(self._latest, now)
        return self._latest

    def used(self) -> int:
        """Tokens charged inside the window (call `prune` first)."""
        return self._used

    def admit(
        self, limits: Limits, ticket: str, estimate: int, now: float, owner: str = ""
    ) -> Decision:
        """Admit `estimate` tokens for `ticket` if every window stays within limits, else defer.

        Waiters are served first come, first served: a later ticket may pass an earlier one
        only when there is room for both.
        """
        now = self._tick(now)
        self.prune(limits, now)
        waiter = self.waiters.get(ticket)
        enqueued = waiter[0] if waiter else now
        ahead = [
            w for k, w in self.waiters.items() if k != ticket and (w[0], k) < (enqueued, ticket)
        ]
        ahead_tokens = sum(int(w[2]) for w in ahead)
        wait, reason = self._wait_for(limits, estimate, ahead_tokens, len(ahead), now)
        if wait > 0:
            self.waiters[ticket] = [enqueued, now + wait + limits.waiter_grace, float(estimate)]
            return Deferred(wait, reason)
        self.waiters.pop(ticket, None)
        self._add([ticket, now, int(estimate), True])
        self.leases[ticket] = [owner, now]
        return Admitted(ticket, now)

    def _wait_for(
        self, limits: Limits, estimate: int, ahead_tokens: int, ahead_count: int, now: float
    ) -> tuple[float, str]:
        if self.paused_until > now:
            return self.paused_until - now, "paused"
        excess = self._used + ahead_tokens + estimate - limits.tokens
        if excess > 0:
            wait = _time_to_free(self.entries, excess, limits.span, now, lambda e: int(e[2]))
            return wait, "tokens"
        if limits.requests is not None:
            excess = self._requests + ahead_count + 1 - limits.requests
            if excess > 0:
                requests = [e for e in self.entries if e[3]]
                return _time_to_free(requests, excess, limits.span, now, lambda e: 1), "requests"
        if limits.concurrency is not None and len(self.leases) + 1 > limits.concurrency:
            return limits.poll, "concurrency"
        return 0.0, ""

    def settle(self, limits: Limits, ticket: str, estimate: int, charge: int, now: float) -> int:
        """Charge max(estimate, `charge`) at the reservation's time; returns the debt added."""
        now = self._tick(now)
        self.prune(limits, now)
        self.leases.pop(ticket, None)
        debt = max(0, int(charge) - int(estimate))
        if not debt:
            return 0
        entry = self._index.get(ticket)
        if entry is not None:
            entry[2] = int(entry[2]) + debt
            self._used += debt
        else:
            # The reservation already left the window (a call longer than the window): the
            # overrun still counts, from now.
            self._add([f"{ticket}:debt", now, debt, False])
        return debt

    def cancel(self, ticket: str) -> int:
        """Take back the charge of a request that never reached the provider; returns it."""
        self.leases.pop(ticket, None)
        self.waiters.pop(ticket, None)
        entry = self._index.pop(ticket, None)
        if entry is None:
            return 0
        self.entries.remove(entry)
        self._used -= int(entry[2])
        self._requests -= 1
        return int(entry[2])

    def release(self, ticket: str) -> None:
        """End a call's concurrency lease (also drops it from the queue if it never got in)."""
        self.leases.pop(ticket, None)
        self.waiters.pop(ticket, None)

    def penalize(self, tokens: int, pause_until: float, now: float, ticket: str) -> None:
        """Record a 429: a token penalty charged now, and a pause until the server's hint."""
        now = self._tick(now)
        if tokens > 0:
            self._add([f"{ticket}:429", now, int(tokens), False])
        self.paused_until = max(self.paused_until, pause_until)

    def calibrate(self, limits: Limits, server_used: int, now: float, ticket: str) -> int:
        """Believe the server when it says more is used than we counted; returns tokens added."""
        now = self._tick(now)
        self.prune(limits, now)
        gap = int(server_used) - self.used()
        if gap <= 0:
            return 0
        self._add([f"{ticket}:calibration", now, gap, False])
        return gap

    def reap(self, alive: set[str] | None, now: float, max_age: float | None = None) -> int:
        """Drop leases whose owner is not in `alive` (or older than `max_age`); returns count."""
        dead = [
            k
            for k, (owner, since) in self.leases.items()
            if (alive is not None and owner not in alive)
            or (max_age is not None and now - float(since) > max_age)
        ]
        for k in dead:
            del self.leases[k]
        return len(dead)

    def snapshot(self, limits: Limits, now: float) -> WindowSnapshot:
        """Figures at `now`, after pruning."""
        now = self._tick(now)
        self.prune(limits, now)
        return WindowSnapshot(
            used_tokens=self.used(),
            requests=self._requests,
            in_flight=len(self.leases),
            waiting=len(self.waiters),
            paused_for=max(0.0, self.paused_until - now),
        )


def _time_to_free(entries: list[Entry], excess: int, span: float, now: float, weight: Any) -> float:
    """Seconds until the oldest entries whose weights add up to `excess` leave the window."""
    freed = 0
    for entry in entries:
        freed += weight(entry)
        if freed >= excess:
            return max(float(entry[1]) + span - now, 1e-6)
    # Cannot happen when the caller checked estimate <= limit; wait one window to be safe.
    return max(span, 1e-6) if math.isfinite(span) else 1.0
