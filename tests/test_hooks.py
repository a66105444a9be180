"""The pytest_llm_budget_* hooks a conftest implements: each changes what it says, xdist too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFTEST = """
import json, os

def _log(**entry):
    with open(os.environ["HOOK_LOG"], "a") as handle:
        handle.write(json.dumps(entry) + "\\n")

def pytest_llm_budget_estimate(request, vendor, model, estimate):
    if b"OVERRIDE" in request.content:
        return 777
    return None

def pytest_llm_budget_waited(event):
    _log(hook="waited", test=event.test, seconds=event.seconds, bucket=event.bucket)

def pytest_llm_budget_rate_limited(event):
    _log(hook="rate_limited", test=event.test, retry_in=event.retry_in, vendor=event.vendor)

def pytest_llm_budget_report(report):
    report["exported"] = {"calls": len(report["calls"])}
"""

SUITE = """
import pytest

def _call(client, text, max_tokens=1000):
    client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=max_tokens, messages=[{"role": "user", "content": text}]
    )

def test_override(openai_client, llm_emulator):
    _call(openai_client, "OVERRIDE please", max_tokens=10)

def test_429(openai_client, llm_emulator, llm_usage):
    llm_emulator.queue_fault("rate_limit_no_hint", count=1)
    _call(openai_client, "rate limited", max_tokens=10)
    assert llm_usage.rate_limit_events == 1

@pytest.mark.parametrize("n", range(4))
def test_spend(openai_client, llm_emulator, n):
    _call(openai_client, f"spend {n}")
"""

INI = """
[pytest]
llm_tpm = 3000
llm_window = 1
llm_backoff_base = 0.2
llm_backoff_max = 0.5
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_each_hook_does_what_it_says(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    log = pytester.path / "hooks.jsonl"
    monkeypatch.setenv("HOOK_LOG", str(log))
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_hooked=SUITE)
    result = pytester.runpytest_subprocess(*workers, "--llm-report", "run.json")
    result.assert_outcomes(passed=6)
    report = json.loads((pytester.path / "run.json").read_text())
    calls = {c["test"]: c for c in report["calls"]}
    # estimate: the hook's int replaced the estimate of the call it matched, only that one
    assert calls["test_hooked.py::test_override"]["estimated"] == 777
    assert all(c["estimated"] != 777 for t, c in calls.items() if not t.endswith("override"))
    # report: the hook extended the document before it was written
    assert report["exported"] == {"calls": len(report["calls"])}
    entries = [json.loads(line) for line in Path(log).read_text().splitlines()]
    # rate_limited: the one 429, retried
    limited = [e for e in entries if e["hook"] == "rate_limited"]
    assert [(e["test"], e["vendor"]) for e in limited] == [("test_hooked.py::test_429", "openai")]
    assert limited[0]["retry_in"] > 0
    # waited: an event per wait (per try), naming its test and bucket; they add up to the calls'
    waited: dict[str, float] = {}
    for e in entries:
        if e["hook"] == "waited":
            waited[e["test"]] = waited.get(e["test"], 0.0) + e["seconds"]
    assert set(waited) <= set(calls)
    for test, call in calls.items():
        assert waited.get(test, 0.0) == pytest.approx(call["waited_s"], abs=0.01)
    assert sum(1 for t in waited if t.startswith("test_hooked.py::test_spend")) >= 2
    assert all(e["bucket"] == "openai:*" for e in entries if e["hook"] == "waited")


def test_a_bad_estimate_answer_fails_the_call_clearly(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        "def pytest_llm_budget_estimate(request, vendor, model, estimate):\n    return 'lots'\n"
    )
    pytester.makepyfile(
        test_bad="""
        def test_bad(openai_client, llm_emulator):
            openai_client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*pytest_llm_budget_estimate returned 'lots'*whole number*"])


def test_report_hook_runs_without_a_report_option(pytester: pytest.Pytester) -> None:
    out = pytester.path / "exported.json"
    pytester.makeconftest(
        "import json\n"
        "def pytest_llm_budget_report(report):\n"
        f"    open({str(out)!r}, 'w').write(json.dumps(sorted(report)))\n"
    )
    pytester.makepyfile(test_x="def test_x(): pass")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    keys = json.loads(out.read_text())
    assert {"settings", "totals", "buckets", "tests", "calls", "run"} <= set(keys)
