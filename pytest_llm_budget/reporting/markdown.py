"""The `--llm-report PATH.md` report and the GitHub job summary: the JSON report as Markdown.

GitHub-flavoured tables that read well in a pull-request comment or a job summary (GitLab renders
them too). Every figure comes from the report document (report.py, with the run's figures and the
`baseline` entry), the data the HTML report shows. Test ids go in code spans; a `|` in any cell
is escaped, and `<`, `&` outside code spans are written as entities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_llm_budget.reporting.baseline import FIELDS, change_cells, count_text, plain

__all__ = ["render_markdown"]

#: Rows in the "most tokens" and "longest waits" tables.
TOP = 10
#: Rows of the refused-calls, overspent and baseline tables before "and N more".
MAX_ROWS = 20

DASH = "\u2014"
#: A call waited when it waited this long (shorter ones are the send itself, shown as 0.0s).
WAIT_SHOWN_S = 0.05

#: (JSON key, header) of the bucket table; keys a bucket has beyond these get columns of their own.
_BUCKET_COLUMNS = (
    ("name", "bucket"),
    ("rule", "rule"),
    ("budget", "budget"),
    ("calls", "calls"),
    ("attempts", "attempts"),
    ("estimated", "estimated"),
    ("actual", "actual"),
    ("debt", "debt"),
    ("deferrals", "deferrals"),
    ("waited_s", "waited"),
    ("rate_limit_events", "429s"),
    ("cost_usd", "cost"),
)
_BUCKET_TEXT = frozenset({"name", "rule"})
#: Folded into another cell (cost_unknown into cost).
_BUCKET_FOLDED = frozenset({"cost_unknown"})
_LABELS = {"tokens": "tokens", "cost_usd": "cost", "waited_s": "waited", "calls": "calls"}


# -- cells ----------------------------------------------------------------------------------------
_MARKUP = re.compile(r"([\\`*_\[\]~|])")


def _text(value: object) -> str:
    """A plain-text cell: one line, Markdown's markup characters escaped, no HTML."""
    text = " ".join(str(value).split())
    return _MARKUP.sub(r"\\\1", text.replace("&", "&amp;").replace("<", "&lt;"))


def _code(value: object) -> str:
    """A code-span cell (test ids): fenced past any backticks inside, `|` escaped."""
    text = " ".join(str(value).split())
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _int(value: Any) -> str:
    return f"{int(value or 0):,}"


def _usd(value: Any) -> str:
    from pytest_llm_budget.cost.prices import usd

    return usd(value) if value is None or isinstance(value, (int, float)) else _text(value)


def _seconds(value: Any) -> str:
    return f"{float(value or 0):.1f}s"


def _duration(value: Any) -> str:
    """`42.5s` under a minute, else `6m35s` / `1h2m0s` (as the preflight line says it)."""
    seconds = float(value or 0)
    if seconds < 60:
        return _seconds(seconds)
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def _any(value: Any) -> str:
    """An extra field of unknown meaning, as readable text."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return _text(", ".join(f"{k}={_any(v)}" for k, v in value.items())) or DASH
    if isinstance(value, (list, tuple)):
        return _text("; ".join(_any(v) for v in value)) or DASH
    return _text(value)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A GitHub-flavoured table; cells are given already escaped, numeric columns right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _more(shown: int, total: int, where: str = "the JSON report") -> str:
    return f"\n\n...and {total - shown} more (see {where})." if total > shown else ""


# -- sections -------------------------------------------------------------------------------------
def _rate_limits(document: Mapping[str, Any]) -> int:
    """429s as the terminal summary counts them: the larger of the calls' and the buckets' sums."""
    totals = document.get("totals") or {}
    by_buckets = sum(int(b.get("rate_limit_events") or 0) for b in document.get("buckets") or [])
    return max(int(totals.get("rate_limit_events") or 0), by_buckets)


def _waits(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per test: seconds waited, calls that waited, 429s, calls."""
    out: dict[str, dict[str, Any]] = {}
    for call in document.get("calls") or []:
        entry = out.setdefault(
            str(call.get("test", "")), {"waited_s": 0.0, "waits": 0, "429s": 0, "calls": 0}
        )
        waited = float(call.get("waited_s") or 0)
        entry["waited_s"] += waited
        entry["waits"] += int(waited >= WAIT_SHOWN_S)
        entry["429s"] += int(call.get("rate_limit_events") or 0)
        entry["calls"] += 1
    return out


def _headline(document: Mapping[str, Any]) -> str:
    totals = document.get("totals") or {}
    run = document.get("run") or {}
    parts = [
        f"**{_int(totals.get('total_tokens'))} tokens**",
        f"**{_usd(totals.get('cost_usd', 0.0))}**",
        f"{_int(totals.get('calls'))} calls",
        f"{_rate_limits(document)} 429s",
        f"waited {_seconds(totals.get('waited_s'))}",
    ]
    if run.get("wall_s") is not None:
        parts.append(f"wall {_duration(run['wall_s'])}")
    baseline = document.get("baseline")
    if isinstance(baseline, Mapping):
        cells = change_cells(baseline.get("totals") or {}, ("tokens",))
        parts.append(f"tokens {cells['tokens']} against the baseline")
    return " \u00b7 ".join(parts)


