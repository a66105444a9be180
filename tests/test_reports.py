"""The HTML report (escaping, tables, totals) and the JSON + HTML reports of a real pytest run."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from services import require

from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.records import CallRecord, Totals
from pytest_llm_budget.reporting.html_report import render_html
from pytest_llm_budget.reporting.report import build_report, write_report
from pytest_llm_budget.settings import Settings

NASTY = 'tests/test_x.py::test_odd[<script>alert("&amp;")</script>\'&<b>]'
CALL_HEADERS = [
    "time (UTC)",
    "test",
    "vendor",
    "model",
    "estimated",
    "prompt",
    "completion",
    "status",
    "attempts",
    "429s",
    "waited",
    "cost",
    "replayed",
    "worker",
]


class _Page(HTMLParser):
    """Parses a report page back: its tables (header + rows of cell text), totals, tags seen."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.totals: dict[str, str] = {}
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._total: str | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "dd":
            self._total = a.get("data-key")
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "dd" and self._cell is not None and self._total is not None:
            self.totals[self._total] = "".join(self._cell)
            self._cell = self._total = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _document() -> dict[str, Any]:
    calls = [
        CallRecord(
            t=1_700_000_000.0,
            test=NASTY,
            vendor="openai",
            model="gpt-5<mini>",
            estimated=1200,
            prompt_tokens=700,
            completion_tokens=321,
            status="ok",
            attempts=3,
            waited_s=12.34,
            worker="gw1",
            rate_limit_events=2,
        ),
        CallRecord(
            t=1_700_000_010.0,
            test="tests/test_y.py::test_plain",
            vendor="gemini",
            model="gemini-2.5-pro",
            estimated=800,
            prompt_tokens=90,
            completion_tokens=10,
            status="error",
            attempts=1,
            waited_s=0.0,
            replayed=True,
            error_code="LLM_QUOTA_EXHAUSTED",
        ),
    ]
    buckets = [
        BucketStats("openai:*", "*:* tpm=30000", 25500, calls=1, estimated=1200, actual=1021,
                    deferrals=4, waited_s=12.34, rate_limit_events=2),
    ]
    totals = Totals(calls=2, replayed=1, prompt_tokens=790, completion_tokens=331,
                    total_tokens=1121, rate_limit_events=2, retries=2, waited_s=12.34, errors=1)
    settings = Settings(
        tpm=30000, backend="redis://user:secret@host:6379/0", reports=("a.html",)
    ).public()
    return build_report(settings, totals, buckets, calls)


def test_html_escapes_every_text_and_round_trips_the_call_rows() -> None:
    page_text = render_html(_document())
    assert "<script" not in page_text and "<b>" not in page_text and "<mini>" not in page_text
    assert "&lt;script&gt;" in page_text and "&quot;" in page_text
    page = _Page(page_text)
    assert "script" not in page.tags and "b" not in page.tags
    calls = page.tables["calls"]
    assert calls[0] == CALL_HEADERS
    assert calls[1] == [
        "22:13:20",
        NASTY,  # the exact test id once parsed back: escaped, not mangled
        "openai",
        "gpt-5<mini>",
        "1200",
        "700",
        "321",
        "ok",
        "3",
        "2",
        "12.3s",
        "$0",
        "no",
        "gw1",
    ]
    assert calls[2][1:4] == ["tests/test_y.py::test_plain", "gemini", "gemini-2.5-pro"]
    assert calls[2][7] == "error (LLM_QUOTA_EXHAUSTED)" and calls[2][12] == "yes"
    assert len(calls) == 3


def test_html_shows_totals_buckets_and_settings() -> None:
    page = _Page(render_html(_document()))
    assert page.totals == {
        "calls": "2",
        "replayed": "1",
        "total_tokens": "1121",
        "prompt_tokens": "790",
        "completion_tokens": "331",
        "retries": "2",
        "errors": "1",
        "rate_limit_events": "2",
        "cost_usd": "$0",
        "would_cost_usd": "$0",
        "cost_unknown": "0",
        "cost_refused": "0",
    }
    assert page.tables["buckets"][0][:3] == ["bucket", "rule", "budget"]
    assert page.tables["buckets"][0][-2:] == ["429s", "cost"]
    assert page.tables["buckets"][1] == [
        "openai:*", "*:* tpm=30000", "25500", "1", "1", "1200", "1021", "0", "4", "12.3s", "2",
        "$0",
    ]
    settings = dict((row[0], row[1]) for row in page.tables["settings"][1:])
    assert settings["tpm"] == "30000" and settings["reports"] == "a.html"
    assert settings["backend"] == "redis://user:***@host:6379/0"
    assert "secret" not in render_html(_document())


