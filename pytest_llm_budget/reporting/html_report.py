"""The `--llm-report PATH.html` page: the JSON report rendered as one self-contained HTML file.

No external assets and no JavaScript: inline CSS only, so the file can be attached to a CI run
and opened anywhere. Every piece of text comes from the report document and is HTML-escaped
(test ids carry `<`, `&` and quotes from parametrisation).
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pytest_llm_budget.reporting.chart import CSS as CHART_CSS
from pytest_llm_budget.reporting.chart import test_id_html, visible_sections

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
p.meta{color:#666;margin:0 0 1em}
table{border-collapse:collapse;margin:0 0 .5em}
th,td{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.test{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:normal;word-break:normal}
div.wide{overflow-x:auto;max-width:100%}
tr.bad td{background:#fff0f0}tr.over td{background:#fff8e6}tr.replayed td{color:#777}
dl.totals{display:flex;flex-wrap:wrap;gap:.4em 1.6em;margin:0}
dl.totals div{display:flex;gap:.4em}dl.totals dt{color:#666}dl.totals dd{margin:0;font-weight:600}
p.empty{color:#666;font-style:italic}
""".strip()

#: (JSON key, label) of the totals block, in display order (waits are in the Run figures).
_TOTALS = (
    ("calls", "calls"),
    ("replayed", "replayed"),
    ("total_tokens", "tokens"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("retries", "retries"),
    ("errors", "errors"),
    ("rate_limit_events", "429s"),
    ("cost_usd", "cost"),
    ("would_cost_usd", "replayed calls live"),
    ("cost_unknown", "unpriced calls"),
    ("cost_refused", "refused by cost cap"),
)

#: (JSON key, header, numeric) of the per-bucket table.
_BUCKET_COLUMNS = (
    ("name", "bucket", False),
    ("rule", "rule", False),
    ("budget", "budget", True),
    ("calls", "calls", True),
    ("attempts", "attempts", True),
    ("estimated", "estimated", True),
    ("actual", "actual", True),
    ("debt", "debt", True),
    ("deferrals", "deferrals", True),
    ("waited_s", "waited", True),
    ("rate_limit_events", "429s", True),
    ("cost_usd", "cost", True),
)

#: (row key, header, numeric) of the per-dimension table of token-bucket buckets (Anthropic).
_DIMENSION_COLUMNS = (
    ("bucket", "token-bucket bucket", False),
    ("dimension", "dimension", False),
    ("limit", "capacity", True),
    ("estimated", "charged at admission", True),
    ("actual", "settled", True),
    ("peak", "fullest after an admission", True),
)

#: (row key, header, numeric) of the one per-test table, sorted by spend.
_TEST_COLUMNS = (
    ("test", "test", False),
    ("total_tokens", "tokens", True),
    ("prompt_tokens", "prompt", True),
    ("completion_tokens", "completion", True),
    ("calls", "calls", True),
    ("replayed", "replayed", True),
    ("waits", "waits", True),
    ("cost_usd", "cost", True),
    ("declared", "declared tokens", True),
    ("spent", "spent tokens", True),
    ("duration_s", "duration", True),
    ("outcome", "outcome", False),
)

#: (JSON key, header, numeric) of the per-call table.
_CALL_COLUMNS = (
    ("t", "time (UTC)", False),
    ("test", "test", False),
    ("vendor", "vendor", False),
    ("model", "model", False),
    ("estimated", "estimated", True),
    ("prompt_tokens", "prompt", True),
    ("completion_tokens", "completion", True),
    ("status", "status", False),
    ("attempts", "attempts", True),
    ("rate_limit_events", "429s", True),
    ("waited_s", "waited", True),
    ("cost_usd", "cost", True),
    ("replayed", "replayed", False),
    ("worker", "worker", False),
)


#: Rows of the per-test table (the biggest spenders) and of the per-call table (the first
#: calls) before an "and N more" line: the JSON report lists them all.
MAX_TEST_ROWS = 500
MAX_CALL_ROWS = 1000


def _more(rest: int, one: str, many: str) -> str:
    """The line under a capped table, or nothing when the table shows every row."""
    if rest <= 0:
        return ""
    return (
        f'\n<p class="meta capped" data-more="{rest}">and {rest} more '
        f"{one if rest == 1 else many}, see the JSON report (--llm-report PATH.json)</p>"
    )


def _esc(value: object) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe in attributes as well)."""
    return html.escape(str(value), quote=True)


def _fmt(key: str, value: Any) -> str:
    """Display text of one report value: seconds with an `s`, booleans as yes/no, lists joined."""
    if key.endswith("cost_usd"):
        from pytest_llm_budget.cost.prices import usd

        return usd(value) if isinstance(value, (int, float)) or value is None else str(value)
    if value is None:
        return "auto" if key == "budget" else "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "t" and isinstance(value, (int, float)):
        stamp = _dt.datetime.fromtimestamp(float(value), tz=_dt.timezone.utc)
        return stamp.strftime("%H:%M:%S")
    if key.endswith(("waited_s", "duration_s")) and isinstance(value, (int, float)):
        return f"{float(value):.1f}s"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) if value else "\u2014"
    return str(value)


def _table(
    columns: Sequence[tuple[str, str, bool]],
    rows: Iterable[Mapping[str, Any]],
    *,
    css: str,
    row_class: Callable[[Mapping[str, Any]], str] | None = None,
) -> str:
    """A table with one header row and one row per mapping (missing keys shown as a dash)."""
    head = "".join(f"<th>{_esc(label)}</th>" for _, label, _ in columns)
    body: list[str] = []
    for row in rows:
        cells = []
        for key, _, numeric in columns:
            cls = ' class="n"' if numeric else (' class="test"' if key == "test" else "")
            text = _fmt(key, row.get(key))
            cells.append(f"<td{cls}>{test_id_html(text) if key == 'test' else _esc(text)}</td>")
        extra = row_class(row) if row_class else ""
        attr = f' class="{extra}"' if extra else ""
        body.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return (
        f'<div class="wide"><table class="{css}"><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{chr(10).join(body)}\n</tbody></table></div>"
    )


def _dimension_rows(buckets: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A row per dimension of each token-bucket bucket (input, output, requests)."""
    order = ("input_tokens", "output_tokens", "requests")
    rows = []
    for b in buckets:
        dims = b.get("dimensions") or {}
        for name in sorted(dims, key=lambda d: order.index(d) if d in order else len(order)):
            figures = dims[name]
            if isinstance(figures, Mapping):
                rows.append({"bucket": b.get("name"), "dimension": name.replace("_", " "),
                             **figures})  # fmt: skip
    return rows


