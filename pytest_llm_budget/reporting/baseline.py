"""`--llm-baseline`: compare this run's JSON report with an earlier run's. No pytest here.

Both sides are report documents (report.py). A test's figures are the sums of its calls: calls,
tokens (provider-reported, prompt + completion), cost and seconds waited. A replayed call counts
its recorded usage and what it would have cost live, so a replayed run compares what it would
have cost. The comparison goes into the report as its `baseline` entry (`Comparison.to_json`), from
which the summary, the Markdown and the HTML report show it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llm_budget.errors import BaselineError

__all__ = [
    "FIELDS",
    "Comparison",
    "Figures",
    "TestChange",
    "change_cells",
    "change_text",
    "compare",
    "count_text",
    "figures_by_test",
    "load_baseline",
    "plain",
    "relative",
]

#: The compared figures; `--llm-max-increase` applies to the first two.
FIELDS = ("tokens", "cost_usd", "waited_s", "calls")
THRESHOLD_FIELDS = ("tokens", "cost_usd")
_LABELS = {"tokens": "tokens", "cost_usd": "cost", "waited_s": "waited", "calls": "calls"}
#: Waits closer than this count as unchanged (they vary from run to run with the machine's load).
WAIT_NOISE_S = 0.1


@dataclass(frozen=True)
class Figures:
    """What one test (or the whole run) spent."""

    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    waited_s: float = 0.0
    #: Calls with no known price (their cost counts as 0).
    cost_unknown: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.calls + other.calls,
            self.tokens + other.tokens,
            self.cost_usd + other.cost_usd,
            self.waited_s + other.waited_s,
            self.cost_unknown + other.cost_unknown,
        )

    def value(self, field: str) -> float:
        """One of FIELDS."""
        number: float = getattr(self, field)
        return number

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 12),
            "waited_s": round(self.waited_s, 3),
            "cost_unknown": self.cost_unknown,
        }


def _number(value: Any, where: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BaselineError(f"{where} is {value!r}, not a number")
    return float(value)


def _call_figures(call: Any, where: str) -> tuple[str, Figures]:
    """A call entry's test id and figures; BaselineError when the entry is malformed."""
    if not isinstance(call, Mapping) or not isinstance(call.get("test"), str):
        raise BaselineError(f"{where} is not a call record with a test id")
    replayed = bool(call.get("replayed"))
    price = call.get("would_cost_usd") if replayed else call.get("cost_usd", 0.0)
    tokens = _number(call.get("prompt_tokens"), f"{where}.prompt_tokens") + _number(
        call.get("completion_tokens"), f"{where}.completion_tokens"
    )
    return call["test"], Figures(
        calls=1,
        tokens=int(tokens),
        cost_usd=_number(price, f"{where}.cost_usd"),
        waited_s=_number(call.get("waited_s"), f"{where}.waited_s"),
        cost_unknown=int(price is None),
    )


def figures_by_test(document: Mapping[str, Any]) -> dict[str, Figures]:
    """Each test's figures from a report's `calls`, in first-call order."""
    calls = document.get("calls")
    if not isinstance(calls, list):
        raise BaselineError("it is not a pytest-llm-budget JSON report (no 'calls' list)")
    out: dict[str, Figures] = {}
    for i, call in enumerate(calls):
        test, figures = _call_figures(call, f"calls[{i}]")
        out[test] = out.get(test, Figures()) + figures
    return out


