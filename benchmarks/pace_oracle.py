"""The pace benchmark's yardsticks: the oracle's span, the fluid floor, and one row's figures.

Pure functions (no I/O, no clock) so that they can be unit-tested and re-run on saved logs.

* Oracle: a client that knows every exact charge, has every request ready at t=0 and admits
  them in arrival order (FIFO) as soon as a sliding window of length W holding at most B allows.
  Its last admission time is the fastest span a zero-429 limiter can reach on those charges.
* Fluid floor: (S - B) / B x W, S the total charge: the first B goes at t=0, the rest drains at
  B per W. A lower bound on any zero-429 span (the oracle is >= it, discreteness costs more).
* Token-bucket oracle (Anthropic: requests, input and output tokens): the same knowing FIFO
  client against one token bucket per dimension, each full at t=0 and refilled continuously at
  limit / W per second up to its limit. It knows each request's exact output, so it charges it
  at admission (a real client can only charge it when the answer reports it), and admits the
  next request as soon as every bucket holds its charge (`token_bucket_admissions`). Its floor
  is the slowest dimension's fluid floor, (S_d - L_d) / L_d x W (`token_bucket_figures`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RowFigures",
    "admitted_charges",
    "figures",
    "fluid_floor",
    "oracle_admissions",
    "oracle_span",
    "token_bucket_admissions",
    "token_bucket_figures",
    "token_bucket_span",
]

_EPS = 1e-9


def oracle_admissions(charges: Sequence[float], budget: float, window: float) -> list[float]:
    """Admission time of each charge, FIFO from t=0, under a sliding window of `budget`.

    The window convention is the emulator's: a charge admitted at `t` stops counting at
    `t + window` exactly (it is in the window `(now - window, now]`).
    """
    if budget <= 0 or window <= 0:
        raise ValueError(f"budget and window must be positive, got {budget!r}, {window!r}")
    times: list[float] = []
    live: deque[tuple[float, float]] = deque()  # (admitted at, charge), still in the window
    used = 0.0
    now = 0.0
    for charge in charges:
        if charge < 0:
            raise ValueError(f"a charge cannot be negative, got {charge!r}")
        if charge > budget + _EPS:
            raise ValueError(f"a charge of {charge} can never fit a budget of {budget}")
        while live and live[0][0] + window <= now + _EPS:
            used -= live.popleft()[1]
        while used + charge > budget + _EPS:
            at, oldest = live.popleft()
            used -= oldest
            now = max(now, at + window)
        live.append((now, charge))
        used += charge
        times.append(now)
    return times


def oracle_span(charges: Sequence[float], budget: float, window: float) -> float:
    """The oracle's last admission time (0 for no charges, or when all fit at once)."""
    times = oracle_admissions(charges, budget, window)
    return times[-1] if times else 0.0


def token_bucket_admissions(
    charges: Sequence[tuple[float, float, float]],
    input_limit: float | None,
    output_limit: float | None,
    window: float,
    requests_limit: float | None = None,
) -> list[float]:
    """Admission time of each `(input, output, requests)` charge, FIFO from t=0, under token
    buckets of `input_limit`, `output_limit` and `requests_limit` per `window` (None: not
    limited).

    Every bucket starts full and refills at limit / window per second, never above its limit.
    A charge waits for the one before it, then until every bucket holds it: its time is the
    later of the previous admission and, over the dimensions, the time to refill the missing
    part (missing / rate); it then takes its charge from each bucket.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window!r}")
    limits = (input_limit, output_limit, requests_limit)
    for limit in limits:
        if limit is not None and limit <= 0:
            raise ValueError(f"a limit must be positive, got {limit!r}")
    levels = [0.0 if limit is None else float(limit) for limit in limits]
    times: list[float] = []
    now = 0.0
    for charge in charges:
        if any(c < 0 for c in charge):
            raise ValueError(f"a charge cannot be negative, got {charge!r}")
        wait = 0.0
        for d, limit in enumerate(limits):
            if limit is None:
                continue
            if charge[d] > limit + _EPS:
                raise ValueError(f"a charge of {charge[d]} can never fit a limit of {limit}")
            missing = charge[d] - levels[d]
            if missing > _EPS:
                wait = max(wait, missing / (limit / window))
        now += wait
        for d, limit in enumerate(limits):
            if limit is not None:
                levels[d] = min(float(limit), levels[d] + limit / window * wait) - charge[d]
        times.append(now)
    return times


def token_bucket_span(
    charges: Sequence[tuple[float, float, float]],
    input_limit: float | None,
    output_limit: float | None,
    window: float,
    requests_limit: float | None = None,
) -> float:
    """The token-bucket oracle's last admission time (0 for no charges)."""
    times = token_bucket_admissions(charges, input_limit, output_limit, window, requests_limit)
    return times[-1] if times else 0.0