def _call_class(row: Mapping[str, Any]) -> str:
    """Row class of a call: `replayed`, `bad` (not ok), or nothing."""
    if row.get("status", "ok") != "ok":
        return "bad"
    return "replayed" if row.get("replayed") else ""


def _call_row(call: Mapping[str, Any]) -> dict[str, Any]:
    """A call as displayed: an error code, when there is one, joins the status."""
    from pytest_llm_budget.cost.prices import usd

    row = dict(call)
    if row.get("error_code"):
        row["status"] = f"{row.get('status', '')} ({row['error_code']})"
    if row.get("replayed") and "would_cost_usd" in row:
        row["cost_usd"] = f"$0 (live {usd(row['would_cost_usd'])})"
    return row


def _test_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's tests with their waits, cost notes and overspend, the biggest spender first."""
    from pytest_llm_budget.cost.prices import usd

    waits: dict[str, list[float]] = {}
    for call in document.get("calls") or []:
        waited = float(call.get("waited_s") or 0)
        if waited > 0:
            waits.setdefault(str(call.get("test", "")), []).append(waited)
    overspent = {o.get("test"): o for o in document.get("overspent") or []}
    rows = []
    for entry in document.get("tests") or []:
        row = dict(entry)
        test = str(row.get("test", ""))
        row["total_tokens"] = int(row.get("prompt_tokens") or 0) + int(
            row.get("completion_tokens") or 0
        )
        row["waits"] = _waits(waits.get(test, []))
        notes = [usd(row.get("cost_usd") or 0.0)]
        if row.get("would_cost_usd"):
            notes.append(f"replayed calls live {usd(row['would_cost_usd'])}")
        if row.get("cost_unknown"):
            notes.append(f"{row['cost_unknown']} unpriced")
        if row.get("cost_refused"):
            notes.append(f"{row['cost_refused']} refused (cost cap)")
        row["cost_usd"] = "; ".join(notes)
        row.update(overspent.get(test) or {})
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["total_tokens"], str(r.get("test", ""))))


def _waits(waits: Sequence[float]) -> str:
    """A test's waits for budget: `—`, or `12.3s (2 calls)` (`<0.1s` when that rounds to 0)."""
    if not waits:
        return "\u2014"
    total = sum(waits)
    seconds = f"{total:.1f}s" if total >= 0.05 else "<0.1s"
    return f"{seconds} ({len(waits)} call{'' if len(waits) == 1 else 's'})"


def _test_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, str, bool], ...]:
    """The per-test columns; declared/spent only when some test spent more than it declared."""
    if any("declared" in row for row in rows):
        return _TEST_COLUMNS
    return tuple(c for c in _TEST_COLUMNS if c[0] not in ("declared", "spent"))


def _test_class(row: Mapping[str, Any]) -> str:
    """Row class of a test: `bad` (failed or errored), `over` (spent more than declared)."""
    if row.get("outcome") in ("failed", "error"):
        return "bad"
    return "over" if "declared" in row else ""


def _rate_limits(document: Mapping[str, Any]) -> int:
    """429s as the terminal summary counts them: the larger of the calls' and the buckets' sums."""
    totals = document.get("totals") or {}
    buckets = document.get("buckets") or []
    by_buckets = sum(int(b.get("rate_limit_events", 0) or 0) for b in buckets)
    return max(int(totals.get("rate_limit_events", 0) or 0), by_buckets)


