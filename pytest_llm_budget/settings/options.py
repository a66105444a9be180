"""The option table: each option's name, parser, help, CLI flag, environment variables, ini key.

The single place an option is declared; its default is its `Settings` field's (settings.resolved
fills `default` in and exports the finished table as `OPTIONS`). The plugin registers CLI flags and
ini keys from the table and `Settings.resolve` reads the three sources through `Option.raw`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llm_budget.settings import values

__all__ = ["DECLARED", "RECORD_MODES", "Option"]

RECORD_MODES = ("off", "once", "none", "new_episodes", "all")


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
    #: How `--help` names the default when the field's default (None) does not say it.
    shown_default: str | None = None
    #: The value when no source sets one: the `Settings` field's default (declared there).
    default: Any = None

    @property
    def label(self) -> str:
        """How error messages name the option."""
        return self.cli or self.ini or self.name

    def raw(
        self, cli: Mapping[str, Any], env: Mapping[str, str], ini: Mapping[str, Any]
    ) -> tuple[str | None, str]:
        """The winning raw text of this option (CLI > env > ini) and where it came from."""
        value = cli.get(self.name)
        if value is not None:
            return self._text(value), "the command line"
        for name in self.env:
            if env.get(name, "").strip():
                text = env[name]
                if self.ini_type == "linelist":
                    text = "\n".join(text.split(";"))
                return text, f"environment variable {name}"
        value = ini.get(self.name)
        if value not in (None, "", [], ()):
            return self._text(value), f"ini option {self.ini}"
        return None, "default"

    def _text(self, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ("\n" if self.ini_type == "linelist" else " ").join(str(v) for v in value)
        return str(value)


#: The options as declared; `settings.OPTIONS` is this table with the defaults filled in.
DECLARED: tuple[Option, ...] = (
    Option(
        "tpm",
        values.tpm,
        "tokens per minute (per window) the key allows, or auto (learned from the provider's "
        "answers; a bucket's first call goes alone)",
        "--llm-tpm",
        ("LLM_BUDGET_TPM", "OPENAI_TPM_LIMIT"),
        "llm_tpm",
        metavar="N",
        shown_default="auto",
    ),
    Option(
        "rpm",
        values.optional_positive_int,
        "requests per minute (per window); default unlimited",
        "--llm-rpm",
        ("LLM_BUDGET_RPM",),
        "llm_rpm",
        metavar="N",
    ),
    Option(
        "headroom",
        values.headroom,
        "fraction of the TPM kept unused (0 <= F < 1)",
        "--llm-headroom",
        ("LLM_BUDGET_HEADROOM", "OPENAI_TPM_HEADROOM"),
        "llm_headroom",
        metavar="F",
    ),
    Option(
        "window",
        values.positive_float,
        "length of the rate-limit window in seconds",
        "--llm-window",
        ("LLM_BUDGET_WINDOW",),
        "llm_window",
        metavar="S",
    ),
    Option(
        "max_concurrency",
        values.optional_positive_int,
        "LLM calls in flight at once per bucket; default unlimited",
        "--llm-max-concurrency",
        ("LLM_BUDGET_MAX_CONCURRENCY", "OPENAI_MAX_CONCURRENCY"),
        "llm_max_concurrency",
        metavar="N",
    ),
    Option(
        "retries",
        values.non_negative_int,
        "retries of a rate-limited (429) call after the first try",
        "--llm-retries",
        ("LLM_BUDGET_RETRIES", "OPENAI_RETRY_MAX_ATTEMPTS"),
        "llm_retries",
        metavar="N",
    ),
    Option(
        "backoff_base",
        values.positive_float,
        "base of the exponential backoff, seconds",
        "--llm-backoff-base",
        ("LLM_BUDGET_BACKOFF_BASE", "OPENAI_BACKOFF_BASE_SECONDS"),
        "llm_backoff_base",
        metavar="S",
    ),
    Option(
        "backoff_max",
        values.positive_float,
        "longest single backoff, seconds",
        "--llm-backoff-max",
        ("LLM_BUDGET_BACKOFF_MAX",),
        "llm_backoff_max",
        metavar="S",
    ),
    Option(
        "max_wait",
        values.positive_float,
        "longest a call may wait for budget before failing (LLM_BUDGET_TIMEOUT), seconds",
        "--llm-max-wait",
        ("LLM_BUDGET_MAX_WAIT",),
        "llm_max_wait",
        metavar="S",
    ),
    Option(
        "call_timeout",
        values.positive_float,
        "longest a routed call may take from leaving to its answer's last byte before failing "
        "(LLM_CALL_TIMEOUT), seconds",
        "--llm-call-timeout",
        ("LLM_BUDGET_CALL_TIMEOUT",),
        "llm_call_timeout",
        metavar="S",
    ),
    Option(
        "notice_after",
        values.notice_after,
        "print a line when a call will wait longer than this for budget, seconds, or off",
        "--llm-notice-after",
        ("LLM_BUDGET_NOTICE_AFTER",),
        "llm_notice_after",
        metavar="S",
    ),
    Option(
        "est_tokens",
        values.positive_int,
        "output budget of a call that declares none (max_tokens...); a test's total in the "
        "preflight when its marker has no tokens=",
        "--llm-est-tokens",
        ("LLM_BUDGET_EST_TOKENS", "OPENAI_EST_TOKENS_PER_RUN"),
        "llm_est_tokens",
        metavar="N",
    ),
    Option(
        "safety_margin",
        values.non_negative_float,
        "margin on uncertain input counts only: Gemini inputs (counted with o200k, not Gemini's "
        "tokenizer) and offline fallback counts; never on OpenAI's character estimate or output",
        "--llm-safety-margin",
        ("LLM_BUDGET_SAFETY_MARGIN",),
        "llm_safety_margin",
        metavar="F",
    ),
    Option(
        "grounded_overhead",
        values.non_negative_float,
        "extra input share of a grounded call where input tokens are charged (Gemini), once per "
        "call; in the preflight, on --llm-est-tokens of a grounded test without tokens=",
        "--llm-grounded-overhead",
        ("LLM_BUDGET_GROUNDED_OVERHEAD",),
        "llm_grounded_overhead",
        metavar="F",
    ),
    Option(
        "backend",
        values.backend_spec,
        "where the budget lives: auto, memory, file, file:PATH, redis://host:port/db, "
        "redis+cluster://host:port",
        "--llm-backend",
        ("LLM_BUDGET_BACKEND",),
        "llm_backend",
        metavar="URL",
    ),
    Option(
        "record_mode",
        values.choice(*RECORD_MODES),
        "cassettes: off, once, none, new_episodes or all",
        "--llm-record-mode",
        ("LLM_BUDGET_RECORD_MODE",),
        "llm_record_mode",
        metavar="MODE",
    ),
    Option(
        "reports",
        values.reports,
        "write a .json, .html or .md report (repeatable)",
        "--llm-report",
        ("LLM_BUDGET_REPORT",),
        "llm_report",
        metavar="PATH",
        repeatable=True,
    ),
    Option(
        "baseline",
        values.baseline_report,
        "a JSON report of an earlier run: show per-test and total changes of tokens, cost, waits",
        "--llm-baseline",
        ("LLM_BUDGET_BASELINE",),
        "llm_baseline",
        metavar="PATH.json",
    ),
    Option(
        "max_increase",
        values.optional_percent,
        "fail the session (exit status 6) when total tokens or cost rose more than this many "
        "percent over --llm-baseline (e.g. 20)",
        "--llm-max-increase",
        ("LLM_BUDGET_MAX_INCREASE",),
        "llm_max_increase",
        metavar="P%",
    ),
    Option(
        "step_summary",
        values.boolean,
        "append the Markdown report to $GITHUB_STEP_SUMMARY when it is set (on or off)",
        "--llm-step-summary",
        ("LLM_BUDGET_STEP_SUMMARY",),
        "llm_step_summary",
        metavar="on|off",
    ),
    Option(
        "route",
        values.choice("all", "fixtures"),
        "route LLM calls of clients the code under test builds (all) or fixtures' only",
        "--llm-route",
        ("LLM_BUDGET_ROUTE",),
        "llm_route",
        metavar="WHICH",
    ),
    Option(
        "max_duration",
        values.optional_duration,
        "stop before any call when the projected run is longer (e.g. 10m)",
        "--llm-max-duration",
        ("LLM_BUDGET_MAX_DURATION",),
        "llm_max_duration",
        metavar="DURATION",
    ),
    Option(
        "max_cost",
        values.optional_usd,
        "hard cap in USD on the run's LLM spend, shared by workers and hosts; a call whose "
        "worst case would pass it is not sent (LLM_COST_CAP)",
        "--llm-max-cost",
        ("LLM_BUDGET_MAX_COST",),
        "llm_max_cost",
        metavar="USD",
    ),
    Option(
        "max_cost_per_test",
        values.optional_usd,
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
        "cli_limits",
        values.limit_rules,
        "a per vendor/model limit 'vendor:model tpm=N [rpm=M]' (repeatable; before the ini "
        "llm_limits rules, first match wins)",
        "--llm-limit",
        ini_type="linelist",
        metavar="RULE",
        repeatable=True,
    ),
    Option(
        "limits",
        values.limit_rules,
        "per vendor/model limits, one 'vendor:model tpm=N [rpm=M]' a line, first match wins",
        None,
        ("LLM_BUDGET_LIMITS",),
        "llm_limits",
        "linelist",
    ),
    Option(
        "hosts",
        values.lines,
        "extra hosts whose calls are LLM calls (one a line)",
        None,
        ("LLM_BUDGET_HOSTS",),
        "llm_hosts",
        "linelist",
    ),
    Option(
        "models",
        values.lines,
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
        values.boolean,
        "cassettes: match a request's host too (false: replay under any base URL)",
        None,
        ("LLM_BUDGET_MATCH_HOST",),
        "llm_match_host",
    ),
    Option(
        "filter_headers",
        values.lines,
        "more request headers kept out of cassettes",
        None,
        (),
        "llm_filter_headers",
        "linelist",
    ),
    Option(
        "filter_query",
        values.lines,
        "more query parameters kept out of cassettes",
        None,
        (),
        "llm_filter_query_parameters",
        "linelist",
    ),
    Option(
        "metrics_port",
        values.optional_port,
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
