"""Token buckets with several dimensions (Anthropic's model): requests, input and output tokens.

A bucket of this model holds one token bucket per dimension. Each has a capacity (the rule's
limit; for token dimensions after headroom) and refills continuously at capacity / span per
second (span = window + margin, the same margin the sliding window keeps for the provider's
clock starting a little after ours). The state keeps what is *spent* per dimension (capacity
minus level): a fresh or expired bucket is full.

A request is admitted when every dimension has room:

* requests: one request fits (`spent + 1 <= capacity`);
* input tokens: its input estimate fits (`spent + estimate <= capacity`), the estimate's
  uncertain part scaled by the learned factor (`correction.py`), as for the window;
* output tokens, by default (output charged as produced): the bucket is not exhausted by what is
  already produced plus what is in flight, i.e. `capacity - spent - in_flight >= 1`, where
  `in_flight` is the sum of the *expected output* of the requests admitted and not yet settled.
  A request's expected output is `ceil(max_tokens x ratio)` (at most the capacity), `ratio` being
  the bucket's learned ratio of produced output to max_tokens: it starts at 1 (nothing known, the
  declared budget), rises at once to a higher observed ratio and falls by steps toward a lower one
  (as the input factor does), never below `RATIO_FLOOR`. Nothing is charged at admission;
  settling charges the reported output tokens.
* output tokens with `charge_max_tokens` (the older Anthropic docs): max_tokens is charged at
  admission and must fit (`spent + max_tokens <= capacity`); settling replaces it by the output
  produced (a refund, or more debt).

Waiters are served strictly first come, first served (ties broken by ticket): a request waits
for every one ahead of it, each admitted in turn as soon as all its dimensions fit. The waiting
time is the max over dimensions of the time to refill, planned through the queue. Settling to
more than was charged drives a dimension's level below zero (debt: it refills from there), the
same debt idea as the window's. `backends/redis_token_bucket.lua` ports this module line by
line: change both together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pytest_llm_budget.limiting.admission import (
    Admitted,
    Decision,
    Deferred,
    DimensionSnapshot,
    Limits,
)
from pytest_llm_budget.limiting.correction import corrected, learned
from pytest_llm_budget.limiting.window import WindowSnapshot

__all__ = [
    "DIMENSIONS",
    "RATIO_FLOOR",
    "TOKEN_BUCKET_VENDORS",
    "DimensionSnapshot",
    "TokenBucketLimits",
    "TokenBucketState",
    "uses_token_buckets",
]

#: The dimensions of a token-bucket bucket, in the order the state keeps them.
DIMENSIONS = ("requests", "input_tokens", "output_tokens")

#: Vendors whose buckets are token buckets; every other vendor keeps the sliding window.
TOKEN_BUCKET_VENDORS = frozenset({"anthropic"})

#: The lowest learned ratio of produced output to max_tokens.
RATIO_FLOOR = 0.05

#: How far the output ratio moves toward a lower observation per settle (it rises at once).
RATIO_STEP_DOWN = 0.3

_EPS = 1e-6  # tokens: below float noise on epoch times, far below one token

# A lease is [owner, since, input_charge, max_tokens, output_charge, expected_output, fixed,
# uncertain]; a waiter is [enqueued, expires, input_charge, output_charge, expected_output].
Lease = list[Any]


def uses_token_buckets(vendor: str) -> bool:
    """Whether a vendor's buckets are token buckets (else sliding windows)."""
    return vendor.lower() in TOKEN_BUCKET_VENDORS


@dataclass(frozen=True)
class TokenBucketLimits(Limits):
    """Limits of a token-bucket bucket: `tokens` is the input bucket's capacity, `requests` the
    request bucket's, `output` the output bucket's (None: that dimension is not limited)."""

    output: int | None = None
    charge_max_tokens: bool = False

    def capacities(self) -> tuple[int | None, int | None, int | None]:
        """Capacity of each dimension, in `DIMENSIONS` order."""
        return (self.requests, self.tokens, self.output)


