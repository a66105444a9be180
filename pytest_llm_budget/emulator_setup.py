"""The `llm_emulator` fixture's configuration: the plugin's own limits, then the user's changes.

By default the emulator enforces what the plugin was told the key allows (`--llm-tpm`,
`--llm-rpm`, `--llm-window`, `--llm-limit`, `llm_limits`), one bucket per vendor or rule like
the plugin's buckets, so a suite run against it behaves as against the provider. Under
`--llm-tpm auto` (the plugin was told nothing) it keeps its own default limits, one bucket per
model, and the plugin learns them from its answers. No pytest here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
from pytest_llm_budget.settings.resolved import Settings

__all__ = ["emulator_config"]


def emulator_config(settings: Settings, changes: EmulatorConfig | Mapping[str, Any] | None) -> (
    EmulatorConfig
):
    """The plugin's limits as an emulator config, with `changes` (a config or its keys) applied."""
    if isinstance(changes, EmulatorConfig):
        return changes
    spec = LimitSpec(rpm=settings.rpm) if settings.tpm is None else LimitSpec(
        tpm=settings.tpm, rpm=settings.rpm
    )
    rules = [str(r) for r in (*settings.cli_limits, *settings.limits) if r.tpm is not None]
    anthropic: dict[str, Any] = {"rpm": settings.rpm, "otpm": None}
    if settings.tpm is not None:
        anthropic["itpm"] = settings.tpm
    base = EmulatorConfig(
        window=settings.window,
        openai=spec,
        gemini=spec,
        per_model=settings.tpm is None,
    ).updated({"anthropic": anthropic, "limits": rules})
    if changes is None:
        return base
    if not isinstance(changes, Mapping):
        raise TypeError(
            f"llm_emulator_config must return a dict of emulator settings or an EmulatorConfig, "
            f"not {type(changes).__name__}"
        )
    return base.updated(dict(changes))
