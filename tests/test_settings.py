"""Options: CLI > env > ini > default, the seed's env names, a clear error for each bad value."""

from __future__ import annotations

import re

import pytest

from pytest_llm_budget.settings import Settings, SettingsError, parse_duration, parse_limit_rule

SHOW = """
def test_show(llm_budget):
    s = llm_budget.settings
    print("SETTINGS", s.tpm, s.headroom, s.retries, s.backend, s.rules, s.sources["tpm"])
"""


def run_show(pytester: pytest.Pytester, *args: str) -> str:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest_inprocess("-s", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    line = next(line for line in result.outlines if "SETTINGS " in line)
    return line[line.index("SETTINGS ") :].removesuffix(".")


def test_defaults(pytester: pytest.Pytester) -> None:
    line = run_show(pytester)
    assert line.startswith("SETTINGS None 0.15 5 auto")  # --llm-tpm auto: learned
    fallback = "vendor='*', model='*', tpm=None, rpm=None, itpm=None, otpm=None, per_model=True"
    assert f"LimitRule({fallback})" in line
    assert line.endswith("default")


def test_tpm_auto_and_rules_with_auto() -> None:
    settings = Settings.resolve({"tpm": "auto"}, {}, {"limits": ["openai:gpt-5* tpm=auto"]})
    assert settings.tpm is None and settings.budget is None
    assert settings.public()["tpm"] == "auto"
    assert str(settings.rules[0]) == "openai:gpt-5* tpm=auto"
    assert settings.rules[-1].bucket_name("openai", "gpt-4o") == "openai:gpt-4o"
    configured = Settings.resolve({"tpm": "6000"}, {}, {})
    assert configured.rules[-1].bucket_name("openai", "gpt-4o") == "openai:*"
    with pytest.raises(SettingsError, match="or auto"):
        Settings.resolve({"tpm": "lots"}, {}, {})


def test_cli_limit_rules_come_before_ini_rules(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nllm_limits =\n    openai:* tpm=100\n")
    line = run_show(
        pytester, "--llm-limit", "openai:gpt-5* tpm=30000 rpm=500", "--llm-limit=gemini:* tpm=7"
    )
    first = line.index("model='gpt-5*', tpm=30000, rpm=500")
    assert first < line.index("vendor='gemini', model='*', tpm=7") < line.index("tpm=100,")
    monkeypatch.setenv("LLM_BUDGET_LIMITS", "openai:* tpm=200")  # env beats ini, CLI first
    line = run_show(pytester, "--llm-limit", "openai:gpt-5* tpm=3")
    assert line.index("tpm=3,") < line.index("tpm=200,") and "tpm=100," not in line


def test_bad_cli_limit_rule_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess("--llm-limit", "openai:gpt-5 tpm=lots")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--llm-limit" in result.stderr.str() and "tpm='lots'" in result.stderr.str()


def test_cli_beats_env_beats_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nllm_tpm = 1000\nllm_headroom = 0.3\nllm_retries = 1\n")
    monkeypatch.setenv("LLM_BUDGET_TPM", "2000")
    monkeypatch.setenv("LLM_BUDGET_HEADROOM", "0.2")
    line = run_show(pytester, "--llm-tpm=3000")
    assert line.startswith("SETTINGS 3000 0.2 1 ")
    assert line.endswith("the command line")


def test_env_beats_ini(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeini("[pytest]\nllm_tpm = 1000\n")
    monkeypatch.setenv("LLM_BUDGET_TPM", "2000")
    assert run_show(pytester).endswith("environment variable LLM_BUDGET_TPM")


def test_ini_from_pyproject(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nllm_tpm = "4000"\n'
        'llm_limits = ["openai:gpt-5* tpm=500 rpm=5", "gemini:* tpm=100000"]\n'
    )
    line = run_show(pytester)
    assert line.startswith("SETTINGS 4000 ")
    tail = "itpm=None, otpm=None, per_model=False)"
    assert f"LimitRule(vendor='openai', model='gpt-5*', tpm=500, rpm=5, {tail}" in line
    assert f"LimitRule(vendor='gemini', model='*', tpm=100000, rpm=None, {tail}" in line
    assert f"LimitRule(vendor='*', model='*', tpm=4000, rpm=None, {tail}" in line  # the fallback


@pytest.mark.parametrize(
    ("env", "value", "field", "expected"),
    [
        ("OPENAI_TPM_LIMIT", "12345", "tpm", 12345),
        ("OPENAI_TPM_HEADROOM", "0.25", "headroom", 0.25),
        ("OPENAI_MAX_CONCURRENCY", "1", "max_concurrency", 1),
        ("OPENAI_RETRY_MAX_ATTEMPTS", "3", "retries", 3),
        ("OPENAI_BACKOFF_BASE_SECONDS", "1.5", "backoff_base", 1.5),
        ("OPENAI_EST_TOKENS_PER_RUN", "6500", "est_tokens", 6500),
    ],
)
def test_the_seeds_env_names(env: str, value: str, field: str, expected: object) -> None:
    settings = Settings.resolve({}, {env: value}, {})
    assert getattr(settings, field) == expected


def test_our_env_name_beats_the_seeds() -> None:
    settings = Settings.resolve({}, {"OPENAI_TPM_LIMIT": "1", "LLM_BUDGET_TPM": "2"}, {})
    assert settings.tpm == 2


@pytest.mark.parametrize(
    ("args", "named", "why"),
    [
        (["--llm-tpm=abc"], "--llm-tpm='abc'", "whole number"),
        (["--llm-tpm=0"], "--llm-tpm='0'", "above 0"),
        (["--llm-tpm=-5"], "--llm-tpm='-5'", "above 0"),
        (["--llm-headroom=1.5"], "--llm-headroom='1.5'", "below 1"),
        (["--llm-headroom=1"], "--llm-headroom='1'", "below 1"),
        (["--llm-window=0"], "--llm-window='0'", "above 0"),
        (["--llm-retries=-1"], "--llm-retries='-1'", "0 or more"),
        (["--llm-rpm=x"], "--llm-rpm='x'", "whole number"),
        (["--llm-record-mode=sometimes"], "--llm-record-mode='sometimes'", "one of off, once"),
        (["--llm-backend=ftp://x"], "--llm-backend='ftp://x'", "redis://"),
        (["--llm-report=out.txt"], "--llm-report='out.txt'", ".json, .html or .md"),
        (["--llm-max-duration=soon"], "--llm-max-duration='soon'", "duration"),
        (["--llm-metrics-port=99999"], "--llm-metrics-port='99999'", "1 to 65535"),
        (["--llm-metrics-port=-1"], "--llm-metrics-port='-1'", "1 to 65535"),
        (["--llm-backoff-base=5", "--llm-backoff-max=1"], "--llm-backoff-max=1", "below"),
    ],
)
def test_bad_cli_values_stop_the_run(
    pytester: pytest.Pytester, args: list[str], named: str, why: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert named in err and why in err, err
    assert "pytest-llm-budget" in err


def test_bad_env_value_names_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_TPM_HEADROOM", "2")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "environment variable OPENAI_TPM_HEADROOM" in result.stderr.str()


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("openai gpt-5 tpm=1", "is not 'vendor:model"),
        ("openai:gpt-5 rpm=5", "needs tpm"),
        ("openai:gpt-5 tpm=lots", "tpm='lots'"),
        ("openai:gpt-5 tpm=0", "above 0"),
        ("openai:gpt-5 tpm=5 burst=2", "unknown key 'burst'"),
        ("openai:gpt-5 itpm=5", "also matches openai"),
        ("anthropic:claude* tpm=5 itpm=5", "not both"),
        ("opnai:* tpm=1000", "unknown vendor 'opnai' (known: "),
        ("openai:* tpm=1000 tpm=2000", "duplicate key 'tpm'"),
    ],
)
def test_malformed_limit_rules(pytester: pytest.Pytester, rule: str, why: str) -> None:
    pytester.makeini(f"[pytest]\nllm_limits =\n    gemini:* tpm=100\n    {rule}\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "llm_limits" in err and why in err, err


def test_help_shows_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--help")
    out = result.stdout.str()
    assert "LLM token budget (pytest-llm-budget)" in out
    for flag in ("--llm-tpm", "--llm-rpm", "--llm-headroom", "--llm-window", "--llm-backend",
                 "--llm-max-concurrency", "--llm-retries", "--llm-backoff-base",
                 "--llm-backoff-max", "--llm-max-wait", "--llm-est-tokens",
                 "--llm-record-mode", "--llm-report"):
        assert flag in out, flag
    assert "llm_limits" in out


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    for bad in ("", "m", "10x", "-5", "0"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_limit_rule_matching() -> None:
    rule = parse_limit_rule("openai:gpt-5* tpm=30000 rpm=500")
    assert rule.matches("openai", "gpt-5-mini") and not rule.matches("gemini", "gpt-5")
    assert str(rule) == "openai:gpt-5* tpm=30000 rpm=500"


def test_anthropic_rules_take_input_and_output_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llm_budget.providers import registry

    if "anthropic" not in registry.vendors():  # until the Anthropic provider is registered
        real = registry.unknown_vendor
        monkeypatch.setattr(
            registry, "unknown_vendor", lambda name: None if name == "anthropic" else real(name)
        )
    rule = parse_limit_rule("anthropic:claude-sonnet-4* itpm=40000 otpm=8000 rpm=50")
    assert (rule.itpm, rule.otpm, rule.rpm, rule.tpm) == (40000, 8000, 50, 40000)
    assert str(rule) == "anthropic:claude-sonnet-4* itpm=40000 otpm=8000 rpm=50"
    assert rule.budget(0.15) == 34000 and rule.output_budget(0.15) == 6800
    assert parse_limit_rule("anthropic:* tpm=9000").output_budget(0.0) is None
    for bad, why in [
        ("*:claude* itpm=5", "also matches openai, gemini"),
        ("gem*:x itpm=5", "also matches gemini"),
        ("anthropic:x otpm=5", "needs tpm=N (or itpm=N"),
        ("anthropic:x tpm=5 otpm=5", "needs itpm too"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_limit_rule(bad)


def test_settings_are_frozen_and_public_masks_passwords() -> None:
    settings = Settings.resolve({"backend": "redis://:s3cret@localhost:6379/0"}, {}, {})
    with pytest.raises(AttributeError):
        settings.tpm = 1  # type: ignore[misc]
    assert "s3cret" not in str(settings.public())
    with pytest.raises(SettingsError):
        Settings.resolve({"tpm": "1e9x"}, {}, {})
