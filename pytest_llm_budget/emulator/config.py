"""Emulator settings: per-vendor limits, per-model overrides, policy switches (frozen)."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

__all__ = [
    "VENDORS",
    "EmulatorConfig",
    "LimitSpec",
    "Mode",
    "ModelLimit",
    "Vendor",
    "parse_limit_rule",
]

Vendor = Literal["openai", "gemini"]
Mode = Literal["sliding", "bucket"]
VENDORS: tuple[Vendor, ...] = ("openai", "gemini")
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
class ModelLimit:
    """A per-model override: `vendor:pattern` (fnmatch) gets its own limits."""

    vendor: Vendor
    pattern: str
    limits: LimitSpec

    def matches(self, vendor: str, model: str) -> bool:
        """True when this rule applies to the vendor's model."""
        return vendor == self.vendor and fnmatch.fnmatchcase(model, self.pattern)


def _int_or_none(text: str) -> int | None:
    """Parse a limit figure; `none`/`inf`/`unlimited` mean no limit."""
    if text.lower() in ("none", "inf", "unlimited", ""):
        return None
    return int(text)


def parse_limit_rule(rule: str) -> ModelLimit:
    """Parse `openai:gpt-5* tpm=30000 rpm=500` (the plugin's `llm_limits` syntax)."""
    parts = rule.split()
    if not parts or ":" not in parts[0]:
        raise ValueError(f"limit rule must start with vendor:model-pattern, got {rule!r}")
    vendor, pattern = parts[0].split(":", 1)
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r} in limit rule {rule!r}")
    values: dict[str, int | None] = {"tpm": None, "rpm": None}
    for item in parts[1:]:
        key, sep, raw = item.partition("=")
        if not sep or key not in values:
            raise ValueError(f"bad item {item!r} in limit rule {rule!r} (want tpm=N or rpm=N)")
        values[key] = _int_or_none(raw)
    return ModelLimit(vendor, pattern or "*", LimitSpec(values["tpm"], values["rpm"]))


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour; change it at run time with `updated()`."""

    host: str = "127.0.0.1"
    port: int = 0
    window: float = 60.0
    mode: Mode = "sliding"
    openai: LimitSpec = field(default_factory=LimitSpec)
    gemini: LimitSpec = field(default_factory=LimitSpec)
    model_limits: tuple[ModelLimit, ...] = ()
    per_model: bool = True
    default_max_output: int = 4096
    reply_min_tokens: int = 8
    reply_max_tokens: int = 40
    require_key: bool = True
    valid_keys: tuple[str, ...] | None = None
    insufficient_quota: bool = False
    gemini_retry_info: bool = True
    organization: str = "org-emulator"
    fault: str | None = None
    log_path: str | None = None
    log_limit: int = 100_000
    stream_delay: float = 0.0
    models: tuple[str, ...] = ("gpt-5", "gpt-5-mini", "gpt-4.1", "gpt-4o", "gpt-4o-mini")
    gemini_models: tuple[str, ...] = ("gemini-2.5-flash", "gemini-2.5-pro")

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
        if self.fault:
            from .faults import parse_fault

            parse_fault(self.fault)  # validate early

    def limits_for(self, vendor: Vendor, model: str) -> tuple[str, LimitSpec]:
        """The bucket key and limits that apply to a vendor's model (first matching rule wins)."""
        for index, rule in enumerate(self.model_limits):
            if rule.matches(vendor, model):
                key = f"{vendor}:{model}" if self.per_model else f"{vendor}:rule{index}"
                return key, rule.limits
        key = f"{vendor}:{model}" if self.per_model else f"{vendor}:*"
        return key, self.openai if vendor == "openai" else self.gemini

    def updated(self, changes: Mapping[str, Any]) -> EmulatorConfig:
        """A copy with JSON-style changes applied (`tpm`/`rpm` set both vendors; `limits` rules)."""
        known = {f.name for f in dataclasses.fields(self)}
        kwargs: dict[str, Any] = {}
        openai, gemini = self.openai, self.gemini
        for key, value in changes.items():
            if key in ("tpm", "rpm"):
                openai = replace(openai, **{key: value})
                gemini = replace(gemini, **{key: value})
            elif key in ("openai", "gemini"):
                base = openai if key == "openai" else gemini
                spec = value if isinstance(value, LimitSpec) else replace(base, **dict(value))
                if key == "openai":
                    openai = spec
                else:
                    gemini = spec
            elif key in ("limits", "model_limits"):
                kwargs["model_limits"] = _rules(value)
            elif key in ("valid_keys", "models", "gemini_models") and value is not None:
                kwargs[key] = tuple(value)
            elif key in known and key not in ("host", "port"):
                kwargs[key] = value
            else:
                raise ValueError(f"unknown or read-only config key {key!r}")
        return replace(self, openai=openai, gemini=gemini, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (limit rules rendered back to their text form)."""
        data = dataclasses.asdict(self)
        data["model_limits"] = [
            f"{r.vendor}:{r.pattern} tpm={r.limits.tpm} rpm={r.limits.rpm}"
            for r in self.model_limits
        ]
        return data


def _rules(value: object) -> tuple[ModelLimit, ...]:
    """Accept rule strings or ModelLimit objects."""
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, Sequence):
        raise ValueError("limits must be a list of rules like 'openai:gpt-5* tpm=30000'")
    return tuple(r if isinstance(r, ModelLimit) else parse_limit_rule(str(r)) for r in value)
