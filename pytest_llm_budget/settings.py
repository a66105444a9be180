"""One frozen `Settings` resolved from CLI > environment > ini > default, validated.

The option table below is the single place an option is declared: the plugin registers CLI flags
and ini keys from it, and `Settings.resolve` reads the three sources. Nothing here imports pytest;
bad values raise `SettingsError`, which the plugin turns into `pytest.UsageError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .backends import validate_backend_spec
from .errors import SettingsError
from .limiter import LimitRule
from .redact import mask_url, redact

__all__ = ["OPTIONS", "RECORD_MODES", "Option", "Settings", "SettingsError", "parse_duration"]

RECORD_MODES = ("off", "once", "none", "new_episodes", "all")
DEFAULT_MODELS = ("openai:gpt-5", "gemini:gemini-2.5-pro")


# -- value parsers: each takes the raw text and returns the typed value or raises ValueError ---
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


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise ValueError("must be a whole number above 0")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _optional_positive_int(text: str) -> int | None:
    if text.strip().lower() in ("", "none", "unlimited", "off"):
        return None
    return _positive_int(text)


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number above 0")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number, 0 or more")
    return value


def _notice_after(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "never"):
        return None
    return _non_negative_float(text)


def _headroom(text: str) -> float:
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


def _optional_duration(text: str) -> float | None:
    if text.strip().lower() in ("", "none", "off"):
        return None
    return parse_duration(text)


def _optional_usd(text: str) -> float | None:
    """Dollars (`5`, `0.50`, `$5`), or None for none/off."""
    clean = text.strip().lower()
    if clean in ("", "none", "off", "unlimited"):
        return None
    try:
        value = float(clean.removeprefix("$").replace(",", "").replace("_", ""))
    except ValueError:
        raise ValueError("must be an amount in US dollars, e.g. 5 or 0.50") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be an amount in US dollars above 0")
    return value


def _backend(text: str) -> str:
    return validate_backend_spec(text.strip())


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s,]+", text) if w)


def _reports(text: str) -> tuple[str, ...]:
    paths = _words(text)
    for path in paths:
        if not path.lower().endswith((".json", ".html", ".htm")):
            raise ValueError(f"{path!r}: a report path must end in .json or .html")
    return paths


_RULE = re.compile(r"^(?P<vendor>[^\s:]+):(?P<model>\S+)(?P<rest>(?:\s+\w+=\S+)*)\s*$")


def parse_limit_rule(line: str) -> LimitRule:
    """`openai:gpt-5* tpm=30000 rpm=500` -> LimitRule; raises ValueError naming the fault."""
    match = _RULE.match(line.strip())
    if not match:
        raise ValueError(f"{line.strip()!r} is not 'vendor:model tpm=N [rpm=M]'")
    values: dict[str, int] = {}
    for pair in match["rest"].split():
        key, _, raw = pair.partition("=")
        if key not in ("tpm", "rpm"):
            raise ValueError(f"{line.strip()!r}: unknown key {key!r} (expected tpm or rpm)")
        try:
            values[key] = _positive_int(raw)
        except ValueError:
            raise ValueError(
                f"{line.strip()!r}: {key}={raw!r} must be a whole number above 0"
            ) from None
    if "tpm" not in values:
        raise ValueError(f"{line.strip()!r}: a rule needs tpm=N")
    return LimitRule(match["vendor"], match["model"], values["tpm"], values.get("rpm"))


def _limit_rules(text: str) -> tuple[LimitRule, ...]:
    return tuple(parse_limit_rule(line) for line in text.splitlines() if line.strip())


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Option:
    """One setting: where it is read from and how its text becomes a value."""

    name: str
    parse: Callable[[str], Any]
    help: str
    cli: str | None = None
    env: tuple[str, ...] = ()
    ini: str | None = None
    ini_type: str = "string"
    metavar: str | None = None
    repeatable: bool = False

    @property
    def default(self) -> Any:
        """The value when no source sets one: the `Settings` field's default (declared there)."""
        return _DEFAULTS[self.name]

    @property
    def label(self) -> str:
        """How error messages name the option."""
        return self.cli or self.ini or self.name