def fluid_floor(charges: Iterable[float], budget: float, window: float) -> float:
    """(S - B) / B x W, never below 0."""
    total = sum(charges)
    return max(0.0, (total - budget) / budget * window)


def admitted_charges(
    records: Iterable[Mapping[str, Any]], by: str = "vendor"
) -> dict[str, list[float]]:
    """Charges per vendor (or per emulator `bucket`) of the admitted requests in an emulator
    log, in arrival order."""
    by_vendor: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        if r.get("outcome") == "ok" and r.get("status") == 200 and r.get("charge", 0) > 0:
            by_vendor.setdefault(str(r[by]), []).append((float(r["t"]), float(r["charge"])))
    return {v: [c for _, c in sorted(items, key=lambda x: x[0])] for v, items in by_vendor.items()}


@dataclass(frozen=True)
class RowFigures:
    """What one run's emulator log says, against the oracle and the fluid floor."""

    requests: int
    rejected: int
    span: float
    oracle: dict[str, float]
    floor: dict[str, float]
    charged: dict[str, float]
    span_over_oracle: float | None
    wall_over_floor: float | None

    @property
    def oracle_max(self) -> float:
        """The oracle of the whole run: vendors are paced independently, so the slowest one."""
        return max(self.oracle.values(), default=0.0)

    @property
    def floor_max(self) -> float:
        """The fluid floor of the whole run (slowest vendor)."""
        return max(self.floor.values(), default=0.0)


def figures(
    records: Sequence[Mapping[str, Any]],
    wall: float,
    budget: float,
    window: float,
    per_model: bool = False,
) -> RowFigures:
    """Span, oracle and floor per vendor, and the two ratios (None when a divisor is 0).

    `per_model`: the emulator limited each model apart; the oracle paces each of its buckets
    apart, and a vendor's figure is its slowest bucket's (its charges, all buckets').
    """
    api = [r for r in records if r.get("vendor") in ("openai", "gemini") and r.get("model")]
    times = [float(r["t"]) for r in api]
    span = max(times) - min(times) if times else 0.0
    groups = admitted_charges(api, "bucket" if per_model else "vendor")
    charges: dict[str, list[float]] = {}
    oracle: dict[str, float] = {}
    floor: dict[str, float] = {}
    for group, c in groups.items():
        vendor = group.split(":", 1)[0]
        charges.setdefault(vendor, []).extend(c)
        oracle[vendor] = max(oracle.get(vendor, 0.0), oracle_span(c, budget, window))
        floor[vendor] = max(floor.get(vendor, 0.0), fluid_floor(c, budget, window))
    o, f = max(oracle.values(), default=0.0), max(floor.values(), default=0.0)
    return RowFigures(
        requests=len(api),
        rejected=sum(1 for r in api if r.get("status") == 429),
        span=span,
        oracle=oracle,
        floor=floor,
        charged={v: float(sum(c)) for v, c in charges.items()},
        span_over_oracle=span / o if o > 0 else None,
        wall_over_floor=wall / f if f > 0 and not math.isnan(wall) else None,
    )


def token_bucket_figures(
    records: Sequence[Mapping[str, Any]],
    wall: float,
    limits: tuple[float | None, float | None, float | None],
    window: float,
    vendor: str = "anthropic",
) -> RowFigures:
    """`figures` for a token-bucket vendor: `limits` are (input, output, requests) per window.

    Each admitted request is charged `(charge, completion_tokens, 1)` (the emulator's ITPM
    charge, the output it produced, one request), in arrival order; the oracle is
    `token_bucket_span` of them and the floor the slowest dimension's fluid floor.
    """
    api = [r for r in records if r.get("vendor") == vendor and r.get("model")]
    times = [float(r["t"]) for r in api]
    span = max(times) - min(times) if times else 0.0
    admitted = sorted(
        (r for r in api if r.get("outcome") == "ok" and r.get("status") == 200),
        key=lambda r: float(r["t"]),
    )
    charges = [
        (float(r.get("charge") or 0), float(r.get("completion_tokens") or 0), 1.0)
        for r in admitted
    ]
    input_limit, output_limit, requests_limit = limits
    oracle = token_bucket_span(charges, input_limit, output_limit, window, requests_limit)
    floors = [
        fluid_floor([c[d] for c in charges], limit, window)
        for d, limit in enumerate((input_limit, output_limit, requests_limit))
        if limit is not None
    ]
    floor = max(floors, default=0.0)
    return RowFigures(
        requests=len(api),
        rejected=sum(1 for r in api if r.get("status") == 429),
        span=span,
        oracle={vendor: oracle} if charges else {},
        floor={vendor: floor} if charges else {},
        charged={vendor: float(sum(c[0] for c in charges))},
        span_over_oracle=span / oracle if oracle > 0 else None,
        wall_over_floor=wall / floor if floor > 0 and not math.isnan(wall) else None,
    )
