"""The state of one bucket's sliding window and the pure rules that admit, settle and learn.

Every backend keeps a `WindowState` somewhere (memory, a JSON file, Redis) and applies these
functions to it under its own lock, so all backends admit exactly the same way
(`backends/redis_window.lua` is a line-by-line port: change both together).
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
# A probe is [time, fixed, uncertain, admit_seq, seen_seq]: what a request's estimate was made
# of, and in which order it was admitted and (once its answer came back) seen by the server.
Probe = list[float]

#: How far the factor moves toward a lower value per observation (it rises at once).
FACTOR_STEP_DOWN = 0.3


@dataclass(frozen=True)
class Limits:
    """What one bucket may spend: tokens and requests per window, calls in flight at once.

    `factor_floor` / `factor_cap` bound the learned correction of the uncertain part of the
    estimates (see `WindowState.observe`).
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
    """The request may leave now; `charge` tokens are recorded under `id` at time `at`."""

    id: str
    at: float
    charge: int = -1


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
    factor: float = 1.0


def corrected(estimate: int, uncertain: int, factor: float, limit: int) -> int:
    """The charge for an estimate whose `uncertain` part is scaled by the learned factor."""
    if uncertain <= 0 or factor == 1.0:
        return int(estimate)
    fixed = int(estimate) - int(uncertain)
    return max(1, min(int(limit), fixed + math.ceil(int(uncertain) * factor)))


