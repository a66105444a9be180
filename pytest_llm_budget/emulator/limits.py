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

Anthropic (``AnthropicLimiter``) always uses token buckets, whatever the mode, one per dimension:
requests (1 a request), input tokens (``input_tokens + cache_creation_input_tokens``, charged at
admission; admitted iff the level is ``>=`` the charge) and output tokens (charged as produced,
``max_tokens`` never; admitted iff the level is ``>= 1``, so one large reply may drive the level
negative and the next requests wait until it refills to 1).

``DailyQuota`` counts requests per key per day, the day starting at midnight Pacific (08:00 UTC,
daylight saving ignored), as Gemini's requests-per-day quotas reset.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from .config import Mode

__all__ = [
    "AnthropicDecision",
    "AnthropicLimiter",
    "BucketLimiter",
    "DailyQuota",
    "Decision",
    "Level",
    "Meter",
    "SlidingWindow",
    "TokenBucket",
    "WindowMax",
    "make_meter",
]

_EPS = 1e-9

Verdict = Literal["ok", "tokens", "requests", "too_large"]
AnthropicVerdict = Literal["ok", "requests", "input_tokens", "output_tokens", "too_large"]
DIMENSIONS: tuple[str, ...] = ("requests", "input_tokens", "output_tokens")


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

    def level(self, now: float) -> float:
        """Units in the bucket now (negative when overdrawn)."""
        self._refill(now)
        return self._level

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


@dataclass(frozen=True)
class Level:
    """One Anthropic bucket as its headers describe it."""

    limit: int
    level: float
    full_in: float


@dataclass(frozen=True)
class AnthropicDecision:
    """Outcome of one Anthropic admission; the levels are after every charge of this request."""

    verdict: AnthropicVerdict
    retry_after: float
    limit: int | None
    requested: int
    requests: Level | None
    input_tokens: Level | None
    output_tokens: Level | None

    @property
    def admitted(self) -> bool:
        """True when the request was let through (and charged)."""
        return self.verdict == "ok"

    def levels(self) -> dict[str, float]:
        """Level of each limited dimension, by name (for the stats' minimum levels)."""
        out: dict[str, float] = {}
        for name in DIMENSIONS:
            lv: Level | None = getattr(self, name)
            if lv is not None:
                out[name] = lv.level
        return out


class AnthropicLimiter:
    """RPM, ITPM and OTPM token buckets of one model class (caller holds the lock)."""

    def __init__(self, window: float, rpm: int | None, itpm: int | None, otpm: int | None) -> None:
        self.window = window
        self.requests = TokenBucket(rpm, window) if rpm else None
        self.input_tokens = TokenBucket(itpm, window) if itpm else None
        self.output_tokens = TokenBucket(otpm, window) if otpm else None

    def set_limits(self, rpm: int | None, itpm: int | None, otpm: int | None) -> None:
        """Apply new limits, keeping the levels of surviving buckets."""
        self.requests = self._retarget(self.requests, rpm)
        self.input_tokens = self._retarget(self.input_tokens, itpm)
        self.output_tokens = self._retarget(self.output_tokens, otpm)

    def _retarget(self, bucket: TokenBucket | None, limit: int | None) -> TokenBucket | None:
        if not limit:
            return None
        if bucket is None:
            return TokenBucket(limit, self.window)
        bucket.set_limit(limit)
        return bucket

    def admit(self, input_charge: int, output: int, now: float) -> AnthropicDecision:
        """Admit (charging 1 request, the input, then the output produced) or say which refused."""
        req, inp, out = self.requests, self.input_tokens, self.output_tokens
        verdict: AnthropicVerdict = "ok"
        retry, limit, requested = 0.0, None, 0
        if inp is not None and input_charge > inp.limit:
            verdict, retry, limit, requested = "too_large", math.inf, inp.limit, input_charge
        elif req is not None and (wait := req.wait_time(1, now)) > 0:
            verdict, retry, limit, requested = "requests", wait, req.limit, 1
        elif inp is not None and (wait := inp.wait_time(input_charge, now)) > 0:
            verdict, retry, limit, requested = "input_tokens", wait, inp.limit, input_charge
        elif out is not None and (wait := out.wait_time(1, now)) > 0:
            verdict, retry, limit, requested = "output_tokens", wait, out.limit, 1
        if verdict == "ok":
            for bucket, amount in ((req, 1), (inp, input_charge), (out, output)):
                if bucket is not None:
                    bucket.commit(amount, now)
        return AnthropicDecision(
            verdict, retry, limit, requested, _level(req, now), _level(inp, now), _level(out, now)
        )


def _level(bucket: TokenBucket | None, now: float) -> Level | None:
    if bucket is None:
        return None
    return Level(bucket.limit, bucket.level(now), bucket.reset_after(now))


_DAY = 86_400.0
_PACIFIC_MIDNIGHT_UTC = 8 * 3600.0


class DailyQuota:
    """Requests per key per day (caller holds the lock); the day turns at midnight Pacific."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}

    @staticmethod
    def day(now: float) -> int:
        """The quota day `now` falls in."""
        return math.floor((now - _PACIFIC_MIDNIGHT_UTC) / _DAY)

    @classmethod
    def reset_after(cls, now: float) -> float:
        """Seconds until the next quota day starts."""
        return (cls.day(now) + 1) * _DAY + _PACIFIC_MIDNIGHT_UTC - now

    def used(self, key: str, now: float) -> int:
        """Requests counted for `key` today."""
        day, count = self._counts.get(key, (self.day(now), 0))
        return count if day == self.day(now) else 0

    def commit(self, key: str, now: float) -> None:
        """Count one request for `key` today."""
        self._counts[key] = (self.day(now), self.used(key, now) + 1)

    def clear(self) -> None:
        """Forget every count."""
        self._counts.clear()
