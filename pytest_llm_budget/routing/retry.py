"""What happens after a 429, decided in one place (`after_429`), and the final 429 for app clients.

429 policy (documented once, here):
- delay = the provider's hint (`retry-after-ms`, `retry-after` seconds or HTTP date,
  `x-ratelimit-reset-*`, Gemini `RetryInfo`, the message's "try again in"), plus the limiter's
  margin; without a hint, `min(backoff_max, backoff_base ** n) + jitter` (n = 1, 2, ...; up
  to 10% jitter; a base <= 1 is used as a constant delay).
- a hint is honoured even above `backoff_max` (retrying earlier is a certain 429), but a hint
  that would push the call's total wait past `max_wait` fails fast with `RateLimitExhausted`.
- each 429 calls `reservation.rate_limited(delay)`: penalty tokens and a pause of the whole
  bucket, so the retry (a fresh reservation, timed from when it leaves) waits out the pause.
- at most `retries` retries; `insufficient_quota` / per-day quotas, spend caps (Anthropic
  `enforced_spend_limit_reached`: `SpendCapReached`) and "Request too large" are never retried;
  nor a 429 whose own retry delay is longer than `max_wait` (a quota no retry inside the run can
  outlast): `QuotaExhausted`, naming the quota, at once.
- an overloaded provider (Anthropic 529) is retried the same way (its `retry-after`, else the
  backoff) but never pauses or charges the bucket (it says nothing about the bucket); it counts
  in the call's `overloaded`, and ends in `ProviderOverloaded` when the retries run out.
- errors: clients the plugin builds (`raise_errors=True`) raise the structured error
  (openai 3.x and google-genai let non-httpx exceptions through unchanged, with no SDK retry);
  clients the code under test builds get the provider's final 429 (or 529) back, marked
  `x-should-retry: false` and `x-llm-budget-error: <code>` with the code prefixed to the
  error message, so their SDK raises its own error at once; the structured error is also
  remembered for the running test (`errors_for`) and shown in its report.
- SDK retries (`x-stainless-retry-count` > 0, after a 5xx or a dropped connection) are
  separate HTTP exchanges and get separate records; the plugin's own retries are folded into
  one record (`attempts`).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_llm_budget.errors import (
    CostCapExceeded,
    LLMBudgetError,
    ProviderOverloaded,
    QuotaExhausted,
    RateLimitExhausted,
    RequestTooLarge,
    SpendCapReached,
)

if TYPE_CHECKING:
    from pytest_llm_budget.providers.base import Rejection
    from pytest_llm_budget.session import BudgetSession

_DROPPED_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})
STATUS_OF = {
    RateLimitExhausted.code: "rate_limited",
    QuotaExhausted.code: "quota",
    SpendCapReached.code: "spend_cap",
    ProviderOverloaded.code: "overloaded",
    RequestTooLarge.code: "too_large",
    CostCapExceeded.code: "cost_cap",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait after a 429 and when to give up (see the module docstring)."""

    retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 30.0
    max_wait: float = 600.0
    margin: float = 0.05

    def delay(self, hint: float | None, retry: int, rng: random.Random) -> float:
        """Seconds before retry number `retry` (0-based): the hint plus margin, else backoff."""
        if hint is not None:
            return hint + self.margin
        base = self.backoff_base
        backoff = min(self.backoff_max, base ** (retry + 1) if base > 1 else base)
        return backoff + rng.uniform(0, 0.1 * backoff)


@dataclass(frozen=True)
class Retry:
    """Retry the call after `after_s` seconds (the bucket is paused that long)."""

    after_s: float


