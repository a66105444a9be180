"""Route one LLM HTTP request through the budget: estimate -> reserve -> send -> settle -> retry.

Only requests that really leave the process are paced. The router does not reserve before it
sends: it hangs a `Gate` on the attempt, and the connection pool below the transport (httpcore /
httpcore2, patched by `intercept.py`) pays it, estimate included, when the request reaches it. A
mock above the pool (respx, pytest-httpx, vcrpy, a MockTransport, ...) answers without paying;
such an answer passes back unchanged: no wait, no record, no retry, no rewrite. A request that
fails to connect gets its charge back at once. Transports that are not pool-backed (`wrap()` of
an aiohttp transport, say) pay before sending.

The `Router` is library-agnostic: it duck-types `httpx2` and legacy `httpx` requests and
responses (same API) and imports neither, so the plugin can import this module cheaply.
`BudgetTransport` / `AsyncBudgetTransport` wrap any inner transport for the clients the plugin
builds; `intercept.py` calls the same `Router` from the patched `HTTPTransport` classes.

429 policy (documented once, here):
- delay = the provider's hint (`retry-after-ms`, `retry-after` seconds or HTTP date,
  `x-ratelimit-reset-*`, Gemini `RetryInfo`, the message's "try again in"), plus the limiter's
  margin; without a hint, `min(backoff_max, backoff_base ** n) + jitter` (n = 1, 2, ...; up
  to 10% jitter; a base <= 1 is used as a constant delay).
- a hint is honoured even above `backoff_max` (retrying earlier is a certain 429), but a hint
  that would push the call's total wait past `max_wait` fails fast with `RateLimitExhausted`.
- each 429 calls `reservation.rate_limited(delay)`: penalty tokens and a pause of the whole
  bucket, so the retry (a fresh reservation, timed from when it leaves) waits out the pause.
- at most `retries` retries; `insufficient_quota` / per-day quotas and "Request too large"
  are never retried.
- errors: clients the plugin builds (`raise_errors=True`) raise the structured error
  (openai 3.x and google-genai let non-httpx exceptions through unchanged, with no SDK retry);
  clients the code under test builds get the provider's final 429 back, marked
  `x-should-retry: false` and `x-llm-budget-error: <code>` with the code prefixed to the
  error message, so their SDK raises its own error at once; the structured error is also
  remembered for the running test (`errors_for`) and shown in its report.
- SDK retries (`x-stainless-retry-count` > 0, after a 5xx or a dropped connection) are
  separate HTTP exchanges and get separate records; the plugin's own retries are folded into
  one record (`attempts`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import random
import sys
import threading
import time
import warnings
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailable,
    CostCapExceeded,
    LLMBudgetError,
    QuotaExhausted,
    RateLimitExhausted,
    RequestTooLarge,
)
from .records import CallRecord

if TYPE_CHECKING:
    from .cost import CostHold
    from .limiter import Reservation
    from .providers import Estimate, Provider, SSEUsageParser, Usage
    from .session import BudgetSession
    from .tokens import EstimatePolicy, TokenCounter

__all__ = [
    "REPLAY_CHECKS",
    "AsyncBudgetTransport",
    "BudgetTransport",
    "Gate",
    "RetryPolicy",
    "Router",
    "errors_for",
    "in_routed_send",
    "is_pooled",
    "pending_gate",
    "router_for",
]

#: Predicates `(request) -> bool` saying a request will be answered from a cassette: such
#: requests skip the budget entirely (for the cassette support to register).
REPLAY_CHECKS: list[Callable[[Any], bool]] = []

_IN_SEND: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_budget_in_send", default=False)
_GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("llm_budget_gate", default=None)
_MAX_JSON_BYTES = 16 * 1024 * 1024
_DROPPED_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding"})
_STATUS_OF = {
    RateLimitExhausted.code: "rate_limited",
    QuotaExhausted.code: "quota",
    RequestTooLarge.code: "too_large",
    CostCapExceeded.code: "cost_cap",
}


def in_routed_send() -> bool:
    """True inside the send of a routed request (the class patch then passes it straight on)."""
    return _IN_SEND.get()


def pending_gate() -> Gate | None:
    """The unpaid gate of the routed request now entering a connection pool, if any."""
    gate = _GATE.get()
    return None if gate is None or gate.taken else gate


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


@dataclass
class _Call:
    """One logical call's state across its attempts."""

    provider: Provider
    vendor: str
    path: str
    body: bytes
    test: str
    grounded: bool
    stream_usage_expected: bool
    model: str = "*"
    charge: int = 0
    estimate: Estimate | None = None
    cost: CostHold | None = None
    t: float = field(default_factory=time.time)
    attempts: int = 0
    waited_s: float = 0.0
    rate_limit_events: int = 0


