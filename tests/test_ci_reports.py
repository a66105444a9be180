"""CI: the Markdown report, the GitHub job summary, junit properties, the baseline, its threshold.

Live runs are real pytest processes (with pytest-xdist where it matters) against the emulator,
which answers every call with REPLY completion tokens so that two runs of one suite spend alike.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec
from pytest_llm_budget.reporting.baseline import compare, load_baseline
from pytest_llm_budget.reporting.markdown import render_markdown
from pytest_llm_budget.settings import Settings, SettingsError

REPLY = 20
PROPERTIES = [
    "llm_calls", "llm_prompt_tokens", "llm_completion_tokens", "llm_total_tokens",
    "llm_waited_s", "llm_429s", "llm_cost_usd",
]


# -- reading Markdown back ------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    """A table row's cells: split on unescaped pipes, code spans and escapes undone."""
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), line
    cells = re.split(r"(?<!\\)\|", body[1:-1])
    out = []
    for cell in cells:
        text = cell.strip().replace("\\|", "|")
        code = re.fullmatch(r"(`+) ?(.*?) ?\1", text)
        if code:
            text = code.group(2)
        else:
            text = re.sub(r"\\([\\`*_\[\]~])", r"\1", text).replace("&lt;", "<")
            text = text.replace("&amp;", "&")
        out.append(text)
    return out


def md_sections(text: str) -> dict[str, dict[str, Any]]:
    """Each `### ` section: its tables (each a header and rows as dicts), the first one's as
    `header` and `rows`, and its other lines as `text`."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    table: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:], {"tables": [], "text": []})
            table = None
        elif current is None:
            continue
        elif line.startswith("|"):
            cells = _cells(line)
            if table is None:
                table = {"header": cells, "rows": []}
                current["tables"].append(table)
            elif all(re.fullmatch(r"-+:?", c) for c in cells):
                continue
            else:
                assert len(cells) == len(table["header"]), f"ragged row {line!r}"
                table["rows"].append(dict(zip(table["header"], cells, strict=True)))
        else:
            table = None
            if line.strip():
                current["text"].append(line)
    for section in sections.values():
        first = section["tables"][0] if section["tables"] else {"header": None, "rows": []}
        section.update(first)
    return sections


def _number(cell: str) -> float:
    return float(cell.split()[0].replace(",", "").replace("$", "").rstrip("s"))


# -- live runs -------------------------------------------------------------------------------
SUITE = '''
import pytest
from pytest_llm_budget import RequestTooLarge

CALLS = {calls!r}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_chat(name, openai_client):
    for i in range(CALLS[name]):
        openai_client.chat.completions.create(
            model="gpt-5", max_completion_tokens={max_tokens},
            messages=[{{"role": "user", "content": "%s call %d" % (name, i)}}],
        )


def test_too_large(openai_client):
    with pytest.raises(RequestTooLarge):
        openai_client.chat.completions.create(
            model="gpt-5", max_completion_tokens=100000,
            messages=[{{"role": "user", "content": "far too much"}}],
        )


def test_not_llm():
    pass
'''


def write_suite(
    folder: Path, calls: dict[str, int], max_tokens: int = 300, refused: bool = True
) -> None:
    text = SUITE.format(calls=calls, max_tokens=max_tokens)
    if not refused:  # a replay-only run has no recording of it
        text = re.sub(r"\ndef test_too_large.*?\n\n\n", "\n", text, flags=re.S)
        assert "too_large" not in text
    (folder / "test_suite.py").write_text(text)


@pytest.fixture
def emu() -> Iterator[Emulator]:
    config = EmulatorConfig(
        window=1.0, openai=LimitSpec(tpm=1_000_000, rpm=None),
        gemini=LimitSpec(tpm=1_000_000, rpm=None), reply_min_tokens=REPLY, reply_max_tokens=REPLY,
    )
    with Emulator(config) as emulator:
        yield emulator


def run(
    cwd: Path, emu: Emulator | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    environ.update(env)
    if emu is not None:
        environ.update(OPENAI_BASE_URL=emu.openai_base_url, OPENAI_API_KEY="sk-test",
                       GOOGLE_GEMINI_BASE_URL=emu.gemini_base_url, GEMINI_API_KEY="g")
    if not any(a.startswith("--llm-tpm") for a in args):
        args = ("--llm-tpm=30000", *args)  # test_too_large needs a known limit, not auto
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=180,
    )


def per_test(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Sums of a JSON report's calls per test: what junit and the baseline should show."""
    out: dict[str, dict[str, float]] = {}
    for c in document["calls"]:
        t = out.setdefault(c["test"], {"calls": 0, "prompt": 0, "completion": 0, "waited": 0.0,
                                       "429s": 0, "cost": 0.0})
        t["calls"] += 1
        t["prompt"] += c["prompt_tokens"]
        t["completion"] += c["completion_tokens"]
        t["waited"] += c["waited_s"]
        t["429s"] += c["rate_limit_events"]
        t["cost"] += c["cost_usd"] or 0.0
    return out