def after_429(
    rejection: Rejection,
    attempts: int,
    waited_s: float,
    policy: RetryPolicy,
    rng: random.Random,
    *,
    vendor: str,
    model: str,
) -> Retry | LLMBudgetError:
    """What follows the 429 that ended attempt number `attempts`: a retry, or the error."""
    from pytest_llm_budget.providers.base import RejectionKind

    limit = f"limit {rejection.limit}" if rejection.limit is not None else "limit unknown"
    where = f"{vendor} model {model}"
    provider_says = f"provider: {rejection.message}"
    facts: dict[str, Any] = {
        "vendor": vendor, "model": model, "limit": rejection.limit, "attempts": attempts,
        "waited_s": waited_s, "quota": rejection.quota, "per_day": rejection.per_day,
    }
    if rejection.kind is RejectionKind.SPEND_CAP:
        return SpendCapReached(
            f"{where}: spend cap reached, not retried after {attempts} attempt(s), "
            f"{waited_s:.1f}s waited; {provider_says}",
            **facts,
        )
    quota = f"quota {rejection.quota}, " if rejection.quota else ""
    if rejection.kind is RejectionKind.QUOTA:
        return QuotaExhausted(
            f"{where}: quota exhausted ({quota}{limit}), not retried after {attempts} "
            f"attempt(s), {waited_s:.1f}s waited; {provider_says}",
            **facts,
        )
    hint = rejection.retry_after_s
    if rejection.kind is RejectionKind.RATE_LIMIT and hint is not None and hint > policy.max_wait:
        return QuotaExhausted(
            f"{where}: quota exhausted ({quota}{limit}): the provider asks to retry in "
            f"{hint:.0f}s, longer than --llm-max-wait={policy.max_wait:g}s allows; not retried "
            f"after {attempts} attempt(s), {waited_s:.1f}s waited; {provider_says}",
            **facts,
        )
    if rejection.kind is RejectionKind.TOO_LARGE:
        return RequestTooLarge(
            f"{where}: request too large ({limit}, requested {rejection.requested}), not "
            f"retried after {attempts} attempt(s), {waited_s:.1f}s waited; {provider_says}",
            **facts,
        )
    delay = policy.delay(rejection.retry_after_s, attempts - 1, rng)
    exhausted = attempts > policy.retries
    if not exhausted and waited_s + delay <= policy.max_wait:
        return Retry(delay)
    why = (
        f"retries exhausted ({policy.retries} allowed)"
        if exhausted
        else f"the next wait of {delay:.1f}s would exceed --llm-max-wait={policy.max_wait:g}s"
    )
    if rejection.kind is RejectionKind.OVERLOADED:
        return ProviderOverloaded(
            f"{where}: still overloaded (529) after {attempts} attempt(s) and {waited_s:.1f}s "
            f"waited: {why}; {provider_says}",
            **facts,
        )
    return RateLimitExhausted(
        f"{where}: still rate limited (429, {limit}) after {attempts} attempt(s) "
        f"and {waited_s:.1f}s waited: {why}; {provider_says}",
        **facts,
    )


_PASSABLE: dict[tuple[type, tuple[type, ...]], type] = {}
_E = TypeVar("_E", bound=Exception)


def passable(err: _E) -> _E:
    """The error as every registered provider's SDK error base too (`Provider.sdk_errors`), so
    an SDK that wraps other exceptions of its transport (openai < 3) lets it through."""
    from pytest_llm_budget.providers.registry import providers

    bases = tuple(
        dict.fromkeys(b for p in providers() for b in p.sdk_errors() if not isinstance(err, b))
    )
    if not bases:
        return err
    cls = type(err)
    key = (cls, bases)
    if key not in _PASSABLE:
        _PASSABLE[key] = type(cls.__name__, (cls, *bases), {"__module__": cls.__module__})
    err.__class__ = _PASSABLE[key]
    return err


def final_429(request: Any, err: LLMBudgetError, rejected: tuple[Any, bytes] | None) -> Any:
    """The answer an app's SDK gets: the provider's 429 / 529 (or a made-up 429), never
    retried."""
    module = sys.modules[type(request).__module__.split(".")[0]]
    headers: list[tuple[bytes, bytes]] = []
    payload: Any = None
    status = 429
    if rejected is not None:
        response, body = rejected
        status = int(response.status_code)
        # Raw bytes, as on the wire: a value that is not ASCII must pass unchanged, not crash.
        headers = [
            (k, v) for k, v in response.headers.raw if k.lower().decode("latin-1")
            not in _DROPPED_HEADERS
        ]
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
    marked = f"[{err.code}] {err.message}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload["error"]["message"] = marked
    else:
        payload = {"error": {"message": marked, "type": "tokens", "code": err.code.lower()}}
    headers = [(k, v) for k, v in headers if k.lower() not in (b"x-should-retry", b"content-type")]
    headers += [
        (b"content-type", b"application/json"),
        (b"x-should-retry", b"false"),
        (b"x-llm-budget-error", err.code.encode("ascii")),
    ]
    return module.Response(
        status, headers=headers, content=json.dumps(payload).encode(), request=request
    )


_ERRORS: weakref.WeakKeyDictionary[BudgetSession, dict[str, list[LLMBudgetError]]] = (
    weakref.WeakKeyDictionary()
)
ERRORS_LOCK = threading.Lock()


def remember(session: BudgetSession, test: str, err: LLMBudgetError) -> None:
    with ERRORS_LOCK:
        _ERRORS.setdefault(session, {}).setdefault(test, []).append(err)


def errors_for(session: BudgetSession, test: str) -> list[LLMBudgetError]:
    """The structured errors that ended calls of a test (for its report and for asserts)."""
    with ERRORS_LOCK:
        return list(_ERRORS.get(session, {}).get(test, []))
