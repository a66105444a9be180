"""The `LLM budget` terminal summary and the JSON report, from bucket stats and call records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from pytest_llm_budget.atomic import PUBLIC, write_atomically
from pytest_llm_budget.limiting.buckets import BucketStats, LimitRule, rule_for
from pytest_llm_budget.records import CallRecord, Overspend, Totals

__all__ = [
    "backend_label",
    "bucket_costs",
    "build_report",
    "cost_line",
    "dimension_lines",
    "limit_lines",
    "overspend_lines",
    "summary_lines",
    "write_report",
]

MAX_OVERSPEND_LINES = 10

_HEADER = (
    "bucket",
    "budget",
    "calls",
    "attempts",
    "estimated",
    "actual",
    "debt",
    "deferrals",
    "waited",
    "429s",
    "cost",
)


def bucket_costs(
    records: Sequence[CallRecord], rules: Sequence[LimitRule]
) -> dict[str, tuple[float, int]]:
    """Dollars of each bucket's live calls, and how many of them have no known price."""
    out: dict[str, tuple[float, int]] = {}
    for r in records:
        if r.replayed:
            continue
        rule = rule_for(rules, r.vendor, r.model)
        name = rule.bucket_name(r.vendor, r.model)
        cost, unknown = out.get(name, (0.0, 0))
        out[name] = (cost + (r.cost_usd or 0.0), unknown + int(r.cost_usd is None))
    return {name: (round(cost, 12), unknown) for name, (cost, unknown) in out.items()}


def _cost_cell(cost: float, unknown: int) -> str:
    """`$0.01234`, `unknown`, or `$0.01234 + 2 unknown`."""
    from pytest_llm_budget.cost.prices import usd

    if not unknown:
        return usd(cost)
    return "unknown" if not cost else f"{usd(cost)} + {unknown} unknown"


def cost_line(totals: Totals, records: Sequence[CallRecord], max_cost: float | None) -> str:
    """The summary's cost line: spend, replayed calls' live price, unpriced models, refusals."""
    from pytest_llm_budget.cost.prices import usd

    # sent: admitted at least once (not refused, timed out, cancelled while waiting, replayed)
    sent = sum(1 for r in records if not r.replayed and r.attempts > 0)
    plural = "" if sent == 1 else "s"
    text = f"cost: {_cost_cell(totals.cost_usd, totals.cost_unknown)} ({sent} live call{plural})"
    if totals.replayed:
        text += f", replayed calls cost $0 (live they would have cost {usd(totals.would_cost_usd)})"
    unpriced = sorted({f"{r.vendor}:{r.model}" for r in records if r.cost_unknown})
    if unpriced:
        text += f"; no price for {', '.join(unpriced)}"
    if max_cost is not None:
        text += f"; cap {usd(max_cost)}"
    if totals.cost_refused:
        plural = "" if totals.cost_refused == 1 else "s"
        text += f"; {totals.cost_refused} call{plural} refused by the cost cap (LLM_COST_CAP)"
    return text


def limit_lines(buckets: Sequence[BucketStats]) -> list[str]:
    """One line per bucket whose pace a server's stated limit sets (lower than configured, or
    nothing configured): `openai:gpt-4o-mini: the server allows 6000 tokens per window,
    configured 30000: using 6000`."""
    lines = []
    for b in buckets:
        parts = []
        for what, server, configured in (
            ("tokens", b.server_tpm, b.tpm),
            ("requests", b.server_rpm, b.rpm),
        ):
            if server is None or (configured is not None and configured <= server):
                continue
            told = configured if configured is not None else (
                "auto" if what == "tokens" else "none"
            )
            parts.append(
                f"the server allows {server} {what} per window, configured {told}: using {server}"
            )
        if parts:
            lines.append(f"{b.name}: {'; '.join(parts)}")
    return lines


def _budget_cell(budget: int | None, window: float, token_bucket: bool = False) -> str:
    """`5100/6s` (`in 1500/60s` for a token bucket's input), or `auto/6s` while the limit is
    not known."""
    return f"{'in ' if token_bucket else ''}{'auto' if budget is None else budget}/{window:g}s"


def overspend_lines(overspent: Sequence[Overspend]) -> list[str]:
    """One line per test that spent more than its marker declared (the first ten, then a count)."""
    lines = [
        f"overspent: {o.test} declared {o.declared} tokens, spent {o.spent} "
        f"(+{(o.spent - o.declared) / o.declared:.0%}); raise its llm_budget(tokens=...)"
        for o in overspent[:MAX_OVERSPEND_LINES]
    ]
    if len(overspent) > MAX_OVERSPEND_LINES:
        rest = len(overspent) - MAX_OVERSPEND_LINES
        lines.append(f"overspent: {rest} more test(s), listed in the JSON report's `overspent`")
    return lines


