"""Preflight: projected tokens and least duration, the header line, the --llm-max-duration guard."""

from __future__ import annotations

import pytest

from pytest_llm_budget.limiter import LimitRule
from pytest_llm_budget.preflight import (
    TestEstimate,
    default_vendor,
    format_duration,
    over_budget_message,
    project,
)
from pytest_llm_budget.settings import Settings


def test_format_duration() -> None:
    assert format_duration(395.29) == "6m36s"
    assert format_duration(395.0) == "6m35s"
    assert format_duration(42) == "42s"
    assert format_duration(0) == "0s"
    assert format_duration(3720) == "1h2m0s"


def test_issue_example_numbers() -> None:
    tests = [TestEstimate(f"t{i}", 7000, "openai") for i in range(24)]
    projection = project(tests, Settings())
    assert projection.tokens == 168000
    assert projection.seconds == pytest.approx(168000 / 25500 * 60)
    assert projection.line(25500) == (
        "LLM budget preflight: 24 LLM tests, ~168000 tokens, at least 6m36s at 25500 tokens/60s"
    )


def test_buckets_per_vendor_and_rules_replays_count_zero() -> None:
    settings = Settings(limits=(LimitRule("gemini", "*", 100000),))
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
    assert [(b.name, b.tokens) for b in project(tests, Settings()).buckets] == [
        ("gemini:*", 2000),
        ("openai:*", 1000),
    ]
    gemini_first = Settings(models=("gemini:gemini-2.5-pro", "openai:gpt-5"))
    assert default_vendor(gemini_first) == "gemini"
    assert [(b.name, b.tokens) for b in project(tests, gemini_first).buckets] == [
        ("gemini:*", 3000)
    ]


def test_guard_message_says_by_how_much_and_what_to_change() -> None:
    tests = [TestEstimate(f"t{i}", 7000, "openai") for i in range(24)]
    projection = project(tests, Settings())
    assert over_budget_message(projection, 400) is None
    message = over_budget_message(projection, 300)
    assert message is not None
    assert "at least 6m36s" in message and "1m36s over --llm-max-duration=5m0s" in message
    assert "--llm-tpm 39530" in message  # 168000 tokens in 5 windows at 15% headroom
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


def test_header_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("-q")
    # 8 ungrounded x 7000 + 16 grounded x 8050, + 1000 + 1000 (a declared total never gets the
    # grounded overhead); the marked tests name no vendor: the default vendor's bucket (openai,
    # the first llm_models entry) is the busiest with 92400 + 2000
    result.stdout.fnmatch_lines(
        [
            "LLM budget preflight: 26 LLM tests, ~186800 tokens, at least 3m43s at 25500 "
            "tokens/60s (busiest bucket openai:* of 2)"
        ]
    )
    result.assert_outcomes(passed=27)


def test_duration_guard_stops_before_any_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s=SUITE)
    result = pytester.runpytest_inprocess("--llm-max-duration", "2m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*LLM_BATCH_RATE_LIMITED*1m43s over --llm-max-duration=2m0s*"])
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
    stopped.stderr.fnmatch_lines(["*LLM_BATCH_RATE_LIMITED*1m43s over --llm-max-duration=2m0s*"])
    assert "passed" not in stopped.stdout.str()
    ran = pytester.runpytest_subprocess("-n", "2", "--llm-max-duration", "10m")
    ran.stdout.fnmatch_lines(["*LLM budget preflight: 26 LLM tests, ~186800 tokens*"])
    ran.assert_outcomes(passed=27)