TEST_HEADERS = [
    "test", "tokens", "prompt", "completion", "calls", "replayed", "waits", "cost",
    "declared tokens", "spent tokens", "duration", "outcome",
]


def test_html_has_one_per_test_table_sorted_by_spend_with_overspends() -> None:
    document = _document()
    document["calls"].append({**document["calls"][1], "replayed": False, "prompt_tokens": 5000,
                              "completion_tokens": 0, "cost_usd": None, "waited_s": 1.5})
    records = [CallRecord(**c) for c in document["calls"]]
    document["tests"] = build_report({}, Totals(), [], records)["tests"]
    document["tests"][0].update(outcome="failed", duration_s=2.25)
    document["overspent"] = [{"test": "tests/test_y.py::test_plain", "declared": 10,
                              "spent": 5100}]
    page_text = render_html(document)
    assert page_text.count('<table class="tests">') == 1 and "<h2>Tests</h2>" not in page_text
    rows = _Page(page_text).tables["tests"]
    assert rows[0] == TEST_HEADERS
    assert rows[1] == [
        "tests/test_y.py::test_plain", "5100", "5090", "10", "2", "1", "1.5s (1 call)",
        "$0; 2 unpriced", "10", "5100", "\u2014", "\u2014",
    ]
    assert rows[2] == [
        NASTY, "1021", "700", "321", "1", "0", "12.3s (1 call)", "$0", "\u2014", "\u2014", "2.2s",
        "failed",
    ]
    assert '<tr class="over"><td class="test">tests/<wbr>test_y.py::<wbr>test_plain' in page_text
    assert '<tr class="bad"><td class="test">tests/<wbr>test_x.py' in page_text
    assert "1 test(s) spent more than they declared" in page_text


def test_html_429s_is_the_larger_of_calls_and_buckets_like_the_summary() -> None:
    document = _document()
    document["buckets"][0]["rate_limit_events"] = 7  # e.g. 429s seen outside any call record
    assert _Page(render_html(document)).totals["rate_limit_events"] == "7"


def test_html_is_self_contained() -> None:
    page_text = render_html(_document())
    page = _Page(page_text)
    assert not {"script", "link", "img", "iframe"} & set(page.tags)
    assert not [name for name, _ in page.attrs if name in ("src", "href")]
    assert "url(" not in page_text and "@import" not in page_text
    assert page.tags.count("style") == 1 and page_text.startswith("<!DOCTYPE html>")


def test_html_of_an_empty_run_says_so() -> None:
    document = build_report(Settings().public(), Totals(), [], [])
    page = _Page(render_html(document))
    assert "calls" not in page.tables and "buckets" not in page.tables
    assert page.totals["calls"] == "0" and page.totals["rate_limit_events"] == "0"
    text = render_html(document)
    assert "No LLM call was recorded." in text and "No live LLM call reserved budget." in text
    assert "No test called an LLM." in text and "tests" not in page.tables


def test_write_report_picks_the_format_by_extension(tmp_path: Path) -> None:
    document = _document()
    write_report(str(tmp_path / "sub" / "r.json"), document)
    write_report(str(tmp_path / "sub" / "r.HTML"), document)
    assert json.loads((tmp_path / "sub" / "r.json").read_text()) == document
    html_text = (tmp_path / "sub" / "r.HTML").read_text()
    assert html_text == render_html(document)
    assert sorted(os.listdir(tmp_path / "sub")) == ["r.HTML", "r.json"]  # no temp files left


def test_chromium_renders_the_page(tmp_path: Path) -> None:
    """A real browser parses the page into the tables we expect (CI: apt-get install chromium)."""
    chromium = require("chromium", "apt-get install chromium")
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(_document()), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--dump-dom",
                page_file.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    page = _Page(done.stdout)
    assert page.tables["calls"][0] == CALL_HEADERS
    assert page.tables["calls"][1][1] == NASTY
    assert "script" not in page.tags
    assert page.totals["rate_limit_events"] == "2" and page.totals["total_tokens"] == "1121"


