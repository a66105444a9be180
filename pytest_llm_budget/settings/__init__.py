"""One frozen `Settings` resolved from CLI > environment > ini > default, validated.

`options` declares every option (name, parser, help, CLI flag, environment variables, ini key),
`values` turns an option's text into its value, `resolved` holds the `Settings` dataclass, its
defaults and the resolution. Nothing here imports pytest; bad values raise `SettingsError`.
"""

from __future__ import annotations

from ..errors import SettingsError
from .options import RECORD_MODES, Option
from .resolved import OPTIONS, Settings
from .values import parse_duration, parse_limit_rule

__all__ = [
    "OPTIONS",
    "RECORD_MODES",
    "Option",
    "Settings",
    "SettingsError",
    "parse_duration",
    "parse_limit_rule",
]
