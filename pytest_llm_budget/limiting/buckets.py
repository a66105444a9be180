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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_llm_budget.limiting.admission import Limits
from pytest_llm_budget.limiting.token_bucket import DIMENSIONS, TokenBucketLimits

__all__ = [
    "COUNTERS",
    "UNKNOWN_TOKENS",
    "Bucket",
    "BucketStats",
    "Buckets",
    "DimensionStats",
    "LimitRule",
    "budget_of",
    "rule_for",
    "stated",
]

#: The token budget of a bucket whose limit is not known yet (`tpm=auto`): no token pacing.
UNKNOWN_TOKENS = 2**40

#: Vendors whose buckets are sliding windows: a rule that can match one of them takes `tpm`.
_WINDOW_VENDORS = ("openai", "gemini")


@dataclass(frozen=True)
class LimitRule:
    """One `vendor:model tpm=N rpm=M` line: calls whose vendor and model match share a budget.

    `tpm=None` is `tpm=auto`: the limit is learned from the provider. `per_model` gives each
    model its own bucket (the fallback rule under auto: providers limit each model).

    `itpm` / `otpm` (input and output tokens per window) are the limits of token-bucket vendors
    (Anthropic): a rule whose vendor pattern can match a sliding-window vendor (openai, gemini;
    so `*` too) may not give them. An Anthropic bucket whose rule gives only `tpm` takes it as
    its input limit, its output unlimited.
    """

    vendor: str = "*"
    model: str = "*"
    tpm: int | None = 30000
    rpm: int | None = None
    itpm: int | None = None
    otpm: int | None = None
    per_model: bool = False

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

    def bucket_name(self, vendor: str, model: str = "*") -> str:
        """A bucket is (rule, vendor): a wildcard vendor gives each vendor its own bucket;
        (vendor, model) under a `per_model` rule."""
        return f"{vendor}:{model if self.per_model else self.model}"

    def budget(self, headroom: float) -> int | None:
        """Tokens this rule's bucket admits per window: `tpm x (1 - headroom)` (`itpm` when
        given: the input bucket's capacity; None: `tpm=auto`)."""
        tokens = self.tpm if self.itpm is None else self.itpm
        return None if tokens is None else budget_of(tokens, headroom)

    def output_budget(self, headroom: float) -> int | None:
        """Output tokens the bucket admits per window (`otpm` after headroom; None: unlimited)."""
        return None if self.otpm is None else budget_of(self.otpm, headroom)

    def __str__(self) -> str:
        tpm = "auto" if self.tpm is None else self.tpm
        tokens = f"tpm={tpm}" if self.itpm is None else f"itpm={self.itpm}"
        otpm = f" otpm={self.otpm}" if self.otpm is not None else ""
        rpm = f" rpm={self.rpm}" if self.rpm is not None else ""
        return f"{self.vendor}:{self.model} {tokens}{otpm}{rpm}"


def budget_of(tpm: int, headroom: float) -> int:
    """Tokens a bucket admits per window for a limit of `tpm`: `tpm x (1 - headroom)`."""
    return int(tpm * (1 - headroom))


def rule_for(rules: Sequence[LimitRule], vendor: str, model: str) -> LimitRule:
    """The first rule matching (vendor, model); the last rule is the fallback."""
    return next((r for r in rules if r.matches(vendor, model)), rules[-1])


def stated(record: Mapping[str, Mapping[str, int]], dimension: str) -> int | None:
    """The lowest figure the servers stated in `dimension` for any model of a bucket."""
    return min((f[dimension] for f in record.values() if f.get(dimension)), default=None)


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

    `budget` is None while the bucket's limit is not known (`--llm-tpm auto`); `tpm` / `rpm`
    are the rule's (configured) figures, `server_tpm` / `server_rpm` what the server stated.
    `admission` is the bucket's model ("window" or "token_bucket"); a token-bucket bucket has
    its figures per dimension in `dimensions` (`requests`, `input_tokens`, `output_tokens`).
    """

    name: str
    rule: str
    budget: int | None
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
    tpm: int | None = None
    rpm: int | None = None
    server_tpm: int | None = None
    server_rpm: int | None = None

    def __post_init__(self) -> None:
        # Read back from JSON (xdist workers, spools): the dimensions arrive as plain dicts.
        if any(isinstance(d, dict) for d in self.dimensions.values()):
            dims = {
                k: DimensionStats(**d) if isinstance(d, dict) else d
                for k, d in self.dimensions.items()
            }
            object.__setattr__(self, "dimensions", dims)

    def merged(self, other: BucketStats) -> BucketStats:
        """Add another process's figures for the same bucket (the lowest limits known)."""
        merged = replace(
            self,
            **{f: getattr(self, f) + getattr(other, f) for f in COUNTERS},
            budget=_lowest(self.budget, other.budget),
            server_tpm=_lowest(self.server_tpm, other.server_tpm),
            server_rpm=_lowest(self.server_rpm, other.server_rpm),
        )
        if not (self.dimensions or other.dimensions):
            return merged
        dims = dict(self.dimensions)
        for k, d in other.dimensions.items():
            dims[k] = dims[k].merged(d) if k in dims else d
        return replace(merged, dimensions=dims)


