"""The HTML report of a long run: linear chart figures, a summarised chart, capped tables."""

from __future__ import annotations

import re
from typing import Any

from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.records import CallRecord, Totals
from pytest_llm_budget.reporting.bucket_chart import _levels, dimension_charts
from pytest_llm_budget.reporting.chart import chart_points
from pytest_llm_budget.reporting.html_report import MAX_CALL_ROWS, MAX_TEST_ROWS, render_html
from pytest_llm_budget.reporting.report import build_report
from pytest_llm_budget.reporting.slices import COLUMNS, MAX_DRAWN_CALLS

T0 = 1_700_000_000.0
WINDOW = 6.0


def _document(n: int, spike_at: int | None = None) -> dict[str, Any]:
    """`n` live calls, a test each, 0.01 s apart; the call `spike_at` is ten times bigger."""
    calls = [
        CallRecord(
            t=T0 + i * 0.01 + (0.003 if i % 7 == 0 else 0.0),
            test=f"tests/test_many.py::test_case[{i}]",
            vendor="openai",
            model="gpt-4o-mini",
            estimated=100,
            prompt_tokens=40 + i % 13,
            completion_tokens=50,
            status="error" if i % 97 == 5 else "ok",
            attempts=1,
            waited_s=0.5 if i % 41 == 3 else 0.0,
            rate_limit_events=int(i % 89 == 7),
            charged=1000 if i == spike_at else 100 + i % 11,
        )
        for i in range(n)
    ]
    totals = Totals(calls=n, prompt_tokens=sum(c.prompt_tokens for c in calls),
                    completion_tokens=50 * n, total_tokens=sum(c.total_tokens for c in calls))
    bucket = BucketStats(name="openai:*", rule="openai:*", budget=10**6, calls=n)
    settings = {"tpm": 10**6, "window": WINDOW, "cli_limits": [], "limits": []}
    return build_report(settings, totals, [bucket], calls)


def _held_naively(document: dict[str, Any]) -> list[int]:
    """Tokens in the window at each admission, by summing the whole window every time."""
    admitted = sorted(
        ((c["t"] + c["waited_s"], c["charged"]) for c in document["calls"] if c["attempts"]),
        key=lambda pair: pair[0],
    )
    return [sum(c for u, c in admitted[: i + 1] if u > t - WINDOW) for i, (t, _) in
            enumerate(admitted)]  # fmt: skip


def test_tokens_in_the_window_match_a_sum_over_the_window() -> None:
    document = _document(1500)
    points = chart_points(document)["openai:*"]
    assert [p.in_window for p in points] == _held_naively(document)
    assert max(p.in_window for p in points) > 100 * 500  # the window held hundreds of calls


def test_a_long_run_keeps_its_totals_its_peak_and_says_what_it_left_out() -> None:
    n = 3 * MAX_DRAWN_CALLS
    document = _document(n, spike_at=2200)
    page = render_html(document)
    peak = max(_held_naively(document))

    assert re.search(r'<dd data-key="calls">3000</dd>', page)
    tokens = document["totals"]["total_tokens"]
    assert f'<dd data-key="total_tokens">{tokens}</dd>' in page
    assert f'{n} call(s), 1 bucket(s)' in page

    svg = re.search(r'<svg class="chart"[^>]*data-calls="(\d+)" data-drawn="(\d+)" '
                    r'data-peak="(\d+)"', page)
    assert svg is not None
    calls, drawn, shown_peak = (int(g) for g in svg.groups())
    assert (calls, shown_peak) == (n, peak)
    dots = re.findall(r'<circle class="call"[^>]*data-t="([^"]+)"', page)
    assert len(dots) == drawn <= 4 * COLUMNS < n
    top = max(chart_points(document)["openai:*"], key=lambda p: p.in_window)
    assert top.in_window == peak and str(top.asked) in dots  # the peak's call is drawn
    assert f"The peak, {peak} tokens in the window" in page
    assert f"{drawn} of {n}" in page

    rows = re.search(r'<table class="calls">.*?</table>', page, re.S)
    assert rows is not None and rows.group(0).count("<tr") == MAX_CALL_ROWS + 1  # + header
    assert f"and {n - MAX_CALL_ROWS} more calls, see the JSON report" in page
    tests = re.search(r'<table class="tests">.*?</table>', page, re.S)
    assert tests is not None and tests.group(0).count("<tr") == MAX_TEST_ROWS + 1
    assert f"and {n - MAX_TEST_ROWS} more tests, see the JSON report" in page


def test_a_short_run_draws_every_call_and_lists_every_row() -> None:
    document = _document(40)
    page = render_html(document)
    assert len(re.findall(r'<circle class="call"', page)) == 40
    assert "summarised" not in page and "more calls" not in page and "more tests" not in page
    for table in ("calls", "tests"):
        rows = re.search(rf'<table class="{table}">.*?</table>', page, re.S)
        assert rows is not None and rows.group(0).count("<tr") == 40 + 1


def test_a_token_bucket_chart_of_a_long_run_is_summarised_and_keeps_its_fullest_point() -> None:
    calls = [
        {"t": T0 + i * 0.01, "waited_s": 0.0, "status": "ok", "estimated": 300,
         "prompt_tokens": 3000 if i == 900 else 200 + i % 50, "completion_tokens": 20}
        for i in range(3 * MAX_DRAWN_CALLS)
    ]  # fmt: skip
    bucket = {"name": "anthropic:claude*", "dimensions": {"input_tokens": {"limit": 40_000}}}
    end = T0 + 31
    (chart,) = dimension_charts(bucket, calls, WINDOW, T0, end)
    events = [(c["t"], float(c["prompt_tokens"])) for c in calls]
    fullest = max(v for _, v in _levels(events, 40_000.0, WINDOW, end))
    drawn = re.findall(r'<circle class="call"[^>]*data-charge="([^"]+)"', chart)
    assert 0 < len(drawn) <= COLUMNS and "3000" in drawn  # the biggest charge is marked
    assert f'data-calls="{len(calls)}" data-drawn="{len(drawn)}"' in chart
    assert f"the fullest point, {fullest:g} spent, is on the line" in chart
