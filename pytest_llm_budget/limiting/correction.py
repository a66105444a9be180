"""The learned correction: a factor on the guessed part of estimates, taught by the server.

An estimate is `fixed + uncertain` tokens (the uncertain part is a guess, such as the input
count of a request we could not tokenize exactly); a bucket charges `fixed + factor x
uncertain`. What the server reports teaches the factor: up at once when it counts more than we
did, down by steps toward the upper bound its figures put on the factor (`factor_bound`).
`WindowState` keeps the factor and the probes; `backends/redis_window.lua` ports these rules
(`learn`, the bound in `observe`): change both together.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llm_budget.limiting.admission import Limits

__all__ = ["FACTOR_STEP_DOWN", "Probe", "corrected", "factor_bound", "learned"]

#: How far the factor moves toward a lower value per observation (it rises at once).
FACTOR_STEP_DOWN = 0.3

# A probe is [time, fixed, uncertain, admit_seq, seen_seq]: what a request's estimate was made
# of, and in which order it was admitted and (once its answer came back) seen by the server.
Probe = list[float]


def corrected(estimate: int, uncertain: int, factor: float, limit: int) -> int:
    """The charge for an estimate whose `uncertain` part is scaled by the learned factor."""
    if uncertain <= 0 or factor == 1.0:
        return int(estimate)
    fixed = int(estimate) - int(uncertain)
    return max(1, min(int(limit), fixed + math.ceil(int(uncertain) * factor)))


def learned(factor: float, bound: float, limits: Limits) -> float:
    """The factor moved toward `bound`: up at once, down by a step, within floor and cap."""
    if bound >= factor:
        return min(limits.factor_cap, bound)
    return max(limits.factor_floor, factor - FACTOR_STEP_DOWN * (factor - bound))


def factor_bound(
    limits: Limits,
    ticket: str,
    probes: dict[str, Probe],
    server_limit: int,
    server_used: int,
    now: float,
    reset_s: float | None,
) -> float:
    """The highest factor the server's figure allows, from the probe of `ticket`.

    Every request this bucket saw answered before `ticket` was admitted had reached the server
    before `ticket` did, so for each suffix K of those (newest first, `ticket` included, all
    inside the server's window) `server_used + drain >= sum(fixed + f * uncertain over K)`. The
    drain covers a token-bucket server refilling meanwhile (server_limit / window per second
    since the oldest of K); it is 0 when the server's reset time (`reset_s`, about a whole
    window while the window is not full) says it keeps every charge for its window. Requests
    still in flight, or other processes' requests not yet answered, are left out: they can only
    make the server look fuller, never emptier, so the bound never falls below the truth. The
    server is taken to have admitted `ticket` within the margin of its leaving.
    """
    probe = probes[ticket]
    arrived = min(now, probe[0] + (limits.span - limits.window))
    sliding = (
        reset_s is not None
        and reset_s >= 0.9 * limits.window
        and server_used < 0.85 * server_limit
    )
    rate = 0.0 if sliding else server_limit / limits.window
    horizon = arrived - limits.window
    known = sorted(
        (p for k, p in probes.items()
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
    return bound
