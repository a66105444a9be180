"""The HTML report's picture of a token-bucket bucket (Anthropic): one SVG chart per dimension.

Each chart plots what the dimension's bucket held spent over the run against its capacity: a
live call adds its charge at its admission (input: `input_tokens + cache_creation_input_tokens`
as reported, else the estimate; output: the output tokens reported, which the bucket is charged
when the answer ends; requests: one), and the bucket drains at capacity / window per second,
never below empty. Rebuilt from the JSON report's document, inline SVG, no script. No pytest here.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_llm_budget.limiting.buckets import UNKNOWN_TOKENS
from pytest_llm_budget.reporting.slices import COLUMNS, MAX_DRAWN_CALLS, envelope, slice_of

__all__ = ["DIMENSION_TITLES", "dimension_charges", "dimension_charts"]

#: Chart titles of each dimension, in the order the charts appear.
DIMENSION_TITLES = {
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "requests": "requests",
}

_W, _H = 920, 220
_L, _R, _T, _B = 64, 150, 30, 36


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def dimension_charges(call: Mapping[str, Any], dimension: str) -> float:
    """What one call charged a dimension, as its record tells it."""
    if dimension == "requests":
        return 1.0
    if dimension == "output_tokens":
        return float(call.get("completion_tokens") or 0)
    prompt = int(call.get("prompt_tokens") or 0)
    if call.get("status") == "ok" and prompt:
        return float(prompt - int(call.get("cached_tokens") or 0))
    return float(call.get("estimated") or 0)


def _levels(
    events: Sequence[tuple[float, float]], capacity: float, window: float, end: float
) -> list[tuple[float, float]]:
    """(time, spent) corners of the bucket's spent level: up by each charge, down at
    capacity / window per second to empty."""
    rate = capacity / window
    corners: list[tuple[float, float]] = []
    spent, now = 0.0, events[0][0] if events else 0.0
    for at, charge in [*events, (end, 0.0)]:
        if at > now and spent > 0:
            empty_at = now + spent / rate
            if empty_at < at:
                corners.append((empty_at, 0.0))
                spent = 0.0
            else:
                spent -= rate * (at - now)
                corners.append((at, spent))
        now = max(now, at)
        corners.append((now, spent))
        spent += charge
        corners.append((now, spent))
    return corners


def _svg(
    bucket: str,
    dimension: str,
    events: Sequence[tuple[float, float]],
    capacity: int,
    window: float,
    start: float,
    end: float,
) -> str:
    corners = _levels(events, float(capacity), window, end)
    top = max([capacity, *(v for _, v in corners)]) * 1.12 or 1.0
    span = max(end - start, window * 0.25, 1e-3)
    plot_w, plot_h = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return _L + max(0.0, min(1.0, (t - start) / span)) * plot_w

    def y(v: float) -> float:
        return _T + plot_h - max(0.0, v) / top * plot_h

    summarised = len(events) > MAX_DRAWN_CALLS
    drawn = list(events)
    if summarised:  # the line at pixel resolution, the biggest charge of each time slice
        corners = envelope(corners, start, span)
        biggest: dict[int, tuple[float, float]] = {}
        for at, charge in events:
            column = slice_of(at, start, span)
            if column not in biggest or charge > biggest[column][1]:
                biggest[column] = (at, charge)
        drawn = sorted(biggest.values())
    title = DIMENSION_TITLES.get(dimension, dimension)
    line = " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in
                    enumerate(corners))  # fmt: skip
    out = [
        f'<svg class="chart dimension" data-bucket="{_esc(bucket)}" '
        f'data-dimension="{_esc(dimension)}" data-calls="{len(events)}" '
        f'data-drawn="{len(drawn)}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="{_esc(title)} spent in the token bucket of {_esc(bucket)}">',
        f'<text class="title" x="{_L}" y="18">{_esc(bucket)}: {_esc(title)} spent in its token '
        f"bucket (refills {capacity} per {window:g}s)</text>",
        f'<path class="spent" d="{line}" fill="none" stroke="#2f6fce" stroke-width="1.6"/>',
        f'<line class="capacity" x1="{_L}" x2="{_L + plot_w}" y1="{y(capacity):.1f}" '
        f'y2="{y(capacity):.1f}" stroke="#d1342f" stroke-width="2" stroke-dasharray="7 4"/>'
        f'<text x="{_L + plot_w + 6}" y="{y(capacity) + 4:.1f}" fill="#d1342f">capacity '
        f"{capacity}</text>",
        f'<text x="{_L - 6}" y="{y(0) + 4:.1f}" text-anchor="end">0</text>',
        f'<text x="{_L + plot_w / 2:.0f}" y="{_H - 4}" text-anchor="middle">'
        f"seconds since the run started (0 to {span:.0f}s)</text>",
    ]
    for at, charge in drawn:
        out.append(
            f'<circle class="call" cx="{x(at):.1f}" cy="{y(0):.1f}" r="2.6" fill="#2f6fce" '
            f'data-charge="{charge:g}"><title>{charge:g} at {at - start:.1f}s</title></circle>'
        )
    out.append("</svg>")
    if summarised:
        out.append(
            f'<p class="meta chart-note" data-bucket="{_esc(bucket)}">{len(events)} calls, '
            f"summarised: the line at pixel resolution ({COLUMNS} time slices, each from its "
            f"lowest to its highest level), a mark for the biggest charge of each slice "
            f"({len(drawn)} of {len(events)}); the fullest point, "
            f"{max(v for _, v in corners):g} spent, is on the line; every call is in the JSON "
            "report.</p>"
        )
    return "\n".join(out)


def dimension_charts(
    bucket: Mapping[str, Any],
    calls: Sequence[Mapping[str, Any]],
    window: float,
    start: float,
    end: float,
) -> list[str]:
    """One chart per limited dimension of a token-bucket bucket's JSON entry, from its calls."""
    dims = bucket.get("dimensions") or {}
    name = str(bucket.get("name", ""))
    charts = []
    admitted = sorted(
        ((float(c.get("t") or 0) + float(c.get("waited_s") or 0), c) for c in calls),
        key=lambda pair: pair[0],
    )
    for dimension in DIMENSION_TITLES:
        entry = dims.get(dimension)
        if not isinstance(entry, Mapping) or not 0 < int(entry.get("limit") or 0) < UNKNOWN_TOKENS:
            continue  # not limited, or its limit not known yet (`--llm-tpm auto`)
        events = [(at, dimension_charges(c, dimension)) for at, c in admitted]
        charts.append(
            _svg(name, dimension, events, int(entry["limit"]), window, start, end)
        )
    return charts
