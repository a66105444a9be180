"""Preflight: projected tokens and least duration, the header line, the --llm-max-duration guard."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.settings import Settings
from pytest_llm_budget.suite.preflight import (
    TestEstimate,
    default_vendor,
    format_duration,
    over_budget_message,
    project,
)


def test_format_duration() -> None:
    assert format_duration(395.29) == "6m36s"
    assert format_duration(395.0) == "6m35s"
    assert format_duration(42) == "42s"
    assert format_duration(0) == "0s"
    assert format_duration(3720) == "1h2m0s"


def test_issue_example_numbers() -> None:
    tests = [TestEstimate(f"t{i}", 7000, "openai") for i in range(24)]
    projection = project(tests, Settings(tpm=30000))
    assert projection.tokens == 168000
    # 7 windows' worth: the first leaves at once, the last at least 6 windows later
    assert projection.seconds == 360
    assert projection.line(25500) == (
        "LLM budget preflight: 24 LLM tests, ~168000 tokens, at least 6m0s at 25500 tokens/60s"
    )


def test_buckets_per_vendor_and_rules_replays_count_zero() -> None:
    settings = Settings(tpm=30000, limits=(LimitRule("gemini", "*", 100000),))
    tests = [
        *(TestEstimate(f"o{i}", 7000, "openai", "gpt-5") for i in range(12)),
        *(TestEstimate(f"g{i}", 7000, "gemini", "gemini-2.5-pro") for i in range(12)),
        TestEstimate("r", 7000, "openai", replayed=True),
    ]
    projection = project(tests, settings)
    assert projection.tests == 25 and projection.replayed == 1
    assert projection.tokens == 168000
    assert [(b.name, b.tokens, b.budget) for b in projection.buckets] == [
        ("gemini:*", 84000, 85000),
        ("openai:*", 84000, 25500),
    ]
    assert projection.busiest is not None and projection.busiest.name == "openai:*"
    assert projection.line(25500).endswith(
        "(busiest bucket openai:* of 2; 1 replayed from cassettes)"
    )


def test_a_test_naming_no_vendor_goes_to_the_default_vendor_bucket() -> None:
    tests = [TestEstimate("a", 1000), TestEstimate("b", 2000, "gemini")]
    assert [(b.name, b.tokens) for b in project(tests, Settings(tpm=30000)).buckets] == [
        ("gemini:*", 2000),
        ("openai:*", 1000),
    ]
    gemini_first = Settings(tpm=30000, models=("gemini:gemini-2.5-pro", "openai:gpt-5"))
    assert default_vendor(gemini_first) == "gemini"
    assert [(b.name, b.tokens) for b in project(tests, gemini_first).buckets] == [
        ("gemini:*", 3000)
    ]


def test_guard_message_says_by_how_much_and_what_to_change() -> None:
    tests = [TestEstimate(f"t{i}", 7000, "openai") for i in range(24)]
    projection = project(tests, Settings(tpm=30000))
    assert over_budget_message(projection, 360) is None
    message = over_budget_message(projection, 300)
    assert message is not None
    assert "at least 6m0s" in message and "1m0s over --llm-max-duration=5m0s" in message
    assert "--llm-tpm 32942" in message  # 168000 tokens in 6 windows (0 s to 5 m) at 15% headroom
    assert "-k" in message and "--llm-record-mode once" in message


SUITE = """
import pytest

def test_matrix(llm_model, llm_scenario):
    pass

@pytest.mark.llm_budget(tokens=1000)
def test_marked():
    pass

@pytest.mark.llm_budget(tokens=1000, grounded=True)
def test_marked_grounded():
    pass

def test_not_llm():
    pass
"""


@pytest.fixture(autouse=True)
def _configured_limit(request: pytest.FixtureRequest) -> None:
    """These projections are of a known limit: the old default's 30000 (auto is tested apart)."""
    if "pytester" in request.fixturenames and "auto" not in request.node.name:
        request.getfixturevalue("pytester").makeini("[pytest]\nllm_tpm = 30000\n")