# 12 chat tests (so the top-ten tables must cut two), one refused call, one test without LLM.
TWELVE = {f"t{i:02d}": 1 + i % 3 for i in range(12)}


def test_a_live_run_writes_a_markdown_report_whose_tables_match_the_json(
    tmp_path: Path, emu: Emulator
) -> None:
    write_suite(tmp_path, TWELVE)
    # 1500 tokens a second: the ~24 calls of ~320 tokens must wait; 100000 can never fit.
    result = run(tmp_path, emu, "--llm-tpm=1500", "--llm-window=1", "--llm-headroom=0",
                 "--llm-report=out/r.json", "--llm-report=out/r.md")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LLM budget report: out/r.md" in result.stdout
    document = json.loads((tmp_path / "out" / "r.json").read_text())
    text = (tmp_path / "out" / "r.md").read_text()
    assert text.startswith("## LLM budget\n")
    sections = md_sections(text)
    assert list(sections) == [
        "Totals", "Buckets", "Most tokens (top 10)", "Longest waits (top 10)",
        "Refused and failed calls",
    ]
    totals = document["totals"]
    figures = {row["figure"]: row["value"] for row in sections["Totals"]["rows"]}
    assert figures["calls"] == f"{totals['calls']} (0 replayed)"
    assert figures["tokens"] == (
        f"{totals['total_tokens']:,} (prompt {totals['prompt_tokens']:,}, "
        f"completion {totals['completion_tokens']:,})"
    )
    assert _number(figures["waits"]) == pytest.approx(totals["waited_s"], abs=0.05)
    assert figures["429s"] == "0" and figures["errors"] == str(totals["errors"]) == "1"
    assert _number(figures["wall time"]) == pytest.approx(document["run"]["wall_s"], abs=0.05)
    assert figures["preflight projection"].startswith(("at least ", "about "))
    assert f"~{document['run']['preflight']['tokens']:,} tokens" in figures["preflight projection"]

    buckets = sections["Buckets"]["rows"]
    assert [(b["bucket"], b["calls"], b["actual"]) for b in buckets] == [
        (b["name"], str(b["calls"]), f"{b['actual']:,}") for b in document["buckets"]
    ]

    spenders = sections["Most tokens (top 10)"]["rows"]
    expected = sorted(
        document["tests"],
        key=lambda t: (-(t["prompt_tokens"] + t["completion_tokens"]), -t["cost_usd"], t["test"]),
    )
    assert len(spenders) == 10
    assert [r["test"] for r in spenders] == [t["test"] for t in expected[:10]]
    assert [int(_number(r["tokens"])) for r in spenders] == [
        t["prompt_tokens"] + t["completion_tokens"] for t in expected[:10]
    ]
    assert all(r["outcome"] == "passed" for r in spenders)

    waits = per_test(document)
    waiters = sections["Longest waits (top 10)"]["rows"]
    longest = sorted((t for t in waits.items() if t[1]["waited"] >= 0.05),
                     key=lambda t: (-t[1]["waited"], t[0]))
    assert waiters and len(waiters) == min(10, len(longest))
    assert [r["test"] for r in waiters] == [t for t, _ in longest[:10]]
    assert [_number(r["waited"]) for r in waiters] == [
        pytest.approx(w["waited"], abs=0.05) for _, w in longest[:10]
    ]

    refused = sections["Refused and failed calls"]["rows"]
    assert refused == [{
        "test": "test_suite.py::test_too_large", "model": "openai:gpt-5", "status": "too_large",
        "error": "LLM_REQUEST_TOO_LARGE", "attempts": "0", "429s": "0",
    }]


