"""Ctrl-C and SIGTERM: no new call is sent, calls in flight end, every admitted call is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pytest_llm_budget.emulator import Emulator, EmulatorConfig

SUITE = """
import pytest

@pytest.mark.parametrize("i", range(24))
def test_call(i, openai_client):
    openai_client.chat.completions.create(
        model="gpt-5", max_tokens=20, messages=[{"role": "user", "content": f"call {i}"}])
"""


def _interrupted_run(
    pytester: pytest.Pytester, signum: int, workers: list[str]
) -> tuple[dict[str, object], int, str]:
    """Run the suite, signal pytest once 3 calls were admitted; (report, admitted, output)."""
    pytester.makepyfile(test_signals=SUITE)
    with Emulator(EmulatorConfig(fault="latency=0.8")) as emulator:
        env = dict(os.environ, OPENAI_BASE_URL=emulator.openai_base_url, OPENAI_API_KEY="sk-t")
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", *workers, "-p", "no:cacheprovider",
             "-p", "no:randomly", "--llm-report", "r.json", "test_signals.py"],
            cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while emulator.stats()["totals"]["admitted"] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before the signal"
            os.kill(proc.pid, signum)
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        time.sleep(0.5)  # an xdist worker torn down mid-call would still arrive here
        admitted = emulator.stats()["totals"]["admitted"]
    report = json.loads((pytester.path / "r.json").read_text())
    return report, admitted, out.decode(errors="replace")


def _assert_nothing_lost(report: dict[str, object], admitted: int, out: str, workers: int) -> None:
    calls = report["calls"]
    assert isinstance(calls, list)
    sent = [c for c in calls if c["attempts"] > 0]
    assert len(sent) == admitted, (admitted, [(c["test"], c["status"]) for c in calls], out)
    assert 3 <= admitted < 24, out  # the signal stopped the run
    refused = [c for c in calls if c["attempts"] == 0]
    assert all(c["error_code"] == "LLM_RUN_INTERRUPTED" for c in refused), refused
    assert report["run"]["workers"] == workers  # type: ignore[index]
    assert "= LLM budget =" in out and f"totals: calls: {len(calls)}" in out, out


@pytest.mark.parametrize(
    ("signum", "workers"),
    [
        (signal.SIGINT, 4),
        (signal.SIGTERM, 4),
        (signal.SIGTERM, 0),
    ],
    ids=["sigint-n4", "sigterm-n4", "sigterm-n0"],
)
def test_an_interrupted_run_reports_every_admitted_call(
    pytester: pytest.Pytester, signum: int, workers: int
) -> None:
    args = ["-n", str(workers)] if workers else []
    report, admitted, out = _interrupted_run(pytester, signum, args)
    _assert_nothing_lost(report, admitted, out, workers)
    for entry in report["calls"]:  # type: ignore[attr-defined]
        if entry["attempts"] and workers:
            assert entry["status"] == "ok", entry  # in-flight calls finished, not cut off


def test_sigterm_handler_is_restored_after_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import signal\n"
        "def test_x():\n"
        "    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL\n"
    )
    outer = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # this session's own handler, aside
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, outer)
    result.assert_outcomes(passed=1)


def test_a_call_cut_off_between_its_answer_and_its_record_is_still_reported(
    pytester: pytest.Pytester,
) -> None:
    """The interrupt lands after the answer's headers came, before its body was read: the
    admitted call is in the report (an error, LLM_RUN_INTERRUPTED), not lost."""
    pytester.makepyfile(
        test_cut="""
def test_cut(openai_client):
    manager = openai_client.chat.completions.with_streaming_response.create(
        model="gpt-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    manager.__enter__()  # the answer's body is never read: the call is still in flight
    raise KeyboardInterrupt
"""
    )
    with Emulator() as emulator:
        env = dict(os.environ, OPENAI_BASE_URL=emulator.openai_base_url, OPENAI_API_KEY="sk-t")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
             "--llm-report", "r.json", "test_cut.py"],
            cwd=pytester.path, env=env, capture_output=True, timeout=120,
        )
        admitted = emulator.stats()["totals"]["admitted"]
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    report = json.loads((pytester.path / "r.json").read_text())
    calls = [(c["test"], c["status"], c["error_code"], c["attempts"]) for c in report["calls"]]
    assert admitted == 1
    assert calls == [("test_cut.py::test_cut", "error", "LLM_RUN_INTERRUPTED", 1)], out
