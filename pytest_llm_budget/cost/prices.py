"""Prices: what an LLM call costs, from a user's price file first, then genai-prices.

Prices come from `genai-prices` (the `cost` extra; bundled data, no network; cached-input,
reasoning and long-context tiers, OpenAI service tiers), imported on the first call priced;
without it (and without a price file) every cost is unknown and a cap is a setup error. A TOML
file (`--llm-prices`, ini `llm_prices`) adds or overrides prices, USD per million tokens:

    ["openai:ft:gpt-4o-mini:acme:*"]      # vendor:model, model may use * and ?
    input_mtok = 0.30
    cached_input_mtok = 0.15              # optional, default input_mtok
    cache_write_mtok = 0.375              # optional (Anthropic cache writes), default input_mtok
    output_mtok = 1.20

A model with no price costs "unknown" (None), warns once (caps.py), and is never refused by a cap.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import math
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.errors import PriceFileError

if TYPE_CHECKING:
    from pytest_llm_budget.providers.base import Usage

__all__ = [
    "ModelPrice",
    "PriceBook",
    "genai_price",
    "genai_prices_installed",
    "load_price_file",
    "usd",
]

_PRICE_KEYS = ("input_mtok", "cached_input_mtok", "cache_write_mtok", "output_mtok")
_MILLION = Decimal(1_000_000)


def usd(value: float | Decimal | None) -> str:
    """Dollars with 4 significant digits (`$0.001234`, `$1.235`, `$1,235`); None is unknown."""
    if value is None:
        return "unknown"
    amount = float(value)
    if amount == 0:
        return "$0"
    decimals = max(0, 3 - math.floor(math.log10(abs(amount))))
    text = f"{amount:,.{decimals}f}"
    if float(text.replace(",", "")) >= 10 ** (4 - decimals):  # 9.9995 rounds up to 10.000
        text = f"{amount:,.{max(0, decimals - 1)}f}"
    return f"${text}"


@dataclass(frozen=True)
class ModelPrice:
    """A user's price for matching models, USD per million tokens."""

    vendor: str
    pattern: str
    input_mtok: Decimal
    output_mtok: Decimal
    cached_input_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None

    def matches(self, vendor: str, model: str) -> bool:
        return fnmatch.fnmatchcase(vendor, self.vendor) and fnmatch.fnmatchcase(
            model, self.pattern
        )

    def cost(self, usage: Usage) -> Decimal:
        """Uncached input, cached input, cache writes and output (reasoning included) at these
        rates."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        cached_rate = self.input_mtok if self.cached_input_mtok is None else self.cached_input_mtok
        write_rate = self.input_mtok if self.cache_write_mtok is None else self.cache_write_mtok
        total = (
            (usage.prompt_tokens - cached - written) * self.input_mtok
            + cached * cached_rate
            + written * write_rate
            + usage.completion_tokens * self.output_mtok
        )
        return total / _MILLION


def load_price_file(path: str) -> tuple[ModelPrice, ...]:
    """Parse a price file (module docstring); raises PriceFileError naming what is wrong."""
    if not os.path.isfile(path):
        raise PriceFileError(f"--llm-prices={path!r}: no such file")
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, ValueError) as exc:
        raise PriceFileError(f"--llm-prices={path!r}: not valid TOML ({exc})") from None
    prices = []
    for name, table in data.items():
        where = f"--llm-prices={path!r}: [{name!r}]"
        vendor, colon, pattern = str(name).partition(":")
        if not colon or not vendor or not pattern:
            raise PriceFileError(f"{where}: a table name must be 'vendor:model' (e.g. 'openai:x')")
        if not isinstance(table, dict):
            raise PriceFileError(f"{where}: expected a table of {', '.join(_PRICE_KEYS)}")
        unknown = sorted(set(table) - set(_PRICE_KEYS))
        if unknown:
            raise PriceFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
        values: dict[str, Decimal] = {}
        for key, raw in table.items():
            if (
                isinstance(raw, bool)
                or not isinstance(raw, (int, float))
                or not math.isfinite(raw)
                or raw < 0
            ):
                raise PriceFileError(
                    f"{where}: {key}={raw!r} must be a finite number, 0 or more"
                )
            values[key] = Decimal(str(raw))
        missing = [k for k in ("input_mtok", "output_mtok") if k not in values]
        if missing:
            raise PriceFileError(f"{where}: missing {', '.join(missing)}")
        prices.append(
            ModelPrice(
                vendor,
                pattern,
                values["input_mtok"],
                values["output_mtok"],
                values.get("cached_input_mtok"),
                values.get("cache_write_mtok"),
            )
        )
    return tuple(prices)


def _model_ref(model: str) -> str:
    """The model name genai-prices knows: no `models/` (Gemini) resource prefix."""
    return model.rsplit("models/", 1)[-1] if "models/" in model else model


def genai_prices_installed() -> bool:
    """Whether genai-prices can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("genai_prices") is not None
    except (ImportError, ValueError):
        return False


class PriceBook:
    """The price of a usage: the user's prices first, then genai-prices; None when unknown."""

    def __init__(self, overrides: Sequence[ModelPrice] = (), *, genai: bool | None = None) -> None:
        self.overrides = tuple(overrides)
        #: Whether genai-prices is there to ask (the `cost` extra).
        self.genai = genai_prices_installed() if genai is None else genai
        self._unknown: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def price(self, vendor: str, model: str, usage: Usage) -> Decimal | None:
        """Dollars for `usage` of `model` at `vendor`, or None when no price is known."""
        for entry in self.overrides:
            if entry.matches(vendor, model):
                return entry.cost(usage)
        if not self.genai or (vendor, model) in self._unknown or model in ("", "unknown"):
            return None
        try:
            return genai_price(vendor, model, usage)
        except (LookupError, ValueError):
            with self._lock:
                self._unknown.add((vendor, model))
            return None

    def worst_case(
        self, vendor: str, model: str, input_tokens: int, output_tokens: int
    ) -> Decimal | None:
        """Dollars of `input_tokens` (uncached) and `output_tokens`: a call's highest cost."""
        from pytest_llm_budget.providers.base import Usage

        total = input_tokens + output_tokens
        return self.price(vendor, model, Usage(input_tokens, output_tokens, total))


def genai_price(vendor: str, model: str, usage: Usage) -> Decimal:
    """genai-prices' `calc_price(...).total_price` of a usage; raises LookupError if unknown."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    from pytest_llm_budget.providers.registry import price_id

    counts: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    if usage.cached_tokens:
        counts["cache_read_tokens"] = min(usage.cached_tokens, usage.prompt_tokens)
    if usage.cache_write_tokens:
        counts["cache_write_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        counts["output_reasoning_tokens"] = min(usage.reasoning_tokens, usage.completion_tokens)
    context = {"service_tier": usage.service_tier} if usage.service_tier else None
    result = calc_price(
        PriceUsage(**counts),
        model_ref=_model_ref(model),
        provider_id=price_id(vendor),
        price_context=context,
    )
    return Decimal(result.total_price)
