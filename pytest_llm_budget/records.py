"""What every LLM call cost: one `CallRecord` per logical call, and live per-test usage."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CallLog", "CallRecord", "Overspend", "TestUsage", "Totals"]


@dataclass(frozen=True)
class CallRecord:
    """One logical call (one SDK call, however many HTTP attempts it took)."""

    t: float
    test: str
    vendor: str
    model: str
    estimated: int
    prompt_tokens: int
    completion_tokens: int
    status: str
    attempts: int
    waited_s: float
    replayed: bool = False
    worker: str = "main"
    rate_limit_events: int = 0
    malformed: bool = False
    error_code: str | None = None
    cached_tokens: int = 0
    #: Part of `prompt_tokens` written to the prompt cache (Anthropic cache creation).
    cache_write_tokens: int = 0
    #: Overloaded answers (Anthropic 529) this call got and retried; never a rate limit.
    overloaded: int = 0
    reasoning_tokens: int = 0
    service_tier: str | None = None
    #: Dollars this call cost (0 when replayed or refused); None when its model has no price.
    cost_usd: float | None = 0.0
    #: A replayed call: what it would have cost live (None when its model has no price).
    would_cost_usd: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost_unknown(self) -> bool:
        """True when the call (or, replayed, its live equivalent) has no known price."""
        return self.would_cost_usd is None if self.replayed else self.cost_usd is None

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON report's `calls` entry."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        """Inverse of `to_json` (used to merge xdist workers' records)."""
        return cls(**data)


@dataclass
class TestUsage:
    """A test's LLM usage so far; the `llm_usage` fixture, live while the test runs."""

    __test__ = False  # not a pytest test class

    calls: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    rate_limit_events: int = 0
    waited_s: float = 0.0
    replayed: int = 0
    #: Dollars of this test's live calls with a known price (`cost_unknown` counts the others).
    cost_usd: float = 0.0
    #: Dollars its replayed calls would have cost live.
    would_cost_usd: float = 0.0
    cost_unknown: int = 0
    records: list[CallRecord] = field(default_factory=list)

    def add(self, record: CallRecord) -> None:
        """Count one finished call."""
        self.calls += 1
        self.attempts += record.attempts
        self.prompt_tokens += record.prompt_tokens
        self.completion_tokens += record.completion_tokens
        self.total_tokens += record.total_tokens
        self.rate_limit_events += record.rate_limit_events
        self.waited_s += record.waited_s
        self.replayed += int(record.replayed)
        self.cost_usd += record.cost_usd or 0.0
        self.would_cost_usd += record.would_cost_usd or 0.0
        self.cost_unknown += int(record.cost_unknown)
        self.records.append(record)


@dataclass(frozen=True)
class Totals:
    """The JSON report's `totals` and the summary's totals line."""

    calls: int = 0
    replayed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    rate_limit_events: int = 0
    retries: int = 0
    waited_s: float = 0.0
    errors: int = 0
    malformed: int = 0
    cost_usd: float = 0.0
    would_cost_usd: float = 0.0
    cost_unknown: int = 0
    cost_refused: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Overspend:
    """A test that spent (provider-reported total tokens, live calls) more than it declared."""

    test: str
    declared: int
    spent: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CallLog:
    """Thread-safe list of this process's call records, with per-test views."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[CallRecord] = []
        self._by_test: dict[str, TestUsage] = {}
        self._declared: dict[str, int] = {}

    def declare(self, test: str, tokens: int | None) -> None:
        """Note what a test's marker says it will spend in total (None: nothing declared)."""
        if tokens is not None:
            with self._lock:
                self._declared[test] = tokens

    def declared(self) -> dict[str, int]:
        """Every declared test total so far, by test id."""
        with self._lock:
            return dict(self._declared)

    def overspent(self) -> list[Overspend]:
        """Tests whose live calls reported more total tokens than they declared, by first call."""
        declared = self.declared()
        spent: dict[str, int] = {}
        for record in self.records():
            if record.test in declared and not record.replayed:
                spent[record.test] = spent.get(record.test, 0) + record.total_tokens
        return [
            Overspend(test, declared[test], tokens)
            for test, tokens in spent.items()
            if tokens > declared[test]
        ]

    def add(self, record: CallRecord) -> None:
        """Record a finished call."""
        with self._lock:
            self._records.append(record)
            self._by_test.setdefault(record.test, TestUsage()).add(record)

    def extend(self, records: list[CallRecord], declared: dict[str, int] | None = None) -> None:
        """Add records (and declared test totals) from elsewhere (another xdist worker)."""
        for record in records:
            self.add(record)
        for test, tokens in (declared or {}).items():
            self.declare(test, tokens)

    def usage(self, test: str) -> TestUsage:
        """The live usage object of one test (created empty on first ask)."""
        with self._lock:
            return self._by_test.setdefault(test, TestUsage())

    def records(self) -> list[CallRecord]:
        """A copy of every record so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def totals(self) -> Totals:
        """Sums over every record."""
        records = self.records()
        return Totals(
            calls=len(records),
            replayed=sum(r.replayed for r in records),
            prompt_tokens=sum(r.prompt_tokens for r in records),
            completion_tokens=sum(r.completion_tokens for r in records),
            total_tokens=sum(r.total_tokens for r in records),
            rate_limit_events=sum(r.rate_limit_events for r in records),
            retries=sum(max(0, r.attempts - 1) for r in records),
            waited_s=round(sum(r.waited_s for r in records), 3),
            errors=sum(r.status != "ok" for r in records),
            malformed=sum(r.malformed for r in records),
            cost_usd=round(sum(r.cost_usd or 0.0 for r in records), 12),
            would_cost_usd=round(sum(r.would_cost_usd or 0.0 for r in records), 12),
            cost_unknown=sum(r.cost_unknown for r in records),
            cost_refused=sum(r.error_code == "LLM_COST_CAP" for r in records),
        )

    def tests(self) -> dict[str, TestUsage]:
        """Every test's usage so far, by node id (a copy of the mapping)."""
        with self._lock:
            return dict(self._by_test)
