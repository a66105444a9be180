"""Emulator settings: per-vendor limits, per-model overrides, policy switches (frozen)."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "ANTHROPIC_CLASSES",
    "VENDORS",
    "AnthropicLimitSpec",
    "EmulatorConfig",
    "LimitSpec",
    "Mode",
    "ModelLimit",
    "Vendor",
    "azure_deployments",
    "parse_limit_rule",
]

Vendor = Literal["openai", "gemini", "anthropic"]
Mode = Literal["sliding", "bucket"]
VENDORS: tuple[Vendor, ...] = ("openai", "gemini", "anthropic")
# Anthropic limits model classes: every model of a class draws on one pool.
ANTHROPIC_CLASSES: tuple[str, ...] = ("claude-sonnet-4*", "claude-opus-4*")
MODES: tuple[Mode, ...] = ("sliding", "bucket")


@dataclass(frozen=True)
class LimitSpec:
    """Tokens and requests allowed per window; None means that dimension is unlimited."""

    tpm: int | None = 30_000
    rpm: int | None = 500

    def __post_init__(self) -> None:
        for name in ("tpm", "rpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class AnthropicLimitSpec:
    """Anthropic's three token buckets per window (requests, input, output); None = unlimited."""

    rpm: int | None = 50
    itpm: int | None = 30_000
    otpm: int | None = 8_000

    def __post_init__(self) -> None:
        for name in ("rpm", "itpm", "otpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class ModelLimit:
    """A per-model override: `vendor:pattern` (fnmatch) gets its own limits.

    Anthropic rules carry an AnthropicLimitSpec (a LimitSpec given for one is read as
    itpm=tpm, rpm=rpm, otpm unlimited); the other vendors' carry a LimitSpec.
    """

    vendor: Vendor
    pattern: str
    limits: LimitSpec | AnthropicLimitSpec

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"unknown vendor {self.vendor!r}")
        if self.vendor == "anthropic" and isinstance(self.limits, LimitSpec):
            spec = AnthropicLimitSpec(rpm=self.limits.rpm, itpm=self.limits.tpm, otpm=None)
            object.__setattr__(self, "limits", spec)
        elif self.vendor != "anthropic" and not isinstance(self.limits, LimitSpec):
            raise ValueError(f"{self.vendor} rules take tpm/rpm limits, not itpm/otpm")

    def matches(self, vendor: str, model: str) -> bool:
        """True when this rule applies to the vendor's model."""
        return vendor == self.vendor and fnmatch.fnmatchcase(model, self.pattern)

    def __str__(self) -> str:
        lim = self.limits
        if isinstance(lim, AnthropicLimitSpec):
            figures = f"itpm={lim.itpm} otpm={lim.otpm} rpm={lim.rpm}"
        else:
            figures = f"tpm={lim.tpm} rpm={lim.rpm}"
        return f"{self.vendor}:{self.pattern} {figures}"


def _int_or_none(text: str) -> int | None:
    """Parse a limit figure; `none`/`inf`/`unlimited` mean no limit."""
    if text.lower() in ("none", "inf", "unlimited", ""):
        return None
    return int(text)