def _preflight_text(preflight: Mapping[str, Any] | None) -> str:
    if not preflight:
        return DASH
    qualifier = "at least" if preflight.get("lower_bound") else "about"
    return (
        f"{qualifier} {_duration(preflight.get('seconds'))} for ~{_int(preflight.get('tokens'))} "
        f"tokens ({_int(preflight.get('tests'))} LLM tests)"
    )


def _totals(document: Mapping[str, Any]) -> str:
    totals = document.get("totals") or {}
    run = document.get("run") or {}
    cost = _usd(totals.get("cost_usd", 0.0))
    notes = []
    if totals.get("replayed"):
        notes.append(f"replayed calls would have cost {_usd(totals.get('would_cost_usd', 0.0))}")
    if totals.get("cost_unknown"):
        notes.append(f"{_int(totals['cost_unknown'])} calls unpriced")
    if totals.get("cost_refused"):
        notes.append(f"{_int(totals['cost_refused'])} calls refused by the cost cap")
    if notes:
        cost += f" ({'; '.join(notes)})"
    waits = _waits(document)
    waited_calls = sum(w["waits"] for w in waits.values())
    workers = int(run.get("workers") or 0)
    summed = f", summed over {workers} workers" if workers > 1 else ""
    rows = [
        ("calls", f"{_int(totals.get('calls'))} ({_int(totals.get('replayed'))} replayed)"),
        (
            "tokens",
            f"{_int(totals.get('total_tokens'))} (prompt {_int(totals.get('prompt_tokens'))}, "
            f"completion {_int(totals.get('completion_tokens'))})",
        ),
        ("cost", cost),
        ("429s", _int(_rate_limits(document))),
        ("retries", _int(totals.get("retries"))),
        ("waits", f"{_seconds(totals.get('waited_s'))} ({waited_calls} calls waited{summed})"),
        ("errors", _int(totals.get("errors"))),
        ("wall time", _duration(run["wall_s"]) if run.get("wall_s") is not None else DASH),
        ("preflight projection", _preflight_text(run.get("preflight"))),
    ]
    if run.get("backend"):
        rows.append(("backend", _code(run["backend"])))
    return table(("figure", "value"), [(label, value) for label, value in rows], (False, False))


def _buckets(document: Mapping[str, Any]) -> str:
    buckets: Sequence[Mapping[str, Any]] = document.get("buckets") or []
    if not buckets:
        return "_No live LLM call reserved budget._"
    known = {key for key, _ in _BUCKET_COLUMNS} | _BUCKET_FOLDED
    extra: list[str] = []
    for bucket in buckets:
        extra += [key for key in bucket if key not in known and key not in extra]
    header = [label for _, label in _BUCKET_COLUMNS] + [_text(k.replace("_", " ")) for k in extra]
    numeric = [key not in _BUCKET_TEXT for key, _ in _BUCKET_COLUMNS] + [False] * len(extra)
    rows = []
    for b in buckets:
        row = []
        for key, _ in _BUCKET_COLUMNS:
            value = b.get(key)
            if key in _BUCKET_TEXT:
                row.append(_code(value) if value else DASH)
            elif key == "waited_s":
                row.append(_seconds(value))
            elif key == "cost_usd":
                cell = _usd(value if value is not None else 0.0)
                row.append(cell + (f" + {b['cost_unknown']} unpriced" if b.get("cost_unknown")
                                   else ""))
            else:
                row.append(_any(value))
        row += [_any(b.get(key)) for key in extra]
        rows.append(row)
    stated = "".join(f"\n- {_text(line)}" for line in document.get("limits") or [])
    notes = f"\n\nLimits the servers stated:{stated}" if stated else ""
    return table(header, rows, numeric) + notes


def _test_tokens(entry: Mapping[str, Any]) -> int:
    return int(entry.get("prompt_tokens") or 0) + int(entry.get("completion_tokens") or 0)


def _spenders(document: Mapping[str, Any]) -> str:
    tests = [t for t in document.get("tests") or [] if _test_tokens(t) or t.get("cost_usd")]
    if not tests:
        return "_No test spent tokens._"
    tests.sort(key=lambda t: (-_test_tokens(t), -float(t.get("cost_usd") or 0), str(t["test"])))
    rows = []
    for t in tests[:TOP]:
        cost = _usd(t.get("cost_usd") or 0.0)
        if t.get("replayed"):
            cost += f" (replayed; live {_usd(t.get('would_cost_usd') or 0.0)})"
        rows.append((
            _code(t.get("test", "")),
            _int(_test_tokens(t)),
            _int(t.get("prompt_tokens")),
            _int(t.get("completion_tokens")),
            _int(t.get("calls")),
            cost,
            _text(t.get("outcome") or DASH),
        ))
    header = ("test", "tokens", "prompt", "completion", "calls", "cost", "outcome")
    return table(header, rows, (False, True, True, True, True, True, False))


