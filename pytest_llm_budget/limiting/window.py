"""The state of one bucket's sliding window and the rules that admit, settle and learn.

Every backend keeps a `WindowState` somewhere (memory, a JSON file, Redis) and applies these
rules to it under its own lock, so all backends admit exactly the same way. When a charge fits
is decided in `admission.py` (with `Limits` and the `Admitted` / `Deferred` answers), the
learned correction of estimates in `correction.py`; `backends/redis_window.lua` ports all three
line by line: change them together.

The state stays bounded whatever the charges in the window: past `FOLD_AT` entries besides those
in flight, settled charges are folded into `SLOTS` time slots per span, each an entry dated at
its newest charge (so it leaves at most one slot width later than its charges would: admission
is never earlier than over the exact window, and at most one slot width later).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from pytest_llm_budget.limiting.admission import (
    Admitted,
    Decision,
    Deferred,
    DimensionSnapshot,
    Entry,
    Limits,
    queue_ahead,
    time_to_free,
    token_wait,
)
from pytest_llm_budget.limiting.correction import Probe, corrected, factor_bound, learned

__all__ = ["FOLD_AT", "PROBES_KEPT", "SLOT", "SLOTS", "WindowSnapshot", "WindowState"]

#: Settled charges are folded into this many time slots per span once the window holds more
#: than `FOLD_AT` entries besides those in flight, so the state stays bounded (see `_fold`).
SLOTS = 64
FOLD_AT = 192
#: The id prefix of a slot's entry (tickets never start with it).
SLOT = "~slot:"
#: At most this many probes are kept, the newest (dropping one only makes learning slower).
PROBES_KEPT = 256

@dataclass(frozen=True)
class WindowSnapshot:
    """What a bucket holds at one instant."""

    used_tokens: int
    requests: int
    in_flight: int
    waiting: int
    paused_for: float
    factor: float = 1.0
    #: Token buckets only: each limited dimension by name (`token_bucket.DIMENSIONS`).
    dimensions: dict[str, DimensionSnapshot] = field(default_factory=dict)


@dataclass
class WindowState:
    """Charges in the window, leases of calls in flight, the queue of waiters and any pause.

    Plus what the limiter learns: `factor` scales the uncertain part of every estimate, from
    `probes` (the parts of recent estimates) compared with what the server reports; and `clock`,
    the latest `now` any rule has seen (rules never run time backwards: see `_tick`). `entries`
    stays sorted by time; the running sums and the ticket index are caches rebuilt by
    `from_json`, so admission costs O(1) when nothing has to wait. Settled charges are folded
    into time slots (`_fold`), so the state stays bounded whatever the charges in the window.
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
        self._requests = sum(int(e[3]) for e in self.entries)
        self._index = {e[0]: e for e in self.entries if e[3] is True}

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
            entries = [
                [str(e[0]), float(e[1]), int(e[2]), e[3] if type(e[3]) is int else bool(e[3])]
                for e in data["entries"]
            ]
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
        if entry[3] is True:
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
                self._requests -= int(entry[3])
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
        if len(entries) > FOLD_AT + len(self.leases):
            self._fold(limits)
        if len(self.probes) > PROBES_KEPT:
            newest = sorted(self.probes.items(), key=lambda kp: -kp[1][3])[:PROBES_KEPT]
            self.probes = dict(newest)

    def _fold(self, limits: Limits) -> None:
        """Fold the charges no call can address any more (all but those of leased tickets)
        into one entry per time slot (span / `SLOTS` wide), dated at its newest charge.

        A slot leaves the window with its newest charge, so folding never admits earlier
        than the exact window, and at most one slot width later. Such an entry's request flag
        is the count of requests it holds.
        """
        span = limits.span
        if not (0 < span < math.inf):
            return
        width = span / SLOTS
        kept: list[Entry] = []
        slots: dict[int, Entry] = {}
        for e in self.entries:
            if e[3] is True and e[0] in self.leases:
                kept.append(e)
                continue
            cell = math.floor(e[1] / width)
            slot = slots.get(cell)
            if slot is None:
                slots[cell] = [f"{SLOT}{cell}", e[1], int(e[2]), int(e[3])]
            else:
                slot[1] = max(slot[1], e[1])
                slot[2] += int(e[2])
                slot[3] += int(e[3])
        kept.extend(slots.values())
        kept.sort(key=lambda e: e[1])
        self.entries = kept
        self._index = {e[0]: e for e in kept if e[3] is True}

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
        ahead = queue_ahead(self.waiters, ticket, enqueued)
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
        wait = token_wait(self.entries, self._used, limits, charge, ahead, now)
        if wait > 0:
            return wait, "tokens"
        if limits.requests is not None:
            excess = self._requests + len(ahead) + 1 - limits.requests
            if excess > 0:
                requests = [e for e in self.entries if e[3]]  # slots count their requests
                return time_to_free(requests, excess, limits.span, now, unit=True), "requests"
        if limits.concurrency is not None and len(self.leases) + 1 > limits.concurrency:
            return limits.poll, "concurrency"
        return 0.0, ""

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
                self.factor = learned(self.factor, (int(charge) - probe[1]) / probe[2], limits)
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

    def restamp(self, limits: Limits, ticket: str, now: float) -> bool:
        """Date an admitted charge from `now`, when its request really left (later than it was
        admitted: a slow sender, a loaded machine, a wait for a lock); True when it moved.

        The provider's window starts when the request arrives: a charge dated from its
        admission would leave our window before it leaves the provider's.
        """
        now = self._tick(now)
        self.prune(limits, now)
        entry = self._index.get(ticket)
        if entry is None or now <= entry[1]:
            return False
        self.entries.remove(entry)
        entry[1] = now
        bisect.insort(self.entries, entry, key=lambda e: e[1])
        probe = self.probes.get(ticket)
        if probe is not None:
            probe[0] = now
        return True

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
        server's figure bounds the factor from above (`correction.factor_bound`).
        """
        now = self._tick(now)
        self.prune(limits, now)
        self._answered(limits, self._index.get(ticket), now)
        probe = self.probes.get(ticket)
        gap = int(server_used) - self.used()
        if probe is not None:
            if not probe[4]:
                self.seq += 1
                probe[4] = float(self.seq)
            # All of ours the server can still have counted when this request reached it
            # (what was in the window when it left, and everything since).
            then = probe[0] - limits.span
            gap -= int(sum(x[1] for x in self.left if x[0] > then))
        if gap > 0:
            self._add([f"{ticket}:calibration", now, gap, False])
            uncertain = sum(p[2] for p in self.probes.values())
            if uncertain > 0:
                self.factor = learned(self.factor, self.factor + gap / uncertain, limits)
            return gap
        if probe is None or server_limit <= 0 or probe[2] <= 0:
            return 0
        bound = factor_bound(limits, ticket, self.probes, server_limit, server_used, now, reset_s)
        if bound < self.factor:
            self.factor = learned(self.factor, max(0.0, bound), limits)
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

