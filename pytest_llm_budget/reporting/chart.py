"""The HTML report's picture of the run: its figures, an SVG chart per bucket, the slowest waits.

The chart plots the tokens held in each bucket's sliding window over the run against the
bucket's budget: every live call is one point (at its admission, its settled charge added: what
the window really held, after any refund), waits are drawn from when a call asked to when it got
in, 429s are marked at the top (a token-bucket bucket, Anthropic's, gets a chart per dimension
instead: `bucket_chart.py`). Everything is rebuilt from the JSON report's document, inline SVG,
no script, no network. No pytest here.
"""

from __future__ import annotations

import fnmatch
import html
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llm_budget.reporting.slices import COLUMNS, MAX_DRAWN_CALLS, slice_of

__all__ = [
    "CSS", "ChartPoint", "bucket_of", "chart_points", "test_id_html", "visible_sections",
]

CSS = """
.runfig{display:flex;flex-wrap:wrap;gap:.4em 1.6em;margin:.2em 0 .6em;padding:0}
.runfig div{display:flex;gap:.4em}.runfig dt{color:#666}.runfig dd{margin:0;font-weight:600}
.ok{color:#18794e}.warn{color:#b4470a}
svg.chart{display:block;margin:.3em 0 1em;max-width:100%;height:auto;background:#fff}
svg.chart text{font:12px system-ui,sans-serif;fill:#444}
svg.chart .title{font-weight:600;font-size:13px;fill:#222}
""".strip()

_W, _H = 920, 270
_L, _R, _T, _B = 64, 150, 30, 36  # margins: the legend sits on the right


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_ID_BREAKS = re.compile(r"(::|/|\[|-)")


def test_id_html(test_id: str) -> str:
    """A test id, escaped, that may wrap only after `::`, `/`, `-` and before `[` (`<wbr>`)."""
    out = []
    for part in _ID_BREAKS.split(test_id):
        if part == "[":
            out.append("<wbr>[")
        elif part in ("::", "/", "-"):
            out.append(f"{part}<wbr>")
        else:
            out.append(_esc(part))
    return "".join(out)


@dataclass(frozen=True)
class ChartPoint:
    """One live call as the chart draws it."""

    bucket: str
    test: str
    asked: float
    admitted: float
    charge: int
    in_window: int
    rate_limited: int
    waited_s: float
    status: str


