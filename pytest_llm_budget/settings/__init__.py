"""One frozen `Settings` resolved from CLI > environment > ini > default, validated.

`options` declares every option (name, parser, help, CLI flag, environment variables, ini key),
`values` turns an option's text into its value, `resolved` holds the `Settings` dataclass, its
defaults and the resolution. Nothing here imports pytest; bad values raise `SettingsError`.
"""

from __future__ import annotations

from pytest_llm_budget.errors import SettingsError
from pytest_llm_budget.settings.options import RECORD_MODES, Option
from pytest_llm_budget.settings.resolved import OPTIONS, Settings
from pytest_llm_budget.settings.values import parse_duration, parse_limit_rule

__all__ = [
    "OPTIONS",
    "RECORD_MODES",
    "Option",
    "Settings",
    "SettingsError",
    "parse_duration",
    "parse_limit_rule",
]