OPTIONS: tuple[Option, ...] = (
    Option(
        "tpm",
        _positive_int,
        "tokens per minute (per window) the key allows",
        "--llm-tpm",
        ("LLM_BUDGET_TPM", "OPENAI_TPM_LIMIT"),
        "llm_tpm",
        metavar="N",
    ),
    Option(
        "rpm",
        _optional_positive_int,
        "requests per minute (per window); default unlimited",
        "--llm-rpm",
        ("LLM_BUDGET_RPM",),
        "llm_rpm",
        metavar="N",
    ),
    Option(
        "headroom",
        _headroom,
        "fraction of the TPM kept unused (0 <= F < 1)",
        "--llm-headroom",
        ("LLM_BUDGET_HEADROOM", "OPENAI_TPM_HEADROOM"),
        "llm_headroom",
        metavar="F",
    ),
    Option(
        "window",
        _positive_float,
        "length of the rate-limit window in seconds",
        "--llm-window",
        ("LLM_BUDGET_WINDOW",),
        "llm_window",
        metavar="S",
    ),
    Option(
        "max_concurrency",
        _optional_positive_int,
        "LLM calls in flight at once per bucket; default unlimited",
        "--llm-max-concurrency",
        ("LLM_BUDGET_MAX_CONCURRENCY", "OPENAI_MAX_CONCURRENCY"),
        "llm_max_concurrency",
        metavar="N",
    ),
    Option(
        "retries",
        _non_negative_int,
        "retries of a rate-limited (429) call after the first try",
        "--llm-retries",
        ("LLM_BUDGET_RETRIES", "OPENAI_RETRY_MAX_ATTEMPTS"),
        "llm_retries",
        metavar="N",
    ),
    Option(
        "backoff_base",
        _positive_float,
        "base of the exponential backoff, seconds",
        "--llm-backoff-base",
        ("LLM_BUDGET_BACKOFF_BASE", "OPENAI_BACKOFF_BASE_SECONDS"),
        "llm_backoff_base",
        metavar="S",
    ),
    Option(
        "backoff_max",
        _positive_float,
        "longest single backoff, seconds",
        "--llm-backoff-max",
        ("LLM_BUDGET_BACKOFF_MAX",),
        "llm_backoff_max",
        metavar="S",
    ),
    Option(
        "max_wait",
        _positive_float,
        "longest a call may wait for budget before failing (LLM_BUDGET_TIMEOUT), seconds",
        "--llm-max-wait",
        ("LLM_BUDGET_MAX_WAIT",),
        "llm_max_wait",
        metavar="S",
    ),
    Option(
        "notice_after",
        _notice_after,
        "print a line when a call will wait longer than this for budget, seconds, or off",
        "--llm-notice-after",
        ("LLM_BUDGET_NOTICE_AFTER",),
        "llm_notice_after",
        metavar="S",
    ),
    Option(
        "est_tokens",
        _positive_int,
        "output budget of a call that declares none (max_tokens...); a test's total in the "
        "preflight when its marker has no tokens=",
        "--llm-est-tokens",
        ("LLM_BUDGET_EST_TOKENS", "OPENAI_EST_TOKENS_PER_RUN"),
        "llm_est_tokens",
        metavar="N",
    ),
    Option(
        "safety_margin",
        _non_negative_float,
        "margin on uncertain input counts only: Gemini inputs (counted with o200k, not Gemini's "
        "tokenizer) and offline fallback counts; never on OpenAI's character estimate or output",
        "--llm-safety-margin",
        ("LLM_BUDGET_SAFETY_MARGIN",),
        "llm_safety_margin",
        metavar="F",
    ),
    Option(
        "grounded_overhead",
        _non_negative_float,
        "extra input share of a grounded call where input tokens are charged (Gemini), once per "
        "call; in the preflight, on --llm-est-tokens of a grounded test without tokens=",
        "--llm-grounded-overhead",
        ("LLM_BUDGET_GROUNDED_OVERHEAD",),
        "llm_grounded_overhead",
        metavar="F",
    ),
    Option(
        "backend",
        _backend,
        "where the budget lives: auto, memory, file, file:PATH, redis://host:port/db",
        "--llm-backend",
        ("LLM_BUDGET_BACKEND",),
        "llm_backend",
        metavar="URL",
    ),
    Option(
        "record_mode",
        _choice(*RECORD_MODES),
        "cassettes: off, once, none, new_episodes or all",
        "--llm-record-mode",
        ("LLM_BUDGET_RECORD_MODE",),
        "llm_record_mode",
        metavar="MODE",
    ),
    Option(
        "reports",
        _reports,
        "write a .json or .html report (repeatable)",
        "--llm-report",
        ("LLM_BUDGET_REPORT",),
        "llm_report",
        metavar="PATH",
        repeatable=True,
    ),
    Option(
        "route",
        _choice("all", "fixtures"),
        "route LLM calls of clients the code under test builds (all) or fixtures' only",
        "--llm-route",
        ("LLM_BUDGET_ROUTE",),
        "llm_route",
        metavar="WHICH",
    ),
    Option(
        "max_duration",
        _optional_duration,
        "stop before any call when the projected run is longer (e.g. 10m)",
        "--llm-max-duration",
        ("LLM_BUDGET_MAX_DURATION",),
        "llm_max_duration",
        metavar="DURATION",
    ),
    Option(
        "max_cost",
        _optional_usd,
        "hard cap in USD on the run's LLM spend, shared by workers and hosts; a call whose "
        "worst case would pass it is not sent (LLM_COST_CAP)",
        "--llm-max-cost",
        ("LLM_BUDGET_MAX_COST",),
        "llm_max_cost",
        metavar="USD",
    ),
    Option(
        "max_cost_per_test",
        _optional_usd,
        "hard cap in USD on one test's LLM spend",
        "--llm-max-cost-per-test",
        ("LLM_BUDGET_MAX_COST_PER_TEST",),
        "llm_max_cost_per_test",
        metavar="USD",
    ),
    Option(
        "prices",
        str,
        "a TOML file of per-model prices (USD per million tokens) overriding genai-prices",
        "--llm-prices",
        ("LLM_BUDGET_PRICES",),
        "llm_prices",
        metavar="PATH",
    ),
    Option(
        "limits",
        _limit_rules,
        "per vendor/model limits, one 'vendor:model tpm=N [rpm=M]' a line, first match wins",
        None,
        ("LLM_BUDGET_LIMITS",),
        "llm_limits",
        "linelist",
    ),
    Option(
        "hosts",
        _lines,
        "extra hosts whose calls are LLM calls (one a line)",
        None,
        ("LLM_BUDGET_HOSTS",),
        "llm_hosts",
        "linelist",
    ),
    Option(
        "models",
        _lines,
        "vendor:model entries of the test matrix",
        None,
        ("LLM_BUDGET_MODELS",),
        "llm_models",
        "linelist",
    ),
    Option(
        "scenarios",
        str,
        "a TOML file replacing the 12 default scenarios",
        None,
        ("LLM_BUDGET_SCENARIOS",),
        "llm_scenarios",
    ),
    Option(
        "cassette_dir",
        str,
        "cassette folder, relative to each test module's folder",
        None,
        ("LLM_BUDGET_CASSETTE_DIR",),
        "llm_cassette_dir",
    ),
    Option(
        "match_host",
        _bool,
        "cassettes: match a request's host too (false: replay under any base URL)",
        None,
        ("LLM_BUDGET_MATCH_HOST",),
        "llm_match_host",
    ),
    Option(
        "filter_headers",
        _lines,
        "more request headers kept out of cassettes",
        None,
        (),
        "llm_filter_headers",
        "linelist",
    ),
    Option(
        "filter_query",
        _lines,
        "more query parameters kept out of cassettes",
        None,
        (),
        "llm_filter_query_parameters",
        "linelist",
    ),
    Option(
        "metrics_port",
        _optional_positive_int,
        "serve Prometheus metrics on this port during the run",
        "--llm-metrics-port",
        ("LLM_BUDGET_METRICS_PORT",),
        "llm_metrics_port",
        metavar="PORT",
    ),
    Option(
        "metrics_textfile",
        str,
        "write Prometheus metrics to this file at the end (node-exporter textfile)",
        "--llm-metrics-textfile",
        ("LLM_BUDGET_METRICS_TEXTFILE",),
        "llm_metrics_textfile",
        metavar="PATH",
    ),
    Option(
        "pushgateway",
        str,
        "push Prometheus metrics to this Pushgateway at the end",
        "--llm-pushgateway",
        ("LLM_BUDGET_PUSHGATEWAY",),
        "llm_pushgateway",
        metavar="URL",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Every option's value for one session."""

    tpm: int = 30000
    rpm: int | None = None
    headroom: float = 0.15
    window: float = 60.0
    max_concurrency: int | None = None
    retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 30.0
    max_wait: float = 600.0
    notice_after: float | None = 2.0
    est_tokens: int = 7000
    safety_margin: float = 0.20
    grounded_overhead: float = 0.15
    backend: str = "auto"
    record_mode: str = "off"
    reports: tuple[str, ...] = ()
    route: str = "all"
    max_duration: float | None = None
    max_cost: float | None = None
    max_cost_per_test: float | None = None
    prices: str | None = None
    limits: tuple[LimitRule, ...] = ()
    hosts: tuple[str, ...] = ()
    models: tuple[str, ...] = DEFAULT_MODELS
    scenarios: str | None = None
    cassette_dir: str = "cassettes"
    match_host: bool = True
    filter_headers: tuple[str, ...] = ()
    filter_query: tuple[str, ...] = ()
    metrics_port: int | None = None
    metrics_textfile: str | None = None
    pushgateway: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def rules(self) -> tuple[LimitRule, ...]:
        """The `llm_limits` rules, then the `--llm-tpm`/`--llm-rpm` fallback."""
        return (*self.limits, LimitRule("*", "*", self.tpm, self.rpm))

    @property
    def metrics_wanted(self) -> bool:
        """Whether any metrics output (port, textfile, Pushgateway) is configured."""
        return bool(self.metrics_port or self.metrics_textfile or self.pushgateway)

    @property
    def budget(self) -> int:
        """Tokens the fallback bucket admits per window."""
        return self.rules[-1].budget(self.headroom)

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON for reports (passwords and keys in URLs masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if f.name == "limits":
                value = [str(rule) for rule in value]
            elif isinstance(value, tuple):
                value = [mask_url(v) if isinstance(v, str) else v for v in value]
            elif isinstance(value, str):
                value = mask_url(value)
            out[f.name] = value
        return out

    @classmethod
    def resolve(
        cls,
        cli: Mapping[str, Any],
        env: Mapping[str, str],
        ini: Mapping[str, Any],
    ) -> Settings:
        """Build from the three sources (CLI > env > ini > default); raise SettingsError."""
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for option in OPTIONS:
            raw, source = _raw_value(option, cli, env, ini)
            if raw is None:
                values[option.name] = option.default
                sources[option.name] = "default"
                continue
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                raise SettingsError(
                    f"{option.label}={mask_url(raw)!r} (from {source}): {redact(str(exc))}"
                ) from None
            sources[option.name] = source
        settings = cls(**values, sources=sources)
        if settings.backoff_max < settings.backoff_base:
            raise SettingsError(
                f"--llm-backoff-max={settings.backoff_max:g} is below "
                f"--llm-backoff-base={settings.backoff_base:g}"
            )
        return settings


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings) if f.name != "sources"}


def _raw_value(
    option: Option, cli: Mapping[str, Any], env: Mapping[str, str], ini: Mapping[str, Any]
) -> tuple[str | None, str]:
    """The winning raw text of one option and where it came from."""
    value = cli.get(option.name)
    if value is not None:
        return _as_text(value, option), "the command line"
    for name in option.env:
        if env.get(name, "").strip():
            text = env[name]
            if option.ini_type == "linelist":
                text = "\n".join(text.split(";"))
            return text, f"environment variable {name}"
    value = ini.get(option.name)
    if value not in (None, "", [], ()):
        return _as_text(value, option), f"ini option {option.ini}"
    return None, "default"


def _as_text(value: Any, option: Option) -> str:
    if isinstance(value, (list, tuple)):
        return ("\n" if option.ini_type == "linelist" else " ").join(str(v) for v in value)
    return str(value)
