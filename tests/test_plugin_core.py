"""The pytest layer: marker validation, the `llm_budget` fixture, the summary, cheap import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        ("llm_budget(tokens=-1)", "tokens must be a whole number above 0"),
        ("llm_budget(tokens='many')", "tokens must be a whole number above 0"),
        ("llm_budget(6000)", "keyword arguments only"),
        ("llm_budget(tokenz=5)", "unknown argument(s) tokenz"),
        ("llm_budget(vendor='')", "vendor must be a non-empty string"),
        ("llm_budget(grounded='yes')", "grounded must be True/False"),
        ("llm_budget(vendor='bogus')", "unknown vendor 'bogus' (known: "),
    ],
)
def test_a_malformed_marker_is_a_collection_error(
    pytester: pytest.Pytester, marker: str, why: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_bad():
            pass

        def test_good():
            pass
        """
    )
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "ERROR collecting" in out and why in out and "test_bad" in out


def test_reserve_settle_and_snapshot_through_the_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.llm_budget(tokens=1000, vendor="openai", model="gpt-5")
        def test_spend(llm_budget):
            with llm_budget.reserve(1000, vendor="openai", model="gpt-5") as r:
                r.settle(1200)
            snap = llm_budget.snapshot("openai", "gpt-5")
            assert snap.used_tokens == 1200
            assert snap.budget == 1700
            assert snap.in_flight == 0
            assert snap.stats.debt == 200

        def test_too_large(llm_budget):
            from pytest_llm_budget import RequestTooLarge
            with pytest.raises(RequestTooLarge) as info:
                llm_budget.reserve(9000, vendor="gemini", model="gemini-2.5-pro")
            assert info.value.code == "LLM_REQUEST_TOO_LARGE"
        """
    )
    result = pytester.runpytest_inprocess("--llm-tpm=2000", "--llm-report=out.json")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "LLM budget" in out
    result.stdout.fnmatch_lines(
        [
            "*bucket*budget*calls*estimated*actual*debt*deferrals*waited*429s*",
            "openai:*  1700/60s*1*1000*1200*200*0*0.0s*0",
            "totals: calls: 0 *429s: 0*",
        ]
    )
    report = json.loads((pytester.path / "out.json").read_text())
    assert set(report) == {
        "settings", "totals", "buckets", "limits", "tests", "calls", "overspent", "run"
    }
    assert report["settings"]["tpm"] == 2000
    openai = next(b for b in report["buckets"] if b["name"] == "openai:*")
    assert (openai["calls"], openai["estimated"], openai["actual"]) == (1, 1000, 1200)
    assert set(report["totals"]) >= {
        "calls", "replayed", "prompt_tokens", "completion_tokens", "total_tokens",
        "rate_limit_events", "retries", "waited_s",
    }


def test_no_summary_for_a_suite_without_llm_calls(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1)
    assert "LLM budget" not in result.stdout.str()


def test_plugin_import_loads_no_heavy_library() -> None:
    code = (
        "import sys, pytest_llm_budget.plugin, pytest_llm_budget;"
        "heavy = [m for m in ('openai', 'google.genai', 'vcr', 'tiktoken', 'prometheus_client',"
        " 'redis', 'httpx2', 'httpx') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_disabled_with_p_no(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess("-p", "no:llm_budget", "--llm-tpm=abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the option no longer exists
    assert "unrecognized arguments: --llm-tpm" in result.stderr.str()


def test_every_llm_client_fixture_makes_an_llm_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_sync(llm_http_client):
            pass

        def test_async(llm_async_http_client):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*LLM budget preflight: 2 LLM tests*"])