def bucket_of(call: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """The bucket a call spent from: the first matching `--llm-limit` / `llm_limits` rule, else
    the fallback (one bucket per model under `--llm-tpm auto`)."""
    vendor, model = str(call.get("vendor", "")), str(call.get("model", "*"))
    for rule in [*(settings.get("cli_limits") or []), *(settings.get("limits") or [])]:
        pattern = str(rule).split()[0]
        rule_vendor, _, rule_model = pattern.partition(":")
        if fnmatch.fnmatchcase(vendor.lower(), rule_vendor.lower()) and fnmatch.fnmatchcase(
            model.lower(), rule_model.lower()
        ):
            return f"{vendor}:{rule_model}"
    return f"{vendor}:{model}" if settings.get("tpm") in (None, "auto") else f"{vendor}:*"


def _charge(call: Mapping[str, Any]) -> int:
    """What the window held for the call once settled (after Gemini's refunds, say)."""
    if "charged" in call:
        return int(call.get("charged") or 0)
    # a report written before records carried `charged`
    used = int(call.get("prompt_tokens") or 0) + int(call.get("completion_tokens") or 0)
    estimated = int(call.get("estimated") or 0)
    return max(estimated, used) if call.get("status") == "ok" else estimated


def chart_points(document: Mapping[str, Any]) -> dict[str, list[ChartPoint]]:
    """Every live (not replayed) call of the report as a point, per bucket, by admission."""
    settings = document.get("settings") or {}
    window = float(settings.get("window") or 60)
    per_bucket: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
    for call in document.get("calls") or []:
        if call.get("replayed") or call.get("attempts") == 0:
            continue  # replayed, or never admitted (refused, timed out, cancelled)
        admitted = float(call.get("t") or 0) + float(call.get("waited_s") or 0)
        per_bucket.setdefault(bucket_of(call, settings), []).append((admitted, call))
    points: dict[str, list[ChartPoint]] = {}
    for bucket, calls in sorted(per_bucket.items()):
        calls.sort(key=lambda pair: pair[0])
        held: deque[tuple[float, int]] = deque()
        in_window = 0
        out = []
        for admitted, call in calls:
            charge = _charge(call)
            while held and held[0][0] <= admitted - window:
                in_window -= held.popleft()[1]
            held.append((admitted, charge))
            in_window += charge
            out.append(
                ChartPoint(
                    bucket=bucket,
                    test=str(call.get("test", "")),
                    asked=float(call.get("t") or 0),
                    admitted=admitted,
                    charge=charge,
                    in_window=in_window,
                    rate_limited=int(call.get("rate_limit_events") or 0),
                    waited_s=float(call.get("waited_s") or 0),
                    status=str(call.get("status", "")),
                )
            )
        points[bucket] = out
    return points


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to about `top`."""
    if top <= 0:
        return [0.0]
    raw = top / count
    magnitude = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 0.1
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(top / step) + 1)]


def _fmt_tokens(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _svg(
    bucket: str,
    points: Sequence[ChartPoint],
    budget: int | None,
    window: float,
    start: float,
    end: float,
    first_test: float | None = None,
) -> str:
    """One bucket's chart; `first_test` marks when the first test began (after start-up); no
    budget line while its limit is not known (`--llm-tpm auto`)."""
    span = max(end - start, window * 0.25, 1e-3)
    # the held-tokens curve: +charge at admission, -charge one window later
    steps = sorted(
        [(p.admitted, p.charge) for p in points]
        + [(p.admitted + window, -p.charge) for p in points]
    )
    peak = max([p.in_window for p in points] + [budget or 0, 1])
    y_top = peak * 1.12
    plot_w, plot_h = _W - _L - _R, _H - _T - _B

    def x(t: float) -> float:
        return _L + max(0.0, min(1.0, (t - start) / span)) * plot_w

    def y(v: float) -> float:
        return _T + plot_h - v / y_top * plot_h

    summarised = len(points) > MAX_DRAWN_CALLS
    path = [f"M{x(start):.1f},{y(0):.1f}"]
    level = 0
    if not summarised:
        for t, delta in steps:
            if t > end:
                break
            path.append(f"L{x(t):.1f},{y(level):.1f}")
            level += delta
            path.append(f"L{x(t):.1f},{y(level):.1f}")
    else:  # one vertical stroke per column, from its lowest to its highest level
        column, enter, low, high = -1, 0, 0, 0
        for t, delta in [*steps, (end, 0)]:
            if t > end:
                break
            at = slice_of(t, start, span)
            if at != column:
                if column >= 0:
                    path.append(_stroke(x(start + column * span / COLUMNS), enter, low, high,
                                        level, y))  # fmt: skip
                column, enter, low, high = at, level, level, level
            level += delta
            low, high = min(low, level), max(high, level)
        if column >= 0:
            path.append(_stroke(x(start + column * span / COLUMNS), enter, low, high, level, y))
    path.append(f"L{x(end):.1f},{y(level):.1f}")
    line = " ".join(path)
    drawn = _summary_points(points, start, span) if summarised else list(points)
    top = max((p.in_window for p in points), default=0)
    area = f"{line} L{x(end):.1f},{y(0):.1f} Z"
    out = [
        f'<svg class="chart" data-bucket="{_esc(bucket)}" data-calls="{len(points)}" '
        f'data-drawn="{len(drawn)}" data-peak="{top}" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" '
        f'aria-label="tokens in the window of {_esc(bucket)}">',
        f'<text class="title" x="{_L}" y="18">{_esc(bucket)}: tokens in the sliding '
        f"{window:g}s window</text>",
    ]
    for v in _ticks(y_top):
        out.append(
            f'<line x1="{_L}" x2="{_L + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{_L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{_fmt_tokens(v)}</text>'
        )
    for s in _ticks(span, 8):
        out.append(
            f'<line x1="{x(start + s):.1f}" x2="{x(start + s):.1f}" y1="{_T + plot_h}" '
            f'y2="{_T + plot_h + 4}" stroke="#999"/>'
            f'<text x="{x(start + s):.1f}" y="{_T + plot_h + 17}" text-anchor="middle">'
            f"{s:g}s</text>"
        )
    out.append(
        f'<text x="{_L + plot_w / 2:.0f}" y="{_H - 4}" text-anchor="middle">'
        "seconds since the run started</text>"
    )
    out.append(f'<path class="held" d="{area}" fill="#dbe9fb" stroke="none"/>')
    out.append(f'<path d="{line}" fill="none" stroke="#2f6fce" stroke-width="1.6"/>')
    if budget is not None:
        out.append(
            f'<line class="budget" x1="{_L}" x2="{_L + plot_w}" y1="{y(budget):.1f}" '
            f'y2="{y(budget):.1f}" stroke="#d1342f" stroke-width="2" stroke-dasharray="7 4"/>'
            f'<text x="{_L + plot_w - 4}" y="{y(budget) - 6:.1f}" fill="#d1342f" '
            f'text-anchor="end">budget {budget} tokens</text>'
        )
    if first_test is not None and first_test - start > span * 0.01:
        fx = x(first_test)
        out.append(
            f'<line class="first-test" x1="{fx:.1f}" x2="{fx:.1f}" y1="{_T}" '
            f'y2="{_T + plot_h}" stroke="#888" stroke-dasharray="2 3"/>'
            f'<text x="{fx + 4:.1f}" y="{_T + 12}">first test at {first_test - start:.1f}s</text>'
        )
    for p in drawn:
        if p.waited_s > 0:
            out.append(
                f'<line class="wait" x1="{x(p.asked):.1f}" x2="{x(p.admitted):.1f}" '
                f'y1="{y(p.in_window):.1f}" y2="{y(p.in_window):.1f}" stroke="#e8890c" '
                'stroke-width="3" stroke-opacity=".75"/>'
            )
        if p.rate_limited:
            out.append(
                f'<path class="r429" d="M{x(p.asked) - 6:.1f},{_T - 2} '
                f'L{x(p.asked) + 6:.1f},{_T - 2} L{x(p.asked):.1f},{_T + 9} Z" fill="#d1342f">'
                f"<title>429 x{p.rate_limited}: {_esc(p.test)}</title></path>"
            )
    for p in drawn:
        fill = "#d1342f" if p.status != "ok" else "#2f6fce"
        out.append(
            f'<circle class="call" cx="{x(p.admitted):.1f}" cy="{y(p.in_window):.1f}" r="3.6" '
            f'fill="{fill}" stroke="#fff" stroke-width="1" data-t="{p.asked}" '
            f'data-tokens="{p.charge}" data-test="{_esc(p.test)}">'
            f"<title>{_esc(p.test)}: {p.charge} tokens, waited {p.waited_s:.1f}s</title>"
            "</circle>"
        )
    lx = _L + plot_w + 14
    legend = [
        ("line", "#2f6fce", "tokens held"),
        ("dash", "#d1342f", "budget"),
        ("dot", "#2f6fce", "a call"),
        ("wait", "#e8890c", "waiting"),
        ("tri", "#d1342f", "429"),
    ]
    for i, (kind, color, label) in enumerate(legend):
        ly = _T + 34 + i * 20
        if kind == "dot":
            mark = f'<circle cx="{lx + 9}" cy="{ly - 4}" r="3.6" fill="{color}"/>'
        elif kind == "tri":
            mark = f'<path d="M{lx + 3},{ly - 9} L{lx + 15},{ly - 9} L{lx + 9},{ly + 1} Z" ' \
                f'fill="{color}"/>'
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            width = 3 if kind == "wait" else 2
            mark = (
                f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                f'stroke-width="{width}"{dash}/>'
            )
        out.append(f'{mark}<text x="{lx + 24}" y="{ly}">{label}</text>')
    out.append("</svg>")
    if summarised:
        peak_at = next(p.admitted for p in points if p.in_window == top)
        out.append(
            f'<p class="meta chart-note" data-bucket="{_esc(bucket)}">{len(points)} calls, '
            f"summarised: the line is drawn at pixel resolution (each of {COLUMNS} time slices "
            "from its lowest to its highest level), and the dots are, per slice, the fullest "
            f"call, the longest wait, a failed call and a 429: {len(drawn)} of {len(points)}. "
            f"The peak, {top} tokens in the window at {peak_at - start:.1f}s, is drawn; every "
            "call is in the JSON report.</p>"
        )
    return "\n".join(out)


def _stroke(
    at: float, enter: int, low: int, high: int, leave: int, y: Callable[[float], float]
) -> str:
    """A column of the summarised line: across to it, then its whole range, then its exit."""
    return " ".join(f"L{at:.1f},{y(v):.1f}" for v in (enter, high, low, leave))


def _summary_points(points: Sequence[ChartPoint], start: float, span: float) -> list[ChartPoint]:
    """Per time slice: the fullest call, the longest wait, a failed call and a 429 (at most
    four a slice, so the global peak is always among them), in admission order."""
    best: dict[tuple[int, str], tuple[float, int]] = {}
    for i, p in enumerate(points):
        at = slice_of(p.admitted, start, span)
        for kind, score, wanted in (
            ("full", float(p.in_window), True),
            ("wait", p.waited_s, p.waited_s > 0),
            ("failed", float(p.in_window), p.status != "ok"),
            ("429", float(p.rate_limited), p.rate_limited > 0),
        ):
            if wanted and ((at, kind) not in best or score > best[(at, kind)][0]):
                best[(at, kind)] = (score, i)
    return [points[i] for i in sorted({i for _, i in best.values()})]


def _seconds(value: Any) -> str:
    return "\u2014" if value is None else f"{float(value):.1f}s"


def _run_figures(document: Mapping[str, Any]) -> str:
    """Wall time beside the preflight projection and the waits (the rest is in Totals)."""
    run = document.get("run") or {}
    totals = document.get("totals") or {}
    preflight = run.get("preflight") or None
    items: list[tuple[str, str, str]] = [("wall time", _seconds(run.get("wall_s")), "")]
    if preflight:
        qualifier = "at least" if preflight.get("lower_bound") else "about"
        wall = run.get("wall_s")
        held = wall is None or not preflight.get("lower_bound") or wall >= preflight["seconds"]
        items.append(
            (
                "preflight projection",
                f"{qualifier} {float(preflight['seconds']):.0f}s, ~{preflight['tokens']} tokens",
                "" if held else "warn",
            )
        )
    workers = int(run.get("workers") or 0)
    summed = f" summed over {workers} workers" if workers > 1 else ""
    items.append(("waited", _seconds(totals.get("waited_s", 0)) + summed, ""))
    first, started = run.get("first_test"), run.get("started")
    if first and started:
        items.append(("first test began", f"{float(first) - float(started):.1f}s in", ""))
    cells = "".join(
        f'<div><dt>{_esc(k)}</dt><dd class="{c}" data-run="{_esc(k)}">{_esc(v)}</dd></div>'
        for k, v, c in items
    )
    return f'<dl class="runfig">{cells}</dl>'


def _slowest_waits(points: Mapping[str, Sequence[ChartPoint]], start: float) -> str:
    waits = sorted(
        (p for ps in points.values() for p in ps if p.waited_s > 0),
        key=lambda p: -p.waited_s,
    )[:10]
    if not waits:
        return '<p class="empty">No call waited for budget.</p>'
    body = "\n".join(
        f'<tr><td class="n">{p.waited_s:.1f}s</td><td>{_esc(p.bucket)}</td>'
        f'<td class="n">{p.asked - start:.1f}s</td>'
        f'<td class="test">{test_id_html(p.test)}</td></tr>'
        for p in waits
    )
    return (
        '<table class="waits"><thead><tr><th>waited</th><th>bucket</th><th>asked at</th>'
        f"<th>test</th></tr></thead><tbody>\n{body}\n</tbody></table>"
    )


def visible_sections(document: Mapping[str, Any], tests_table: str) -> str:
    """The run figures, a chart per bucket, the given per-test table and the slowest waits."""
    settings = document.get("settings") or {}
    window = float(settings.get("window") or 60)
    calls = document.get("calls") or []
    points = chart_points(document)
    run = document.get("run") or {}
    every = [p for ps in points.values() for p in ps]
    start = float(run.get("started") or min((p.asked for p in every), default=0.0))
    end = float(run.get("finished") or max((p.admitted for p in every), default=start))
    end = max([end, *(p.admitted for p in every)])
    budgets = {
        str(b.get("name")): int(b["budget"]) if b.get("budget") else None
        for b in document.get("buckets") or []
    }
    first = float(run["first_test"]) if run.get("first_test") else None
    token_buckets = {
        str(b.get("name")): b
        for b in document.get("buckets") or []
        if b.get("admission") == "token_bucket"
    }
    charts = [
        _svg(bucket, ps, budgets.get(bucket), window, start, end, first)
        for bucket, ps in points.items()
        if bucket not in token_buckets
    ]
    if token_buckets:  # Anthropic: a chart per dimension of each token-bucket bucket
        from pytest_llm_budget.reporting.bucket_chart import dimension_charts

        for name, entry in token_buckets.items():
            live = [
                c for c in calls
                if not c.get("replayed") and c.get("attempts") != 0
                and bucket_of(c, settings) == name
            ]
            if live:
                charts += dimension_charts(entry, live, window, start, end)
    replayed = sum(1 for c in calls if c.get("replayed"))
    note = f'<p class="meta">{replayed} replayed call(s) spent nothing and are not drawn.</p>'
    return (
        f"<h2>Run</h2>\n{_run_figures(document)}\n"
        f"<h2>Tokens in the window</h2>\n"
        + ("\n".join(charts) if charts else '<p class="empty">No live LLM call.</p>')
        + (f"\n{note}" if replayed else "")
        + f"\n<h2>Tests by spend</h2>\n{tests_table}\n"
        f"<h2>Slowest waits</h2>\n{_slowest_waits(points, start)}\n"
    )
