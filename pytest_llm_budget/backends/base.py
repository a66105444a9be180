"""The interface backends offer the limiter, and a base for backends that hold bucket states.

A bucket's `Limits` say its admission model: `TokenBucketLimits` (token_bucket.py, Anthropic)
keep a `TokenBucketState`, plain `Limits` a sliding `WindowState`.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager

from pytest_llm_budget.backends.ledger import LedgerAnswer, LedgerState
from pytest_llm_budget.limiting.admission import Decision, Limits
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits, TokenBucketState
from pytest_llm_budget.limiting.window import WindowSnapshot, WindowState

__all__ = ["Backend", "LimitRecord", "StateBackend", "budgets_seen", "merge_limits"]

#: What the servers stated for a bucket: model -> {"tokens": N, "requests": M} (either may lack).
LimitRecord = dict[str, dict[str, int]]


def merge_limits(record: LimitRecord, model: str, figures: Mapping[str, int]) -> LimitRecord:
    """The record with `figures` replacing what was stated for `model` in those dimensions."""
    merged = {m: dict(f) for m, f in record.items()}
    merged.setdefault(model, {}).update({k: int(v) for k, v in figures.items()})
    return merged


def limit_record(raw: object) -> LimitRecord:
    """A stored record read back (anything malformed in it dropped)."""
    record: LimitRecord = {}
    if isinstance(raw, Mapping):
        for model, figures in raw.items():
            if isinstance(figures, Mapping):
                record[str(model)] = {
                    str(k): int(v)
                    for k, v in figures.items()
                    if isinstance(v, int) and not isinstance(v, bool) and v > 0
                }
    return record


class Backend(abc.ABC):
    """Where the windows of all buckets live; every method is atomic with respect to the others."""

    #: Shown in the summary and reports ("memory", "file:/tmp/x", "redis://host:6379/0").
    description: str = ""

    @abc.abstractmethod
    def admit(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        estimate: int,
        now: float,
        owner: str,
        uncertain: int = 0,
        output: int = 0,
    ) -> Decision:
        """Admit the ticket's estimate (its `uncertain` part scaled by the bucket's learned
        factor) now, or say how long to wait before asking again (token buckets: `estimate` is
        the input, `output` the declared max_tokens)."""

    @abc.abstractmethod
    def settle(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        estimate: int,
        charge: int,
        now: float,
        refund: bool = False,
        output_tokens: int | None = None,
    ) -> int:
        """Charge what the call really cost and end its lease; returns the change in tokens
        (max(estimate, charge) without `refund`; exactly `charge`, learning from it, with).
        Token buckets: `charge` is the input, `output_tokens` the output produced."""

    @abc.abstractmethod
    def cancel(self, bucket: str, limits: Limits, ticket: str, now: float) -> int:
        """Take back an admitted charge whose request never left; returns the tokens freed."""

    @abc.abstractmethod
    def release(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        """End a lease (or leave the queue) without settling: the estimate stays charged."""

    def restamp(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:  # noqa: B027
        """Date an admitted charge from `now`, when its request left (`WindowState.restamp`);
        a backend that cannot keeps its admission time (its margin is then all it has)."""

    @abc.abstractmethod
    def penalize(
        self, bucket: str, limits: Limits, ticket: str, tokens: int, pause_until: float, now: float
    ) -> None:
        """Charge a 429's penalty now and pause the bucket until `pause_until`."""

    @abc.abstractmethod
    def calibrate(
        self, bucket: str, limits: Limits, ticket: str, server_used: int, now: float
    ) -> int:
        """Raise the bucket's usage to what the server reports; returns tokens added."""

    @abc.abstractmethod
    def observe(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        server_limit: int,
        server_used: int,
        now: float,
        reset_s: float | None = None,
        dimension: str = "tokens",
    ) -> int:
        """Learn from the server's figures after it admitted `ticket` (`reset_s`: its
        `x-ratelimit-reset-tokens`, when sent); returns tokens added. Token buckets take them
        for `dimension` (`tokens`: the input)."""

    @abc.abstractmethod
    def snapshot(self, bucket: str, limits: Limits, now: float) -> WindowSnapshot:
        """The bucket's figures at `now`."""

    # -- limits the servers stated (limiting/limiter.py learns them) ----------------------------
    def learn_limits(
        self, bucket: str, model: str, figures: Mapping[str, int], now: float
    ) -> LimitRecord:
        """Store what the server stated for one model of the bucket; atomic. Returns the
        bucket's record as it was before (so one process, the one that changed it, tells).

        Kept beyond the window (a later run on the same file or Redis starts with them). This
        default keeps them in the process: a backend shared by processes overrides it.
        """
        with _LOCAL_LOCK:
            store = self.__dict__.setdefault("_local_limits", {})
            before: LimitRecord = store.get(bucket, {})
            store[bucket] = merge_limits(before, model, figures)
            return before

    def learned_limits(self, bucket: str, now: float) -> LimitRecord:
        """What the servers stated for the bucket's models so far."""
        with _LOCAL_LOCK:
            record: LimitRecord = self.__dict__.get("_local_limits", {}).get(bucket, {})
            return {m: dict(f) for m, f in record.items()}

    # -- cost ledgers (backends/ledger.py): money, not tokens ------------------------------------
    @abc.abstractmethod
    def cost_hold(
        self, ledger: str, hold_id: str, amount: int, cap: int | None, now: float
    ) -> LedgerAnswer:
        """Hold `amount` nano-dollars unless the ledger would pass `cap`; atomic."""

    @abc.abstractmethod
    def cost_settle(self, ledger: str, hold_id: str, actual: int, now: float) -> int:
        """Replace a hold by what the call cost; returns the ledger's spend; atomic."""

    @abc.abstractmethod
    def cost_state(self, ledger: str, now: float) -> LedgerState:
        """The ledger's spend, holds and refusals now."""

    def announce_budget(self, bucket: str, tokens: int, now: float, ttl: float) -> list[int]:
        """Record that a caller gives `bucket` `tokens` per window; returns the other budgets
        callers sharing this backend gave it within the last `ttl` seconds (none by default:
        a backend of one process)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free connections and files."""