def _learned_ratio(ratio: float, seen: float) -> float:
    """The output ratio moved toward `seen`: up at once, down by a step, within floor and 1."""
    if seen >= ratio:
        return min(1.0, seen)
    return max(RATIO_FLOOR, ratio - RATIO_STEP_DOWN * (ratio - seen))


@dataclass
class TokenBucketState:
    """What one token-bucket bucket holds: spent per dimension as of `clock`, leases of the
    requests in flight (with their charges), the queue of waiters, any pause, and what it learned
    (`factor` on the uncertain input, `ratio` of output to max_tokens)."""

    spent: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    leases: dict[str, Lease] = field(default_factory=dict)
    waiters: dict[str, list[float]] = field(default_factory=dict)
    paused_until: float = 0.0
    factor: float = 1.0
    ratio: float = 1.0
    clock: float = 0.0

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form for the file backend."""
        return {
            "spent": self.spent,
            "leases": self.leases,
            "waiters": self.waiters,
            "paused_until": self.paused_until,
            "factor": self.factor,
            "ratio": self.ratio,
            "clock": self.clock,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenBucketState:
        """Rebuild from `to_json`; raises ValueError on anything malformed."""
        try:
            spent = [float(x) for x in data["spent"]]
            if len(spent) != len(DIMENSIONS):
                raise ValueError(f"spent has {len(spent)} dimensions")
            leases = {
                str(k): [str(v[0]), float(v[1]), *(float(x) for x in v[2:8])]
                for k, v in dict(data["leases"]).items()
            }
            waiters = {
                str(k): [float(x) for x in v[:5]] for k, v in dict(data["waiters"]).items()
            }
            return cls(
                spent=spent, leases=leases, waiters=waiters,
                paused_until=float(data["paused_until"]), factor=float(data.get("factor", 1.0)),
                ratio=float(data.get("ratio", 1.0)), clock=float(data.get("clock", 0.0)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"malformed token-bucket state: {exc}") from exc

    def idle(self) -> bool:
        """Full in every dimension with nothing in flight or waiting: need not be stored."""
        return (
            not any(self.spent)
            and not self.leases
            and not self.waiters
            and self.paused_until <= self.clock
            and self.factor == 1.0
            and self.ratio == 1.0
        )

    # -- time ------------------------------------------------------------------------------
    def _tick(self, limits: TokenBucketLimits, now: float) -> float:
        """Refill every dimension up to `now` (time never runs backwards: see WindowState)."""
        if now > self.clock:
            elapsed = now - self.clock if self.clock else math.inf
            span = limits.span
            for d, cap in enumerate(limits.capacities()):
                if cap is None or self.spent[d] <= 0:
                    self.spent[d] = 0.0
                elif math.isfinite(elapsed):
                    self.spent[d] = max(0.0, self.spent[d] - cap / span * elapsed)
                else:
                    self.spent[d] = 0.0
            self.clock = now
            if self.waiters:
                self.waiters = {k: w for k, w in self.waiters.items() if w[1] >= now}
        return self.clock

    def in_flight_output(self) -> float:
        """The output the requests in flight are expected to produce."""
        return float(sum(lease[5] for lease in self.leases.values()))

    # -- rules -----------------------------------------------------------------------------
    def admit(
        self,
        limits: TokenBucketLimits,
        ticket: str,
        estimate: int,
        now: float,
        owner: str = "",
        uncertain: int = 0,
        output: int = 0,
    ) -> Decision:
        """Admit the ticket if every dimension has room behind the queue, else defer.

        `estimate` is the input estimate (its `uncertain` part scaled by the learned factor),
        `output` the request's declared output budget (max_tokens).
        """
        if ticket in self.leases:  # a retried admit that already got in
            return Admitted(ticket, float(self.leases[ticket][1]), int(self.leases[ticket][2]))
        now = self._tick(limits, now)
        charge = (
            int(estimate)
            if uncertain <= 0 or self.factor == 1.0
            else corrected(estimate, uncertain, self.factor, limits.tokens)
        )
        declared = max(0, int(output))
        out_cap = limits.output
        if limits.charge_max_tokens:
            out_charge = declared if out_cap is None else min(declared, out_cap)
            expected = 0
        else:
            out_charge = 0
            expected = math.ceil(declared * self.ratio)
            if out_cap is not None:
                expected = min(expected, out_cap)
        waiter = self.waiters.get(ticket)
        enqueued = waiter[0] if waiter else now
        ahead = [
            w for k, w in sorted(self.waiters.items(), key=lambda kw: (kw[1][0], kw[0]))
            if k != ticket and (w[0], k) < (enqueued, ticket)
        ]
        wait, reason = self._wait_for(limits, charge, out_charge, ahead, now)
        if wait > 0:
            self.waiters[ticket] = [
                enqueued, now + wait + limits.waiter_grace, float(charge), float(out_charge),
                float(expected),
            ]
            return Deferred(wait, reason)
        self.waiters.pop(ticket, None)
        self._take(limits, 1, charge, out_charge)
        fixed = int(estimate) - int(uncertain) if uncertain > 0 else 0
        self.leases[ticket] = [
            owner, now, charge, declared, out_charge, expected, fixed, max(0, int(uncertain)),
        ]
        fill = (self.spent[0], self.spent[1], self.spent[2] + self.in_flight_output())
        return Admitted(ticket, now, charge, fill)

    def _take(self, limits: TokenBucketLimits, requests: float, tokens: float, out: float) -> None:
        """Spend (or give back, when negative) in each limited dimension; never above full."""
        for d, (cap, amount) in enumerate(zip(limits.capacities(), (requests, tokens, out),
                                             strict=True)):
            if cap is not None and amount:
                self.spent[d] = max(0.0, self.spent[d] + amount)

    def _wait_for(
        self,
        limits: TokenBucketLimits,
        charge: int,
        out_charge: int,
        ahead: list[list[float]],
        now: float,
    ) -> tuple[float, str]:
        """Seconds until this charge fits behind the queue `ahead`, and the dimension it waits
        for (0: now); each waiter ahead is planned in turn as soon as all its dimensions fit."""
        if self.paused_until > now:
            return self.paused_until - now, "paused"
        caps = limits.capacities()
        span = limits.span
        spent = list(self.spent)
        in_flight = self.in_flight_output()
        t = 0.0
        reason = ""
        queue = [(w[2], w[3], w[4]) for w in ahead] + [(float(charge), float(out_charge), 0.0)]
        for tokens, out, expected in queue:
            wait, why = 0.0, ""
            for d, need in enumerate((1.0, tokens, out)):
                cap = caps[d]
                if cap is None:
                    continue
                if d == 2 and not limits.charge_max_tokens:
                    # Not exhausted by what is produced plus what is expected in flight.
                    excess = spent[2] + in_flight + 1 - cap
                    drainable = spent[2]
                else:
                    excess = spent[d] + need - cap
                    drainable = spent[d]
                if excess <= _EPS:
                    continue
                # Past what refill can free, only a settle makes room: ask again soon.
                dt = limits.poll if excess > drainable + _EPS else excess / (cap / span)
                if dt > wait:
                    wait, why = dt, DIMENSIONS[d]
            if wait > 0:
                t += wait
                reason = why
                for d, cap in enumerate(caps):
                    if cap is not None:
                        spent[d] = max(0.0, spent[d] - cap / span * wait)
            for d, amount in enumerate((1.0, tokens, out)):
                if caps[d] is not None:
                    spent[d] += amount
            in_flight += expected
        if t > 0:
            return max(t, 1e-6), reason
        if limits.concurrency is not None and len(self.leases) + 1 > limits.concurrency:
            return limits.poll, "concurrency"
        return 0.0, ""

    def settle(
        self,
        limits: TokenBucketLimits,
        ticket: str,
        charge: int,
        now: float,
        refund: bool = False,
        output_tokens: int | None = None,
    ) -> int:
        """Charge what the call used; returns the change of the input charge (signed).

        Input: without `refund` max(charged, `charge`), with `refund` exactly `charge` (the
        reported `input_tokens + cache_creation_input_tokens`), teaching the factor. Output: the
        reported `output_tokens` (None, unknown: the declared max_tokens) replace what admission
        charged (0, or max_tokens with `charge_max_tokens`), and teach the output ratio. A settle
        whose lease is gone (settled already, or reaped) changes nothing, so a retry is harmless.
        """
        now = self._tick(limits, now)
        lease = self.leases.pop(ticket, None)
        if lease is None:
            return 0
        charged, declared, out_charged = int(lease[2]), int(lease[3]), int(lease[4])
        fixed, uncertain = float(lease[6]), float(lease[7])
        actual = int(charge)
        if refund:
            if uncertain > 0:
                self.factor = learned(self.factor, (actual - fixed) / uncertain, limits)
            delta = actual - charged
        else:
            delta = max(0, actual - charged)
        produced = declared if output_tokens is None else max(0, int(output_tokens))
        if output_tokens is not None and declared > 0:
            self.ratio = _learned_ratio(self.ratio, produced / declared)
        self._take(limits, 0, delta, produced - out_charged)
        return delta

    def cancel(self, limits: TokenBucketLimits, ticket: str, now: float) -> int:
        """Give back the charges of a request that never reached the provider; returns the input
        tokens given back (what has refilled meanwhile is not given twice: never above full)."""
        self._tick(limits, now)
        self.waiters.pop(ticket, None)
        lease = self.leases.pop(ticket, None)
        if lease is None:
            return 0
        self._take(limits, -1, -float(lease[2]), -float(lease[4]))
        return int(lease[2])

    def release(self, ticket: str) -> None:
        """End a lease (its charges stay, its expected output no longer counts) or leave the
        queue."""
        self.leases.pop(ticket, None)
        self.waiters.pop(ticket, None)

    def penalize(
        self, limits: TokenBucketLimits, tokens: int, pause_until: float, now: float
    ) -> None:
        """Record a 429: `tokens` taken from the input bucket now, and a pause."""
        self._tick(limits, now)
        if tokens > 0:
            self._take(limits, 0, tokens, 0)
        self.paused_until = max(self.paused_until, pause_until)

    def observe(
        self,
        limits: TokenBucketLimits,
        server_limit: int,
        server_used: int,
        now: float,
        dimension: str = "input_tokens",
    ) -> int:
        """Believe the server when it says more of `dimension` is spent than we count (its
        `limit - remaining`); returns the tokens added. Anthropic rounds remaining tokens to
        thousands: a caller should pass figures it trusts."""
        self._tick(limits, now)
        d = DIMENSIONS.index("input_tokens" if dimension == "tokens" else dimension)
        if limits.capacities()[d] is None:
            return 0
        gap = int(server_used) - math.ceil(self.spent[d])
        if gap <= 0:
            return 0
        self.spent[d] += gap
        return gap

    def reap(self, alive: set[str] | None, now: float, max_age: float | None = None) -> int:
        """Drop leases whose owner is not in `alive` (or older than `max_age`); returns count."""
        dead = [
            k for k, lease in self.leases.items()
            if (alive is not None and str(lease[0]) not in alive)
            or (max_age is not None and max(now, self.clock) - float(lease[1]) > max_age)
        ]
        for k in dead:
            del self.leases[k]
        return len(dead)

    def snapshot(self, limits: TokenBucketLimits, now: float) -> WindowSnapshot:
        """Figures at `now`: the input bucket as `used_tokens`, and every dimension."""
        now = self._tick(limits, now)
        in_flight = self.in_flight_output()
        dims = {
            name: DimensionSnapshot(cap, self.spent[d], in_flight if d == 2 else 0.0)
            for d, (name, cap) in enumerate(zip(DIMENSIONS, limits.capacities(), strict=True))
            if cap is not None
        }
        return WindowSnapshot(
            used_tokens=math.ceil(self.spent[1] - _EPS),
            requests=math.ceil(self.spent[0] - _EPS),
            in_flight=len(self.leases),
            waiting=len(self.waiters),
            paused_for=max(0.0, self.paused_until - now),
            factor=self.factor,
            dimensions=dims,
        )
