"""What a new user trips on (issue [polish]): silent record modes, hints, warnings, counts."""

from __future__ import annotations

import pytest

pytest.importorskip("vcr", reason="pip install 'pytest-llm-budget[cassettes]'")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


APP_SUITE = """
import openai
import pytest

def ask(text):  # the app builds its own client (OPENAI_BASE_URL points at the emulator)
    return openai.OpenAI().chat.completions.create(
        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": text}]
    )

def test_app_first(llm_emulator):
    ask("one")
    ask("two")

def test_app_second(llm_emulator):
    ask("three")

@pytest.mark.llm_budget
def test_marked(llm_emulator):
    ask("four")
"""


def test_live_calls_outside_cassettes_warn_once_naming_a_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_SUITE)
    result = _run(pytester, "--llm-record-mode", "once")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert out.count("no cassette holds") == 1, out
    result.stdout.fnmatch_lines([
        "*CassetteWarning: pytest-llm-budget: test_app.py::test_app_first made 2 live LLM "
        "call(s) that no cassette holds (record mode 'once')*"
        "(pytestmark = pytest.mark.llm_budget)*",
        "*def test_app_first(llm_emulator):",
    ])
    cassettes = sorted(p.name for p in pytester.path.rglob("*.yaml"))
    assert cassettes == ["test_marked.yaml"]


def test_no_warning_when_every_live_call_is_under_a_cassette(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app="import pytest\npytestmark = pytest.mark.llm_budget\n" + APP_SUITE)
    result = _run(pytester, "--llm-record-mode", "once")
    result.assert_outcomes(passed=3)
    assert "no cassette holds" not in result.stdout.str()
    assert len(list(pytester.path.rglob("*.yaml"))) == 3


# -- a replay miss on host names llm_match_host ---------------------------------------------------
ONE_CALL = """
def test_ask(openai_client):
    openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hello"}]
    )
"""


def test_a_replay_miss_on_the_host_names_llm_match_host(pytester: pytest.Pytester) -> None:
    from pytest_llm_budget.emulator import Emulator

    pytester.makepyfile(test_host=ONE_CALL)
    env = pytester._monkeypatch
    env.setenv("OPENAI_API_KEY", "sk-recording")
    with Emulator() as emulator:
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        _run(pytester, "--llm-record-mode", "all").assert_outcomes(passed=1)
    body_miss = ONE_CALL.replace('"hello"', '"changed"')
    pytester.makepyfile(test_host=body_miss)
    other = _run(pytester, "--llm-record-mode", "none")  # same host, another body
    other.assert_outcomes(failed=1)
    assert "`llm_match_host = false`" not in other.stdout.str()
    pytester.makepyfile(test_host=ONE_CALL)
    env.setenv("OPENAI_BASE_URL", "http://localhost:9/v1")  # the same request, another host
    miss = _run(pytester, "--llm-record-mode", "none")
    miss.assert_outcomes(failed=1)
    miss.stdout.fnmatch_lines(["*recorded against another host*set `llm_match_host = false`*"])


# -- the CostWarning points at the test's line ---------------------------------------------------
UNPRICED = """
def test_unpriced(openai_client):
    openai_client.chat.completions.create(model="acme-private-1", max_tokens=20,
        messages=[{"role": "user", "content": "hello"}])
"""


def test_the_cost_warning_names_the_tests_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unpriced=UNPRICED)
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(autouse=True)\ndef _emu(llm_emulator):\n    yield\n"
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "CostWarning" in out, out
    result.stdout.fnmatch_lines([
        "*test_unpriced.py:2: CostWarning: pytest-llm-budget: no price known*acme-private-1*",
        '    openai_client.chat.completions.create(model="acme-private-1"*',
    ])
    assert "caps.py" not in out and "pytest_llm_budget" not in out.split("warnings summary")[1]


# -- no marker, no LLM fixture: the summary says why there was no preflight ----------------------
def test_live_calls_without_llm_tests_say_why_there_was_no_preflight(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_app=APP_SUITE.split("@pytest.mark.llm_budget")[0])
    result = _run(pytester)
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "LLM budget preflight: 1 LLM test" not in out
    result.stdout.fnmatch_lines([
        "cost: * (3 live calls)*",
        "LLM budget preflight: none: the tests that made these live calls have neither the "
        "llm_budget marker nor an LLM fixture; mark them (pytestmark = pytest.mark.llm_budget)*",
    ])


def test_a_suite_without_llm_calls_still_prints_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_a():\n    pass\n")
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    assert "LLM budget" not in result.stdout.str()


# -- the cost line counts the calls that were sent ------------------------------------------------
TOO_LARGE = """
import pytest
from pytest_llm_budget import RequestTooLarge

def test_sent(openai_client):
    openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}])

@pytest.mark.parametrize("n", range(3))
def test_never_sent(openai_client, n):
    with pytest.raises(RequestTooLarge):
        openai_client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=5000, messages=[{"role": "user", "content": "hi"}])
"""


def test_the_cost_line_counts_only_calls_that_were_sent(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sent=TOO_LARGE)
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(autouse=True)\ndef _emu(llm_emulator):\n    yield\n"
    )
    result = _run(pytester, "--llm-tpm", "3000")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["totals: calls: 4 *", "cost: * (1 live call)*"])
