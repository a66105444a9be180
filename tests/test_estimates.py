"""Estimates against the emulator's admission charge (real SDKs over real HTTP), the marker as a
test's total (never a per-call floor) and the overspend line in the summary and JSON report."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest

from pytest_llm_budget.routing import clients
from pytest_llm_budget.tokens import default_counter

PROMPTS = {
    "english": (
        "Summarise the quarterly report in three bullet points, focusing on revenue growth, "
        "churn and the risks the board raised about the new pricing model. " * 3
    ),
    "german": (
        "Größenänderungen der Straßenüberführung müssen vom Bauausschuss genehmigt werden; "
        "die Ausschreibung endet übermorgen um 12:00 Uhr. Bitte fasse die Änderungen zusammen. "
        * 3
    ),
    "japanese": (
        "東京都の天気予報によると、明日は午前中から雨が降り、午後には雷を伴う激しい雨になる"
        "見込みです。外出の際は傘を忘れずに。この文章を英語に翻訳してください。" * 4
    ),
    "code": (
        "Review this function:\n\ndef fib(n: int) -> int:\n    if n < 2:\n        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n\nprint({i: fib(i) for i in range(10)})\n" * 3
    ),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_estimate_is_the_emulator_charge(
    emu: Any, make_budget: Any, kind: str, api: str
) -> None:
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    prompt = PROMPTS[kind]
    if api == "chat":
        client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "You are a careful assistant."},
                {"role": "user", "content": prompt},
            ],
            max_tokens=1500,
        )
    else:
        client.responses.create(
            model="gpt-4.1",
            instructions="You are a careful assistant.",
            input=[{"role": "user", "content": [{"type": "input_text", "text": prompt}]}],
            max_output_tokens=1500,
        )
    [record] = budget.calls.records()
    [seen] = emu.log
    assert record.estimated == seen.charge
    assert seen.charge == math.ceil((len("You are a careful assistant.") + len(prompt)) / 4) + 1500


def test_openai_estimate_without_max_tokens_uses_the_default_output(
    emu: Any, make_budget: Any
) -> None:
    budget = make_budget(est_tokens=321)
    clients.fixture_client("openai_client", budget).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPTS["english"]}]
    )
    [record] = budget.calls.records()
    assert record.estimated == math.ceil(len(PROMPTS["english"]) / 4) + 321


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_gemini_estimate_is_input_only_and_covers_the_charge(
    emu: Any, make_budget: Any, kind: str
) -> None:
    budget = make_budget()
    client = clients.fixture_client("gemini_client", budget)
    prompt = PROMPTS[kind]
    client.models.generate_content(
        model="gemini-2.5-flash", contents=prompt, config={"max_output_tokens": 1500}
    )
    [record] = budget.calls.records()
    [seen] = emu.log
    counted = max(default_counter().count_text(prompt, "gemini-2.5-flash"), seen.charge)
    assert record.estimated == math.ceil(counted * 1.2)  # input only, margin on the proxy count
    assert seen.charge == math.ceil(len(prompt) / 4) <= record.estimated


MARKED_SUITE = '''
import pytest

PROMPT = "Explain the difference between a list and a tuple in Python, briefly. " * 4


@pytest.mark.llm_budget(tokens=3600)
def test_two_calls(llm_emulator, openai_client):
    for _ in range(2):
        openai_client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=1500
        )


@pytest.mark.llm_budget(tokens=10)
def test_overspends(llm_emulator, openai_client):
    openai_client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_tokens=20
    )
'''


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_marked=MARKED_SUITE)
    result = pytester.runpytest_subprocess(
        "--llm-report", "report.json", "--llm-report", "report.html", "--llm-tpm", "1000000",
        "-p", "no:cacheprovider", *args,
    )
    result.assert_outcomes(passed=2)
    return result, json.loads((pytester.path / "report.json").read_text())


def test_marker_is_the_test_total_not_a_per_call_floor(pytester: pytest.Pytester) -> None:
    result, document = _run(pytester)
    prompt_chars = len("Explain the difference between a list and a tuple in Python, briefly. ") * 4
    own = math.ceil(prompt_chars / 4) + 1500
    two = [c for c in document["calls"] if c["test"].endswith("test_two_calls")]
    assert [c["estimated"] for c in two] == [own, own]  # not 3600 each
    [over] = document["overspent"]
    assert over["test"] == "test_marked.py::test_overspends" and over["declared"] == 10
    spent = sum(c["prompt_tokens"] + c["completion_tokens"] for c in document["calls"][2:])
    assert over["spent"] == spent > 10
    result.stdout.fnmatch_lines(
        [
            "*LLM budget*",
            f"overspent: test_marked.py::test_overspends declared 10 tokens, spent {spent} (+*%)*",
        ]
    )
    assert "test_two_calls declared" not in result.stdout.str()
    page = (pytester.path / "report.html").read_text()
    assert "1 test(s) spent more than they declared" in page
    over_row = (
        r'<tr class="over"><td class="test">test_marked\.py::(?:<wbr>)?test_overspends<.*?</tr>'
    )
    row = re.search(over_row, page)
    assert row and f'<td class="n">10</td><td class="n">{spent}</td>' in row.group(0)


def test_overspend_is_reported_by_the_xdist_controller(pytester: pytest.Pytester) -> None:
    result, document = _run(pytester, "-n", "2")
    assert [o["test"] for o in document["overspent"]] == ["test_marked.py::test_overspends"]
    result.stdout.fnmatch_lines(["overspent: test_marked.py::test_overspends declared 10 tokens*"])
