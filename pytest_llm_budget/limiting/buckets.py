"""Buckets: the rule that names a bucket and sizes its budget, and the figures it keeps.

A call spends from the bucket of the first `LimitRule` matching its (vendor, model) (`rule_for`);
the rule's `budget` is the size of that bucket's window. `Buckets` maps calls to buckets for one
limiter and counts what this process did with each (`BucketStats`). A bucket's admission model
follows its vendor: token buckets for Anthropic (`token_bucket.py`: requests, input and output
tokens), the sliding window for every other vendor (`window.py`).
"""

from __future__ import annotations

import fnmatch
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_llm_budget.limiting.admission import Limits
from pytest_llm_budget.limiting.token_bucket import DIMENSIONS, TokenBucketLimits

__all__ = [
    "COUNTERS",
    "Bucket",
    "BucketStats",
    "Buckets",
    "DimensionStats",
    "LimitRule",
    "rule_for",
]

#: Vendors whose buckets are sliding windows: a rule that can match one of them takes `tpm`.
_WINDOW_VENDORS = ("openai", "gemini")


@dataclass(frozen=True)
class LimitRule:
    """One `vendor:model tpm=N rpm=M` line: calls whose vendor and model match share a budget.

    `itpm` / `otpm` (input and output tokens per window) are the limits of token-bucket vendors
    (Anthropic): a rule whose vendor pattern can match a sliding-window vendor (openai, gemini;
    so `*` too) may not give them. An Anthropic bucket whose rule gives only `tpm` takes it as
    its input limit, its output unlimited.
    """

    vendor: str = "*"
    model: str = "*"
    tpm: int = 30000
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None

    def __post_init__(self) -> None:
        if self.itpm is None and self.otpm is None:
            return
        windows = [v for v in _WINDOW_VENDORS if fnmatch.fnmatchcase(v, self.vendor.lower())]
        if windows:
            raise ValueError(
                f"itpm/otpm are limits of token-bucket vendors (anthropic), but vendor "
                f"{self.vendor!r} also matches {', '.join(windows)}, whose sliding window takes "
                "tpm; write a rule per vendor"
            )
        if self.itpm is None:
            raise ValueError("a rule with otpm needs itpm too (its input limit)")

    def matches(self, vendor: str, model: str) -> bool:
        """Glob match on vendor and model (case-insensitive)."""
        return fnmatch.fnmatchcase(vendor.lower(), self.vendor.lower()) and fnmatch.fnmatchcase(
            model.lower(), self.model.lower()
        )

    def bucket_name(self, vendor: str) -> str:
        """A bucket is (rule, vendor): a wildcard vendor gives each vendor its own bucket."""
        return f"{vendor}:{self.model}"

    def budget(self, headroom: float) -> int:
        """Tokens this rule's bucket admits per window: `tpm x (1 - headroom)` (`itpm` when
        given: the input bucket's capacity)."""
        return int((self.tpm if self.itpm is None else self.itpm) * (1 - headroom))

    def output_budget(self, headroom: float) -> int | None:
        """Output tokens the bucket admits per window (`otpm` after headroom; None: unlimited)."""
        return None if self.otpm is None else int(self.otpm * (1 - headroom))

    def __str__(self) -> str:
        tokens = f"tpm={self.tpm}" if self.itpm is None else f"itpm={self.itpm}"
        otpm = f" otpm={self.otpm}" if self.otpm is not None else ""
        rpm = f" rpm={self.rpm}" if self.rpm is not None else ""
        return f"{self.vendor}:{self.model} {tokens}{otpm}{rpm}"


def rule_for(rules: Sequence[LimitRule], vendor: str, model: str) -> LimitRule:
    """The first rule matching (vendor, model); the last rule is the fallback."""
    return next((r for r in rules if r.matches(vendor, model)), rules[-1])


@dataclass(frozen=True)
class DimensionStats:
    """One dimension of a token-bucket bucket this session: its capacity, what admissions
    charged (`estimated`), what settles reported (`actual`), and the fullest it was just after
    an admission (`peak`, output counting what was expected in flight)."""

    limit: int
    estimated: int = 0
    actual: int = 0
    peak: int = 0

    def merged(self, other: DimensionStats) -> DimensionStats:
        """Add another process's figures (the peak is the higher one)."""
        return DimensionStats(
            self.limit, self.estimated + other.estimated, self.actual + other.actual,
            max(self.peak, other.peak),
        )


