"""Live wait notices: a line per long wait while a real paced run waits (-n 0 and -n 2)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pytest_llm_budget.events import WaitEvent
from pytest_llm_budget.reporting.notices import wait_line

# Budget 2550 tokens per 2 s window; each call charges about 1010: two fit, the third waits.
INI = """
[pytest]
llm_tpm = 3000
llm_window = 2
"""

SUITE = """
import pytest

@pytest.mark.llm_budget(tokens=1000)
@pytest.mark.parametrize("n", range(5))
def test_call(openai_client, llm_emulator, n):
    reply = openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=[{"role": "user", "content": f"hi {n}"}]
    )
    assert reply.choices[0].message.content
"""

NOTICE = re.compile(
    r"^llm-budget: waiting (\d+\.\d)s for openai:\* \((\d+)/2550 tokens in the window\) - "
    r"(test_paced\.py::test_call\[\d\])( \[gw\d\])?$"
)


def _notices(output: str) -> list[re.Match[str]]:
    return [m for line in output.splitlines() if (m := NOTICE.match(line.strip()))]


def _waits(pytester: pytest.Pytester, longer_than: float) -> set[str]:
    calls = json.loads((pytester.path / "run.json").read_text())["calls"]
    return {c["test"] for c in calls if c["waited_s"] > longer_than}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["n0", "n2"])
def test_one_notice_per_wait_during_a_waiting_run(
    pytester: pytest.Pytester, workers: list[str]
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_paced=SUITE)
    result = pytester.runpytest_subprocess(
        *workers, "--llm-notice-after", "0.5", "--llm-report", "run.json"
    )
    result.assert_outcomes(passed=5)
    notices = _notices(result.stdout.str())
    named = [m[3] for m in notices]
    long_waits = _waits(pytester, 1.0)
    assert long_waits, "the run should have waited"
    # one line per wait, naming its test: every long wait has its line, and a line names a test
    # that waited (one predicted over 0.5 s may end sooner on a loaded machine)
    assert len(named) == len(set(named))
    assert long_waits <= set(named) <= _waits(pytester, 0.0)
    for m in notices:
        assert 0.5 <= float(m[1]) <= 2.5 and int(m[2]) > 0
        assert bool(m[4]) == bool(workers)  # under xdist the controller names the worker
    out = result.stdout.str()
    assert out.index("llm-budget: waiting") < out.index("LLM budget ==")
    # the summary: the backend the calls went through, and waits summed over the workers
    if workers:
        assert "[backend file: " in out and " summed over 2 workers" in out
    else:
        assert "[backend memory]" in out and "summed over" not in out


def test_quiet_quiet_and_off_print_no_notice(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_paced=SUITE)
    quiet = pytester.runpytest_subprocess("-qq", "--llm-notice-after", "0.5")
    waited = re.search(r"waited: (\d+\.\d)s", quiet.stdout.str())
    assert quiet.ret == 0 and waited and float(waited[1]) > 1.0  # it did wait
    assert "llm-budget: waiting" not in quiet.stdout.str()
    off = pytester.runpytest_subprocess("--llm-notice-after", "off", "-k", "0 or 1 or 2")
    off.assert_outcomes(passed=3)
    assert "llm-budget: waiting" not in off.stdout.str()


def test_bad_threshold_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_inprocess("--llm-notice-after", "soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-notice-after='soon'*must be a number*"])


def test_a_retried_429_gets_a_line(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nllm_backoff_base = 0.2\nllm_backoff_max = 0.5\n")
    pytester.makepyfile(
        test_retry="""
        def test_retry(openai_client, llm_emulator, llm_usage):
            llm_emulator.queue_fault("rate_limit_no_hint", count=1)
            openai_client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            )
            assert llm_usage.rate_limit_events == 1
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["llm-budget: 429 from openai model gpt-4o-mini*retry 1 in *s - test_retry.py::test_retry"]
    )
    # the summary: one call, two attempts (under --llm-tpm auto, the model's own bucket)
    assert re.search(r"^openai:gpt-4o-mini\s+\S+\s+1\s+2\s", result.stdout.str(), re.M)


def test_a_wait_is_announced_once_however_many_times_it_is_deferred(clock: Any) -> None:
    """Many deferrals of one reservation (a concurrency cap polls) give one `started` event, once
    the wait has lasted the threshold, and one `finished` event with the real seconds."""
    from pytest_llm_budget import BudgetSession, Settings

    session = BudgetSession(
        Settings(tpm=10_000, headroom=0.0, max_concurrency=1, notice_after=1.0),
        clock=clock.now, sleep=clock.sleep,
    )
    events: list[WaitEvent] = []
    session.wait_observers.append(events.append)
    held = session.reserve(100)
    # the second reservation polls the concurrency cap every 50 ms; release the first after 3 s
    original_sleep = session.limiter.sleep

    def sleep(seconds: float) -> None:
        original_sleep(seconds)
        if clock.t - start >= 3.0:
            held.release()

    session.limiter.sleep = sleep
    start = clock.t
    with session.reserve(100):
        pass
    started = [e for e in events if not e.finished]
    finished = [e for e in events if e.finished]
    assert len(clock.sleeps) > 20  # deferred many times, announced once
    assert len(started) == 1 and started[0].reason == "concurrency"
    assert started[0].seconds == pytest.approx(1.0, abs=0.06)
    assert "(calls in flight at the cap; 100/10000 tokens in the window)" in wait_line(started[0])
    assert len(finished) == 1 and finished[0].seconds == pytest.approx(3.0, abs=0.06)
    assert finished[0].bucket == "openai:*" and finished[0].used_tokens == 100

    # a token wait: the expected length is known at once, announced once with the window's fill
    events.clear()
    session.notice_after = 0.5
    with session.reserve(9_000):
        pass
    with session.reserve(2_000):  # must wait for the 9000 to leave the 60 s window
        pass
    started = [e for e in events if not e.finished]
    assert len(started) == 1
    assert started[0].used_tokens == 9_200 and started[0].budget == 10_000
    assert started[0].seconds == pytest.approx(60.0, abs=1.0)
    assert re.fullmatch(
        r"llm-budget: waiting 60\.\ds for openai:\* "
        r"\(9200/10000 tokens in the window\) - <session>",
        wait_line(started[0]),
    )
    session.close()
