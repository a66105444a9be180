"""The scenario x model matrix: defaults, ids, order, TOML override, bad files, grounding."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llm_budget.suite.matrix import (
    DEFAULT_SCENARIOS,
    LLMModel,
    MatrixError,
    Scenario,
    load_scenarios,
    matrix_params,
    parse_models,
)


def test_twelve_default_scenarios_in_policy_major_order() -> None:
    assert len(DEFAULT_SCENARIOS) == 12
    assert [s.name for s in DEFAULT_SCENARIOS[:4]] == [
        "NONE-grounded_off",
        "NONE-grounded_auto",
        "NONE-grounded_required",
        "ALS_ONLY-grounded_off",
    ]
    assert DEFAULT_SCENARIOS[-1] == Scenario(
        "ALS_PLUS_PROXY-grounded_required", "ALS_PLUS_PROXY", "required"
    )
    assert sum(s.grounded for s in DEFAULT_SCENARIOS) == 8


def test_models_parse_and_reject() -> None:
    assert parse_models(["openai:gpt-5", "gemini:gemini-2.5-pro"]) == (
        LLMModel("openai", "gpt-5"),
        LLMModel("gemini", "gemini-2.5-pro"),
    )
    assert str(LLMModel("openai", "gpt-5")) == "openai:gpt-5"
    for bad in (["gpt-5"], ["openai:"], ["openai:a", "openai:a"], []):
        with pytest.raises(MatrixError):
            parse_models(bad)


def test_params_ids_models_outer() -> None:
    models = parse_models(["openai:gpt-5", "gemini:gemini-2.5-pro"])
    names, values, ids = matrix_params(True, True, models, DEFAULT_SCENARIOS)
    assert names == ["llm_model", "llm_scenario"]
    assert len(values) == len(ids) == 24
    assert ids[0] == "openai:gpt-5-NONE-grounded_off"
    assert ids[4] == "openai:gpt-5-ALS_ONLY-grounded_auto"
    assert ids[12] == "gemini:gemini-2.5-pro-NONE-grounded_off"
    assert matrix_params(False, True, models, DEFAULT_SCENARIOS)[2][0] == "NONE-grounded_off"
    assert matrix_params(True, False, models, DEFAULT_SCENARIOS)[2] == [
        "openai:gpt-5",
        "gemini:gemini-2.5-pro",
    ]


def test_toml_override(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[scenarios]]\nvantage = "PROXY_ONLY"\ngrounding = "required"\n'
        '[[scenarios]]\nname = "plain"\nvantage = "NONE"\ngrounding = "off"\n'
    )
    assert load_scenarios(path) == (
        Scenario("PROXY_ONLY-grounded_required", "PROXY_ONLY", "required"),
        Scenario("plain", "NONE", "off"),
    )
    assert load_scenarios(None) is DEFAULT_SCENARIOS


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("[[scenarios]\n", "not valid TOML"),
        ("x = 1\n", "unknown top-level key(s) x"),
        ("", "needs at least one [[scenarios]]"),
        ('[[scenarios]]\nvantage = "MOON"\ngrounding = "off"\n', "vantage='MOON' must be one of"),
        ('[[scenarios]]\nvantage = "NONE"\ngrounding = "yes"\n', "scenario #1: grounding='yes'"),
        (
            '[[scenarios]]\nvantage = "NONE"\ngrounding = "off"\ncolour = 1\n',
            "unknown key(s) colour",
        ),
        ('[[scenarios]]\nname = "a b"\nvantage = "NONE"\ngrounding = "off"\n', "name='a b'"),
        (
            '[[scenarios]]\nname = "a"\nvantage = "NONE"\ngrounding = "off"\n'
            '[[scenarios]]\nname = "a"\nvantage = "NONE"\ngrounding = "auto"\n',
            "'a' is used twice",
        ),
    ],
)
def test_bad_toml_names_file_and_fault(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(MatrixError) as info:
        load_scenarios(path)
    assert str(path) in str(info.value)
    assert fault in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="cannot read it"):
        load_scenarios(tmp_path / "nope.toml")


MATRIX_TESTS = """
import pytest

def test_both(llm_model, llm_scenario):
    assert llm_model.vendor in ("openai", "gemini")
    assert llm_scenario.grounded == (llm_scenario.grounding != "off")

def test_scenario_only(llm_scenario, llm_budget):
    assert llm_budget.test.grounded is llm_scenario.grounded

def test_model_only(llm_model):
    pass

@pytest.mark.parametrize("llm_model", ["mine"])
def test_user_parametrized(llm_model, llm_scenario):
    assert llm_model == "mine"
"""


def test_plugin_parametrizes_in_fixed_order(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_m=MATRIX_TESTS)
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    ids = [line.split("::")[1] for line in result.outlines if "::" in line]
    assert len(ids) == 24 + 12 + 2 + 12
    assert ids[0] == "test_both[openai:gpt-5-NONE-grounded_off]"
    assert "test_both[openai:gpt-5-ALS_ONLY-grounded_auto]" in ids
    assert ids[24] == "test_scenario_only[NONE-grounded_off]"
    assert ids[36:38] == ["test_model_only[openai:gpt-5]", "test_model_only[gemini:gemini-2.5-pro]"]
    assert ids[38] == "test_user_parametrized[NONE-grounded_off-mine]"
    again = pytester.runpytest_inprocess("--collect-only", "-q")
    assert [line for line in again.outlines if "::" in line] == [
        line for line in result.outlines if "::" in line
    ]
    result = pytester.runpytest_inprocess("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=50)


def test_toml_and_models_from_ini_and_k(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_m=MATRIX_TESTS)
    pytester.path.joinpath("sc.toml").write_text(
        '[[scenarios]]\nname = "geo"\nvantage = "ALS_ONLY"\ngrounding = "required"\n'
    )
    pytester.makeini("[pytest]\nllm_scenarios = sc.toml\nllm_models = openai:gpt-4o\n")
    result = pytester.runpytest_inprocess("--collect-only", "-q", "-k", "test_both")
    result.stdout.fnmatch_lines(
        [
            "*test_both[[]openai:gpt-4o-geo[]]",
            "LLM budget preflight: 1 LLM test, ~8050 tokens, *",  # grounded: 7000 * 1.15
            "1/4 tests collected (3 deselected)*",
        ]
    )


def test_bad_toml_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_m=MATRIX_TESTS)
    pytester.path.joinpath("sc.toml").write_text('[[scenarios]]\nvantage = "X"\n')
    pytester.makeini("[pytest]\nllm_scenarios = sc.toml\n")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llm_scenarios file*sc.toml*vantage='X' must be one of*"])
