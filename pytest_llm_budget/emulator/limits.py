"""Limit enforcement as providers do it: sliding window or token bucket, over an injected clock.

Definitions (both per bucket, one meter for tokens and one for requests):

* ``sliding``: a charge ``c`` arriving at ``now`` is admitted iff the sum of the charges admitted
  in ``(now - window, now]`` plus ``c`` is ``<= limit``. So *every* interval of length ``window``
  holds at most ``limit`` admitted units: this is the property the stats' ``max_window_*`` prove.
* ``bucket`` ("quantized"): a bucket of capacity ``limit`` that starts full and refills
  continuously at ``limit / window`` units per second (never above capacity). A charge is admitted
  iff the current level is ``>= c``; admission drains ``c``. A burst of the full per-window figure
  is admitted at once only when the bucket is full, and after a burst the next units trickle in
  at the refill rate. Any interval of length ``T`` holds at most ``limit + limit * T / window``.

In both modes a charge larger than ``limit`` can never be admitted ("request too large"), and a
rejected request is not charged.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from .config import Mode

__all__ = [
    "BucketLimiter",
    "Decision",
    "Meter",
    "SlidingWindow",
    "TokenBucket",
    "WindowMax",
    "make_meter",
]

_EPS = 1e-9

Verdict = Literal["ok", "tokens", "requests", "too_large"]


class Meter(Protocol):
    """One limited dimension (tokens or requests)."""

    limit: int

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` would fit (0 = now, inf = never)."""

    def commit(self, amount: float, now: float) -> None:
        """Charge `amount` at `now` (call only after `wait_time` returned 0)."""

    def used(self, now: float) -> float:
        """Units currently counted against the limit."""

    def reset_after(self, now: float) -> float:
        """Seconds until the meter is back to its initial (empty/full) state."""

    def set_limit(self, limit: int) -> None:
        """Change the limit, keeping the history."""


class SlidingWindow:
    """Sum of charges admitted in the last `window` seconds must stay <= limit."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] <= horizon:
            self._sum -= self._events.popleft()[1]
        if not self._events:
            self._sum = 0.0

    def wait_time(self, amount: float, now: float) -> float:
        self._expire(now)
        if amount > self.limit:
            return math.inf
        excess = self._sum + amount - self.limit
        if excess <= _EPS:
            return 0.0
        freed = 0.0
        for t, charge in self._events:
            freed += charge
            if freed >= excess - _EPS:
                return max(0.0, t + self.window - now)
        return math.inf  # unreachable: amount <= limit

    def commit(self, amount: float, now: float) -> None:
        self._events.append((now, amount))
        self._sum += amount

    def used(self, now: float) -> float:
        self._expire(now)
        return self._sum

    def reset_after(self, now: float) -> float:
        self._expire(now)
        return self._events[-1][0] + self.window - now if self._events else 0.0

    def set_limit(self, limit: int) -> None:
        self.limit = limit


class TokenBucket:
    """Capacity `limit`, starts full, refills continuously at limit/window per second."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._level = float(limit)
        self._last: float | None = None

    @property
    def rate(self) -> float:
        """Refill rate in units per second."""
        return self.limit / self.window

    def _refill(self, now: float) -> None:
        if self._last is None:
            self._last = now
            return
        if now > self._last:
            self._level = min(float(self.limit), self._level + (now - self._last) * self.rate)
            self._last = now

    def wait_time(self, amount: float, now: float) -> float:
        self._refill(now)
        if amount > self.limit:
            return math.inf
        missing = amount - self._level
        return 0.0 if missing <= _EPS else missing / self.rate

    def commit(self, amount: float, now: float) -> None:
        self._refill(now)
        self._level -= amount

    def used(self, now: float) -> float:
        self._refill(now)
        return max(0.0, self.limit - self._level)

    def reset_after(self, now: float) -> float:
        return self.used(now) / self.rate

    def set_limit(self, limit: int) -> None:
        self._level = min(float(limit), self._level + (limit - self.limit))
        self.limit = limit


def make_meter(mode: Mode, limit: int, window: float) -> Meter:
    """Build the meter for an enforcement mode."""
    return SlidingWindow(limit, window) if mode == "sliding" else TokenBucket(limit, window)


@dataclass(frozen=True)
class Decision:
    """Outcome of one admission, with what the rate-limit headers report."""

    verdict: Verdict
    requested: int
    limit: int | None
    used: int
    retry_after: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float

    @property
    def admitted(self) -> bool:
        """True when the request was let through (and charged)."""
        return self.verdict == "ok"


class BucketLimiter:
    """Tokens + requests meters of one bucket, admitted atomically (caller holds the lock)."""

    def __init__(self, mode: Mode, window: float, tpm: int | None, rpm: int | None) -> None:
        self.mode = mode
        self.window = window
        self.tokens: Meter | None = make_meter(mode, tpm, window) if tpm else None
        self.requests: Meter | None = make_meter(mode, rpm, window) if rpm else None

    def set_limits(self, tpm: int | None, rpm: int | None) -> None:
        """Apply new limits, keeping history where a meter survives."""
        self.tokens = _retarget(self.tokens, tpm, self.mode, self.window)
        self.requests = _retarget(self.requests, rpm, self.mode, self.window)

    def admit(self, charge: int, now: float) -> Decision:
        """Admit and charge the request, or say why not and when to retry."""
        tok, req = self.tokens, self.requests
        verdict: Verdict = "ok"
        retry = 0.0
        limit: int | None = None
        used = 0
        requested = charge
        if tok is not None and charge > tok.limit:
            verdict, retry, limit, used = "too_large", math.inf, tok.limit, 0
        else:
            wait_req = req.wait_time(1, now) if req is not None else 0.0
            wait_tok = tok.wait_time(charge, now) if tok is not None else 0.0
            if wait_req > 0 and req is not None:
                verdict, retry, limit, requested = "requests", wait_req, req.limit, 1
                used = math.ceil(req.used(now) - _EPS)
            elif wait_tok > 0 and tok is not None:
                verdict, retry, limit = "tokens", wait_tok, tok.limit
                used = math.ceil(tok.used(now) - _EPS)
            if verdict == "ok":
                if tok is not None:
                    tok.commit(charge, now)
                if req is not None:
                    req.commit(1, now)
        return Decision(
            verdict=verdict,
            requested=requested,
            limit=limit,
            used=used,
            retry_after=retry,
            limit_tokens=tok.limit if tok else None,
            remaining_tokens=_remaining(tok, now),
            reset_tokens=tok.reset_after(now) if tok else 0.0,
            limit_requests=req.limit if req else None,
            remaining_requests=_remaining(req, now),
            reset_requests=req.reset_after(now) if req else 0.0,
        )


def _remaining(meter: Meter | None, now: float) -> int | None:
    if meter is None:
        return None
    return max(0, math.floor(meter.limit - meter.used(now) + _EPS))


def _retarget(meter: Meter | None, limit: int | None, mode: Mode, window: float) -> Meter | None:
    if not limit:
        return None
    if meter is None:
        return make_meter(mode, limit, window)
    meter.set_limit(limit)
    return meter


class WindowMax:
    """Tracks the largest total admitted in any interval of length `window` (the proof)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._events: deque[tuple[float, float]] = deque()
        self._sum = 0.0
        self.max = 0.0

    def add(self, amount: float, now: float) -> None:
        """Record an admission; windows are `(t - window, t]` like the sliding meter's."""
        horizon = now - self.window
        while self._events and self._events[0][0] <= horizon:
            self._sum -= self._events.popleft()[1]
        self._events.append((now, amount))
        self._sum += amount
        self.max = max(self.max, self._sum)