def _waiters(document: Mapping[str, Any]) -> str:
    waits = [(test, w) for test, w in _waits(document).items() if w["waited_s"] >= WAIT_SHOWN_S]
    if not waits:
        return "_No test waited for budget._"
    waits.sort(key=lambda item: (-item[1]["waited_s"], item[0]))
    rows = [
        (_code(test), _seconds(w["waited_s"]), _int(w["waits"]), _int(w["429s"]), _int(w["calls"]))
        for test, w in waits[:TOP]
    ]
    header = ("test", "waited", "calls that waited", "429s", "calls")
    return table(header, rows, (False, True, True, True, True))


def _refused(document: Mapping[str, Any]) -> str | None:
    failed = [c for c in document.get("calls") or [] if c.get("status", "ok") != "ok"]
    if not failed:
        return None
    rows = [
        (
            _code(c.get("test", "")),
            _code(f"{c.get('vendor', '')}:{c.get('model', '')}"),
            _text(c.get("status", "")),
            _code(c["error_code"]) if c.get("error_code") else DASH,
            _int(c.get("attempts")),
            _int(c.get("rate_limit_events")),
        )
        for c in failed[:MAX_ROWS]
    ]
    header = ("test", "model", "status", "error", "attempts", "429s")
    return table(header, rows, (False, False, False, False, True, True)) + _more(
        len(rows), len(failed)
    )


def _overspent(document: Mapping[str, Any]) -> str | None:
    overspent = document.get("overspent") or []
    if not overspent:
        return None
    rows = []
    for o in overspent[:MAX_ROWS]:
        declared, spent = int(o.get("declared") or 0), int(o.get("spent") or 0)
        over = f"+{(spent - declared) / declared:.0%}" if declared else DASH
        rows.append((_code(o.get("test", "")), _int(declared), _int(spent), over))
    note = "Raise their `llm_budget(tokens=...)`.\n\n"
    return note + table(("test", "declared", "spent", "over"), rows, (False, True, True, True)) + (
        _more(len(rows), len(overspent))
    )


def _baseline(baseline: Mapping[str, Any]) -> str:
    totals = baseline.get("totals") or {}
    cells = change_cells(totals)
    total_rows = [
        (_LABELS[f], plain(f, totals.get("before")), plain(f, totals.get("after")), cells[f])
        for f in FIELDS
    ]
    parts = []
    if baseline.get("failure"):
        parts.append(f"> **Failed:** {_text(baseline['failure'])}")
    elif baseline.get("max_increase") is not None:
        limit = f"{float(baseline['max_increase']) * 100:g}%"
        parts.append(f"Within `--llm-max-increase {limit}`.")
    parts.append(table(("", "baseline", "this run", "change"), total_rows,
                       (False, True, True, True)))
    line = f"{count_text(baseline.get('counts') or {})}."
    if baseline.get("replayed"):
        line += (
            f" This run replayed {_int(baseline['replayed'])} calls: their tokens are the "
            "recorded ones and their cost what they would have cost live."
        )
    parts.append(line)
    tests: Sequence[Mapping[str, Any]] = baseline.get("tests") or []
    if tests:
        rows = []
        for t in tests[:MAX_ROWS]:
            change = change_cells(t, ("tokens", "cost_usd", "waited_s"))
            rows.append((
                _code(t.get("test", "")),
                _text(t.get("status", "")),
                change["tokens"],
                change["cost_usd"],
                change["waited_s"],
            ))
        parts.append(
            table(("test", "status", "tokens", "cost", "waited"), rows,
                  (False, False, True, True, True))
            + _more(len(rows), len(tests), "the JSON report's `baseline`")
        )
    return "\n\n".join(parts)


def render_markdown(document: Mapping[str, Any]) -> str:
    """The whole Markdown report of one report document (`report.build_report`'s shape)."""
    sections: list[tuple[str, str | None]] = [
        ("Totals", _totals(document)),
        ("Buckets", _buckets(document)),
        (f"Most tokens (top {TOP})", _spenders(document)),
        (f"Longest waits (top {TOP})", _waiters(document)),
        ("Refused and failed calls", _refused(document)),
        ("Over their declared budget", _overspent(document)),
    ]
    baseline = document.get("baseline")
    if isinstance(baseline, Mapping):
        sections.append(
            (f"Against the baseline {_code(baseline.get('path', ''))}", _baseline(baseline))
        )
    body = "\n\n".join(f"### {title}\n\n{text}" for title, text in sections if text is not None)
    return f"## LLM budget\n\n{_headline(document)}\n\n{body}\n"