@dataclass(frozen=True)
class BucketStats:
    """What one bucket did this session, as this process saw it.

    `admission` is the bucket's model ("window" or "token_bucket"); a token-bucket bucket has
    its figures per dimension in `dimensions` (`requests`, `input_tokens`, `output_tokens`).
    """

    name: str
    rule: str
    budget: int
    calls: int = 0
    estimated: int = 0
    actual: int = 0
    debt: int = 0
    deferrals: int = 0
    waited_s: float = 0.0
    rate_limit_events: int = 0
    refunded: int = 0
    admission: str = "window"
    dimensions: dict[str, DimensionStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read back from JSON (xdist workers, spools): the dimensions arrive as plain dicts.
        if any(isinstance(d, dict) for d in self.dimensions.values()):
            dims = {
                k: DimensionStats(**d) if isinstance(d, dict) else d
                for k, d in self.dimensions.items()
            }
            object.__setattr__(self, "dimensions", dims)

    def merged(self, other: BucketStats) -> BucketStats:
        """Add another process's figures for the same bucket."""
        merged = replace(self, **{f: getattr(self, f) + getattr(other, f) for f in COUNTERS})
        if not (self.dimensions or other.dimensions):
            return merged
        dims = dict(self.dimensions)
        for k, d in other.dimensions.items():
            dims[k] = dims[k].merged(d) if k in dims else d
        return replace(merged, dimensions=dims)


#: The additive figures of BucketStats (summed across processes, counted by the limiter).
COUNTERS = (
    "calls", "estimated", "actual", "debt", "deferrals", "waited_s", "rate_limit_events",
    "refunded",
)


class Bucket:
    """A bucket's rule and limits, and this process's running counts (see `Buckets.count`)."""

    __slots__ = ("counts", "dimensions", "limits", "name", "rule", "token_bucket")

    def __init__(self, name: str, rule: LimitRule, limits: Limits) -> None:
        self.name = name
        self.rule = rule
        self.limits = limits
        self.token_bucket = isinstance(limits, TokenBucketLimits)
        #: COUNTERS -> running total (int; `waited_s` a float), frozen into BucketStats on read.
        self.counts: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        #: Token buckets: dimension -> [limit, estimated, actual, peak] (limited ones only).
        self.dimensions: dict[str, list[int]] = {}
        if isinstance(limits, TokenBucketLimits):
            for dim, cap in zip(DIMENSIONS, limits.capacities(), strict=True):
                if cap is not None:
                    self.dimensions[dim] = [cap, 0, 0, 0]

    def stats(self) -> BucketStats:
        """The counts so far, as a record."""
        if not self.token_bucket:
            return BucketStats(self.name, str(self.rule), self.limits.tokens, **self.counts)
        dims = {k: DimensionStats(*v) for k, v in self.dimensions.items()}
        return BucketStats(
            self.name, str(self.rule), self.limits.tokens, **self.counts,
            admission="token_bucket", dimensions=dims,
        )


class Buckets:
    """The buckets of one limiter: which one a (vendor, model) call spends from, and its counts."""

    def __init__(
        self, rules: Sequence[LimitRule], limits_for: Callable[[LimitRule, str], Limits]
    ) -> None:
        self.rules = rules
        self._limits_for = limits_for
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self._names: dict[tuple[str, str], str] = {}

    def name_for(self, vendor: str, model: str) -> str:
        """The name of the bucket a (vendor, model) call spends from (made on first use)."""
        key = (vendor, model)
        name = self._names.get(key)
        if name is not None:
            return name
        rule = rule_for(self.rules, vendor, model)
        name = rule.bucket_name(vendor)
        with self._lock:
            self._names[key] = name
            if name not in self._buckets:
                self._buckets[name] = Bucket(name, rule, self._limits_for(rule, vendor))
        return name

    def __getitem__(self, name: str) -> Bucket:
        return self._buckets[name]

    def count(self, name: str, **deltas: float) -> None:
        """Add `deltas` (counter name -> amount) to a bucket's counts."""
        counts = self._buckets[name].counts
        with self._lock:
            for counter, delta in deltas.items():
                counts[counter] += delta

    def count_dimensions(
        self, name: str, amounts: tuple[float, ...], *, field: int, fill: tuple[float, ...] = ()
    ) -> None:
        """Add `amounts` (in `DIMENSIONS` order) to a token bucket's `estimated` (`field` 1) or
        `actual` (2) figures, and raise its peaks to `fill`."""
        dims = self._buckets[name].dimensions
        with self._lock:
            for i, dim in enumerate(DIMENSIONS):
                row = dims.get(dim)
                if row is None:
                    continue
                row[field] += int(amounts[i])
                if fill and fill[i] > row[3]:
                    row[3] = math.ceil(fill[i] - 1e-6)

    def stats(self) -> list[BucketStats]:
        """Every bucket's counts, in bucket-name order."""
        with self._lock:
            return [self._buckets[k].stats() for k in sorted(self._buckets)]