def load_baseline(path: str) -> dict[str, Any]:
    """The report at `path`; BaselineError (a ValueError) saying why it cannot serve."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise BaselineError(
            "no such file (give the JSON report of an earlier run, written with "
            "--llm-report PATH.json)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"cannot be read: {exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise BaselineError(f"is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BaselineError("it is not a pytest-llm-budget JSON report (not a JSON object)")
    figures_by_test(document)  # every call entry is checked now, not at the end of the run
    return document


@dataclass(frozen=True)
class TestChange:
    """One test's figures in the baseline (None: new) and in this run (None: gone)."""

    __test__ = False  # not a pytest test class

    test: str
    before: Figures | None
    after: Figures | None

    @property
    def status(self) -> str:
        """`new`, `gone`, `changed` or `same`."""
        if self.before is None:
            return "new"
        if self.after is None:
            return "gone"
        before, after = self.before, self.after
        if (before.calls, before.tokens) != (after.calls, after.tokens):
            return "changed"
        if not math.isclose(before.cost_usd, after.cost_usd, rel_tol=1e-9, abs_tol=1e-12):
            return "changed"
        return "changed" if abs(after.waited_s - before.waited_s) >= WAIT_NOISE_S else "same"

    def change(self, field: str) -> float:
        """This run's figure minus the baseline's (a missing side counts as nothing)."""
        return (self.after or Figures()).value(field) - (self.before or Figures()).value(field)

    def to_json(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "status": self.status,
            "before": self.before.to_json() if self.before else None,
            "after": self.after.to_json() if self.after else None,
            "change": {f: _rounded(f, self.change(f)) for f in FIELDS},
        }


def _rounded(field: str, value: float) -> float | int:
    if field in ("tokens", "calls"):
        return int(value)
    return round(value, 3 if field == "waited_s" else 12)


def relative(before: float, after: float) -> float | None:
    """The change as a fraction of the baseline; None when the baseline is 0 and this run not."""
    if before == 0:
        return 0.0 if after == 0 else None
    return (after - before) / before


@dataclass(frozen=True)
class Comparison:
    """This run against the baseline: totals, every test's change, the threshold's verdict."""

    path: str
    before: Figures
    after: Figures
    tests: tuple[TestChange, ...]
    #: This run replayed calls (its cost is what they would have cost live).
    replayed: int = 0
    max_increase: float | None = None

    def relative(self, field: str) -> float | None:
        return relative(self.before.value(field), self.after.value(field))

    def with_status(self, status: str) -> list[TestChange]:
        return [t for t in self.tests if t.status == status]

    def exceeded(self) -> list[str]:
        """The threshold fields (tokens, cost) that rose more than `max_increase`."""
        if self.max_increase is None:
            return []
        out = []
        for field in THRESHOLD_FIELDS:
            before, after = self.before.value(field), self.after.value(field)
            share = relative(before, after)
            if after > before and (share is None or share > self.max_increase + 1e-12):
                out.append(field)
        return out

    def largest_increases(self, field: str = "tokens", count: int = 5) -> list[TestChange]:
        """The tests whose `field` rose most, largest first."""
        rising = [t for t in self.tests if t.change(field) > 0]
        rising.sort(key=lambda t: (-t.change(field), t.test))
        return rising[:count]

    def failure(self) -> str | None:
        """The message that fails the session when the threshold was passed, else None."""
        fields = self.exceeded()
        if not fields or self.max_increase is None:
            return None
        limit = f"{self.max_increase * 100:g}%"
        rose = "; ".join(
            f"total {_LABELS[f]} rose {change_text(f, self.before.value(f), self.after.value(f))}"
            f" from {_plain(f, self.before.value(f))} to {_plain(f, self.after.value(f))}"
            for f in fields
        )
        biggest = ", ".join(
            f"{t.test}{' (new)' if t.status == 'new' else ''} "
            f"{_signed(fields[0], t.change(fields[0]))}"
            for t in self.largest_increases(fields[0])
        )
        text = f"{rose}, more than --llm-max-increase {limit} over the baseline {self.path}"
        return f"{text}; largest increases: {biggest}" if biggest else text

    def to_json(self) -> dict[str, Any]:
        """The report's `baseline` entry (tests that did not change are only counted)."""
        shown = [t for t in self.tests if t.status != "same"]
        shown.sort(key=lambda t: (-abs(t.change("tokens")), -abs(t.change("cost_usd")), t.test))
        return {
            "path": self.path,
            "replayed": self.replayed,
            "max_increase": self.max_increase,
            "exceeded": self.exceeded(),
            "failure": self.failure(),
            "totals": {
                "before": self.before.to_json(),
                "after": self.after.to_json(),
                "change": {f: _rounded(f, self.after.value(f) - self.before.value(f))
                           for f in FIELDS},
                "relative": {f: _share(self.relative(f)) for f in FIELDS},
            },
            "counts": {s: len(self.with_status(s)) for s in ("new", "gone", "changed", "same")},
            "tests": [t.to_json() for t in shown],
        }


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def compare(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    path: str,
    max_increase: float | None = None,
) -> Comparison:
    """Compare two report documents, test by test (this run's order, then the gone ones)."""
    before = figures_by_test(baseline)
    after = figures_by_test(current)
    tests = [TestChange(test, before.get(test), figures) for test, figures in after.items()]
    tests += [TestChange(test, figures, None) for test, figures in before.items()
              if test not in after]
    calls = current.get("calls") or []
    return Comparison(
        path=path,
        before=sum(before.values(), Figures()),
        after=sum(after.values(), Figures()),
        tests=tuple(tests),
        replayed=sum(1 for c in calls if isinstance(c, Mapping) and c.get("replayed")),
        max_increase=max_increase,
    )