@dataclass
class WindowState:
    """Charges in the window, leases of calls in flight, the queue of waiters and any pause.

    Plus what the limiter learns: `factor` scales the uncertain part of every estimate, from
    `probes` (the parts of recent estimates) compared with what the server reports; and `clock`,
    the latest `now` any rule has seen (rules never run time backwards: see `_tick`). `entries`
    stays sorted by time; the running sums and the ticket index are caches rebuilt by
    `from_json`, so admission costs O(1) when nothing has to wait.
    """

    entries: list[Entry] = field(default_factory=list)
    leases: dict[str, list[Any]] = field(default_factory=dict)
    waiters: dict[str, list[float]] = field(default_factory=dict)
    paused_until: float = 0.0
    factor: float = 1.0
    probes: dict[str, Probe] = field(default_factory=dict)
    seq: int = 0
    left: list[list[float]] = field(default_factory=list)
    clock: float = 0.0
    _used: int = field(default=0, repr=False, compare=False)
    _requests: int = field(default=0, repr=False, compare=False)
    _index: dict[str, Entry] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.entries.sort(key=lambda e: e[1])
        self._used = sum(int(e[2]) for e in self.entries)
        self._requests = sum(1 for e in self.entries if e[3])
        self._index = {e[0]: e for e in self.entries if e[3]}

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form for file and Redis backends."""
        data: dict[str, Any] = {
            "entries": self.entries,
            "leases": self.leases,
            "waiters": self.waiters,
            "paused_until": self.paused_until,
            "clock": self.clock,
        }
        if self.factor != 1.0 or self.probes or self.left:
            data.update(factor=self.factor, probes=self.probes, seq=self.seq, left=self.left)
        return data

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
            factor = float(data.get("factor", 1.0))
            probes = {
                str(k): [float(v[0]), float(v[1]), float(v[2]), float(v[3]), float(v[4])]
                for k, v in dict(data.get("probes", {})).items()
            }
            seq = int(data.get("seq", 0))
            left = [[float(x[0]), float(x[1])] for x in data.get("left", [])]
            clock = float(data.get("clock", 0.0))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"malformed window state: {exc}") from exc
        return cls(
            entries=entries, leases=leases, waiters=waiters, paused_until=paused,
            factor=factor, probes=probes, seq=seq, left=left, clock=clock,
        )

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
            if self.probes:
                # While learning, remember what left for a while: `observe` compares the
                # server's past figure with the window as it was then.
                self.left.extend([float(e[1]), float(e[2])] for e in entries[:gone])
                self.probes = {k: p for k, p in self.probes.items() if p[0] > horizon}
            del entries[:gone]
        if self.left and self.left[0][0] <= horizon - limits.span:
            self.left = [x for x in self.left if x[0] > horizon - limits.span]
        if self.waiters:
            self.waiters = {k: w for k, w in self.waiters.items() if w[1] >= now}

    def _tick(self, now: float) -> float:
        """Never let time run backwards: a caller that read the clock before waiting for the
        lock must not judge a window that a later caller already pruned (its charge is dated a
        little later instead, which errs on the safe side). `clock` is stored with the state, so
        this holds across the processes sharing a file too."""
        if now > self.clock:
            self.clock = now
        return self.clock

    def used(self) -> int:
        """Tokens charged inside the window (call `prune` first)."""
        return self._used

    def admit(
        self,
        limits: Limits,
        ticket: str,
        estimate: int,
        now: float,
        owner: str = "",
        uncertain: int = 0,
    ) -> Decision:
        """Admit the ticket's charge if every window stays within limits, else defer.

        The charge is `estimate` with its `uncertain` part scaled by the learned factor. Waiters
        are served first come, first served, except that a later ticket may go first when that
        delays no one ahead of it (it fits now, and still leaves each waiter ahead its room at
        the time that waiter was due): overtaking is bounded, nobody starves.
        """
        now = self._tick(now)
        self.prune(limits, now)
        charge = (
            estimate
            if uncertain <= 0 or self.factor == 1.0
            else corrected(estimate, uncertain, self.factor, limits.tokens)
        )
        waiter = self.waiters.get(ticket)
        enqueued = waiter[0] if waiter else now
        ahead = (
            [
                int(w[2])
                for k, w in sorted(self.waiters.items(), key=lambda kw: (kw[1][0], kw[0]))
                if k != ticket and (w[0], k) < (enqueued, ticket)
            ]
            if self.waiters
            else []
        )
        wait, reason = self._wait_for(limits, charge, ahead, now)
        if wait > 0:
            self.waiters[ticket] = [enqueued, now + wait + limits.waiter_grace, float(charge)]
            return Deferred(wait, reason)
        self.waiters.pop(ticket, None)
        self._add([ticket, now, charge, True])
        self.leases[ticket] = [owner, now]
        if uncertain > 0:
            self.seq += 1
            fixed = int(estimate) - int(uncertain)
            self.probes[ticket] = [now, float(fixed), float(uncertain), float(self.seq), 0.0]
        return Admitted(ticket, now, charge)

    def _wait_for(
        self, limits: Limits, charge: int, ahead: list[int], now: float
    ) -> tuple[float, str]:
        if self.paused_until > now:
            return self.paused_until - now, "paused"
        span = limits.span
        if not ahead:
            excess = self._used + charge - limits.tokens
            if excess > 0:
                return _time_to_free(self.entries, excess, span, now), "tokens"
        else:
            plan = self._plan(limits, ahead, now)
            if not self._fits(limits, plan, now, charge):
                # The earliest time we fit alone, if that delays no one; else after the queue.
                alone = now + _time_to_free(self.entries, self._used + charge - limits.tokens,
                                            span, now)
                last = plan[-1][0]
                queued = self.entries + [[None, t, w, False] for t, w in plan]
                total = self._used + sum(w for _, w in plan)
                after = max(last, now + _time_to_free(queued, total + charge - limits.tokens,
                                                      span, now))
                if alone < after and self._fits(limits, plan, alone, charge):
                    return alone - now, "tokens"
                return max(after - now, 1e-6), "tokens"
        if limits.requests is not None:
            excess = self._requests + len(ahead) + 1 - limits.requests
            if excess > 0:
                requests = [e for e in self.entries if e[3]]
                return _time_to_free(requests, excess, span, now, unit=True), "requests"
        if limits.concurrency is not None and len(self.leases) + 1 > limits.concurrency:
            return limits.poll, "concurrency"
        return 0.0, ""

    def _plan(self, limits: Limits, ahead: list[int], now: float) -> list[tuple[float, int]]:
        """When each waiter ahead will be admitted, in queue order, each as early as it fits."""
        plan: list[tuple[float, int]] = []
        queued = list(self.entries)
        total = self._used
        t = now
        for w in ahead:
            excess = total + w - limits.tokens
            if excess > 0:
                t = max(t, now + _time_to_free(queued, excess, limits.span, now))
            plan.append((t, w))
            queued.append([None, t, w, False])
            total += w
        return plan

    def _alive(self, limits: Limits, plan: list[tuple[float, int]], t: float) -> int:
        """Tokens in the window at time `t`: charges made by then that have not left."""
        horizon = t - limits.span
        alive = self._used
        for e in self.entries:
            if e[1] > horizon:
                break
            alive -= int(e[2])
        return alive + sum(w for at, w in plan if horizon < at <= t)

    def _fits(self, limits: Limits, plan: list[tuple[float, int]], t: float, charge: int) -> bool:
        """Whether `charge` taken at `t` fits, and leaves every planned waiter its room."""
        if self._alive(limits, plan, t) + charge > limits.tokens:
            return False
        return all(
            self._alive(limits, plan, at) + charge <= limits.tokens
            for at, _ in plan
            if t < at < t + limits.span
        )

    def _answered(self, limits: Limits, entry: Entry | None, now: float) -> None:
        """An answer is in, so the request reached the server by `now`: its charge need stay
        only one window from now, not from when it left plus the margin.

        Done only while the window is more than half full, where it can soon matter: moving an
        entry in a long list is not free, and keeping the margin is always safe.
        """
        margin = limits.span - limits.window
        if entry is None or margin <= 0 or self._used * 2 <= limits.tokens:
            return
        earlier = now - margin
        if earlier < entry[1]:
            entries = self.entries
            i = len(entries) - 1
            while entries[i] is not entry:  # a settling entry is nearly always among the last
                i -= 1
            del entries[i]
            entry[1] = earlier
            bisect.insort(entries, entry, key=lambda e: e[1])

    def settle(
        self,
        limits: Limits,
        ticket: str,
        estimate: int,
        charge: int,
        now: float,
        refund: bool = False,
    ) -> int:
        """Charge what the call cost at the reservation's time; returns the change (signed).

        Without `refund` the charge is max(estimate, `charge`): a provider that charged the
        estimate at admission keeps it whatever the answer used. With `refund` the charge
        becomes exactly `charge` (the provider counts the reported usage): an over-estimate is
        freed, and the reported figure teaches the factor.
        """
        now = self._tick(now)
        self.prune(limits, now)
        self.leases.pop(ticket, None)
        entry = self._index.get(ticket)
        if entry is not None and self._used * 2 > limits.tokens:
            self._answered(limits, entry, now)
        if refund:
            probe = self.probes.pop(ticket, None)
            if probe is not None and probe[2] > 0:
                self._learn(limits, (int(charge) - probe[1]) / probe[2])
            if entry is not None:
                delta = int(charge) - int(entry[2])
                entry[2] = int(charge)
                self._used += delta
                return delta
        debt = max(0, int(charge) - int(estimate))
        if not debt:
            return 0
        if entry is not None:
            entry[2] = int(entry[2]) + debt
            self._used += debt
        else:
            # The reservation already left the window (a call longer than the window): the
            # overrun still counts, from now.
            self._add([f"{ticket}:debt", now, debt, False])
        return debt

    def _learn(self, limits: Limits, bound: float) -> None:
        """Move the factor toward `bound`: up at once, down by a step, within floor and cap."""
        if bound >= self.factor:
            self.factor = min(limits.factor_cap, bound)
        else:
            step = self.factor - FACTOR_STEP_DOWN * (self.factor - bound)
            self.factor = max(limits.factor_floor, step)

    def cancel(self, ticket: str, limits: Limits | None = None, now: float | None = None) -> int:
        """Take back the charge of a request that never reached the provider; returns it
        (0 once it has left the window: pruned first when `limits` and `now` are given)."""
        if limits is not None and now is not None:
            self.prune(limits, self._tick(now))
        self.leases.pop(ticket, None)
        self.waiters.pop(ticket, None)
        self.probes.pop(ticket, None)
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
        return self.observe(limits, ticket, 0, server_used, now)

    def observe(
        self,
        limits: Limits,
        ticket: str,
        server_limit: int,
        server_used: int,
        now: float,
        reset_s: float | None = None,
    ) -> int:
        """Take in what the server said after admitting `ticket`; returns tokens added.

        Two lessons. When the server counts more than the window holds, the gap is charged now
        and the factor rises at once by gap / (uncertain tokens in the window). Otherwise the
        server's figure bounds the factor from above: every request this bucket saw answered
        before `ticket` was admitted had reached the server before `ticket` did, so for each
        suffix K of those (newest first, `ticket` included, all inside the server's window)
        `server_used + drain >= sum(fixed + f * uncertain over K)`. The drain covers a
        token-bucket server refilling meanwhile (server_limit / window per second since the
        oldest of K); it is 0 when the server's reset time (`reset_s`, about a whole window
        while the window is not full) says it keeps every charge for its window. Requests
        still in flight, or other processes' requests not yet answered, are left out: they can
        only make the server look fuller, never emptier, so the bound never falls below the
        truth. The server is taken to have admitted `ticket` within the margin of its leaving.
        """
        now = self._tick(now)
        self.prune(limits, now)
        self._answered(limits, self._index.get(ticket), now)
        probe = self.probes.get(ticket)
        if probe is None:
            gap = int(server_used) - self.used()
        else:
            arrived = min(now, probe[0] + (limits.span - limits.window))
            if not probe[4]:
                self.seq += 1
                probe[4] = float(self.seq)
            # All of ours the server can still have counted when this request reached it
            # (what was in the window when it left, and everything since).
            then = probe[0] - limits.span
            before = int(sum(x[1] for x in self.left if x[0] > then))
            gap = int(server_used) - self.used() - before
        if gap > 0:
            self._add([f"{ticket}:calibration", now, gap, False])
            uncertain = sum(p[2] for p in self.probes.values())
            if uncertain > 0:
                self._learn(limits, self.factor + gap / uncertain)
            return gap
        if probe is None or server_limit <= 0 or probe[2] <= 0:
            return 0
        sliding = (
            reset_s is not None
            and reset_s >= 0.9 * limits.window
            and server_used < 0.85 * server_limit
        )
        rate = 0.0 if sliding else server_limit / limits.window
        horizon = arrived - limits.window
        known = sorted(
            (p for k, p in self.probes.items()
             if k != ticket and 0 < p[4] < probe[3] and p[0] > horizon),
            key=lambda p: (-p[0], -p[3]),
        )
        fixed = uncertain = 0.0
        bound = math.inf
        for p in [probe, *known]:
            fixed += p[1]
            uncertain += p[2]
            if uncertain > 0:
                drain = rate * max(0.0, arrived - p[0])
                bound = min(bound, (int(server_used) + drain - fixed) / uncertain)
        if bound < self.factor:
            self._learn(limits, max(0.0, bound))
        return 0

    def reap(self, alive: set[str] | None, now: float, max_age: float | None = None) -> int:
        """Drop leases whose owner is not in `alive` (or older than `max_age`); returns count."""
        now = self._tick(now)
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
            factor=self.factor,
        )


def _time_to_free(
    entries: list[Entry], excess: int, span: float, now: float, unit: bool = False
) -> float:
    """Seconds until the oldest entries whose charges (or count) add up to `excess` leave."""
    freed = 0
    for entry in entries:
        freed += 1 if unit else int(entry[2])
        if freed >= excess:
            return max(float(entry[1]) + span - now, 1e-6)
    # Cannot happen when the caller checked estimate <= limit; wait one window to be safe.
    return max(span, 1e-6) if math.isfinite(span) else 1.0