class Gate:
    """The admission one attempt owes the budget, paid where the request really leaves."""

    def __init__(self, router: Router, call: _Call) -> None:
        self.router = router
        self.call = call
        self.taken = False
        self.reservation: Reservation | None = None
        self.error: LLMBudgetError | None = None

    def pay(self) -> None:
        """Estimate and reserve (blocking); a budget error is kept for the router, then raised."""
        self.taken = True
        try:
            self.reservation = self.router._reserve(self.call)
        except LLMBudgetError as err:
            self.error = err
            raise
        except BackendUnavailable:
            self.router._record(self.call, None, "backend_error", malformed=False)
            raise

    async def apay(self) -> None:
        """`pay` for event loops."""
        self.taken = True
        try:
            self.reservation = await self.router._areserve(self.call)
        except LLMBudgetError as err:
            self.error = err
            raise
        except BackendUnavailable:
            self.router._record(self.call, None, "backend_error", malformed=False)
            raise

    def unsent(self) -> None:
        """The request never reached the provider (no connection): give the whole charge back."""
        if self.reservation is not None:
            self.reservation.cancel()
            self.reservation = None
        self.router._release_cost(self.call)


class Router:
    """Gate -> send -> settle -> retry for one session; thread-safe, one per (session, mode)."""

    def __init__(
        self,
        session: BudgetSession,
        *,
        raise_errors: bool,
        counter: TokenCounter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        from .tokens import EstimatePolicy, default_counter

        s = session.settings
        self.session = session
        self.raise_errors = raise_errors
        self.counter = counter or default_counter()
        self.policy: EstimatePolicy = EstimatePolicy(
            s.safety_margin, s.grounded_overhead, s.est_tokens
        )
        self.retry = RetryPolicy(
            s.retries, s.backoff_base, s.backoff_max, s.max_wait, session.limiter.margin
        )
        self.rng = rng or random.Random()

    # -- sync ----------------------------------------------------------------------------------
    def handle(self, request: Any, send: Callable[[Any], Any], *, pooled: bool = True) -> Any:
        """Send `request` through the budget; `send` is the inner transport's handle_request.

        `pooled`: the inner transport sends through an httpcore pool, which pays the gate (and a
        mock above the pool answers without paying); else the gate is paid before sending.
        """
        provider = self._provider(request)
        if provider is None:
            return send(request)
        if not hasattr(request, "_content"):
            with contextlib.suppress(Exception):  # a body we cannot read is estimated as empty
                request.read()
        call = self._begin(request, provider)
        while True:
            gate = Gate(self, call)
            if not pooled:
                with contextlib.suppress(LLMBudgetError):
                    gate.pay()
                if gate.error is not None:
                    return self._fail(call, request, gate.error, None)
            tokens = (_IN_SEND.set(True), _GATE.set(gate))
            try:
                response = send(request)
            except LLMBudgetError as err:
                if err is not gate.error:
                    raise
                return self._fail(call, request, err, None)
            except BaseException:
                self._abort(call, gate)
                raise
            finally:
                _GATE.reset(tokens[1])
                _IN_SEND.reset(tokens[0])
            reservation = gate.reservation
            if reservation is None:  # answered above the network: a mock or a cassette
                return response
            if response.status_code != 429:
                return self._deliver(call, reservation, response)
            try:
                body = response.read()
            finally:
                response.close()
            outcome = self._rejected(call, reservation, response, body)
            if isinstance(outcome, LLMBudgetError):
                return self._fail(call, request, outcome, (response, body))

    # -- async ---------------------------------------------------------------------------------
    async def ahandle(
        self, request: Any, send: Callable[[Any], Awaitable[Any]], *, pooled: bool = True
    ) -> Any:
        """`handle` for async transports: waits with asyncio, never blocking the loop."""
        provider = self._provider(request)
        if provider is None:
            return await send(request)
        if not hasattr(request, "_content"):
            with contextlib.suppress(Exception):
                await request.aread()
        call = self._begin(request, provider)
        while True:
            gate = Gate(self, call)
            if not pooled:
                with contextlib.suppress(LLMBudgetError):
                    await gate.apay()
                if gate.error is not None:
                    return self._fail(call, request, gate.error, None)
            tokens = (_IN_SEND.set(True), _GATE.set(gate))
            try:
                response = await send(request)
            except LLMBudgetError as err:
                if err is not gate.error:
                    raise
                return self._fail(call, request, err, None)
            except BaseException:
                self._abort(call, gate)
                raise
            finally:
                _GATE.reset(tokens[1])
                _IN_SEND.reset(tokens[0])
            reservation = gate.reservation
            if reservation is None:
                return response
            if response.status_code != 429:
                return self._deliver(call, reservation, response, is_async=True)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
            outcome = self._rejected(call, reservation, response, body)
            if isinstance(outcome, LLMBudgetError):
                return self._fail(call, request, outcome, (response, body))

    # -- admission -----------------------------------------------------------------------------
    def _estimate(self, call: _Call) -> Estimate:
        """Estimate the call's charge once, on its first admission (mocked calls never pay it)."""
        if call.estimate is not None:
            return call.estimate
        estimate = call.provider.estimate(
            call.path, call.body, self.counter, self.policy, grounded=call.grounded
        )
        call.model = estimate.model
        call.charge = max(1, call.provider.charge_estimate(estimate))
        call.estimate = estimate
        return estimate

    def _reserve(self, call: _Call) -> Reservation:
        estimate = self._estimate(call)
        call.cost = self.session.costs.hold(estimate, call.vendor, call.test)
        limiter = self.session.limiter
        reservation = limiter.reserve(
            call.charge, vendor=call.vendor, model=call.model, uncertain=estimate.input_tokens
        )
        self._admitted(call, reservation)
        return reservation

    async def _areserve(self, call: _Call) -> Reservation:
        estimate = self._estimate(call)
        call.cost = self.session.costs.hold(estimate, call.vendor, call.test)
        reservation = await self.session.limiter.areserve(
            call.charge, vendor=call.vendor, model=call.model, uncertain=estimate.input_tokens
        )
        self._admitted(call, reservation)
        return reservation

    @staticmethod
    def _admitted(call: _Call, reservation: Reservation) -> None:
        call.waited_s += reservation.waited_s
        call.attempts += 1

    # -- steps ---------------------------------------------------------------------------------
    def _provider(self, request: Any) -> Provider | None:
        """The provider of an LLM request; None for anything else (or one a cassette answers)."""
        from .providers import provider_for

        url = request.url
        provider = provider_for(f"{url.host}:{url.port}" if url.port else url.host, url.path)
        if provider is None or any(check(request) for check in REPLAY_CHECKS):
            return None
        return provider

    def _begin(self, request: Any, provider: Provider) -> _Call:
        """Open an LLM request's call state (its estimate waits until it is admitted)."""
        url = request.url
        body = getattr(request, "_content", None) or b""
        test = self.session.test
        return _Call(
            provider=provider,
            vendor=provider.vendor,
            path=url.path,
            body=bytes(body),
            test=test.nodeid,
            grounded=test.grounded,
            stream_usage_expected=_stream_usage_expected(url.path, body),
        )

    def _abort(self, call: _Call, gate: Gate) -> None:
        """The send failed after admission (timeout, dropped, cancel): keep the charge, record."""
        if gate.reservation is None:  # never admitted, or it never reached the provider
            self._release_cost(call)
            return
        gate.reservation.release()
        cost = self.session.costs.settle(call.cost, None) if call.cost else None
        self._record(call, None, "error", malformed=False, cost_usd=cost)

    def _release_cost(self, call: _Call) -> None:
        """The attempt was not billed (refused, or never sent): its cost hold is dropped."""
        if call.cost is not None:
            self.session.costs.release(call.cost)

    def _rejected(
        self, call: _Call, reservation: Reservation, response: Any, body: bytes
    ) -> LLMBudgetError | None:
        """A 429: count it, pause the bucket; None to retry, or the error that ends the call."""
        from .providers import RejectionKind

        rejection = call.provider.classify(429, response.headers, body, time.time())
        self._release_cost(call)
        call.rate_limit_events += 1
        limit = f"limit {rejection.limit}" if rejection.limit is not None else "limit unknown"
        where = f"{call.vendor} model {call.model}"
        provider_says = f"provider: {rejection.message}"
        if rejection.kind is RejectionKind.QUOTA:
            reservation.rate_limited(None)
            reservation.release()
            return QuotaExhausted(
                f"{where}: quota exhausted ({limit}), not retried after {call.attempts} "
                f"attempt(s), {call.waited_s:.1f}s waited; {provider_says}",
                vendor=call.vendor,
                model=call.model,
                limit=rejection.limit,
                attempts=call.attempts,
                waited_s=call.waited_s,
            )
        if rejection.kind is RejectionKind.TOO_LARGE:
            reservation.rate_limited(None)
            reservation.release()
            return RequestTooLarge(
                f"{where}: request too large ({limit}, requested {rejection.requested}), not "
                f"retried after {call.attempts} attempt(s), {call.waited_s:.1f}s waited; "
                f"{provider_says}",
                vendor=call.vendor,
                model=call.model,
                limit=rejection.limit,
                attempts=call.attempts,
                waited_s=call.waited_s,
            )
        retry = call.attempts - 1
        delay = self.retry.delay(rejection.retry_after_s, retry, self.rng)
        exhausted = call.attempts > self.retry.retries
        too_long = call.waited_s + delay > self.retry.max_wait
        reservation.rate_limited(None if exhausted or too_long else delay)
        reservation.release()
        if exhausted or too_long:
            why = (
                f"retries exhausted ({self.retry.retries} allowed)"
                if exhausted
                else f"the next wait of {delay:.1f}s would exceed --llm-max-wait="
                f"{self.retry.max_wait:g}s"
            )
            return RateLimitExhausted(
                f"{where}: still rate limited (429, {limit}) after {call.attempts} attempt(s) "
                f"and {call.waited_s:.1f}s waited: {why}; {provider_says}",
                vendor=call.vendor,
                model=call.model,
                limit=rejection.limit,
                attempts=call.attempts,
                waited_s=call.waited_s,
            )
        return None

    def _fail(
        self,
        call: _Call,
        request: Any,
        err: LLMBudgetError,
        rejected: tuple[Any, bytes] | None,
    ) -> Any:
        """End a call with a structured error: raise it, or answer an app's client with a 429."""
        status = _STATUS_OF.get(err.code, "error")
        self._release_cost(call)
        self._record(call, None, status, malformed=False, error_code=err.code)
        _remember(self.session, call.test, err)
        if self.raise_errors:
            raise _passable(err)
        return _final_429(request, err, rejected)

    def _deliver(
        self, call: _Call, reservation: Reservation, response: Any, *, is_async: bool = False
    ) -> Any:
        """Pass a non-429 answer on; a 2xx one is metered and settled when its body ends."""
        status = int(response.status_code)
        if not 200 <= status < 300:
            lost = _backend_lost(reservation.release)
            lost = _backend_lost(lambda: self._release_cost(call)) or lost
            self._record(call, None, f"http_{status}", malformed=False, error_code=lost)
            return response
        _backend_lost(lambda: self._calibrate(call, response.headers, reservation))
        sink = _UsageSink(self, call, reservation, response.headers)
        sync_cls, async_cls = _meter_types(type(response).__module__.split(".")[0])
        # A vcr-recorded response carries an httpx ByteStream, which is both sync and async:
        # the caller (handle / ahandle) decides, not the stream's shape.
        if is_async:
            response.stream = async_cls(response.stream, sink)
        else:
            response.stream = sync_cls(response.stream, sink)
        return response

    def _calibrate(
        self, call: _Call, headers: Any, reservation: Reservation | None = None
    ) -> None:
        """Learn from `x-ratelimit-*-tokens`: a gap is charged, the estimate factor corrected."""
        from .providers.base import as_int
        from .providers.retry_hints import parse_go_duration

        limit = as_int(headers.get("x-ratelimit-limit-tokens"))
        remaining = call.provider.remaining_tokens(headers)
        if limit is not None and remaining is not None:
            if reservation is not None:
                reset = parse_go_duration(str(headers.get("x-ratelimit-reset-tokens", "")))
                reservation.observe(limit, remaining, reset)
            else:
                self.session.limiter.calibrate(call.vendor, call.model, limit, remaining)

    def _record(
        self,
        call: _Call,
        usage: Usage | None,
        status: str,
        *,
        malformed: bool,
        error_code: str | None = None,
        cost_usd: float | None = 0.0,
    ) -> None:
        self.session.record(
            CallRecord(
                t=call.t,
                test=call.test,
                vendor=call.vendor,
                model=call.model,
                estimated=call.charge,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                status=status,
                attempts=call.attempts,
                waited_s=round(call.waited_s, 3),
                worker=self.session.worker,
                rate_limit_events=call.rate_limit_events,
                malformed=malformed,
                error_code=error_code,
                cached_tokens=usage.cached_tokens if usage else 0,
                reasoning_tokens=usage.reasoning_tokens if usage else 0,
                service_tier=usage.service_tier if usage else None,
                cost_usd=cost_usd,
            )
        )


class _UsageSink:
    """Receives a 2xx body's bytes as the caller reads them; settles once when it ends."""

    def __init__(
        self, router: Router, call: _Call, reservation: Reservation, headers: Any
    ) -> None:
        self.router = router
        self.call = call
        self.reservation = reservation
        content_type = str(headers.get("content-type", "")).lower()
        self.sse: SSEUsageParser | None = (
            call.provider.sse_usage_parser() if "event-stream" in content_type else None
        )
        self.body = bytearray()
        self.decoder = _decoder(str(headers.get("content-encoding", "")).lower())
        self.undecodable = False
        self._lock = threading.Lock()
        self._done = False

    def feed(self, chunk: bytes) -> None:
        """Look at a chunk (never keeps SSE bytes beyond the current line)."""
        if self.decoder is not None:
            try:
                chunk = self.decoder.decompress(chunk)
            except zlib.error:
                self.undecodable = True
                return
        if self.sse is not None:
            self.sse.feed(chunk)
        elif len(self.body) + len(chunk) <= _MAX_JSON_BYTES:
            self.body += chunk

    def finish(self, failed: bool) -> None:
        """Settle with the reported usage (else the estimate) and record the call, once."""
        with self._lock:
            if self._done:
                return
            self._done = True
        call = self.call
        usage: Usage | None
        if self.sse is not None:
            self.sse.close()
            usage = self.sse.usage
            malformed = self.sse.malformed > 0 or (usage is None and call.stream_usage_expected)
        else:
            usage = None if self.undecodable else call.provider.usage_from_json(bytes(self.body))
            malformed = usage is None and not failed
        charge = call.provider.charge(usage) if usage is not None else call.charge
        # Gemini's TPM counts the reported input tokens, so an over-estimate is refunded; an
        # OpenAI call keeps its admission charge (input estimate + max_tokens) whatever it used.
        refund = usage is not None and call.vendor == "gemini"
        lost = _backend_lost(lambda: self.reservation.settle(charge, refund=refund))
        hold, costs = call.cost, self.router.session.costs
        if hold is not None:
            lost = _backend_lost(lambda: costs.settle(hold, usage)) or lost
        cost = hold.cost_usd if hold is not None else None
        status = "error" if failed else "ok"
        self.router._record(
            call, usage, status, malformed=malformed, error_code=lost, cost_usd=cost
        )


BACKEND_LOST = "LLM_BACKEND_UNAVAILABLE"


def _backend_lost(step: Callable[[], object]) -> str | None:
    """Run a bookkeeping step after the provider answered; a lost backend must not lose the
    answer: warn, and return the code the call's record carries."""
    try:
        step()
    except BackendUnavailable as exc:
        warnings.warn(
            f"pytest-llm-budget: the provider answered but the budget backend was lost before "
            f"the call's usage was recorded in it: {exc}",
            RuntimeWarning,
            stacklevel=2,
        )
        return BACKEND_LOST
    return None


def _meter_stream_iter(inner: Any, sink: _UsageSink) -> Iterator[bytes]:
    try:
        for chunk in inner:
            sink.feed(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException:
        sink.finish(failed=True)
        raise
    sink.finish(failed=False)


async def _meter_stream_aiter(inner: Any, sink: _UsageSink) -> AsyncIterator[bytes]:
    try:
        async for chunk in inner:
            sink.feed(chunk)
            yield chunk
    except GeneratorExit:
        raise
    except BaseException:
        sink.finish(failed=True)
        raise
    sink.finish(failed=False)


class _SyncMeter:
    """Byte stream wrapper: the caller gets every chunk unchanged; the sink sees a copy."""

    def __init__(self, inner: Any, sink: _UsageSink) -> None:
        self._inner = inner
        self._sink = sink

    def __iter__(self) -> Iterator[bytes]:
        return _meter_stream_iter(self._inner, self._sink)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._sink.finish(failed=False)


class _AsyncMeter:
    """Async byte stream wrapper (see `_SyncMeter`)."""

    def __init__(self, inner: Any, sink: _UsageSink) -> None:
        self._inner = inner
        self._sink = sink

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _meter_stream_aiter(self._inner, self._sink)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._sink.finish(failed=False)


_METER_TYPES: dict[str, tuple[type[_SyncMeter], type[_AsyncMeter]]] = {}


def _meter_types(module_name: str) -> tuple[type[_SyncMeter], type[_AsyncMeter]]:
    """Meter classes that are also the library's own byte-stream types (it isinstance-checks)."""
    found = _METER_TYPES.get(module_name)
    if found is None:
        module = sys.modules[module_name]
        found = (
            type("SyncMeter", (_SyncMeter, module.SyncByteStream), {}),
            type("AsyncMeter", (_AsyncMeter, module.AsyncByteStream), {}),
        )
        _METER_TYPES[module_name] = found
    return found


class _Decoder:
    """zlib decoder for gzip/deflate bodies (the meter sees raw bytes, before httpx decodes)."""

    def __init__(self, wbits: int) -> None:
        self._z = zlib.decompressobj(wbits)

    def decompress(self, chunk: bytes) -> bytes:
        return self._z.decompress(chunk)


def _decoder(encoding: str) -> _Decoder | None:
    if encoding in ("gzip", "x-gzip"):
        return _Decoder(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return _Decoder(zlib.MAX_WBITS | 32)
    return None


def _stream_usage_expected(path: str, body: bytes) -> bool:
    """False for an OpenAI chat stream that did not ask for usage (its stream has none)."""
    if not path.rstrip("/").endswith("chat/completions") or b'"stream"' not in body:
        return True
    try:
        data = json.loads(body)
    except ValueError:
        return True
    if not isinstance(data, dict) or not data.get("stream"):
        return True
    options = data.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


_PASSABLE: dict[type, type] = {}


def _passable(err: LLMBudgetError) -> LLMBudgetError:
    """The error as an OpenAIError too: openai < 3 turns any other exception of its transport
    into APIConnectionError (and retries it), which would hide the structured error."""
    openai = sys.modules.get("openai")
    base = getattr(openai, "OpenAIError", None)
    if not isinstance(base, type) or isinstance(err, base):
        return err
    cls = type(err)
    if cls not in _PASSABLE:
        _PASSABLE[cls] = type(cls.__name__, (cls, base), {"__module__": cls.__module__})
    err.__class__ = _PASSABLE[cls]
    return err


def _final_429(request: Any, err: LLMBudgetError, rejected: tuple[Any, bytes] | None) -> Any:
    """The answer an app's SDK gets: the provider's 429 (or a made-up one), never retried."""
    module = sys.modules[type(request).__module__.split(".")[0]]
    headers: list[tuple[str, str]] = []
    payload: Any = None
    if rejected is not None:
        response, body = rejected
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _DROPPED_HEADERS]
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
    marked = f"[{err.code}] {err.message}"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload["error"]["message"] = marked
    else:
        payload = {"error": {"message": marked, "type": "tokens", "code": err.code.lower()}}
    headers = [(k, v) for k, v in headers if k.lower() not in ("x-should-retry", "content-type")]
    headers += [
        ("content-type", "application/json"),
        ("x-should-retry", "false"),
        ("x-llm-budget-error", err.code),
    ]
    return module.Response(
        429, headers=headers, content=json.dumps(payload).encode(), request=request
    )


_ERRORS: weakref.WeakKeyDictionary[BudgetSession, dict[str, list[LLMBudgetError]]] = (
    weakref.WeakKeyDictionary()
)
_ERRORS_LOCK = threading.Lock()


def _remember(session: BudgetSession, test: str, err: LLMBudgetError) -> None:
    with _ERRORS_LOCK:
        _ERRORS.setdefault(session, {}).setdefault(test, []).append(err)


def errors_for(session: BudgetSession, test: str) -> list[LLMBudgetError]:
    """The structured errors that ended calls of a test (for its report and for asserts)."""
    with _ERRORS_LOCK:
        return list(_ERRORS.get(session, {}).get(test, []))


_ROUTERS: weakref.WeakKeyDictionary[BudgetSession, dict[bool, Router]] = (
    weakref.WeakKeyDictionary()
)


def router_for(session: BudgetSession, *, raise_errors: bool) -> Router:
    """The session's router of one error mode (created once)."""
    with _ERRORS_LOCK:
        routers = _ROUTERS.setdefault(session, {})
        if raise_errors not in routers:
            routers[raise_errors] = Router(session, raise_errors=raise_errors)
        return routers[raise_errors]


def is_pooled(transport: Any) -> bool:
    """True for an httpx/httpx2 HTTPTransport over an httpcore pool (the pool pays the gate)."""
    pool = getattr(transport, "_pool", None)
    return pool is not None and type(pool).__module__.split(".")[0] in ("httpcore", "httpcore2")


class BudgetTransport:
    """A sync transport wrapper (httpx2 or httpx): LLM requests go through the session budget."""

    def __init__(self, inner: Any, router: Router) -> None:
        self.inner = inner
        self.router = router
        self.pooled = is_pooled(inner)

    def handle_request(self, request: Any) -> Any:
        return self.router.handle(request, self.inner.handle_request, pooled=self.pooled)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> BudgetTransport:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)


class AsyncBudgetTransport:
    """The async transport wrapper (see `BudgetTransport`)."""

    def __init__(self, inner: Any, router: Router) -> None:
        self.inner = inner
        self.router = router
        self.pooled = is_pooled(inner)

    async def handle_async_request(self, request: Any) -> Any:
        return await self.router.ahandle(
            request, self.inner.handle_async_request, pooled=self.pooled
        )

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> AsyncBudgetTransport:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)
