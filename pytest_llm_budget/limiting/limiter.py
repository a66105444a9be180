"""The session token limiter: reservations against per-bucket limits (TPM, RPM, cap).

A caller reserves its estimate before a request leaves, and settles the provider-reported usage
when the answer is in. OpenAI and Gemini buckets are sliding windows (`window.py`); Anthropic
buckets are token buckets over requests, input and output tokens (`token_bucket.py`). The state
itself lives in a backend (memory, file, Redis), the bucket each (vendor, model) maps to and its
counts in `buckets.py`; this module owns the waiting and the bookkeeping of waits and 429s.
Clock and sleep are injected so tests run on a fake clock.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_llm_budget.backends.base import Backend
from pytest_llm_budget.errors import BudgetWaitTimeout, RequestTooLarge
from pytest_llm_budget.events import LimitLearned, WaitTick
from pytest_llm_budget.limiting.admission import Admitted, Limits
from pytest_llm_budget.limiting.buckets import (
    UNKNOWN_TOKENS,
    Buckets,
    BucketStats,
    LimitRule,
    budget_of,
    rule_for,
    stated,
)
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits, uses_token_buckets
from pytest_llm_budget.limiting.window import WindowSnapshot

if TYPE_CHECKING:
    from pytest_llm_budget.providers.base import LearnedLimits

__all__ = ["Limiter", "Reservation", "SystemClock"]

#: Tokens a bucket is charged for every 429 it receives (the seed's penalty).
RATE_LIMIT_PENALTY = 1000


class SystemClock:
    """Wall-clock time (shared across processes and hosts) and real sleeps."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds)


