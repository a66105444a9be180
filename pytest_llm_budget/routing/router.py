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
`transport.py` wraps inner transports with it for the clients the plugin builds; `intercept.py`
calls the same `Router` from the patched `HTTPTransport` classes.

What happens after a 429 is decided in `retry.py`; the response metering is `metering.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.errors import (
    BackendUnavailable,
    CallTimeout,
    LLMBudgetError,
    RunInterrupted,
)
from pytest_llm_budget.routing.call import Call
from pytest_llm_budget.routing.metering import deliver
from pytest_llm_budget.routing.retry import (
    ERRORS_LOCK,
    STATUS_OF,
    Retry,
    RetryPolicy,
    after_429,
    final_429,
    passable,
    remember,
)
from pytest_llm_budget.routing.steps import LOAD, PAY, READ, SEND, Flow, Steps, ado, do

if TYPE_CHECKING:
    from pytest_llm_budget.limiting.limiter import Reservation
    from pytest_llm_budget.providers.base import Estimate, Provider
    from pytest_llm_budget.session import BudgetSession
    from pytest_llm_budget.tokens.counting import TokenCounter
    from pytest_llm_budget.tokens.policy import EstimatePolicy


_IN_SEND: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_budget_in_send", default=False)
_GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("llm_budget_gate", default=None)

_ROUTERS: weakref.WeakKeyDictionary[BudgetSession, dict[bool, Router]] = (
    weakref.WeakKeyDictionary()
)


def router_for(session: BudgetSession, *, raise_errors: bool) -> Router:
    """The session's router of one error mode (created once)."""
    with ERRORS_LOCK:
        routers = _ROUTERS.setdefault(session, {})
        if raise_errors not in routers:
            routers[raise_errors] = Router(session, raise_errors=raise_errors)
        return routers[raise_errors]


def is_pooled(transport: Any) -> bool:
    """True for an httpx/httpx2 HTTPTransport over an httpcore pool (the pool pays the gate)."""
    pool = getattr(transport, "_pool", None)
    return pool is not None and type(pool).__module__.split(".")[0] in ("httpcore", "httpcore2")


def in_routed_send() -> bool:
    """True inside the send of a routed request (the class patch then passes it straight on)."""
    return _IN_SEND.get()


def pending_gate() -> Gate | None:
    """The unpaid gate of the routed request now entering a connection pool, if any."""
    gate = _GATE.get()
    return None if gate is None or gate.taken else gate


class Gate:
    """The admission one attempt owes the budget, paid where the request really leaves."""

    def __init__(self, router: Router, call: Call) -> None:
        self.router = router
        self.call = call
        self.taken = False
        self.reservation: Reservation | None = None
        self.error: LLMBudgetError | None = None

    def pay(self) -> None:
        """Estimate and reserve (blocking); a budget error is kept for the router, then raised."""
        with self._paying():
            self.reservation = self.router._reserve(self.call)
        self.call.deadline = time.monotonic() + self.router.call_timeout

    async def apay(self) -> None:
        """`pay` for event loops."""
        with self._paying():
            self.reservation = await self.router._areserve(self.call)
        self.call.deadline = time.monotonic() + self.router.call_timeout

    @contextlib.contextmanager
    def _paying(self) -> Iterator[None]:
        self.taken = True
        session = self.router.session
        began = time.monotonic()
        try:
            if session.stopping:
                raise RunInterrupted(
                    f"{self.call.vendor}: the run is being interrupted; this call was not sent",
                    vendor=self.call.vendor,
                )
            yield
            if not self.call.flying:
                self.call.flying = True
                session.call_started(self.call)
        except LLMBudgetError as err:
            self.error = err
            raise
        except BackendUnavailable as err:
            self.call.record(None, "backend_error", malformed=False)
            passable(err)  # an SDK that wraps its transport's errors (openai < 3) lets it by
            raise
        except Exception:
            raise
        except BaseException:
            # Interrupted while waiting (a test timeout's signal, KeyboardInterrupt, a cancelled
            # task): the limiter withdrew the waiter; the call is recorded as never sent.
            self.call.waited_s += time.monotonic() - began
            self.call.release_cost()
            self.call.record(None, "cancelled", malformed=False)
            raise

    def trace(self, request: Any, *, is_async: bool = False) -> None:
        """Have the connection tell the reservation when the request's last byte is written
        (httpcore's `trace` extension; a trace the caller set is still called)."""
        inner = request.extensions.get("trace")

        def sent(name: str) -> None:
            if name.endswith("send_request_body.complete") and self.reservation is not None:
                with contextlib.suppress(BackendUnavailable):  # a refinement, never a failure
                    self.reservation.sent()

        def trace(name: str, info: dict[str, Any]) -> None:
            sent(name)
            if inner is not None:
                inner(name, info)

        async def atrace(name: str, info: dict[str, Any]) -> None:
            sent(name)
            if inner is not None:
                await inner(name, info)

        request.extensions = {**request.extensions, "trace": atrace if is_async else trace}

    def unsent(self) -> None:
        """The request never reached the provider (no connection): give the whole charge back."""
        if self.reservation is not None:
            self.reservation.cancel()
            self.reservation = None
        self.call.release_cost()


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
        from pytest_llm_budget.tokens.counting import default_counter

        s = session.settings
        self.session = session
        self.raise_errors = raise_errors
        self.counter = counter or default_counter()
        self.policy: EstimatePolicy = s.estimate_policy
        self.retry = RetryPolicy(
            s.retries, s.backoff_base, s.backoff_max, s.max_wait, session.limiter.margin
        )
        self.rng = rng or random.Random()
        self.call_timeout = s.call_timeout

    # -- drivers -------------------------------------------------------------------------------
    # One call's attempts are written once, as a generator of I/O steps (`_flow`); `handle` and
    # `ahandle` carry the steps out with blocking or awaited I/O (as httpx drives an auth flow).
    def handle(self, request: Any, send: Callable[[Any], Any], *, pooled: bool = True) -> Any:
        """Send `request` through the budget; `send` is the inner transport's handle_request.

        `pooled`: the inner transport sends through an httpcore pool, which pays the gate (and a
        mock above the pool answers without paying); else the gate is paid before sending.
        """
        steps = Steps(self._flow(request, pooled=pooled, is_async=False))
        for kind, arg in steps:
            with steps.answering():
                steps.result = do(kind, arg, send)
        return steps.value

    async def ahandle(
        self, request: Any, send: Callable[[Any], Awaitable[Any]], *, pooled: bool = True
    ) -> Any:
        """`handle` for async transports: waits with asyncio, never blocking the loop."""
        steps = Steps(self._flow(request, pooled=pooled, is_async=True))
        for kind, arg in steps:
            with steps.answering():
                steps.result = await ado(kind, arg, send)
        return steps.value

    def _flow(self, request: Any, *, pooled: bool, is_async: bool) -> Flow:
        """Gate -> send -> settle, retrying 429s as `after_429` decides; yields each I/O step."""
        provider = self._provider(request)
        if provider is None:
            return (yield SEND, request)
        if not hasattr(request, "_content"):
            with contextlib.suppress(Exception):  # a body we cannot read is estimated as empty
                yield LOAD, request
        call = self._begin(request, provider)
        while True:
            gate = Gate(self, call)
            if not pooled:
                with contextlib.suppress(LLMBudgetError):
                    yield PAY, gate
                if gate.error is not None:
                    return self._fail(call, request, gate.error, None)
            tokens = (_IN_SEND.set(True), _GATE.set(gate))
            bound_timeouts(request, self.call_timeout)
            try:
                response = yield SEND, request
            except LLMBudgetError as err:
                if err is not gate.error:
                    raise
                return self._fail(call, request, err, None)
            except BaseException as exc:
                timed_out = call.timed_out(exc)
                self._abort(call, gate, CallTimeout.code if timed_out else None)
                if timed_out:
                    raise call.timeout_error() from None
                raise
            finally:
                _GATE.reset(tokens[1])
                _IN_SEND.reset(tokens[0])
            reservation = gate.reservation
            if reservation is None:  # answered above the network: a mock or a cassette
                return response
            if response.status_code not in call.provider.refusal_statuses:
                return deliver(call, reservation, response, is_async=is_async)
            body = yield READ, response
            outcome = self._rejected(call, reservation, response, body)
            self._announce_429(call, outcome)
            if isinstance(outcome, LLMBudgetError):
                return self._fail(call, request, outcome, (response, body))

    # -- admission -----------------------------------------------------------------------------
    # A call reserves `call.charge` (the provider's `charge_estimate`: input + max_tokens for
    # OpenAI, input for Gemini and Anthropic) and declares its output budget (max_tokens), which
    # only a token-bucket bucket (Anthropic's output dimension) reads.
    def _estimate(self, call: Call) -> Estimate:
        """Estimate the call's charge once, on its first admission (mocked calls never pay it)."""
        if call.estimate is not None:
            return call.estimate
        estimate = call.provider.estimate(
            call.path, call.body, self.counter, self.policy, grounded=call.grounded
        )
        call.model = estimate.model
        call.charge = max(1, call.provider.charge_estimate(estimate))
        if self.session.estimate_hooks:
            from pytest_llm_budget.routing.hooks import estimate_override

            call.charge = estimate_override(self.session, call.request, call)
        call.estimate = estimate
        return estimate

    def _reserve(self, call: Call) -> Reservation:
        estimate = self._hold(call)
        reservation = self.session.limiter.reserve(
            call.charge, vendor=call.vendor, model=call.model, uncertain=estimate.input_tokens,
            output=estimate.output_tokens,
        )
        self._admitted(call, reservation)
        return reservation

    async def _areserve(self, call: Call) -> Reservation:
        estimate = self._hold(call)
        reservation = await self.session.limiter.areserve(
            call.charge, vendor=call.vendor, model=call.model, uncertain=estimate.input_tokens,
            output=estimate.output_tokens,
        )
        self._admitted(call, reservation)
        return reservation

    def _hold(self, call: Call) -> Estimate:
        """Estimate the call and hold its worst-case cost before it waits for the budget."""
        estimate = self._estimate(call)
        call.cost = self.session.costs.hold(estimate, call.vendor, call.test)
        return estimate

    @staticmethod
    def _admitted(call: Call, reservation: Reservation) -> None:
        call.waited_s += reservation.waited_s
        call.attempts += 1

    # -- steps ---------------------------------------------------------------------------------
    def _provider(self, request: Any) -> Provider | None:
        """The provider of an LLM request; None for anything else."""
        from pytest_llm_budget.routing.traffic import classify

        url = request.url
        return classify(url.host, url.port, url.path).provider

    def _begin(self, request: Any, provider: Provider) -> Call:
        """Open an LLM request's call state (its estimate waits until it is admitted)."""
        url = request.url
        body = getattr(request, "_content", None) or b""
        test = self.session.test
        return Call(
            session=self.session,
            provider=provider,
            vendor=provider.vendor,
            path=url.path,
            body=bytes(body),
            test=test.nodeid,
            grounded=test.grounded,
            stream_usage_expected=provider.stream_usage_expected(url.path, body),
            request=request,
        )

    def _abort(self, call: Call, gate: Gate, error_code: str | None = None) -> None:
        """The send failed after admission (timeout, dropped, cancel): keep the charge, record."""
        if gate.reservation is None:  # never admitted, or it never reached the provider
            call.release_cost()
            call.landed()
            return
        gate.reservation.release()
        call.charged += gate.reservation.estimate
        cost = self.session.costs.settle(call.cost, None) if call.cost else None
        call.record(None, "error", malformed=False, error_code=error_code, cost_usd=cost)

    def _rejected(
        self, call: Call, reservation: Reservation, response: Any, body: bytes
    ) -> LLMBudgetError | None:
        """A 429 (or 529): count it, pause the bucket on a rate limit; None to retry, or the
        error that ends the call."""
        from pytest_llm_budget.providers.base import RejectionKind

        status = int(response.status_code)
        rejection = call.provider.classify(status, response.headers, body, time.time())
        reservation.learn(call.model, call.provider.learned_limits(response.headers, rejection))
        call.release_cost()
        overloaded = rejection.kind is RejectionKind.OVERLOADED
        if overloaded:
            call.overloaded += 1
        else:
            call.rate_limit_events += 1
        call.rejection = rejection
        outcome = after_429(
            rejection, call.attempts, call.waited_s, self.retry, self.rng,
            vendor=call.vendor, model=call.model,
        )
        call.retry_in = outcome.after_s if isinstance(outcome, Retry) else None
        if not overloaded:  # an overloaded provider is no sign that the bucket is too full
            reservation.rate_limited(call.retry_in)
        reservation.release()
        call.charged += reservation.estimate
        return None if isinstance(outcome, Retry) else outcome

    def _announce_429(self, call: Call, outcome: LLMBudgetError | None) -> None:
        """Tell the session's rate-limit observers about the 429 just handled."""
        if self.session.rate_limit_observers:
            from pytest_llm_budget.routing.hooks import rate_limit_event

            rate_limit_event(self.session, call, outcome)

    def _fail(
        self,
        call: Call,
        request: Any,
        err: LLMBudgetError,
        rejected: tuple[Any, bytes] | None,
    ) -> Any:
        """End a call with a structured error: raise it, or answer an app's client with a 429."""
        status = STATUS_OF.get(err.code, "error")
        call.release_cost()
        call.record(None, status, malformed=False, error_code=err.code)
        remember(self.session, call.test, err)
        if self.raise_errors:
            raise passable(err)
        return final_429(request, err, rejected)


def bound_timeouts(request: Any, seconds: float) -> None:
    """Cap the request's connect/read/write/pool timeouts (httpx extensions) at `seconds`: a
    provider that never answers, or goes silent mid-stream, then raises a timeout in time."""
    timeouts = dict(request.extensions.get("timeout") or {})
    for kind in ("connect", "read", "write", "pool"):
        value = timeouts.get(kind)
        timeouts[kind] = seconds if value is None else min(float(value), seconds)
    request.extensions["timeout"] = timeouts
