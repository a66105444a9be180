"""The scenario x model test matrix: 12 default scenarios, TOML overrides, readable ids.

A scenario is a vantage policy (how the app may see the world: NONE, ALS_ONLY, PROXY_ONLY,
ALS_PLUS_PROXY) and a grounding mode (off, auto, required). Tests that take the `llm_scenario`
and/or `llm_model` fixtures are parametrized over scenarios and/or the `llm_models` entries, in a
fixed order (xdist needs every worker to collect the same list).

Scenario file format (ini `llm_scenarios`, a TOML file; it replaces the 12 defaults)::

    [[scenarios]]
    vantage = "ALS_ONLY"        # NONE | ALS_ONLY | PROXY_ONLY | ALS_PLUS_PROXY
    grounding = "auto"          # off | auto | required
    name = "als-auto"           # optional; default "<vantage>-grounded_<grounding>"

No pytest here: errors are `MatrixError`, which the plugin turns into `pytest.UsageError`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pytest_llm_budget.errors import MatrixError

__all__ = [
    "DEFAULT_SCENARIOS",
    "GROUNDING_MODES",
    "VANTAGE_POLICIES",
    "LLMModel",
    "MatrixError",
    "Scenario",
    "argnames",
    "load_scenarios",
    "matrix_params",
    "parse_models",
    "scenario_of",
]

VANTAGE_POLICIES = ("NONE", "ALS_ONLY", "PROXY_ONLY", "ALS_PLUS_PROXY")
GROUNDING_MODES = ("off", "auto", "required")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Scenario:
    """One matrix scenario: a vantage policy and a grounding mode (the `llm_scenario` value)."""

    name: str
    vantage: str
    grounding: str

    @property
    def grounded(self) -> bool:
        """True when the scenario lets the model search (grounding auto or required)."""
        return self.grounding != "off"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class LLMModel:
    """One matrix model: vendor and model name (the `llm_model` value), e.g. openai:gpt-5."""

    vendor: str
    name: str

    @property
    def id(self) -> str:
        """`vendor:name`, as written in `llm_models` and in test ids."""
        return f"{self.vendor}:{self.name}"

    def __str__(self) -> str:
        return self.id


def _default_scenarios() -> tuple[Scenario, ...]:
    """The 12 defaults: every vantage policy under every grounding mode, policy-major."""
    return tuple(
        Scenario(f"{vantage}-grounded_{grounding}", vantage, grounding)
        for vantage, grounding in product(VANTAGE_POLICIES, GROUNDING_MODES)
    )


DEFAULT_SCENARIOS = _default_scenarios()


def parse_models(entries: Iterable[str]) -> tuple[LLMModel, ...]:
    """`vendor:model` lines -> LLMModel values, in order; raise MatrixError on a bad entry."""
    models: list[LLMModel] = []
    for entry in entries:
        vendor, sep, name = entry.strip().partition(":")
        if not sep or not vendor or not name or any(c.isspace() for c in entry.strip()):
            raise MatrixError(f"llm_models: {entry!r} is not 'vendor:model' (e.g. openai:gpt-5)")
        model = LLMModel(vendor.lower(), name)
        if model in models:
            raise MatrixError(f"llm_models: {entry!r} is listed twice")
        models.append(model)
    if not models:
        raise MatrixError("llm_models: no model listed")
    return tuple(models)


def load_scenarios(path: str | Path | None) -> tuple[Scenario, ...]:
    """The scenarios of a TOML file (see the module doc), or the 12 defaults for None."""
    if path is None:
        return DEFAULT_SCENARIOS
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    where = f"llm_scenarios file {str(path)!r}"
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise MatrixError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{where}: not valid TOML ({exc})") from None
    extra = sorted(set(data) - {"scenarios"})
    if extra:
        raise MatrixError(
            f"{where}: unknown top-level key(s) {', '.join(extra)}; use [[scenarios]]"
        )
    tables = data.get("scenarios")
    if not isinstance(tables, list) or not tables:
        raise MatrixError(f"{where}: needs at least one [[scenarios]] table")
    scenarios = [_scenario(table, f"{where}, scenario #{i}") for i, table in enumerate(tables, 1)]
    seen: set[str] = set()
    for scenario in scenarios:
        if scenario.name in seen:
            raise MatrixError(f"{where}: scenario name {scenario.name!r} is used twice")
        seen.add(scenario.name)
    return tuple(scenarios)


def _scenario(table: Any, where: str) -> Scenario:
    """One validated [[scenarios]] table."""
    if not isinstance(table, dict):
        raise MatrixError(f"{where}: must be a table")
    unknown = sorted(set(table) - {"name", "vantage", "grounding"})
    if unknown:
        raise MatrixError(
            f"{where}: unknown key(s) {', '.join(unknown)} (name, vantage, grounding)"
        )
    vantage, grounding = table.get("vantage"), table.get("grounding")
    if vantage not in VANTAGE_POLICIES:
        raise MatrixError(
            f"{where}: vantage={vantage!r} must be one of {', '.join(VANTAGE_POLICIES)}"
        )
    if grounding not in GROUNDING_MODES:
        raise MatrixError(
            f"{where}: grounding={grounding!r} must be one of {', '.join(GROUNDING_MODES)}"
        )
    name = table.get("name", f"{vantage}-grounded_{grounding}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise MatrixError(
            f"{where}: name={name!r} must be letters, digits, '_', '.', '+' or '-' (an id part)"
        )
    return Scenario(name, str(vantage), str(grounding))


def matrix_params(
    wants_model: bool,
    wants_scenario: bool,
    models: Sequence[LLMModel],
    scenarios: Sequence[Scenario],
) -> tuple[list[str], list[tuple[Any, ...]], list[str]]:
    """Argnames, value tuples and ids of the parametrization: models outer, scenarios inner."""
    names = [
        n for n, wanted in (("llm_model", wants_model), ("llm_scenario", wants_scenario)) if wanted
    ]
    axes: list[Sequence[Any]] = [models] if wants_model else []
    if wants_scenario:
        axes.append(scenarios)
    values = list(product(*axes))
    ids = ["-".join(str(v) for v in combo) for combo in values]
    return names, values, ids


def scenario_of(item: Any) -> Scenario | None:
    """The `llm_scenario` value a collected test item runs with, if any."""
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get("llm_scenario") if callspec is not None else None
    return value if isinstance(value, Scenario) else None


def argnames(spec: str | Sequence[str]) -> list[str]:
    """The names of a `parametrize` argnames spec ("a, b" or a list)."""
    return [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