def nasty_document() -> dict[str, Any]:
    odd = 'tests/t.py::test_odd[a|b`c<b>&*_x_*]'
    return {
        "totals": {"calls": 1, "total_tokens": 30, "prompt_tokens": 10, "completion_tokens": 20},
        "buckets": [
            {"name": "openai:gpt-4o*", "rule": "openai:gpt-4o* tpm=6000", "budget": 5100,
             "calls": 1, "attempts": 1, "estimated": 40, "actual": 30, "debt": 0, "deferrals": 0,
             "waited_s": 0.0, "rate_limit_events": 0, "cost_usd": 0.0, "cost_unknown": 1,
             "learned_tpm": 6000, "limits": {"tpm": 6000, "rpm": None}, "source": "x|y"},
            {"name": "gemini:*", "rule": "*:* tpm=30000", "budget": 25500},
        ],
        "tests": [{"test": odd, "calls": 1, "prompt_tokens": 10, "completion_tokens": 20,
                   "cost_usd": 0.0, "outcome": "passed"}],
        "calls": [{"test": odd, "vendor": "openai", "model": "gpt-4o|mini", "status": "ok",
                   "prompt_tokens": 10, "completion_tokens": 20, "waited_s": 1.25,
                   "rate_limit_events": 1}],
    }


def test_markdown_escapes_ids_and_gives_unknown_bucket_fields_their_own_columns() -> None:
    document = nasty_document()
    text = render_markdown(document)
    outside_code = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", text)
    assert "<" not in outside_code and "``tests/t.py::test_odd[a\\|b`c<b>&*_x_*]``" in text
    sections = md_sections(text)
    assert sections["Most tokens (top 10)"]["rows"][0]["test"] == document["tests"][0]["test"]
    assert sections["Longest waits (top 10)"]["rows"][0]["test"] == document["tests"][0]["test"]
    header = sections["Buckets"]["header"]
    assert header[-3:] == ["learned tpm", "limits", "source"]
    first, second = sections["Buckets"]["rows"]
    assert first["rule"] == "openai:gpt-4o* tpm=6000" and first["cost"] == "$0 + 1 unpriced"
    assert (first["learned tpm"], first["limits"], first["source"]) == (
        "6,000", "tpm=6,000, rpm=\u2014", "x|y"
    )
    assert second["learned tpm"] == "\u2014" and second["budget"] == "25,500"
    assert "Refused and failed calls" not in sections  # every call was ok


def test_markdown_of_an_empty_run_says_so() -> None:
    sections = md_sections(render_markdown({"totals": {}, "buckets": [], "calls": []}))
    assert sections["Buckets"]["text"] == ["_No live LLM call reserved budget._"]
    assert sections["Most tokens (top 10)"]["text"] == ["_No test spent tokens._"]
    assert sections["Longest waits (top 10)"]["text"] == ["_No test waited for budget._"]