def test_header_line_under_auto_before_a_limit_is_known(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("-q", "--llm-max-duration", "1s")
    result.stdout.fnmatch_lines(
        [
            "LLM budget preflight: 26 LLM tests, ~186800 tokens, limit not known yet "
            "(--llm-tpm auto: learned from the provider's answers)*"
        ]
    )
    result.assert_outcomes(passed=27)  # no projection, no guard: nothing is known to refuse


def test_auto_projection_uses_what_the_backend_learned() -> None:
    tests = [TestEstimate("t1", 12000, "openai", "gpt-5")]
    learned = {("openai", "gpt-5"): 5100}
    projection = project(tests, Settings(window=6.0), 0, lambda v, m: learned.get((v, m)))
    [bucket] = projection.buckets
    assert (bucket.name, bucket.budget, bucket.seconds) == ("openai:gpt-5", 5100, 12.0)
    unknown = project(tests, Settings(window=6.0))
    assert unknown.buckets[0].budget is None and not unknown.lower_bound


def test_header_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("-q")
    # 8 ungrounded x 7000 + 16 grounded x 8050, + 1000 + 1000 (a declared total never gets the
    # grounded overhead); the marked tests name no vendor: the default vendor's bucket (openai,
    # the first llm_models entry) is the busiest with 92400 + 2000: 4 windows' worth, so at
    # least 3 windows; "about": the matrix tests declare no tokens, so the bound is a guess
    result.stdout.fnmatch_lines(
        [
            "LLM budget preflight: 26 LLM tests, ~186800 tokens, about 3m0s at 25500 "
            "tokens/60s (busiest bucket openai:* of 2)"
        ]
    )
    result.assert_outcomes(passed=27)


def test_duration_guard_stops_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("--llm-max-duration", "2m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*LLM_BATCH_RATE_LIMITED*1m0s over --llm-max-duration=2m0s*"])
    assert "passed" not in result.stdout.str()
    ok = pytester.runpytest_inprocess("--llm-max-duration", "2m", "-k", "gemini and NONE or marked")
    ok.assert_outcomes(passed=5)


def test_replaying_record_mode_counts_zero(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("--llm-record-mode", "none", "--llm-max-duration", "1s")
    result.stdout.fnmatch_lines(
        ["*26 LLM tests, ~0 tokens, at least 0s*(26 replayed from cassettes)"]
    )
    result.assert_outcomes(passed=27)


def test_preflight_and_guard_under_xdist(pytester: pytest.Pytester) -> None:
    """The controller collects nothing: worker gw0's projection is shown and enforced by it."""
    pytester.makepyfile(test_s=SUITE)
    stopped = pytester.runpytest_subprocess("-n", "2", "--llm-max-duration", "2m")
    assert stopped.ret == pytest.ExitCode.USAGE_ERROR
    stopped.stderr.fnmatch_lines(["*LLM_BATCH_RATE_LIMITED*1m0s over --llm-max-duration=2m0s*"])
    assert "passed" not in stopped.stdout.str()
    ran = pytester.runpytest_subprocess("-n", "2", "--llm-max-duration", "10m")
    ran.stdout.fnmatch_lines(["*LLM budget preflight: 26 LLM tests, ~186800 tokens*"])
    ran.assert_outcomes(passed=27)


def test_marker_without_vendor_goes_to_the_default_vendor_and_says_about_when_guessing() -> None:
    declared = [TestEstimate("a", 3000), TestEstimate("b", 3000, "gemini")]
    projection = project(declared, Settings(tpm=30000))
    assert [b.name for b in projection.buckets] == ["gemini:*", "openai:*"]
    assert "about" in projection.line(25500)  # "a" names no vendor: its bucket is a guess
    gemini_first = Settings(tpm=30000, models=("gemini:gemini-2.5-pro",))
    assert [b.name for b in project(declared, gemini_first).buckets] == ["gemini:*"]
    sure = [TestEstimate("a", 30000, "openai"), TestEstimate("b", 30000, "openai")]
    assert project(sure, Settings(tpm=30000)).line(25500).startswith(
        "LLM budget preflight: 2 LLM tests, ~60000 tokens, at least 2m0s"
    )
    guessed = [TestEstimate("a", 30000, "openai", declared=False)]
    assert " about 1m0s " in project(guessed, Settings(tpm=30000)).line(25500)
    rules = Settings(tpm=30000, limits=(LimitRule("openai", "gpt-5*", 90000),))
    assert "about" in project([TestEstimate("a", 100, "openai")], rules).line(25500)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(100, 1700),  # declared tokens (a call fits the smallest bucket)
            st.integers(1, 3),  # calls the test makes
            st.floats(0.0, 0.5),  # extra tokens spent above the declaration, as a share
            st.floats(0.0, 2.0),  # seconds each call takes
            st.sampled_from(["openai", "gemini"]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(2000, 9000),
)
def test_the_bound_is_never_above_the_real_wall(tests: list[Any], tpm: int) -> None:
    """Generated runs through the real limiter (fake clock): tests that spend at least what
    they declare never finish sooner than the preflight's "at least"."""
    from pytest_llm_budget.backends.memory import MemoryBackend
    from pytest_llm_budget.limiting.limiter import Limiter

    config = Settings(tpm=tpm, window=10.0, limits=(LimitRule("gemini", "*", tpm * 2),))
    estimates = [TestEstimate(f"t{i}", t[0], t[4]) for i, t in enumerate(tests)]
    projection = project(estimates, config)
    assert projection.lower_bound
    clock = FakeClock()
    limiter = Limiter(
        MemoryBackend(), config.rules, headroom=config.headroom, window=config.window,
        clock=clock.now, sleep=clock.sleep,
    )
    start = clock.now()
    for declared, calls, extra, seconds, vendor in tests:
        per_call = -(-declared // calls)
        for _ in range(calls):
            reservation = limiter.reserve(per_call, vendor=vendor, model="m")
            clock.advance(seconds)
            reservation.settle(int(per_call * (1 + extra)))
    assert projection.seconds <= clock.now() - start