INNER_TEST = '''
import time

import pytest

from pytest_llm_budget.records import CallRecord


def _record(llm_budget, nodeid, vendor, model, prompt, completion, **kw):
    llm_budget.record(CallRecord(
        t=time.time(), test=nodeid, vendor=vendor, model=model, estimated=kw.pop("est", 1000),
        prompt_tokens=prompt, completion_tokens=completion, status=kw.pop("status", "ok"),
        attempts=kw.pop("attempts", 1), waited_s=kw.pop("waited_s", 0.0), **kw,
    ))


def test_spend(llm_budget, request):
    with llm_budget.reserve(1200, vendor="openai", model="gpt-5") as r:
        r.rate_limited(None)
        r.settle(1000)
    _record(llm_budget, request.node.nodeid, "openai", "gpt-5", 700, 300, attempts=2,
            rate_limit_events=1, est=1200)


@pytest.mark.parametrize("x", ['<b>&"'])
def test_odd(llm_budget, request, x):
    with llm_budget.reserve(500, vendor="gemini", model="gemini-2.5-pro") as r:
        r.settle(450)
    _record(llm_budget, request.node.nodeid, "gemini", "gemini-2.5-pro", 400, 50, est=500)
'''


def test_a_run_writes_the_json_and_html_reports(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TEST)
    result = pytester.runpytest(
        "--llm-report", "out/report.json", "--llm-report", "out/report.html",
        "--llm-tpm", "10000", "--llm-headroom", "0", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*LLM budget*", "*429s: 1*", "LLM budget report: out/report.html"])
    document = json.loads((pytester.path / "out" / "report.json").read_text())
    assert list(document) == [
        "settings", "totals", "buckets", "limits", "tests", "calls", "overspent", "run"
    ]
    assert document["settings"]["tpm"] == 10000 and document["settings"]["headroom"] == 0
    totals = document["totals"]
    assert {"calls", "replayed", "prompt_tokens", "completion_tokens", "total_tokens",
            "rate_limit_events", "retries", "waited_s"} <= set(totals)
    assert (totals["calls"], totals["total_tokens"], totals["rate_limit_events"]) == (2, 1450, 1)
    assert totals["retries"] == 1
    by_bucket = {b["name"]: b for b in document["buckets"]}
    assert set(by_bucket) == {"openai:*", "gemini:*"}
    assert by_bucket["openai:*"]["rate_limit_events"] == 1
    assert by_bucket["openai:*"]["estimated"] == 1200 and by_bucket["gemini:*"]["actual"] == 450
    call_keys = {"t", "test", "vendor", "model", "estimated", "prompt_tokens",
                 "completion_tokens", "status", "attempts", "waited_s", "replayed", "worker"}
    assert all(call_keys <= set(c) for c in document["calls"])
    odd_id = 'test_inner.py::test_odd[<b>&"]'
    assert [c["test"] for c in document["calls"]] == ["test_inner.py::test_spend", odd_id]

    html_text = (pytester.path / "out" / "report.html").read_text()
    page = _Page(html_text)
    assert "<b>&" not in html_text
    assert page.totals["calls"] == str(totals["calls"])
    assert page.totals["total_tokens"] == str(totals["total_tokens"])
    assert page.totals["prompt_tokens"] == str(totals["prompt_tokens"])
    assert page.totals["rate_limit_events"] == str(totals["rate_limit_events"])
    assert [row[1] for row in page.tables["calls"][1:]] == ["test_inner.py::test_spend", odd_id]
    assert sorted(row[0] for row in page.tables["buckets"][1:]) == ["gemini:*", "openai:*"]
    assert html_text.count('<table class="tests">') == 1
    tests = {row[0]: row for row in page.tables["tests"][1:]}
    assert set(tests) == {"test_inner.py::test_spend", odd_id}
    assert all(row[-1] == "passed" for row in tests.values())
    spent = [int(row[1]) for row in page.tables["tests"][1:]]
    assert spent == sorted(spent, reverse=True) and sum(spent) == totals["total_tokens"]