# -- the job summary and junit --------------------------------------------------------------------
def check_junit(path: Path, expected: dict[str, dict[str, float]]) -> dict[str, list[Any]]:
    """Every LLM test's junit properties, each once, equal to its calls' sums; none elsewhere."""
    seen = {
        f"test_suite.py::{case.get('name')}": [
            (p.get("name"), p.get("value")) for p in case.iter("property")
        ]
        for case in ET.parse(path).getroot().iter("testcase")
    }
    assert seen.pop("test_suite.py::test_not_llm") == []
    assert set(seen) == set(expected)  # test_too_large's refused call counts as a call
    for nodeid, props in seen.items():
        assert [name for name, _ in props] == PROPERTIES, nodeid  # each once, in order
        values = {name: value or "" for name, value in props}
        want = expected[nodeid]
        assert int(values["llm_calls"]) == want["calls"]
        assert int(values["llm_prompt_tokens"]) == want["prompt"]
        assert int(values["llm_completion_tokens"]) == want["completion"]
        assert int(values["llm_total_tokens"]) == want["prompt"] + want["completion"]
        assert float(values["llm_waited_s"]) == pytest.approx(want["waited"], abs=0.002)
        assert int(values["llm_429s"]) == want["429s"]
        assert float(values["llm_cost_usd"]) == pytest.approx(want["cost"], abs=1e-9)
        assert "e" not in values["llm_cost_usd"]  # fixed-point, not 1e-05
    return seen


@pytest.mark.parametrize("workers", ["0", "2"])
def test_one_job_summary_and_junit_properties_of_every_llm_test(
    tmp_path: Path, emu: Emulator, workers: str
) -> None:
    write_suite(tmp_path, {"a": 1, "b": 3, "c": 2, "d": 1})
    summary = tmp_path / "step_summary.md"
    summary.write_text("# Earlier step\n\nits own lines\n")
    # 1500 tokens a second: the 7 calls of ~320 tokens wait a little
    result = run(tmp_path, emu, "-n", workers, "--llm-tpm=1500", "--llm-window=1",
                 "--llm-headroom=0", "--junitxml=junit.xml", "--llm-report=r.json",
                 GITHUB_STEP_SUMMARY=str(summary))
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "r.json").read_text())

    text = summary.read_text()
    assert text.startswith("# Earlier step\n\nits own lines\n## LLM budget\n")
    assert text.count("## LLM budget") == 1  # once, by the controller
    assert f"LLM budget job summary appended to {summary}" in result.stdout
    figures = {r["figure"]: r["value"] for r in md_sections(text)["Totals"]["rows"]}
    assert figures["calls"] == f"{document['totals']['calls']} (0 replayed)" == "8 (0 replayed)"
    assert text.split("\n", 3)[3] == render_markdown(document) + "\n"

    expected = per_test(document)
    seen = check_junit(tmp_path / "junit.xml", expected)
    assert dict(seen["test_suite.py::test_chat[b]"])["llm_calls"] == "3"
    assert float(dict(seen["test_suite.py::test_chat[b]"])["llm_cost_usd"] or 0) > 0
    assert sum(float(dict(p)["llm_waited_s"] or 0) for p in seen.values()) > 0


def test_the_job_summary_can_be_turned_off(tmp_path: Path, emu: Emulator) -> None:
    write_suite(tmp_path, {"a": 1})
    summary = tmp_path / "step_summary.md"
    summary.write_text("before\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nllm_step_summary = false\n")
    result = run(tmp_path, emu, GITHUB_STEP_SUMMARY=str(summary))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary.read_text() == "before\n"
    assert "job summary" not in result.stdout
    cli_off = Settings.resolve({"step_summary": "off"}, {}, {"step_summary": "on"})
    assert cli_off.step_summary is False
    assert Settings.resolve({}, {"LLM_BUDGET_STEP_SUMMARY": "0"}, {}).step_summary is False