@dataclass
class Reservation:
    """Tokens held for one request; settle it with the real usage, or release it.

    `estimate` is what the window was charged: the requested estimate with its uncertain part
    scaled by the bucket's learned factor (`requested` and `uncertain` are as asked). In a
    token-bucket bucket `estimate` is the input charge, `output` the declared output budget
    (max_tokens) and `output_charged` what admission charged the output bucket (0, or max_tokens
    with `charge_max_tokens`); `charges` names every dimension's charge.
    """

    limiter: Limiter
    bucket: str
    ticket: str
    estimate: int
    admitted_at: float
    waited_s: float
    requested: int = -1
    uncertain: int = 0
    output: int = 0
    output_charged: int = 0
    token_bucket: bool = False
    #: When the backend dated the charge (its admission; moved by `sent`).
    stamped_at: float = -1.0
    settled: bool = field(default=False, init=False)
    actual: int | None = field(default=None, init=False)
    actual_output: int | None = field(default=None, init=False)

    @property
    def charges(self) -> dict[str, int]:
        """What admission charged each dimension of the bucket."""
        if self.token_bucket:
            return {
                "requests": 1, "input_tokens": self.estimate, "output_tokens": self.output_charged
            }
        return {"requests": 1, "tokens": self.estimate}

    def settle(
        self, actual_tokens: int, *, refund: bool = False, output_tokens: int | None = None
    ) -> int:
        """Charge what the call cost at the reservation's time; returns the debt it added.

        By default the charge is max(estimate, actual): a provider that charges its estimate at
        admission (OpenAI: input + max_tokens) keeps it whatever the answer used. `refund=True`
        is for providers that count the reported usage itself (Gemini: input tokens): the
        charge becomes exactly `actual`, freeing an over-estimate (returns 0 then, or the debt
        when actual is above the estimate), and the figure teaches the bucket's factor.

        In a token-bucket bucket (Anthropic) `actual_tokens` is the input dimension's figure
        (`input_tokens + cache_creation_input_tokens`) and `output_tokens` the output produced
        (None, unknown: the declared max_tokens is charged); sliding windows ignore it.
        """
        if self.settled:
            return 0
        self.settled = True
        self.actual = int(actual_tokens)
        if self.token_bucket:
            self.actual_output = self.output if output_tokens is None else int(output_tokens)
            return self.limiter._settle_buckets(self, int(actual_tokens), refund, output_tokens)
        return self.limiter._settle(self, int(actual_tokens), refund)

    def observe(
        self,
        server_limit: int,
        server_remaining: int,
        reset_s: float | None = None,
        *,
        dimension: str = "tokens",
    ) -> int:
        """Learn from the server's rate-limit figures sent with this request's answer
        (`x-ratelimit-limit-tokens`, `-remaining-tokens`, `-reset-tokens` in seconds). A
        token-bucket bucket takes them for `dimension` (`tokens` or `input_tokens`,
        `output_tokens`, `requests`) and only raises what it counts as spent."""
        return self.limiter._observe(
            self.bucket, self.ticket, server_limit, server_remaining, reset_s, dimension
        )

    def sent(self) -> None:
        """The request has left (its last byte is written): when that is later than its
        admission by more than half the margin, its charge is dated from now."""
        if not self.settled:
            self.limiter._sent(self)

    def release(self) -> None:
        """Free the concurrency slot without reporting usage (the estimate stays charged)."""
        if self.settled:
            return
        self.settled = True
        self.limiter._release(self)

    def cancel(self) -> None:
        """Give the whole charge back: the request never reached the provider (no connection)."""
        if self.settled:
            return
        self.settled = True
        self.limiter._cancel(self)

    def rate_limited(self, retry_after_s: float | None) -> None:
        """Record a 429 for this call: penalty tokens, and a pause when the server named one."""
        self.limiter._rate_limited(self.bucket, self.ticket, retry_after_s)

    def learn(self, model: str, learned: LearnedLimits | None) -> None:
        """Take in the limits the server stated with this request's answer (or its 429)."""
        if learned is not None:
            self.limiter.learn(self.bucket, model, learned.figures())

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Limiter:
    """Admits requests so that no bucket's window goes over its budget."""

    def __init__(
        self,
        backend: Backend,
        rules: Iterable[LimitRule],
        *,
        headroom: float = 0.15,
        window: float = 60.0,
        max_concurrency: int | None = None,
        max_wait: float = 600.0,
        margin: float | None = None,
        penalty_tokens: int = RATE_LIMIT_PENALTY,
        refresh_every: float | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        asleep: Callable[[float], Awaitable[None]] | None = None,
        owner: str | None = None,
        charge_max_tokens: bool = False,
    ) -> None:
        system = SystemClock()
        self.backend = backend
        self.rules = tuple(rules) or (LimitRule(),)
        self.headroom = headroom
        self.window = window
        self.max_concurrency = max_concurrency
        self.max_wait = max_wait
        # The provider's window starts when the request arrives, a little after we admit it:
        # a burst's thread scheduling and connection set-up can take ~50 ms on a busy host.
        self.margin = min(0.25, max(0.1, window / 100)) if margin is None else margin
        self.penalty_tokens = penalty_tokens
        #: Token buckets: charge max_tokens to the output bucket at admission and settle it to
        #: the output produced (older Anthropic docs), instead of charging only what is produced.
        self.charge_max_tokens = charge_max_tokens
        # How often a bucket reads the limits other processes learned (always, while probing).
        self.refresh_every = min(1.0, window / 10) if refresh_every is None else refresh_every
        self.clock = clock or system.now
        self.sleep = sleep or system.sleep
        self.asleep = asleep or system.asleep
        # A thread of this process that waits for room is woken as soon as another one settles,
        # releases or cancels (a refund, a waiter leaving the queue or a lease ending can free
        # room before the computed time); only with the real sleep, never an injected one.
        self._wakeable = sleep is None
        self._wake = threading.Condition()
        self._freed = 0
        self._sleepers = 0
        self.owner = owner or f"{os.getpid()}"
        self._buckets = Buckets(self.rules, self._limits_for)
        self._ids = itertools.count()
        self._prefix = os.urandom(4).hex()
        #: Called as `listener(bucket, ready_at)` on every deferral, `ready_at` being the clock
        #: time the backend named for the next try (metrics' `next_slot_epoch`); must not block.
        self.deferral_listeners: list[Callable[[str, float], None]] = []
        #: Called with a `WaitTick` on every deferral and when a deferred reservation gets in
        #: (live notices, the `waited` hook); must not block.
        self.wait_listeners: list[Callable[[WaitTick], None]] = []
        #: Called with a `LimitLearned` when a server's figure starts to set a bucket's pace
        #: (by the one process whose answer changed the backend's record); must not block.
        self.limit_listeners: list[Callable[[LimitLearned], None]] = []
        self._who: dict[str, tuple[str, str]] = {}
        #: Called as `listener(bucket, ours, theirs)` once per bucket when other callers of the
        #: shared backend give it other budgets (`theirs`); without listeners, a warning.
        self.budget_listeners: list[Callable[[str, int, list[int]], None]] = []
        self._budget_checked: dict[str, float] = {}
        self._budget_warned: set[str] = set()

    # -- buckets ---------------------------------------------------------------------------
    def bucket_for(self, vendor: str, model: str) -> str:
        """The name of the bucket a (vendor, model) call spends from (on first use, with the
        limits the backend already learned for it)."""
        name = self._buckets.name_for(vendor, model)
        if self._buckets[name].refreshed == float("-inf"):
            self._refresh(name, self.clock())
        return name

    def _limits_for(
        self, rule: LimitRule, vendor: str, learned: Mapping[str, Mapping[str, int]]
    ) -> Limits:
        """The limits of a rule's bucket for `vendor`: the lower of its configured and its
        stated limits (the headroom kept off either token figure), the window and the
        limiter's settings; token buckets (`TokenBucketLimits`) for a token-bucket vendor.

        A `tpm=auto` bucket that knows no limit yet probes: one call at a time.
        """
        token_bucket = uses_token_buckets(vendor)
        tokens_stated = stated(learned, "input_tokens" if token_bucket else "tokens")
        server_rpm = stated(learned, "requests")
        budgets = [b for b in (rule.budget(self.headroom), tokens_stated) if b is not None]
        if tokens_stated is not None:
            budgets[-1] = budget_of(tokens_stated, self.headroom)
        requests = min((r for r in (rule.rpm, server_rpm) if r is not None), default=None)
        concurrency = self.max_concurrency
        if rule.tpm is None and rule.itpm is None and not any(learned.values()):
            concurrency = 1
        if token_bucket:
            output = rule.output_budget(self.headroom)
            output_stated = stated(learned, "output_tokens")
            if output_stated is not None:
                stated_budget = budget_of(output_stated, self.headroom)
                output = stated_budget if output is None else min(output, stated_budget)
            return TokenBucketLimits(
                tokens=min(budgets, default=UNKNOWN_TOKENS),
                window=self.window,
                requests=requests,
                concurrency=concurrency,
                margin=self.margin,
                output=output,
                charge_max_tokens=self.charge_max_tokens,
            )
        return Limits(
            tokens=min(budgets, default=UNKNOWN_TOKENS),
            window=self.window,
            requests=requests,
            concurrency=concurrency,
            margin=self.margin,
        )

    def limits(self, bucket: str) -> Limits:
        """The limits a bucket enforces."""
        return self._buckets[bucket].limits

    def budget(self, bucket: str) -> int | None:
        """Tokens the bucket admits per window; None while its limit is not known (auto)."""
        return self._buckets[bucket].budget

    def known_budget(self, vendor: str, model: str) -> int | None:
        """The budget of a (vendor, model) call's bucket, with what the backend learned so far
        (None: not known yet)."""
        rule = rule_for(self.rules, vendor, model)
        record = self.backend.learned_limits(rule.bucket_name(vendor, model), self.clock())
        limits = self._limits_for(rule, vendor, record)
        return None if limits.tokens == UNKNOWN_TOKENS else limits.tokens

    def probing(self, bucket: str) -> bool:
        """Whether the bucket sends one call at a time until it learns its limit."""
        b = self._buckets[bucket]
        return b.rule.tpm is None and b.rule.itpm is None and not any(b.learned.values())

    # -- learned limits ----------------------------------------------------------------------
    def learn(self, bucket: str, model: str, figures: Mapping[str, int]) -> None:
        """Store what a server stated for a model of the bucket (shared through the backend);
        a figure that now sets the bucket's pace is told to the limit listeners, once."""
        b = self._buckets[bucket]
        known = b.learned.get(model, {})
        if all(known.get(k) == v for k, v in figures.items()):
            return
        now = self.clock()
        before = self.backend.learn_limits(bucket, model, figures, now)
        after = {m: dict(f) for m, f in before.items()}
        after.setdefault(model, {}).update(figures)
        self._buckets.learned(bucket, after, now)
        self._room_freed()
        if self.limit_listeners:
            for event in self._pace_changes(bucket, model, before, after):
                for listener in list(self.limit_listeners):
                    listener(event)

    def _pace_changes(
        self,
        bucket: str,
        model: str,
        before: Mapping[str, Mapping[str, int]],
        after: Mapping[str, Mapping[str, int]],
    ) -> list[LimitLearned]:
        """The dimensions whose stated figure changed and now sets the bucket's pace."""
        rule = self._buckets[bucket].rule
        vendor = bucket.split(":", 1)[0]
        events = []
        for dimension, configured in (("tokens", rule.tpm), ("requests", rule.rpm)):
            server = stated(after, dimension)
            if server is None or server == stated(before, dimension):
                continue
            if configured is None or server < configured:
                events.append(
                    LimitLearned(bucket, vendor, model, dimension, server, configured, server)
                )
        return events

    def _refresh(self, bucket: str, now: float) -> None:
        """Read the limits other processes learned for the bucket, now and then (each try
        while it probes)."""
        if self.probing(bucket) or now - self._buckets[bucket].refreshed >= self.refresh_every:
            self._buckets.learned(bucket, self.backend.learned_limits(bucket, now), now)

    # -- reserving -------------------------------------------------------------------------
    def reserve(
        self,
        estimate: int,
        *,
        vendor: str = "openai",
        model: str = "*",
        uncertain: int = 0,
        output: int = 0,
    ) -> Reservation:
        """Block until `estimate` tokens fit in the window of the call's bucket.

        `uncertain` (default 0: the estimate is charged as it is) names the part of the
        estimate that is a guess (the input tokens); the bucket scales that part by the factor
        it learns from the server's figures (`Reservation.observe`, `settle(refund=True)`).

        In a token-bucket bucket (Anthropic) `estimate` is the input estimate and `output` the
        request's declared output budget (max_tokens): see `token_bucket.py` for when each
        dimension has room. Sliding windows ignore `output` (their estimate holds it already).
        """
        bucket, ticket, start = self._begin(estimate, vendor, model, output)
        if uncertain:
            uncertain = min(max(0, int(uncertain)), int(estimate))
        with self._withdrawn_if_interrupted(bucket, ticket):
            for attempt in itertools.count():
                freed = self._freed
                wait = self._try(
                    bucket, ticket, estimate, uncertain, start, first=attempt == 0, output=output
                )
                if isinstance(wait, Admitted):
                    return self._admitted(bucket, ticket, estimate, uncertain, start, wait, output)
                if self._wakeable:
                    self._nap(wait, freed)
                else:
                    self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def areserve(
        self,
        estimate: int,
        *,
        vendor: str = "openai",
        model: str = "*",
        uncertain: int = 0,
        output: int = 0,
    ) -> Reservation:
        """`reserve` for event loops: waits with asyncio, never blocking the loop."""
        bucket, ticket, start = self._begin(estimate, vendor, model, output)
        if uncertain:
            uncertain = min(max(0, int(uncertain)), int(estimate))
        with self._withdrawn_if_interrupted(bucket, ticket):
            for attempt in itertools.count():
                wait = self._try(
                    bucket, ticket, estimate, uncertain, start, first=attempt == 0, output=output
                )
                if isinstance(wait, Admitted):
                    return self._admitted(bucket, ticket, estimate, uncertain, start, wait, output)
                await self.asleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_budget(self, bucket: str, budget: int | None) -> None:
        """Tell the backend this bucket's configured budget (at most once a window); a caller
        sharing the backend with another budget for it is announced once (two runs, two
        --llm-tpm). Limits learned from the server are shared, not compared; `auto` has none."""
        now = self.clock()
        if budget is None:
            return
        if bucket in self._budget_warned or now < self._budget_checked.get(bucket, -1e300):
            return
        limits = self._buckets[bucket].limits
        self._budget_checked[bucket] = now + limits.window
        try:
            theirs = self.backend.announce_budget(bucket, budget, now, 2 * limits.span + 60)
        except Exception:  # a check must never fail a call (the admission reports a lost backend)
            return
        if not theirs:
            return
        self._budget_warned.add(bucket)
        for listener in list(self.budget_listeners) or [_warn_budget]:
            listener(bucket, budget, theirs)

    @contextlib.contextmanager
    def _withdrawn_if_interrupted(self, bucket: str, ticket: str) -> Iterator[None]:
        """A waiter interrupted (a test timeout's signal, KeyboardInterrupt, task cancellation)
        leaves the queue and gives back anything it was admitted with: its request never left."""
        try:
            yield
        except (BudgetWaitTimeout, RequestTooLarge):
            raise  # the limiter already withdrew the ticket
        except BaseException:
            self._who.pop(ticket, None)
            # a lost backend must not hide the interruption; its waiter then expires there
            with contextlib.suppress(Exception):
                self.backend.cancel(bucket, self._buckets[bucket].limits, ticket, self.clock())
            self._room_freed()
            raise

    def _begin(
        self, estimate: int, vendor: str, model: str, output: int = 0
    ) -> tuple[str, str, float]:
        bucket = self.bucket_for(vendor, model)
        limits = self._buckets[bucket].limits
        if isinstance(limits, TokenBucketLimits):  # budgets of token buckets: not compared
            self._check_buckets(bucket, limits, estimate, output, vendor, model)
        else:
            b = self._buckets[bucket]
            self._check_budget(bucket, b.rule.budget(self.headroom))
            if estimate > limits.tokens:
                server = stated(b.learned, "tokens")
                limit = f"tpm {b.rule.tpm}"
                if server is not None and (b.rule.tpm is None or server < b.rule.tpm):
                    limit = f"the server's limit {server}"
                raise RequestTooLarge(
                    f"{vendor} model {model}: this request needs about {estimate} tokens but the "
                    f"bucket {bucket} admits {limits.tokens} per {limits.window:g}s window "
                    f"({limit} less {self.headroom:.0%} headroom); "
                    "lower max_tokens or raise --llm-tpm",
                    vendor=vendor,
                    model=model,
                    estimate=estimate,
                    limit=limits.tokens,
                )
        ticket = f"{self._prefix}-{next(self._ids)}"
        if self.wait_listeners:
            self._who[ticket] = (vendor, model)
        return bucket, ticket, self.clock()

    def _check_buckets(
        self, bucket: str, limits: TokenBucketLimits, estimate: int, output: int, vendor: str,
        model: str,
    ) -> None:
        """Refuse a request no token bucket of its bucket could ever hold."""
        rule = self._buckets[bucket].rule
        too_large = [
            (estimate, limits.tokens, "input", f"itpm {rule.itpm or rule.tpm}", "the prompt"),
        ]
        if limits.charge_max_tokens and limits.output is not None:
            too_large.append((output, limits.output, "output", f"otpm {rule.otpm}", "max_tokens"))
        for need, cap, what, limit, lower in too_large:
            if need > cap:
                raise RequestTooLarge(
                    f"{vendor} model {model}: this request needs about {need} {what} tokens but "
                    f"the bucket {bucket} admits {cap} per {limits.window:g}s ({limit} less "
                    f"{self.headroom:.0%} headroom); shorten {lower} or raise its rule's limit",
                    vendor=vendor,
                    model=model,
                    estimate=need,
                    limit=cap,
                )

    def _try(
        self, bucket: str, ticket: str, estimate: int, uncertain: int, start: float, *,
        first: bool, output: int = 0,
    ) -> Admitted | float:
        """Ask the backend once; the admission, else the seconds to sleep."""
        now = self.clock()
        self._refresh(bucket, now)
        b = self._buckets[bucket]
        if b.token_bucket:
            decision = self.backend.admit(
                bucket, b.limits, ticket, estimate, now, self.owner, uncertain, output=output
            )
        else:
            decision = self.backend.admit(
                bucket, b.limits, ticket, estimate, now, self.owner, uncertain
            )
        if isinstance(decision, Admitted):
            return decision
        if now + decision.wait - start > self.max_wait:
            self._who.pop(ticket, None)
            self.backend.release(bucket, b.limits, ticket, now)
            self._room_freed()
            raise BudgetWaitTimeout(
                f"bucket {bucket}: admitting {estimate} tokens would take "
                f"{now + decision.wait - start:.1f}s (waiting for {decision.reason}), more than "
                f"--llm-max-wait={self.max_wait:g}s",
                bucket=bucket,
                estimate=estimate,
                wait=decision.wait,
                reason=decision.reason,
            )
        if first:
            self._buckets.count(bucket, deferrals=1)
        for listener in list(self.deferral_listeners):
            listener(bucket, now + decision.wait)
        if self.wait_listeners:
            ready_at = now + decision.wait
            self._tell_wait(bucket, ticket, estimate, start, now, ready_at, decision.reason)
        return decision.wait

    def _admitted(
        self, bucket: str, ticket: str, estimate: int, uncertain: int, start: float,
        admitted: Admitted, output: int = 0,
    ) -> Reservation:
        now = self.clock()
        waited = max(0.0, now - start)
        charge = admitted.charge
        charged = estimate if charge < 0 else charge
        self._buckets.count(bucket, calls=1, estimated=charged, waited_s=waited)
        if self._who:
            self._tell_wait(bucket, ticket, estimate, start, now, now, "", admitted=waited > 0)
        b = self._buckets[bucket]
        if not b.token_bucket:
            return Reservation(
                self, bucket, ticket, charged, now, waited, estimate, uncertain,
                stamped_at=admitted.at,
            )
        limits = b.limits
        output = max(0, int(output))
        out_charged = 0
        if isinstance(limits, TokenBucketLimits) and limits.charge_max_tokens:
            out_charged = output if limits.output is None else min(output, limits.output)
        self._buckets.count_dimensions(
            bucket, (1, charged, out_charged), field=1, fill=admitted.fill
        )
        return Reservation(
            self, bucket, ticket, charged, now, waited, estimate, uncertain, output,
            out_charged, token_bucket=True, stamped_at=admitted.at,
        )

    def _tell_wait(
        self,
        bucket: str,
        ticket: str,
        estimate: int,
        start: float,
        now: float,
        ready_at: float,
        reason: str,
        *,
        admitted: bool | None = None,
    ) -> None:
        """Tell the wait listeners about a deferral (`admitted` None) or the end of a wait."""
        who = self._who.get(ticket) if admitted is None else self._who.pop(ticket, None)
        if who is None or admitted is False:
            return
        tick = WaitTick(
            bucket, ticket, *who, estimate, start, now, ready_at, reason, bool(admitted)
        )
        for listener in list(self.wait_listeners):
            listener(tick)

    def _nap(self, seconds: float, freed: int) -> None:
        """Sleep up to `seconds`, unless room was freed in this process since `freed`."""
        with self._wake:
            if self._freed != freed:
                return
            self._sleepers += 1
            try:
                self._wake.wait(seconds)
            finally:
                self._sleepers -= 1

    def _room_freed(self) -> None:
        """Wake this process's sleeping waiters: they ask the backend again."""
        self._freed += 1
        if self._sleepers:
            with self._wake:
                self._wake.notify_all()

    # -- after the call --------------------------------------------------------------------
    def _settle(self, r: Reservation, actual: int, refund: bool = False) -> int:
        b = self._buckets[r.bucket]
        delta = self.backend.settle(
            r.bucket, b.limits, r.ticket, r.estimate, actual, self.clock(), refund
        )
        if delta > 0:
            self._buckets.count(r.bucket, actual=actual, debt=delta)
        else:
            self._buckets.count(r.bucket, actual=actual, refunded=-delta)
        self._room_freed()
        return max(0, delta)

    def _settle_buckets(
        self, r: Reservation, actual: int, refund: bool, output_tokens: int | None
    ) -> int:
        b = self._buckets[r.bucket]
        delta = self.backend.settle(
            r.bucket, b.limits, r.ticket, r.estimate, actual, self.clock(), refund,
            output_tokens=output_tokens,
        )
        if delta > 0:
            self._buckets.count(r.bucket, actual=actual, debt=delta)
        else:
            self._buckets.count(r.bucket, actual=actual, refunded=-delta)
        produced = r.output if output_tokens is None else int(output_tokens)
        self._buckets.count_dimensions(r.bucket, (1, actual, produced), field=2)
        self._room_freed()
        return max(0, delta)

    def _cancel(self, r: Reservation) -> None:
        b = self._buckets[r.bucket]
        self.backend.cancel(r.bucket, b.limits, r.ticket, self.clock())
        self._buckets.count(r.bucket, calls=-1, estimated=-r.estimate)
        if r.token_bucket:
            self._buckets.count_dimensions(
                r.bucket, (-1, -r.estimate, -r.output_charged), field=1
            )
        self._room_freed()

    def _sent(self, r: Reservation) -> None:
        now = self.clock()
        stamped = r.stamped_at if r.stamped_at >= 0 else r.admitted_at
        if now - stamped > self.margin / 2:
            b = self._buckets[r.bucket]
            self.backend.restamp(r.bucket, b.limits, r.ticket, now)
            r.stamped_at = now

    def _release(self, r: Reservation) -> None:
        b = self._buckets[r.bucket]
        self.backend.release(r.bucket, b.limits, r.ticket, self.clock())
        self._room_freed()

    def _rate_limited(self, bucket: str, ticket: str, retry_after_s: float | None) -> None:
        b = self._buckets[bucket]
        now = self.clock()
        pause_until = now + retry_after_s if retry_after_s else 0.0
        self.backend.penalize(bucket, b.limits, ticket, self.penalty_tokens, pause_until, now)
        self._buckets.count(bucket, rate_limit_events=1)

    def calibrate(self, vendor: str, model: str, server_limit: int, server_remaining: int) -> int:
        """Believe the server's `x-ratelimit-remaining-tokens` when it is lower than ours.

        Not tied to a request, so it teaches nothing but the gap; `Reservation.observe` is the
        form that also learns the factor.
        """
        bucket = self.bucket_for(vendor, model)
        b = self._buckets[bucket]
        server_used = max(0, server_limit - server_remaining)
        return self.backend.calibrate(bucket, b.limits, self._prefix, server_used, self.clock())

    def _observe(
        self,
        bucket: str,
        ticket: str,
        server_limit: int,
        server_remaining: int,
        reset_s: float | None,
        dimension: str = "tokens",
    ) -> int:
        b = self._buckets[bucket]
        server_used = max(0, server_limit - server_remaining)
        if b.token_bucket:
            return self.backend.observe(
                bucket, b.limits, ticket, server_limit, server_used, self.clock(), reset_s,
                dimension=dimension,
            )
        return self.backend.observe(
            bucket, b.limits, ticket, server_limit, server_used, self.clock(), reset_s
        )

    # -- reading ---------------------------------------------------------------------------
    def stats(self) -> list[BucketStats]:
        """Per-bucket figures of this process, in bucket-name order."""
        return self._buckets.stats()

    def window_snapshot(self, bucket: str) -> WindowSnapshot:
        """The bucket's window as the backend holds it now."""
        return self.backend.snapshot(bucket, self._buckets[bucket].limits, self.clock())


def budget_differs_line(bucket: str, ours: int, theirs: list[int]) -> str:
    """The notice that another caller of a shared backend gives a bucket another budget."""
    others = ", ".join(str(t) for t in theirs)
    return (
        f"llm-budget: bucket {bucket} is shared with another run whose budget is {others} "
        f"tokens per window (this run: {ours}); together they overrun the key's limit: give "
        "every run sharing the backend the same --llm-tpm / llm_limits"
    )


def _warn_budget(bucket: str, ours: int, theirs: list[int]) -> None:
    import warnings

    from pytest_llm_budget.errors import LLMBudgetWarning

    warnings.warn(LLMBudgetWarning(budget_differs_line(bucket, ours, theirs)), stacklevel=4)
