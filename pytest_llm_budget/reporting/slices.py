"""Time slices of a long run's chart: a series reduced to pixel resolution, its peaks kept."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["COLUMNS", "MAX_DRAWN_CALLS", "envelope", "slice_of"]

#: A bucket with more live calls than this gets a summarised chart.
MAX_DRAWN_CALLS = 1000
#: Time slices of a summarised chart: about two pixels each.
COLUMNS = 350


def slice_of(t: float, start: float, span: float) -> int:
    """The time slice (0 .. COLUMNS - 1) of a moment of the run."""
    return max(0, min(COLUMNS - 1, int((t - start) / span * COLUMNS)))


def envelope(
    corners: Sequence[tuple[float, float]], start: float, span: float
) -> list[tuple[float, float]]:
    """A line's (time, value) corners at pixel resolution: per time slice, where it enters, its
    highest and lowest values and where it leaves, all at the slice's left edge."""
    out: list[tuple[float, float]] = []
    column, enter, low, high, leave = -1, 0.0, 0.0, 0.0, 0.0
    for t, v in corners:
        at = slice_of(t, start, span)
        if at != column:
            if column >= 0:
                edge = start + column * span / COLUMNS
                out += [(edge, enter), (edge, high), (edge, low), (edge, leave)]
            column, enter, low, high = at, v, v, v
        low, high, leave = min(low, v), max(high, v), v
    if column >= 0:
        edge = start + column * span / COLUMNS
        out += [(edge, enter), (edge, high), (edge, low), (edge, leave)]
    return out