def test_no_job_summary_for_a_run_without_llm_calls(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_x():\n    pass\n")
    summary = tmp_path / "step_summary.md"
    result = run(tmp_path, None, GITHUB_STEP_SUMMARY=str(summary))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not summary.exists()


# -- the baseline ----------------------------------------------------------------------------
def _call(test: str, prompt: int, completion: int, cost: float | None, waited: float = 0.0,
          replayed: bool = False, would: float | None = None) -> dict[str, Any]:
    return {"test": test, "prompt_tokens": prompt, "completion_tokens": completion,
            "cost_usd": 0.0 if replayed else cost, "would_cost_usd": would, "waited_s": waited,
            "replayed": replayed, "status": "ok"}


def test_compare_names_new_and_gone_tests_and_sums_the_changes() -> None:
    before = {"calls": [_call("a", 100, 20, 0.01, 1.0), _call("a", 50, 10, 0.005),
                        _call("b", 10, 10, 0.002), _call("gone", 30, 30, 0.003, 2.0),
                        _call("same", 5, 5, 0.001)]}
    after = {"calls": [_call("a", 300, 40, 0.03, 0.5), _call("new", 70, 30, None),
                       _call("b", 10, 10, 0.002, 3.0), _call("same", 5, 5, 0.001, 0.04)]}
    comparison = compare(before, after, path="base.json", max_increase=0.2)
    status = {t.test: t.status for t in comparison.tests}
    assert status == {"a": "changed", "new": "new", "b": "changed", "gone": "gone",
                      "same": "same"}
    a = next(t for t in comparison.tests if t.test == "a")
    assert (a.change("tokens"), a.change("calls")) == (340 - 180, -1)
    assert a.change("cost_usd") == pytest.approx(0.015)
    assert a.change("waited_s") == pytest.approx(-0.5)
    assert (comparison.before.tokens, comparison.after.tokens) == (270, 470)
    assert comparison.after.cost_unknown == 1
    assert comparison.relative("tokens") == pytest.approx(200 / 270)
    assert comparison.exceeded() == ["tokens", "cost_usd"]
    entry = comparison.to_json()
    assert entry["counts"] == {"new": 1, "gone": 1, "changed": 2, "same": 1}
    assert [t["test"] for t in entry["tests"]] == ["a", "new", "gone", "b"]  # |tokens| first
    assert entry["tests"][1]["before"] is None and entry["tests"][2]["after"] is None
    assert entry["totals"]["change"]["tokens"] == 200
    failure = comparison.failure()
    assert failure is not None
    assert failure.startswith("total tokens rose +200 (+74.1%) from 270 to 470; total cost rose")
    assert "more than --llm-max-increase 20% over the baseline base.json" in failure
    assert failure.endswith("largest increases: a +160, new (new) +100")


def test_a_replayed_run_compares_what_it_would_have_cost() -> None:
    live = {"calls": [_call("a", 100, 20, 0.01, 2.0)]}
    replayed = {"calls": [_call("a", 100, 20, None, replayed=True, would=0.01)]}
    comparison = compare(live, replayed, path="live.json", max_increase=0.0)
    assert comparison.after.cost_usd == 0.01 and comparison.after.tokens == 120
    assert comparison.exceeded() == [] and comparison.replayed == 1
    assert comparison.to_json()["tests"][0]["change"] == {
        "tokens": 0, "cost_usd": 0.0, "waited_s": -2.0, "calls": 0,
    }


def test_a_rise_from_nothing_passes_any_threshold() -> None:
    comparison = compare({"calls": []}, {"calls": [_call("a", 1, 1, 0.0)]}, path="b.json",
                         max_increase=10.0)
    assert comparison.relative("tokens") is None and comparison.exceeded() == ["tokens"]


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (None, "no such file"),
        ("{not json", "is not JSON"),
        ("[]", "not a JSON object"),
        ('{"totals": {}}', "no 'calls' list"),
        ('{"calls": [{"test": "a", "prompt_tokens": "many"}]}',
         "calls[0].prompt_tokens is 'many', not a number"),
    ],
)
def test_a_missing_or_malformed_baseline_is_a_usage_error(
    pytester: pytest.Pytester, content: str | None, fault: str
) -> None:
    if content is not None:
        (pytester.path / "base.json").write_text(content)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("--llm-baseline=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--llm-baseline='base.json'" in err and fault in err


@pytest.mark.parametrize(
    ("cli", "fault"),
    [
        ({"max_increase": "20%"}, "--llm-max-increase=20% needs --llm-baseline PATH.json"),
        ({"max_increase": "lots", "baseline": None}, "must be a percentage such as 20%"),
        ({"max_increase": "-5"}, "must be a percentage, 0% or more"),
        ({"step_summary": "maybe"}, "--llm-step-summary='maybe'"),
        ({"reports": "r.txt"}, "must end in .json, .html or .md"),
    ],
)
def test_ci_options_are_validated(cli: dict[str, str], fault: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(fault)):
        Settings.resolve(cli, {}, {})


def test_max_increase_takes_20_and_20_percent_alike(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"calls": []}')
    for text in ("20", "20%", " 20 % "):
        settings = Settings.resolve({"max_increase": text, "baseline": str(path)}, {}, {})
        assert settings.max_increase == 0.2
    assert load_baseline(str(path)) == {"calls": []}


class _Tables(HTMLParser):
    """The cell texts of an HTML page's tables, by class."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._rows is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_a_run_against_its_baseline_shows_every_change(tmp_path: Path, emu: Emulator) -> None:
    base = tmp_path / "base"
    base.mkdir()
    write_suite(base, {"kept": 1, "grows": 1, "gone": 2})
    first = run(base, emu, "--llm-report=base.json")
    assert first.returncode == 0, first.stdout + first.stderr
    now = tmp_path / "now"
    now.mkdir()
    write_suite(now, {"kept": 1, "grows": 3, "fresh": 1})
    result = run(now, emu, "--llm-baseline=../base/base.json", "--llm-max-increase=1000%",
                 "--llm-report=r.json", "--llm-report=r.md", "--llm-report=r.html")
    assert result.returncode == 0, result.stdout + result.stderr
    before = per_test(json.loads((base / "base.json").read_text()))
    document = json.loads((now / "r.json").read_text())
    after = per_test(document)
    baseline = document["baseline"]
    assert baseline["counts"] == {"new": 1, "gone": 1, "changed": 1, "same": 2}
    changes = {t["test"]: t for t in baseline["tests"]}
    grows, fresh, gone = (f"test_suite.py::test_chat[{n}]" for n in ("grows", "fresh", "gone"))
    assert set(changes) == {grows, fresh, gone}
    assert (changes[fresh]["status"], changes[gone]["status"]) == ("new", "gone")

    def tokens(t: dict[str, float]) -> int:
        return int(t["prompt"] + t["completion"])

    assert changes[grows]["change"]["tokens"] == tokens(after[grows]) - tokens(before[grows]) > 0
    assert changes[grows]["change"]["calls"] == 2
    assert changes[fresh]["change"]["tokens"] == tokens(after[fresh])
    assert changes[gone]["change"]["tokens"] == -tokens(before[gone])
    total_change = sum(map(tokens, after.values())) - sum(map(tokens, before.values()))
    assert baseline["totals"]["change"]["tokens"] == total_change
    assert baseline["exceeded"] == [] and baseline["failure"] is None

    out = result.stdout
    assert f"against baseline ../base/base.json: tokens {total_change:+,}" in out
    assert "1 new test, 1 gone, 1 changed, 2 unchanged" in out
    assert re.search(rf"  new     {re.escape(fresh)}: tokens \+\d+ \(new\)", out)
    assert re.search(rf"  gone    {re.escape(gone)}: tokens -\d+ \(gone\)", out)

    sections = md_sections((now / "r.md").read_text())
    section = sections["Against the baseline `../base/base.json`"]
    assert section["text"][0] == "Within `--llm-max-increase 1000%`."
    totals_rows = {r[""]: r for r in section["tables"][0]["rows"]}
    assert int(_number(totals_rows["tokens"]["this run"])) == document["totals"]["total_tokens"]
    assert totals_rows["tokens"]["change"].startswith(f"{total_change:+,} (")
    test_rows = section["tables"][1]["rows"]
    assert {r["test"]: r["status"] for r in test_rows} == {
        grows: "changed", fresh: "new", gone: "gone",
    }
    rows = {r["test"]: r for r in test_rows}
    assert int(_number(rows[grows]["tokens"])) == changes[grows]["change"]["tokens"]
    assert rows[gone]["tokens"] == f"-{tokens(before[gone])} (gone)"

    page = _Tables((now / "r.html").read_text())
    totals = {row[0]: row[1:] for row in page.tables["baseline"][1:]}
    assert int(totals["tokens"][1].replace(",", "")) == document["totals"]["total_tokens"]
    assert totals["tokens"][2].startswith(f"{total_change:+,} (")
    assert {row[0]: row[1] for row in page.tables["baseline-tests"][1:]} == {
        grows: "changed", fresh: "new", gone: "gone",
    }


def test_passing_the_max_increase_fails_the_session(tmp_path: Path, emu: Emulator) -> None:
    base = tmp_path / "base"
    base.mkdir()
    write_suite(base, {"a": 1, "b": 1, "c": 1})
    assert run(base, emu, "--llm-report=base.json").returncode == 0
    now = tmp_path / "now"
    now.mkdir()
    write_suite(now, {"a": 1, "b": 3, "c": 2, "d": 1})
    result = run(now, emu, "--llm-baseline=../base/base.json", "--llm-max-increase=20",
                 "--llm-report=r.md")
    assert result.returncode == 6, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("FAILED (exit status 6)"))
    assert "total tokens rose +" in line and "more than --llm-max-increase 20%" in line
    biggest = line.split("largest increases: ")[1].split(", ")
    assert [b.split(" ")[0] for b in biggest] == [
        "test_suite.py::test_chat[b]", "test_suite.py::test_chat[c]",
        "test_suite.py::test_chat[d]",
    ]
    assert biggest[2].startswith("test_suite.py::test_chat[d] (new) +")
    assert "6 passed" in result.stdout  # the tests passed: the budget failed the session
    text = (now / "r.md").read_text()
    assert "> **Failed:** total tokens rose" in text

    # A failing test keeps its own exit status, 1; the message still shows.
    (now / "test_fails.py").write_text("def test_fails():\n    assert False\n")
    failed = run(now, emu, "--llm-baseline=../base/base.json", "--llm-max-increase=20%")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "FAILED (exit status 6)" in failed.stdout


def test_a_replayed_run_against_its_live_baseline_costs_the_same(tmp_path: Path) -> None:
    write_suite(tmp_path, {"a": 1, "b": 2}, refused=False)
    with Emulator(EmulatorConfig(reply_min_tokens=REPLY, reply_max_tokens=REPLY)) as emu:
        live = run(tmp_path, emu, "--llm-record-mode=all", "--llm-report=live.json")
        assert live.returncode == 0, live.stdout + live.stderr
        urls = {"OPENAI_BASE_URL": emu.openai_base_url}
    replay = run(tmp_path, None, "--llm-record-mode=none", "--llm-baseline=live.json",
                 "--llm-max-increase=0%", "--llm-report=replay.json",
                 OPENAI_API_KEY="sk-test", **urls)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    baseline = json.loads((tmp_path / "replay.json").read_text())["baseline"]
    assert baseline["replayed"] == 3 and baseline["exceeded"] == []
    assert baseline["totals"]["change"]["tokens"] == 0
    assert baseline["totals"]["change"]["cost_usd"] == pytest.approx(0, abs=1e-12)
    assert baseline["totals"]["after"]["cost_usd"] > 0
