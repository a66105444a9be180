"""The frozen `Settings` of one session, resolved from CLI > environment > ini > default.

Each field's default is the option's default, declared once: here, or for the estimate's three in
`EstimatePolicy`. Nothing here imports pytest; bad values raise `SettingsError`, which the plugin
turns into `pytest.UsageError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pytest_llm_budget.errors import SettingsError
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.redact import mask_url, redact
from pytest_llm_budget.settings.options import DECLARED, Option
from pytest_llm_budget.tokens.policy import EstimatePolicy

__all__ = ["DEFAULT_MODELS", "OPTIONS", "Settings"]

DEFAULT_MODELS = ("openai:gpt-5", "gemini:gemini-2.5-pro")


@dataclass(frozen=True)
class Settings:
    """Every option's value for one session."""

    tpm: int | None = None
    rpm: int | None = None
    headroom: float = 0.15
    window: float = 60.0
    max_concurrency: int | None = None
    retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 30.0
    max_wait: float = 600.0
    call_timeout: float = 600.0
    notice_after: float | None = 2.0
    # The estimate's three: EstimatePolicy declares their defaults, for library users too.
    est_tokens: int = EstimatePolicy.default_output_tokens
    safety_margin: float = EstimatePolicy.safety_margin
    grounded_overhead: float = EstimatePolicy.grounded_overhead
    backend: str = "auto"
    record_mode: str = "off"
    reports: tuple[str, ...] = ()
    baseline: str | None = None
    #: A fraction (0.2 for `--llm-max-increase 20%`).
    max_increase: float | None = None
    step_summary: bool = True
    route: str = "all"
    max_duration: float | None = None
    max_cost: float | None = None
    max_cost_per_test: float | None = None
    prices: str | None = None
    cli_limits: tuple[LimitRule, ...] = ()
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
        """The `--llm-limit` rules, the `llm_limits` rules, then the `--llm-tpm`/`--llm-rpm`
        fallback (under `--llm-tpm auto`, one bucket per model: providers limit each model)."""
        fallback = LimitRule("*", "*", self.tpm, self.rpm, per_model=self.tpm is None)
        return (*self.cli_limits, *self.limits, fallback)

    @property
    def metrics_wanted(self) -> bool:
        """Whether any metrics output (port, textfile, Pushgateway) is configured."""
        return bool(self.metrics_port or self.metrics_textfile or self.pushgateway)

    @property
    def budget(self) -> int | None:
        """Tokens the fallback bucket admits per window (None under `--llm-tpm auto`)."""
        return self.rules[-1].budget(self.headroom)

    @property
    def estimate_policy(self) -> EstimatePolicy:
        """The estimate policy of these settings (margin, grounded overhead, --llm-est-tokens)."""
        return EstimatePolicy(self.safety_margin, self.grounded_overhead, self.est_tokens)

    def public(self) -> dict[str, Any]:
        """The settings as plain JSON for reports (passwords and keys in URLs masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if f.name in ("limits", "cli_limits"):
                value = [str(rule) for rule in value]
            elif f.name == "tpm" and value is None:
                value = "auto"
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
            raw, source = option.raw(cli, env, ini)
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
        if settings.max_increase is not None and settings.baseline is None:
            raise SettingsError(
                f"--llm-max-increase={settings.max_increase * 100:g}% needs --llm-baseline "
                "PATH.json (the JSON report of the run to compare with)"
            )
        return settings


_FIELDS = {f.name: f for f in fields(Settings)}
#: The option table, each option's default taken from its `Settings` field.
OPTIONS: tuple[Option, ...] = tuple(
    replace(option, default=_FIELDS[option.name].default) for option in DECLARED
)