_LOCAL_LOCK = threading.Lock()


class StateBackend(Backend):
    """A backend that loads a bucket's `WindowState`, applies one rule, and stores it back."""

    @abc.abstractmethod
    def _state(self, bucket: str, now: float) -> AbstractContextManager[WindowState]:
        """Hold the bucket's state exclusively for one operation, saving it on exit."""

    @abc.abstractmethod
    def _buckets_state(
        self, bucket: str, now: float
    ) -> AbstractContextManager[TokenBucketState]:
        """Hold a token-bucket bucket's state exclusively for one operation, saving it on exit."""

    @abc.abstractmethod
    def _ledger(self, ledger: str, now: float) -> AbstractContextManager[LedgerState]:
        """Hold a cost ledger exclusively for one operation, saving it on exit."""

    def _before_admit(self, state: WindowState | TokenBucketState, now: float) -> None:
        """Tidy the state under the lock before an admit (the file backend reaps dead leases)."""

    def cost_hold(
        self, ledger: str, hold_id: str, amount: int, cap: int | None, now: float
    ) -> LedgerAnswer:
        with self._ledger(ledger, now) as state:
            return state.hold(hold_id, amount, cap)

    def cost_settle(self, ledger: str, hold_id: str, actual: int, now: float) -> int:
        with self._ledger(ledger, now) as state:
            return state.settle(hold_id, actual)

    def cost_state(self, ledger: str, now: float) -> LedgerState:
        with self._ledger(ledger, now) as state:
            return LedgerState(state.spent, dict(state.holds), state.refused, state.touched)

    def admit(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        estimate: int,
        now: float,
        owner: str,
        uncertain: int = 0,
        output: int = 0,
    ) -> Decision:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                self._before_admit(buckets, now)
                return buckets.admit(limits, ticket, estimate, now, owner, uncertain, output)
        with self._state(bucket, now) as state:
            self._before_admit(state, now)
            return state.admit(limits, ticket, estimate, now, owner, uncertain)

    def settle(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        estimate: int,
        charge: int,
        now: float,
        refund: bool = False,
        output_tokens: int | None = None,
    ) -> int:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                return buckets.settle(limits, ticket, charge, now, refund, output_tokens)
        with self._state(bucket, now) as state:
            return state.settle(limits, ticket, estimate, charge, now, refund)

    def cancel(self, bucket: str, limits: Limits, ticket: str, now: float) -> int:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                return buckets.cancel(limits, ticket, now)
        with self._state(bucket, now) as state:
            return state.cancel(ticket, limits, now)

    def release(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                buckets.release(ticket)
            return
        with self._state(bucket, now) as state:
            state.release(ticket)

    def restamp(self, bucket: str, limits: Limits, ticket: str, now: float) -> None:
        if isinstance(limits, TokenBucketLimits):  # a token bucket keeps no dated charges
            return
        with self._state(bucket, now) as state:
            state.restamp(limits, ticket, now)

    def penalize(
        self, bucket: str, limits: Limits, ticket: str, tokens: int, pause_until: float, now: float
    ) -> None:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                buckets.penalize(limits, tokens, pause_until, now)
            return
        with self._state(bucket, now) as state:
            state.penalize(tokens, pause_until, now, ticket)

    def calibrate(
        self, bucket: str, limits: Limits, ticket: str, server_used: int, now: float
    ) -> int:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                return buckets.observe(limits, 0, server_used, now)
        with self._state(bucket, now) as state:
            return state.calibrate(limits, server_used, now, ticket)

    def observe(
        self,
        bucket: str,
        limits: Limits,
        ticket: str,
        server_limit: int,
        server_used: int,
        now: float,
        reset_s: float | None = None,
        dimension: str = "tokens",
    ) -> int:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                return buckets.observe(limits, server_limit, server_used, now, dimension)
        with self._state(bucket, now) as state:
            return state.observe(limits, ticket, server_limit, server_used, now, reset_s)

    def snapshot(self, bucket: str, limits: Limits, now: float) -> WindowSnapshot:
        if isinstance(limits, TokenBucketLimits):
            with self._buckets_state(bucket, now) as buckets:
                return buckets.snapshot(limits, now)
        with self._state(bucket, now) as state:
            return state.snapshot(limits, now)


def budgets_seen(raw: object, tokens: int, now: float, ttl: float) -> dict[str, float]:
    """A bucket's {budget: last seen} without entries older than `ttl`, ours seen `now`."""
    seen: dict[str, float] = {}
    if isinstance(raw, dict):
        for key, when in raw.items():
            try:
                if now - float(when) <= ttl:
                    seen[str(int(key))] = float(when)
            except (TypeError, ValueError):
                continue
    seen[str(tokens)] = now
    return seen