# -- text of a change, shared by the summary, the Markdown and the HTML report -------------------
def _plain(field: str, value: float) -> str:
    if field == "cost_usd":
        from pytest_llm_budget.cost.prices import usd

        return usd(value)
    if field == "waited_s":
        return f"{value:.1f}s"
    return f"{int(value):,}"


def _signed(field: str, delta: float) -> str:
    """`+1,200`, `-$0.0012`, `+3.4s`; `0`, `$0` or `0.0s` when nothing changed."""
    text = _plain(field, abs(delta))
    if field == "waited_s" and round(abs(delta), 1) == 0:
        return text
    if delta > 0:
        return f"+{text}"
    return f"-{text}" if delta < 0 else text


def change_text(field: str, before: float, after: float) -> str:
    """`+1,200 (+12.5%)`; `+1,200 (new)` from nothing; `0` when equal."""
    delta = after - before
    text = _signed(field, delta)
    if delta == 0 or (field == "waited_s" and round(abs(delta), 1) == 0):
        return text
    share = relative(before, after)
    return f"{text} (from 0)" if share is None else f"{text} ({share * 100:+.1f}%)"


def change_cells(entry: Mapping[str, Any], fields: Sequence[str] = FIELDS) -> dict[str, str]:
    """Display text of a `to_json` test or totals entry's changes, by field (a new or gone
    test's figures marked as such)."""
    before = entry.get("before") or {}
    after = entry.get("after") or {}
    status = entry.get("status")
    cells = {}
    for f in fields:
        old, new = float(before.get(f) or 0), float(after.get(f) or 0)
        if status in ("new", "gone") and _signed(f, new - old) not in ("0", "$0", "0.0s"):
            cells[f] = f"{_signed(f, new - old)} ({status})"
        else:
            cells[f] = change_text(f, old, new)
    return cells


def count_text(counts: Mapping[str, Any]) -> str:
    """`1 new test, 2 gone, 3 changed, 10 unchanged`."""
    new = int(counts.get("new") or 0)
    return (
        f"{new} new test{'' if new == 1 else 's'}, {int(counts.get('gone') or 0)} gone, "
        f"{int(counts.get('changed') or 0)} changed, {int(counts.get('same') or 0)} unchanged"
    )


def plain(field: str, figures: Mapping[str, Any] | None) -> str:
    """Display text of one figure of a `Figures.to_json` entry (a dash when absent)."""
    if figures is None:
        return "\u2014"
    return _plain(field, float(figures.get(field) or 0))
