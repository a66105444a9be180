"""Fault injection: the `x-emulator-fault` syntax, its parsed form, and a queue for next-N requests.

Syntax: comma- or semicolon-separated items, e.g. ``latency=0.2``, ``status=503``,
``rate_limit_no_hint``, ``malformed_json``, ``drop_stream`` (or ``drop_stream=2``: events sent
before the socket is closed), ``insufficient_quota``, ``overloaded``, ``spend_limit``,
``stream_error``, ``daily_quota``; combined like ``latency=0.1,status=500``.
``count=N`` is only meaningful when queueing (the fault then applies to the next N requests).

Each fault answers in the vendor's own shape:

* ``overloaded``: Anthropic 529 ``overloaded_error``; OpenAI and Gemini 503 (their overload).
* ``spend_limit`` / ``insufficient_quota`` (the money or quota ran out, never retry): Anthropic
  429 ``rate_limit_error`` with ``error.details.error_code: enforced_spend_limit_reached`` and no
  retry-after; OpenAI 429 ``insufficient_quota``; Gemini 429 with a zero per-day quota.
* ``stream_error``: a 200 stream cut by an error event (Anthropic ``event: error`` with an
  ``overloaded_error``; OpenAI a ``data: {"error": ...}`` chunk; Gemini an error chunk). Answers
  that are not streams are served normally.
* ``daily_quota``: Gemini 429 whose QuotaFailure quotaId ends ``PerDay``, RetryInfo until
  midnight Pacific; OpenAI 429 on requests per day (RPD); Anthropic, which has no daily quota,
  the spend-limit answer.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["Fault", "FaultQueue", "parse_fault"]

_FLAGS = (
    "rate_limit_no_hint",
    "malformed_json",
    "drop_stream",
    "insufficient_quota",
    "overloaded",
    "spend_limit",
    "stream_error",
    "daily_quota",
)


@dataclass(frozen=True)
class Fault:
    """What to do wrong on one request."""

    latency: float = 0.0
    status: int | None = None
    rate_limit_no_hint: bool = False
    malformed_json: bool = False
    drop_stream: int | None = None
    insufficient_quota: bool = False
    overloaded: bool = False
    spend_limit: bool = False
    stream_error: bool = False
    daily_quota: bool = False
    count: int = 1
    spec: str = ""

    @property
    def rejects(self) -> bool:
        """True when the fault answers with an error instead of serving the request."""
        return (
            self.status is not None
            or self.rate_limit_no_hint
            or self.insufficient_quota
            or self.overloaded
            or self.spend_limit
            or self.daily_quota
        )

    def merged(self, other: Fault | None) -> Fault:
        """Combine two faults (the other's explicit settings win)."""
        if other is None:
            return self
        return Fault(
            latency=self.latency + other.latency,
            status=other.status if other.status is not None else self.status,
            rate_limit_no_hint=self.rate_limit_no_hint or other.rate_limit_no_hint,
            malformed_json=self.malformed_json or other.malformed_json,
            drop_stream=other.drop_stream if other.drop_stream is not None else self.drop_stream,
            insufficient_quota=self.insufficient_quota or other.insufficient_quota,
            overloaded=self.overloaded or other.overloaded,
            spend_limit=self.spend_limit or other.spend_limit,
            stream_error=self.stream_error or other.stream_error,
            daily_quota=self.daily_quota or other.daily_quota,
            spec=",".join(s for s in (self.spec, other.spec) if s),
        )


def parse_fault(spec: str) -> Fault:
    """Parse the fault syntax; raises ValueError naming the bad item."""
    latency = 0.0
    status: int | None = None
    flags: dict[str, bool] = dict.fromkeys(_FLAGS, False)
    drop: int | None = None
    count = 1
    for raw in spec.replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        value = value.strip()
        try:
            if key == "latency" and sep:
                latency = float(value)
                if latency < 0:
                    raise ValueError
            elif key == "status" and sep:
                status = int(value)
                if not 400 <= status <= 599:
                    raise ValueError
            elif key == "count" and sep:
                count = int(value)
                if count < 1:
                    raise ValueError
            elif key == "drop_stream":
                drop = int(value) if sep else 1
                if drop < 0:
                    raise ValueError
            elif key in _FLAGS and not sep:
                flags[key] = True
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad fault item {item!r} in {spec!r}") from None
    return Fault(
        latency=latency,
        status=status,
        rate_limit_no_hint=flags["rate_limit_no_hint"],
        malformed_json=flags["malformed_json"],
        drop_stream=drop,
        insufficient_quota=flags["insufficient_quota"],
        overloaded=flags["overloaded"],
        spend_limit=flags["spend_limit"],
        stream_error=flags["stream_error"],
        daily_quota=flags["daily_quota"],
        count=count,
        spec=spec.strip(),
    )


class FaultQueue:
    """Faults waiting for the next requests, first in first out (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: deque[Fault] = deque()

    def push(self, fault: Fault, count: int | None = None) -> None:
        """Apply `fault` to the next `count` (default: fault.count) requests."""
        with self._lock:
            self._items.extend([fault] * (count if count is not None else fault.count))

    def pop(self) -> Fault | None:
        """The fault for the request now arriving, if any."""
        with self._lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