def _lowest(a: int | None, b: int | None) -> int | None:
    """The lower of two figures, either of which may be unknown (None)."""
    return b if a is None else a if b is None else min(a, b)


#: The additive figures of BucketStats (summed across processes, counted by the limiter).
COUNTERS = (
    "calls", "estimated", "actual", "debt", "deferrals", "waited_s", "rate_limit_events",
    "refunded",
)


class Bucket:
    """A bucket's rule and limits, and this process's running counts (see `Buckets.count`).

    `learned` is what the servers stated for its models (model -> {"tokens", "requests"}), as
    last read from the backend at clock time `refreshed`; `limits` take it into account.
    """

    __slots__ = (
        "counts", "dimensions", "learned", "limits", "name", "refreshed", "rule", "token_bucket",
    )

    def __init__(self, name: str, rule: LimitRule, limits: Limits) -> None:
        self.name = name
        self.rule = rule
        self.limits = limits
        self.learned: dict[str, dict[str, int]] = {}
        self.refreshed = float("-inf")
        self.token_bucket = isinstance(limits, TokenBucketLimits)
        #: COUNTERS -> running total (int; `waited_s` a float), frozen into BucketStats on read.
        self.counts: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        #: Token buckets: dimension -> [limit, estimated, actual, peak] (limited ones only).
        self.dimensions: dict[str, list[int]] = {}
        if isinstance(limits, TokenBucketLimits):
            for dim, cap in zip(DIMENSIONS, limits.capacities(), strict=True):
                if cap is not None:
                    self.dimensions[dim] = [cap, 0, 0, 0]

    @property
    def budget(self) -> int | None:
        """Tokens admitted per window; None while no limit is known (`tpm=auto`)."""
        return None if self.limits.tokens >= UNKNOWN_TOKENS else self.limits.tokens

    def stats(self) -> BucketStats:
        """The counts so far, as a record."""
        stats = BucketStats(
            self.name, str(self.rule), self.budget, **self.counts, tpm=self.rule.tpm,
            rpm=self.rule.rpm, server_tpm=stated(self.learned, "tokens"),
            server_rpm=stated(self.learned, "requests"),
        )
        if not self.token_bucket:
            return stats
        dims = {k: DimensionStats(*v) for k, v in self.dimensions.items()}
        return replace(stats, admission="token_bucket", dimensions=dims)


class Buckets:
    """The buckets of one limiter: which one a (vendor, model) call spends from, and its counts."""

    def __init__(
        self,
        rules: Sequence[LimitRule],
        limits_for: Callable[[LimitRule, str, Mapping[str, Mapping[str, int]]], Limits],
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
        name = rule.bucket_name(vendor, model)
        with self._lock:
            self._names[key] = name
            if name not in self._buckets:
                self._buckets[name] = Bucket(name, rule, self._limits_for(rule, vendor, {}))
        return name

    def learned(self, name: str, record: Mapping[str, Mapping[str, int]], now: float) -> bool:
        """Take in a bucket's stated limits (read at `now`); True when its limits changed."""
        bucket = self._buckets[name]
        with self._lock:
            bucket.refreshed = now
            if record == bucket.learned:
                return False
            bucket.learned = {m: dict(f) for m, f in record.items()}
            vendor = name.split(":", 1)[0]
            limits = self._limits_for(bucket.rule, vendor, bucket.learned)
            changed = limits != bucket.limits
            bucket.limits = limits
            return changed

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
