"""Hard caps on what a run and a test may spend, held before a call is sent and settled after.

Caps (`--llm-max-cost`, `--llm-max-cost-per-test`): before a call is sent its worst case (the
estimate's input tokens, all uncached, plus its declared output budget) is held in a ledger; a
hold that would take spent + held past the cap is refused with `CostCapExceeded` and the call is
not sent. When the call ends its actual cost replaces the hold (`settle`); a call the provider
refused (429, other HTTP errors) costs nothing (`release`); a call whose usage never arrived (a
dropped connection, a stream without usage) is charged its worst case, since it may have been
billed. The run's ledger lives in the backend (shared by xdist workers and, with Redis, hosts)
under the name `run:$LLM_BUDGET_RUN_ID` (default `run:default`; see backends/ledger.py for its
idle expiry); a test's ledger lives in its process, which runs the whole test. Prices: prices.py.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from pytest_llm_budget.backends.ledger import NANO, LedgerState
from pytest_llm_budget.cost.prices import PriceBook, load_price_file, usd
from pytest_llm_budget.errors import CostCapExceeded, CostWarning, PriceFileError

if TYPE_CHECKING:
    from pytest_llm_budget.backends import Backend
    from pytest_llm_budget.providers.base import Estimate, Usage
    from pytest_llm_budget.records import CallRecord
    from pytest_llm_budget.settings.resolved import Settings

__all__ = ["CostGuard", "CostHold"]


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
        from pytest_llm_budget.providers.base import Usage

        usage = Usage(
            record.prompt_tokens,
            record.completion_tokens,
            record.total_tokens,
            cached_tokens=record.cached_tokens,
            reasoning_tokens=record.reasoning_tokens,
            service_tier=record.service_tier,
            cache_write_tokens=record.cache_write_tokens,
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
