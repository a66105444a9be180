"""Dollars: the price of every LLM call, and hard caps on what a run and a test may spend.

Prices come from `genai-prices` (the `cost` extra; bundled data, no network; cached-input,
reasoning and long-context tiers, OpenAI service tiers), imported on the first call priced;
without it (and without a price file) every cost is unknown and a cap is a setup error. A TOML
file (`--llm-prices`, ini `llm_prices`) adds or overrides prices, USD per million tokens:

    ["openai:ft:gpt-4o-mini:acme:*"]      # vendor:model, model may use * and ?
    input_mtok = 0.30
    cached_input_mtok = 0.15              # optional, default input_mtok
    output_mtok = 1.20

A model with no price costs "unknown" (None), warns once, and is never refused by a cap.

Caps (`--llm-max-cost`, `--llm-max-cost-per-test`): before a call is sent its worst case (the
estimate's input tokens, all uncached, plus its declared output budget) is held in a ledger; a
hold that would take spent + held past the cap is refused with `CostCapExceeded` and the call is
not sent. When the call ends its actual cost replaces the hold (`settle`); a call the provider
refused (429, other HTTP errors) costs nothing (`release`); a call whose usage never arrived (a
dropped connection, a stream without usage) is charged its worst case, since it may have been
billed. The run's ledger lives in the backend (shared by xdist workers and, with Redis, hosts)
under the name `run:$LLM_BUDGET_RUN_ID` (default `run:default`; see backends/ledger.py for its
idle expiry); a test's ledger lives in its process, which runs the whole test.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import math
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .backends.ledger import NANO, LedgerState
from .errors import CostCapExceeded, CostWarning, PriceFileError

if TYPE_CHECKING:
    from .backends import Backend
    from .providers import Estimate, Usage
    from .records import CallRecord
    from .settings.resolved import Settings

__all__ = [
    "CostGuard",
    "CostHold",
    "CostWarning",
    "ModelPrice",
    "PriceBook",
    "PriceFileError",
    "load_price_file",
    "usd",
]

#: genai-prices' provider id of each vendor name the plugin uses.
_PROVIDER_IDS = {"openai": "openai", "gemini": "google"}
_PRICE_KEYS = ("input_mtok", "cached_input_mtok", "output_mtok")
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

    def matches(self, vendor: str, model: str) -> bool:
        return fnmatch.fnmatchcase(vendor, self.vendor) and fnmatch.fnmatchcase(
            model, self.pattern
        )

    def cost(self, usage: Usage) -> Decimal:
        """Uncached input, cached input and output (reasoning included) at these rates."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_rate = self.input_mtok if self.cached_input_mtok is None else self.cached_input_mtok
        total = (
            (usage.prompt_tokens - cached) * self.input_mtok
            + cached * cached_rate
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
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
                raise PriceFileError(f"{where}: {key}={raw!r} must be a number, 0 or more")
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
        from .providers import Usage

        total = input_tokens + output_tokens
        return self.price(vendor, model, Usage(input_tokens, output_tokens, total))


def genai_price(vendor: str, model: str, usage: Usage) -> Decimal:
    """genai-prices' `calc_price(...).total_price` of a usage; raises LookupError if unknown."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    counts: dict[str, Any] = {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }
    if usage.cached_tokens:
        counts["cache_read_tokens"] = min(usage.cached_tokens, usage.prompt_tokens)
    if usage.reasoning_tokens:
        counts["output_reasoning_tokens"] = min(usage.reasoning_tokens, usage.completion_tokens)
    context = {"service_tier": usage.service_tier} if usage.service_tier else None
    result = calc_price(
        PriceUsage(**counts),
        model_ref=_model_ref(model),
        provider_id=_PROVIDER_IDS.get(vendor),
        price_context=context,
    )
    return Decimal(result.total_price)


def _nano(amount: Decimal) -> int:
    """Whole nano-dollars, rounded up (the ledger never under-counts)."""
    return math.ceil(amount * NANO)


@dataclass
class CostHold:
    """One call's worst case, held against the caps until the call settles."""

    vendor: str
    model: str
    test: str
    input_tokens: int
    output_tokens: int
    worst: Decimal | None
    hold_id: str
    priced: bool = False
    #: What the call cost, once settled (None: unknown price).
    cost_usd: float | None = None
    run_held: bool = False
    test_held: bool = False
    done: bool = False


class CostGuard:
    """A session's prices and caps: `hold` before a call is sent, `settle` / `release` after."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.prices = PriceBook(load_price_file(settings.prices) if settings.prices else ())
        self.cap = settings.max_cost
        self.test_cap = settings.max_cost_per_test
        if (self.cap or self.test_cap) and not (self.prices.genai or self.prices.overrides):
            option = "--llm-max-cost" if self.cap else "--llm-max-cost-per-test"
            raise PriceFileError(
                f"{option} needs prices: pip install 'pytest-llm-budget[cost]' (genai-prices), "
                "or give your models prices in a file (--llm-prices)"
            )
        self.backend = backend
        self.ledger = f"run:{run_id or os.environ.get('LLM_BUDGET_RUN_ID') or 'default'}"
        self.clock = clock
        self._warn = warn or _warn
        self._tests: dict[str, LedgerState] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # -- prices ----------------------------------------------------------------------------
    def price(self, vendor: str, model: str, usage: Usage) -> float | None:
        """Dollars of a usage (None when unknown, after one warning per model)."""
        cost = self.prices.price(vendor, model, usage)
        if cost is None:
            self._unknown(vendor, model)
            return None
        return float(cost)

    def complete(self, record: CallRecord) -> CallRecord:
        """A replayed record with what it would have cost live (`would_cost_usd`)."""
        if not record.replayed or record.would_cost_usd is not None:
            return record
        from .providers import Usage

        usage = Usage(
            record.prompt_tokens,
            record.completion_tokens,
            record.total_tokens,
            cached_tokens=record.cached_tokens,
            reasoning_tokens=record.reasoning_tokens,
            service_tier=record.service_tier,
        )
        would = self.price(record.vendor, record.model, usage) if record.status == "ok" else 0.0
        return replace(record, cost_usd=0.0, would_cost_usd=would)

    def _unknown(self, vendor: str, model: str) -> None:
        key = (vendor, model) if self.prices.genai else ("", "")  # no genai-prices: warn once
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        if not self.prices.genai:
            self._warn(
                "pytest-llm-budget: calls are not priced (their cost is reported as unknown): "
                "pip install 'pytest-llm-budget[cost]' for genai-prices, or use --llm-prices"
            )
            return
        capped = " and is not counted against --llm-max-cost" if self.cap or self.test_cap else ""
        self._warn(
            f"pytest-llm-budget: no price known for {vendor} model {model!r}: its cost is "
            f"reported as unknown{capped}; add it to a price file (--llm-prices)"
        )

    # -- caps ------------------------------------------------------------------------------
    def hold(self, estimate: Estimate, vendor: str, test: str) -> CostHold:
        """Hold the call's worst case against the caps, or raise CostCapExceeded (not sent)."""
        model = estimate.model
        hold = CostHold(
            vendor, model, test, estimate.input_tokens, estimate.output_tokens, None, ""
        )
        if self.cap is None and self.test_cap is None:
            return hold  # nothing to hold: the worst case is priced only if ever needed
        worst = hold.worst = self._worst(hold)
        hold.hold_id = uuid.uuid4().hex
        if worst is None:
            self._unknown(vendor, model)
            return hold
        amount = _nano(worst)
        if self.test_cap is not None:
            with self._lock:
                answer = self._tests.setdefault(test, LedgerState()).hold(
                    hold.hold_id, amount, _nano(Decimal(str(self.test_cap)))
                )
            if not answer.admitted:
                raise self._refusal(hold, "test", self.test_cap, answer.spent, answer.held)
            hold.test_held = True
        if self.cap is not None:
            try:
                answer = self.backend.cost_hold(
                    self.ledger, hold.hold_id, amount, _nano(Decimal(str(self.cap))), self.clock()
                )
            except BaseException:
                self.release(hold)
                raise
            if not answer.admitted:
                self.release(hold)
                raise self._refusal(hold, "run", self.cap, answer.spent, answer.held)
            hold.run_held = True
        return hold

    def settle(self, hold: CostHold, usage: Usage | None) -> float | None:
        """The call ended: its cost from `usage` (the worst case when None) replaces the hold."""
        cost = self.prices.price(hold.vendor, hold.model, usage) if usage is not None else None
        if cost is None:
            cost = self._worst(hold)  # no usage (or an unpriceable one): keep the bound
        if cost is None:
            self._unknown(hold.vendor, hold.model)
        hold.cost_usd = None if cost is None else float(cost)
        self._end(hold, 0 if cost is None else _nano(cost))
        return hold.cost_usd

    def _worst(self, hold: CostHold) -> Decimal | None:
        """The hold's worst case, priced once."""
        if hold.worst is None and not hold.priced:
            hold.worst = self.prices.worst_case(
                hold.vendor, hold.model, hold.input_tokens, hold.output_tokens
            )
            hold.priced = True
        return hold.worst

    def release(self, hold: CostHold) -> None:
        """The call was not billed (refused by the provider or by a cap): drop its hold."""
        self._end(hold, 0)

    def _end(self, hold: CostHold, actual: int) -> None:
        with self._lock:
            if hold.done:
                return
            hold.done = True
            if hold.test_held:
                self._tests[hold.test].settle(hold.hold_id, actual)
        if hold.run_held:
            self.backend.cost_settle(self.ledger, hold.hold_id, actual, self.clock())

    def test_spent(self, test: str) -> float:
        """Dollars a test has settled against its cap (0 without --llm-max-cost-per-test)."""
        with self._lock:
            state = self._tests.get(test)
            return state.spent / NANO if state else 0.0

    def run_state(self) -> LedgerState | None:
        """The run ledger (spent, held, refused), or None without --llm-max-cost."""
        if self.cap is None:
            return None
        return self.backend.cost_state(self.ledger, self.clock())

    def _refusal(
        self, hold: CostHold, scope: str, cap: float, spent: int, held: int
    ) -> CostCapExceeded:
        worst = hold.worst or Decimal(0)
        option = "--llm-max-cost" if scope == "run" else "--llm-max-cost-per-test"
        whose = "the run" if scope == "run" else f"test {hold.test}"
        total = Decimal(spent + held) / NANO + worst
        return CostCapExceeded(
            f"{hold.vendor} model {hold.model}: not sent: its worst case {usd(worst)} "
            f"({hold.input_tokens} input + {hold.output_tokens} output tokens) would take "
            f"{whose} to {usd(total)}, past {option}={usd(cap)} ({usd(spent / NANO)} spent, "
            f"{usd(held / NANO)} held by calls in flight)",
            vendor=hold.vendor,
            model=hold.model,
            scope=scope,
            cap_usd=cap,
            spent_usd=spent / NANO,
            held_usd=held / NANO,
            would_cost_usd=float(worst),
        )


def _warn(message: str) -> None:
    """Warn once; when warnings are errors, never fail the LLM call for it."""
    with contextlib.suppress(Warning):
        warnings.warn(CostWarning(message), stacklevel=4)