def summary_lines(
    buckets: Sequence[BucketStats],
    totals: Totals,
    *,
    window: float,
    backend: str,
    costs: dict[str, tuple[float, int]] | None = None,
    overspent: Sequence[Overspend] = (),
    calls_by_bucket: Mapping[str, int] | None = None,
    workers: int = 0,
) -> list[str]:
    """Rows of the summary: one per bucket, a totals line that says `429s: N`, then overspends.

    A bucket's `calls` are logical calls (from `calls_by_bucket`), its `attempts` the admissions
    (one per HTTP try); `workers` > 1 labels waited seconds as summed over the xdist workers.
    """
    costs = costs or {}
    calls_of = calls_by_bucket or {}
    rows = [
        (
            b.name,
            _budget_cell(b.budget, window, bool(b.dimensions)),
            str(calls_of.get(b.name, b.calls)),
            str(b.calls),
            str(b.estimated),
            str(b.actual),
            str(b.debt),
            str(b.deferrals),
            f"{b.waited_s:.1f}s",
            str(b.rate_limit_events),
            _cost_cell(*costs.get(b.name, (0.0, 0))),
        )
        for b in buckets
    ]
    lines: list[str] = []
    if rows:
        table = [_HEADER, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
        for row in table:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(cells).rstrip())
        lines += dimension_lines(buckets, window)
    else:
        lines.append("no live LLM call reserved budget")
    rate_limits = max(totals.rate_limit_events, sum(b.rate_limit_events for b in buckets))
    summed = f" summed over {workers} workers" if workers > 1 else ""
    lines.append(
        f"totals: calls: {totals.calls} (replayed: {totals.replayed}), "
        f"tokens: {totals.total_tokens} (prompt {totals.prompt_tokens}, "
        f"completion {totals.completion_tokens}), retries: {totals.retries}, "
        f"waited: {totals.waited_s:.1f}s{summed}, errors: {totals.errors}, 429s: {rate_limits}"
        f" [backend {backend_label(backend)}]"
    )
    return lines + limit_lines(buckets) + overspend_lines(overspent)


#: How the summary names each dimension of a token-bucket bucket.
_DIMENSION_LABELS = {"input_tokens": "in", "output_tokens": "out", "requests": "req"}


def dimension_lines(buckets: Sequence[BucketStats], window: float) -> list[str]:
    """One line per token-bucket bucket: each dimension's fullest after an admission over its
    capacity, e.g. `anthropic:claude-sonnet-4*  in 1490/1500  out 790/800  req 12/50`."""
    lines = []
    for b in buckets:
        if not b.dimensions:
            continue
        cells = [
            f"{_DIMENSION_LABELS.get(name, name)} {d.peak}/{d.limit}"
            for name, d in sorted(b.dimensions.items(), key=lambda kv: _dimension_order(kv[0]))
        ]
        lines.append(f"{b.name}  {'  '.join(cells)}  (peak / capacity per {window:g}s)")
    return lines


def _dimension_order(name: str) -> int:
    order = list(_DIMENSION_LABELS)
    return order.index(name) if name in order else len(order)


def backend_label(description: str) -> str:
    """`file: PATH` for the file backend; others as described (Redis passwords are masked)."""
    kind, _, rest = description.partition(":")
    return f"file: {rest}" if kind == "file" and rest else description


def build_report(
    settings: dict[str, Any],
    totals: Totals,
    buckets: Sequence[BucketStats],
    calls: Sequence[CallRecord],
    rules: Sequence[LimitRule] = (),
    overspent: Sequence[Overspend] = (),
    calls_by_bucket: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The JSON report's document (README's "Reports and metrics"): costs, tests, overspends;
    bucket `calls` are logical calls, `attempts` the HTTP tries admitted."""
    costs = bucket_costs(calls, rules) if rules else {}
    calls_of = calls_by_bucket or {}
    return {
        "settings": settings,
        "totals": totals.to_json(),
        "buckets": [
            {
                "name": b.name,
                "rule": b.rule,
                "budget": b.budget,
                "limits": {
                    "configured": {"tokens": b.tpm, "requests": b.rpm},
                    "server": {"tokens": b.server_tpm, "requests": b.server_rpm},
                },
                "calls": calls_of.get(b.name, b.calls),
                "attempts": b.calls,
                "estimated": b.estimated,
                "actual": b.actual,
                "debt": b.debt,
                "deferrals": b.deferrals,
                "waited_s": round(b.waited_s, 3),
                "rate_limit_events": b.rate_limit_events,
                "cost_usd": costs.get(b.name, (0.0, 0))[0],
                "cost_unknown": costs.get(b.name, (0.0, 0))[1],
                "admission": b.admission,
                **({"dimensions": {k: asdict(d) for k, d in b.dimensions.items()}}
                   if b.dimensions else {}),
            }
            for b in buckets
        ],
        "limits": limit_lines(buckets),
        "tests": _tests(calls),
        "calls": [c.to_json() for c in calls],
        "overspent": [o.to_json() for o in overspent],
    }


def _tests(calls: Sequence[CallRecord]) -> list[dict[str, Any]]:
    """Per-test sums, in first-call order: calls, tokens and dollars."""
    tests: dict[str, dict[str, Any]] = {}
    for c in calls:
        t = tests.setdefault(
            c.test,
            {
                "test": c.test,
                "calls": 0,
                "replayed": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "would_cost_usd": 0.0,
                "cost_unknown": 0,
                "cost_refused": 0,
            },
        )
        t["calls"] += 1
        t["replayed"] += int(c.replayed)
        t["prompt_tokens"] += c.prompt_tokens
        t["completion_tokens"] += c.completion_tokens
        t["cost_usd"] += c.cost_usd or 0.0
        t["would_cost_usd"] += c.would_cost_usd or 0.0
        t["cost_unknown"] += int(c.cost_unknown)
        t["cost_refused"] += int(c.error_code == "LLM_COST_CAP")
    for t in tests.values():
        t["cost_usd"] = round(t["cost_usd"], 12)
        t["would_cost_usd"] = round(t["would_cost_usd"], 12)
    return list(tests.values())


def write_report(path: str, document: dict[str, Any]) -> None:
    """Write the report as JSON (.json), a self-contained HTML page (.html) or Markdown (.md)."""
    if path.lower().endswith((".html", ".htm")):
        from pytest_llm_budget.reporting.html_report import render_html

        text = render_html(document)
    elif path.lower().endswith(".md"):
        from pytest_llm_budget.reporting.markdown import render_markdown

        text = render_markdown(document)
    else:
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    write_atomically(path, text.encode("utf-8"), PUBLIC)