def render_html(document: dict[str, Any]) -> str:
    """The whole HTML page of one report document (`report.build_report`'s shape)."""
    settings: Mapping[str, Any] = document.get("settings") or {}
    totals: dict[str, Any] = dict(document.get("totals") or {})
    totals["rate_limit_events"] = _rate_limits(document)
    buckets: Sequence[Mapping[str, Any]] = document.get("buckets") or []
    every_call: Sequence[Mapping[str, Any]] = document.get("calls") or []
    calls = [_call_row(c) for c in every_call[:MAX_CALL_ROWS]]

    totals_html = "".join(
        f'<div><dt>{_esc(label)}</dt><dd data-key="{_esc(key)}">'
        f"{_esc(_fmt(key, totals.get(key, 0)))}</dd></div>"
        for key, label in _TOTALS
    )
    settings_rows = [{"setting": k, "value": _fmt(k, v)} for k, v in settings.items()]
    settings_html = _table(
        (("setting", "setting", False), ("value", "value", False)), settings_rows, css="settings"
    )
    buckets_html = (
        _table(_BUCKET_COLUMNS, buckets, css="buckets")
        if buckets
        else '<p class="empty">No live LLM call reserved budget.</p>'
    )
    dimensions = _dimension_rows(buckets)
    if dimensions:
        buckets_html += "\n" + _table(_DIMENSION_COLUMNS, dimensions, css="dimensions")
    limits = document.get("limits") or []
    if limits:
        items = "".join(f"<li>{_esc(line)}</li>" for line in limits)
        buckets_html += (
            '\n<p class="meta">Limits the servers stated, lower than configured:</p>'
            f'\n<ul class="limits">{items}</ul>'
        )
    tests = _test_rows(document)
    tests_html = (
        _table(_test_columns(tests), tests[:MAX_TEST_ROWS], css="tests", row_class=_test_class)
        + _more(len(tests) - MAX_TEST_ROWS, "test", "tests")
        if tests
        else '<p class="empty">No test called an LLM.</p>'
    )
    overspent = sum("declared" in row for row in tests)
    if overspent:
        tests_html += (
            f'\n<p class="meta">{overspent} test(s) spent more than they declared '
            "(highlighted; raise their llm_budget(tokens=...)).</p>"
        )
    calls_html = (
        _table(_CALL_COLUMNS, calls, css="calls", row_class=_call_class)
        + _more(len(every_call) - MAX_CALL_ROWS, "call", "calls")
        if calls
        else '<p class="empty">No LLM call was recorded.</p>'
    )
    backend = (document.get("run") or {}).get("backend") or settings.get("backend")
    meta = f"{len(every_call)} call(s), {len(buckets)} bucket(s)"
    if backend:
        meta += f", backend {backend}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>LLM budget report</title>"
        f"<style>{_CSS}\n{CHART_CSS}</style></head>\n<body>\n"
        "<h1>LLM budget</h1>\n"
        f'<p class="meta">{_esc(meta)}</p>\n'
        f'<h2>Totals</h2>\n<dl class="totals">{totals_html}</dl>\n'
        f"{_baseline_section(document.get('baseline'))}"
        f"{visible_sections(document, tests_html)}"
        f"<h2>Buckets</h2>\n{buckets_html}\n"
        f"<h2>Calls</h2>\n{calls_html}\n"
        f"<h2>Settings</h2>\n{settings_html}\n"
        "</body></html>\n"
    )


def _baseline_section(baseline: Mapping[str, Any] | None) -> str:
    """`--llm-baseline`: total and per-test changes (report's `baseline` entry), or nothing."""
    if not isinstance(baseline, Mapping):
        return ""
    from pytest_llm_budget.reporting.baseline import FIELDS, change_cells, count_text, plain

    labels = {"tokens": "tokens", "cost_usd": "cost", "waited_s": "waited", "calls": "calls"}
    totals = baseline.get("totals") or {}
    cells = change_cells(totals)
    total_rows = [
        {"figure": labels[f], "before": plain(f, totals.get("before")),
         "after": plain(f, totals.get("after")), "change": cells[f]}
        for f in FIELDS
    ]
    columns = (("figure", "", False), ("before", "baseline", True),
               ("after", "this run", True), ("change", "change", True))
    parts = [f"<h2>Against the baseline {_esc(baseline.get('path', ''))}</h2>"]
    if baseline.get("failure"):
        parts.append(f'<p class="meta"><strong>Failed:</strong> {_esc(baseline["failure"])}</p>')
    parts.append(_table(columns, total_rows, css="baseline"))
    parts.append(f'<p class="meta">{_esc(count_text(baseline.get("counts") or {}))}.</p>')
    test_rows = []
    for entry in baseline.get("tests") or []:
        row: dict[str, Any] = {"test": entry.get("test", ""), "status": entry.get("status", "")}
        row.update(change_cells(entry, ("tokens", "cost_usd", "waited_s")))
        row["cost"] = row.pop("cost_usd")
        row["waited"] = row.pop("waited_s")
        test_rows.append(row)
    if test_rows:
        test_columns = (("test", "test", False), ("status", "status", False),
                        ("tokens", "tokens", True),
                        ("cost", "cost", True), ("waited", "waited", True))
        parts.append(_table(test_columns, test_rows, css="baseline-tests"))
    return "\n".join(parts) + "\n"
