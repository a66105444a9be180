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
        "call(s) that no cassette holds (record mode 'once')*(pytestmark = pytest.mark.llm_budget)*",
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
