"""Buckets: the rule that names a bucket and sizes its budget, and the figures it keeps.

A call spends from the bucket of the first `LimitRule` matching its (vendor, model) (`rule_for`);
the rule's `budget` is the size of that bucket's window. `Buckets` maps calls to buckets for one
limiter and counts what this process did with each (`BucketStats`).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_llm_budget.limiting.admission import Limits

__all__ = [
    "COUNTERS", "Bucket", "BucketStats", "Buckets", "LimitRule", "budget_of", "rule_for",
    "stated",
]


@dataclass(frozen=True)
class LimitRule:
    """One `vendor:model tpm=N rpm=M` line: calls whose vendor and model match share a budget.

    `tpm=None` is `tpm=auto`: the limit is learned from the provider. `per_model` gives each
    model its own bucket (the fallback rule under auto: providers limit each model).
    """

    vendor: str = "*"
    model: str = "*"
    tpm: int | None = 30000
    rpm: int | None = None
    per_model: bool = False

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
        """Tokens this rule's bucket admits per window: `tpm x (1 - headroom)` (None: auto)."""
        return None if self.tpm is None else budget_of(self.tpm, headroom)

    def __str__(self) -> str:
        rpm = f" rpm={self.rpm}" if self.rpm is not None else ""
        tpm = "auto" if self.tpm is None else self.tpm
        return f"{self.vendor}:{self.model} tpm={tpm}{rpm}"


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
class BucketStats:
    """What one bucket did this session, as this process saw it.

    `budget` is None while the bucket's limit is not known (`--llm-tpm auto`); `tpm` / `rpm`
    are the rule's (configured) figures, `server_tpm` / `server_rpm` what the server stated.
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
    tpm: int | None = None
    rpm: int | None = None
    server_tpm: int | None = None
    server_rpm: int | None = None

    def merged(self, other: BucketStats) -> BucketStats:
        """Add another process's figures for the same bucket (the lowest limits known)."""
        summed = replace(self, **{f: getattr(self, f) + getattr(other, f) for f in COUNTERS})
        return replace(
            summed,
            budget=_lowest(self.budget, other.budget),
            server_tpm=_lowest(self.server_tpm, other.server_tpm),
            server_rpm=_lowest(self.server_rpm, other.server_rpm),
        )


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

    __slots__ = ("counts", "learned", "limits", "name", "refreshed", "rule")

    def __init__(self, name: str, rule: LimitRule, limits: Limits) -> None:
        self.name = name
        self.rule = rule
        self.limits = limits
        self.learned: dict[str, dict[str, int]] = {}
        self.refreshed = float("-inf")
        #: COUNTERS -> running total (int; `waited_s` a float), frozen into BucketStats on read.
        self.counts: dict[str, Any] = dict.fromkeys(COUNTERS, 0)

    @property
    def budget(self) -> int | None:
        """Tokens admitted per window; None while no limit is known (`tpm=auto`)."""
        if self.rule.tpm is None and stated(self.learned, "tokens") is None:
            return None
        return self.limits.tokens

    def stats(self) -> BucketStats:
        """The counts so far, as a record."""
        return BucketStats(
            self.name, str(self.rule), self.budget, **self.counts, tpm=self.rule.tpm,
            rpm=self.rule.rpm, server_tpm=stated(self.learned, "tokens"),
            server_rpm=stated(self.learned, "requests"),
        )


class Buckets:
    """The buckets of one limiter: which one a (vendor, model) call spends from, and its counts."""

    def __init__(
        self,
        rules: Sequence[LimitRule],
        limits_for: Callable[[LimitRule, Mapping[str, Mapping[str, int]]], Limits],
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
                self._buckets[name] = Bucket(name, rule, self._limits_for(rule, {}))
        return name

    def learned(self, name: str, record: Mapping[str, Mapping[str, int]], now: float) -> bool:
        """Take in a bucket's stated limits (read at `now`); True when its limits changed."""
        bucket = self._buckets[name]
        with self._lock:
            bucket.refreshed = now
            if record == bucket.learned:
                return False
            bucket.learned = {m: dict(f) for m, f in record.items()}
            limits = self._limits_for(bucket.rule, bucket.learned)
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

    def stats(self) -> list[BucketStats]:
        """Every bucket's counts, in bucket-name order."""
        with self._lock:
            return [self._buckets[k].stats() for k in sorted(self._buckets)]