def parse_limit_rule(rule: str) -> ModelLimit:
    """Parse `openai:gpt-5* tpm=30000 rpm=500` or `anthropic:claude-sonnet-4* itpm=N otpm=N rpm=N`.

    A figure left out is unlimited. For Anthropic `tpm` is read as `itpm` (the input budget).
    """
    parts = rule.split()
    if not parts or ":" not in parts[0]:
        raise ValueError(f"limit rule must start with vendor:model-pattern, got {rule!r}")
    vendor, pattern = parts[0].split(":", 1)
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r} in limit rule {rule!r}")
    anthropic = vendor == "anthropic"
    keys = ("tpm", "rpm", "itpm", "otpm") if anthropic else ("tpm", "rpm")
    values: dict[str, int | None] = {}
    for item in parts[1:]:
        key, sep, raw = item.partition("=")
        if not sep or key not in keys:
            want = " or ".join(f"{k}=N" for k in keys)
            raise ValueError(f"bad item {item!r} in limit rule {rule!r} (want {want})")
        values[key] = _int_or_none(raw)
    spec: LimitSpec | AnthropicLimitSpec
    if anthropic:
        itpm = values["itpm"] if "itpm" in values else values.get("tpm")
        spec = AnthropicLimitSpec(rpm=values.get("rpm"), itpm=itpm, otpm=values.get("otpm"))
    else:
        spec = LimitSpec(values.get("tpm"), values.get("rpm"))
    return ModelLimit(vendor, pattern or "*", spec)


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour; change it at run time with `updated()`."""

    host: str = "127.0.0.1"
    port: int = 0
    window: float = 60.0
    mode: Mode = "sliding"
    openai: LimitSpec = field(default_factory=LimitSpec)
    gemini: LimitSpec = field(default_factory=LimitSpec)
    anthropic: AnthropicLimitSpec = field(default_factory=AnthropicLimitSpec)
    anthropic_classes: tuple[str, ...] = ANTHROPIC_CLASSES
    model_limits: tuple[ModelLimit, ...] = ()
    per_model: bool = True
    default_max_output: int = 4096
    reply_min_tokens: int = 8
    reply_max_tokens: int = 40
    require_key: bool = True
    valid_keys: tuple[str, ...] | None = None
    insufficient_quota: bool = False
    gemini_retry_info: bool = True
    gemini_rpd: int | None = None
    limit_headers: bool = True
    organization: str = "org-emulator"
    fault: str | None = None
    log_path: str | None = None
    log_limit: int = 100_000
    stream_delay: float = 0.0
    models: tuple[str, ...] = ("gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini")
    gemini_models: tuple[str, ...] = ("gemini-2.5-flash", "gemini-2.5-pro")
    anthropic_models: tuple[str, ...] = (
        "claude-sonnet-4-5",
        "claude-opus-4-1",
        "claude-haiku-4-5",
    )
    #: Azure OpenAI deployment name -> the model it serves (unlisted: the name is the model).
    azure_deployments: tuple[tuple[str, str], ...] = ()
    embedding_dimensions: int = 16

    def __post_init__(self) -> None:
        if not (self.window > 0 and math.isfinite(self.window)):
            raise ValueError(f"window must be a positive number of seconds, got {self.window!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.default_max_output <= 0:
            raise ValueError("default_max_output must be positive")
        if not 1 <= self.reply_min_tokens <= self.reply_max_tokens:
            raise ValueError("need 1 <= reply_min_tokens <= reply_max_tokens")
        if self.stream_delay < 0:
            raise ValueError("stream_delay must be >= 0")
        object.__setattr__(self, "azure_deployments", azure_deployments(self.azure_deployments))
        if self.embedding_dimensions < 1:
            raise ValueError("embedding_dimensions must be positive")
        if self.gemini_rpd is not None and self.gemini_rpd <= 0:
            raise ValueError(
                f"gemini_rpd must be a positive integer or None, got {self.gemini_rpd}"
            )
        if self.fault:
            from .faults import parse_fault

            parse_fault(self.fault)  # validate early

    def limits_for(self, vendor: Vendor, model: str) -> tuple[str, LimitSpec]:
        """The bucket key and limits that apply to a vendor's model (first matching rule wins)."""
        if vendor == "anthropic":
            raise ValueError("Anthropic has its own limits: use anthropic_limits_for()")
        for index, rule in enumerate(self.model_limits):
            if rule.matches(vendor, model) and isinstance(rule.limits, LimitSpec):
                key = f"{vendor}:{model}" if self.per_model else f"{vendor}:rule{index}"
                return key, rule.limits
        key = f"{vendor}:{model}" if self.per_model else f"{vendor}:*"
        return key, self.openai if vendor == "openai" else self.gemini

    def azure_model(self, deployment: str) -> str:
        """The model an Azure OpenAI deployment serves: its mapping, else its own name."""
        return dict(self.azure_deployments).get(deployment, deployment)

    def anthropic_limits_for(self, model: str) -> tuple[str, AnthropicLimitSpec]:
        """The pool and limits of an Anthropic model: a rule's models always share one pool.

        Without a matching rule: one `anthropic:*` pool when not `per_model`, else the model's
        class (`anthropic_classes`, e.g. every `claude-sonnet-4*`) or the model alone.
        """
        for rule in self.model_limits:
            if rule.matches("anthropic", model) and isinstance(rule.limits, AnthropicLimitSpec):
                return f"anthropic:{rule.pattern}", rule.limits
        if not self.per_model:
            return "anthropic:*", self.anthropic
        for pattern in self.anthropic_classes:
            if fnmatch.fnmatchcase(model, pattern):
                return f"anthropic:{pattern}", self.anthropic
        return f"anthropic:{model}", self.anthropic

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with JSON-style changes applied (`limits` rules; `tpm`/`rpm` every vendor's).

        `tpm` sets OpenAI's and Gemini's TPM and Anthropic's ITPM; `rpm` all three RPMs;
        `itpm`/`otpm` Anthropic's alone; `openai`/`gemini`/`anthropic` take a spec or a dict.
        """
        known = {f.name for f in dataclasses.fields(self)}
        kwargs: dict[str, Any] = {}
        openai, gemini, anthropic = self.openai, self.gemini, self.anthropic
        for key, value in changes.items():
            if key in ("tpm", "rpm"):
                openai = replace(openai, **{key: value})
                gemini = replace(gemini, **{key: value})
                anthropic = replace(anthropic, **{"itpm" if key == "tpm" else key: value})
            elif key in ("itpm", "otpm"):
                anthropic = replace(anthropic, **{key: value})
            elif key == "anthropic":
                anthropic = (
                    value if isinstance(value, AnthropicLimitSpec) else replace(anthropic, **value)
                )
            elif key in ("openai", "gemini"):
                base = openai if key == "openai" else gemini
                spec = value if isinstance(value, LimitSpec) else replace(base, **dict(value))
                if key == "openai":
                    openai = spec
                else:
                    gemini = spec
            elif key in ("limits", "model_limits"):
                kwargs["model_limits"] = _rules(value)
            elif key == "azure_deployments":
                kwargs[key] = azure_deployments(value)
            elif key in _TUPLES and value is not None:
                kwargs[key] = tuple(value)
            elif key in known and key not in ("host", "port"):
                kwargs[key] = value
            else:
                raise ValueError(f"unknown or read-only config key {key!r}")
        return replace(self, openai=openai, gemini=gemini, anthropic=anthropic, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (limit rules rendered back to their text form)."""
        data = dataclasses.asdict(self)
        data["model_limits"] = [str(r) for r in self.model_limits]
        data["azure_deployments"] = dict(self.azure_deployments)
        return data


_TUPLES = ("valid_keys", "models", "gemini_models", "anthropic_models", "anthropic_classes")


def _rules(value: object) -> tuple[ModelLimit, ...]:
    """Accept rule strings or ModelLimit objects."""
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, Sequence):
        raise ValueError("limits must be a list of rules like 'openai:gpt-5* tpm=30000'")
    return tuple(r if isinstance(r, ModelLimit) else parse_limit_rule(str(r)) for r in value)


def azure_deployments(value: object) -> tuple[tuple[str, str], ...]:
    """Accept {deployment: model}, or "deployment=model" strings, as the deployment map."""
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pairs = []
        for item in value:
            if isinstance(item, str):
                name, sep, model = item.partition("=")
                if not (sep and name.strip() and model.strip()):
                    raise ValueError(f"expected DEPLOYMENT=MODEL, got {item!r}")
                pairs.append((name.strip(), model.strip()))
            else:
                name, model = item
                pairs.append((str(name), str(model)))
    else:
        raise ValueError("azure_deployments: a {deployment: model} map or DEPLOYMENT=MODEL list")
    return tuple(pairs)
