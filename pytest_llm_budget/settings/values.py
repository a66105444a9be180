"""How an option's text becomes its value: one parser per kind, each raising ValueError.

The message of a ValueError says what the value must be; `Settings.resolve` prefixes the option
and the source it came from (`SettingsError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from pytest_llm_budget.backends import validate_backend_spec
from pytest_llm_budget.limiting.buckets import LimitRule

__all__ = [
    "backend_spec",
    "baseline_report",
    "boolean",
    "choice",
    "headroom",
    "limit_rules",
    "lines",
    "non_negative_float",
    "non_negative_int",
    "notice_after",
    "optional_duration",
    "optional_percent",
    "optional_port",
    "optional_positive_int",
    "optional_usd",
    "parse_duration",
    "parse_limit_rule",
    "percent",
    "positive_float",
    "positive_int",
    "reports",
    "tpm",
]


def _int(text: str) -> int:
    try:
        return int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError("must be a whole number") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError("must be a number") from None


T = TypeVar("T")


def _or_none(parse: Callable[[str], T], *words: str) -> Callable[[str], T | None]:
    """A parser that also takes `words` (e.g. none, off) for None."""

    def parse_or_none(text: str) -> T | None:
        return None if text.strip().lower() in words else parse(text)

    return parse_or_none


def positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise ValueError("must be a whole number above 0")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number above 0")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number, 0 or more")
    return value


def headroom(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise ValueError("must be at least 0 and below 1 (a fraction of the TPM kept unused)")
    return value


_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `10m`, `1h30m`, `1.5h`; raises ValueError otherwise."""
    match = _DURATION.match(text)
    if not text.strip() or not match or not any(match.groups()):
        raise ValueError("must be a duration such as 90s, 10m or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError("must be a duration above 0")
    return total


optional_positive_int = _or_none(positive_int, "", "none", "unlimited", "off")


def tpm(text: str) -> int | None:
    """A token limit per window, or `auto` (None: learned from the provider)."""
    if text.strip().lower() == "auto":
        return None
    try:
        return positive_int(text)
    except ValueError:
        raise ValueError("must be a whole number above 0, or auto") from None


def port(text: str) -> int:
    """A TCP port to listen on, 1-65535."""
    value = _int(text)
    if not 1 <= value <= 65535:
        raise ValueError("must be a TCP port, 1 to 65535")
    return value


optional_port = _or_none(port, "", "none", "off")
notice_after = _or_none(non_negative_float, "off", "none", "never")
optional_duration = _or_none(parse_duration, "", "none", "off")


def _usd(text: str) -> float:
    """Dollars (`5`, `0.50`, `$5`, `1,000`)."""
    try:
        value = float(text.strip().lower().removeprefix("$").replace(",", "").replace("_", ""))
    except ValueError:
        raise ValueError("must be an amount in US dollars, e.g. 5 or 0.50") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be an amount in US dollars above 0")
    return value


optional_usd = _or_none(_usd, "", "none", "off", "unlimited")


def backend_spec(text: str) -> str:
    return validate_backend_spec(text.strip())


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def choice(*choices: str) -> Callable[[str], str]:
    """A parser taking one of `choices` (any case)."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def reports(text: str) -> tuple[str, ...]:
    """Report paths, separated by spaces or commas; each must end in .json, .html or .md."""
    paths = tuple(w for w in re.split(r"[\s,]+", text) if w)
    for path in paths:
        if not path.lower().endswith((".json", ".html", ".htm", ".md")):
            raise ValueError(f"{path!r}: a report path must end in .json, .html or .md")
    return paths


def baseline_report(text: str) -> str:
    """The path of an earlier run's JSON report, checked now: it exists and is such a report."""
    from pytest_llm_budget.reporting.baseline import load_baseline

    path = text.strip()
    load_baseline(path)  # BaselineError is a ValueError saying what is wrong
    return path


def percent(text: str) -> float:
    """`20%` or `20` (both twenty percent) -> 0.2; 0 or more."""
    try:
        value = float(text.strip().removesuffix("%").strip())
    except ValueError:
        raise ValueError("must be a percentage such as 20%") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a percentage, 0% or more")
    return value / 100


optional_percent = _or_none(percent, "", "none", "off")


_RULE_KEYS = ("tpm", "rpm", "itpm", "otpm")
_RULE = re.compile(r"^(?P<vendor>[^\s:]+):(?P<model>\S+)(?P<rest>(?:\s+\w+=\S+)*)\s*$")


def parse_limit_rule(line: str) -> LimitRule:
    """`openai:gpt-5* tpm=30000 rpm=500` or `anthropic:claude-sonnet-4* itpm=40000 otpm=8000
    rpm=50` -> LimitRule; raises ValueError naming the fault."""
    text = line.strip()
    match = _RULE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not 'vendor:model tpm=N [rpm=M]'")
    values: dict[str, int | None] = {}
    for pair in match["rest"].split():
        key, _, raw = pair.partition("=")
        if key not in _RULE_KEYS:
            raise ValueError(
                f"{text!r}: unknown key {key!r} (expected {', '.join(_RULE_KEYS)})"
            )
        if key in values:
            raise ValueError(f"{text!r}: duplicate key {key!r}")
        try:
            values[key] = tpm(raw) if key == "tpm" else positive_int(raw)
        except ValueError:
            what = "a whole number above 0" + (" or auto" if key == "tpm" else "")
            raise ValueError(f"{text!r}: {key}={raw!r} must be {what}") from None
    if "tpm" in values and "itpm" in values:
        raise ValueError(f"{text!r}: give itpm (input tokens) or tpm, not both")
    if "tpm" not in values and "itpm" not in values:
        raise ValueError(f"{text!r}: a rule needs tpm=N (or itpm=N for anthropic, or tpm=auto)")
    from pytest_llm_budget.providers.registry import unknown_vendor

    problem = unknown_vendor(match["vendor"])
    if problem:
        raise ValueError(f"{text!r}: {problem}")
    try:
        return LimitRule(
            match["vendor"], match["model"], values.get("tpm", values.get("itpm", 0)),
            values.get("rpm"), itpm=values.get("itpm"), otpm=values.get("otpm"),
        )
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def limit_rules(text: str) -> tuple[LimitRule, ...]:
    """One rule a line (blank lines skipped)."""
    return tuple(parse_limit_rule(line) for line in text.splitlines() if line.strip())


def lines(text: str) -> tuple[str, ...]:
    """The non-blank lines, stripped."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())
