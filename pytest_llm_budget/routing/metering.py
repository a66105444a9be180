"""Response metering: a 2xx body's bytes go to the caller unchanged while a sink reads the usage.

The sink settles the reservation and the cost hold once the body ends (or fails), and records the
call; gzip/deflate bodies are decoded for it, SSE streams parsed line by line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.errors import BackendUnavailable, LLMBudgetError

if TYPE_CHECKING:
    from pytest_llm_budget.limiting.limiter import Reservation
    from pytest_llm_budget.providers.base import RateLimitHeaders, SSEUsageParser, Usage
    from pytest_llm_budget.routing.call import Call

_MAX_JSON_BYTES = 16 * 1024 * 1024


def deliver(call: Call, reservation: Reservation, response: Any, *, is_async: bool = False) -> Any:
    """Pass a non-429 answer on; a 2xx one is metered and settled when its body ends."""
    status = int(response.status_code)
    if not 200 <= status < 300:
        lost = backend_lost(reservation.release)
        call.charged += reservation.estimate
        lost = backend_lost(call.release_cost) or lost
        call.record(None, f"http_{status}", malformed=False, error_code=lost)
        return response
    backend_lost(lambda: _calibrate(call, response.headers, reservation))
    sink = UsageSink(call, reservation, response.headers)
    sync_cls, async_cls = meter_types(type(response).__module__.split(".")[0])
    # A vcr-recorded response carries an httpx ByteStream, which is both sync and async:
    # the caller (handle / ahandle) decides, not the stream's shape.
    if is_async:
        response.stream = async_cls(response.stream, sink)
    else:
        response.stream = sync_cls(response.stream, sink)
    return response


def _calibrate(call: Call, headers: Any, reservation: Reservation | None = None) -> None:
    """Learn from the provider's token limit headers: a gap is charged, the estimate corrected;
    and the limits the provider states (`Provider.learned_limits`) join the bucket's."""
    if reservation is not None:
        reservation.learn(call.model, call.provider.learned_limits(headers))
    stated = call.provider.rate_limits(headers)
    if reservation is not None and reservation.token_bucket:
        _observe_dimensions(stated, reservation)
        return
    tokens = stated.tokens
    if tokens is None or tokens.limit is None or tokens.remaining is None:
        return
    if reservation is not None:
        reservation.observe(tokens.limit, tokens.remaining, tokens.reset_s)
    else:
        call.session.limiter.calibrate(call.vendor, call.model, tokens.limit, tokens.remaining)


def _observe_dimensions(stated: RateLimitHeaders, reservation: Reservation) -> None:
    """A token-bucket bucket learns what the server counts as spent in each dimension, from
    figures that are lower bounds of it: a rounded-down remainder is read as its upper end
    (Anthropic's tokens: up to 999 more), and the output dimension leaves out this call's own
    output (the server may count it already; our bucket charges it at settle)."""
    dimensions = (
        ("requests", stated.requests, 0),
        ("input_tokens", stated.input_tokens, 0),
        ("output_tokens", stated.output_tokens, reservation.output),
    )
    for dimension, figures, own in dimensions:
        if figures is None or figures.limit is None or figures.remaining is None:
            continue
        remaining = figures.remaining + max(0, figures.rounding - 1) + own
        if remaining >= figures.limit:
            continue  # nothing the server surely counts that we might not
        reservation.observe(figures.limit, remaining, figures.reset_s, dimension=dimension)


class UsageSink:
    """Receives a 2xx body's bytes as the caller reads them; settles once when it ends."""

    def __init__(self, call: Call, reservation: Reservation, headers: Any) -> None:
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

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Around the caller's read of the body: settle when it ends, failed if it raised."""
        try:
            yield
        except GeneratorExit:  # the caller stopped reading: its close() settles
            raise
        except BaseException as exc:
            timed_out = self.call.timed_out(exc)
            self.finish(failed=True, error_code="LLM_CALL_TIMEOUT" if timed_out else None)
            if timed_out and not isinstance(exc, LLMBudgetError):
                raise self.call.timeout_error() from None
            raise
        self.finish(failed=False)

    def past_deadline(self) -> None:
        """A stream still going at the call's deadline fails with CallTimeout."""
        if time.monotonic() > self.call.deadline:
            raise self.call.timeout_error()

    def finish(self, failed: bool, error_code: str | None = None) -> None:
        """Settle with the reported usage (else the estimate) and record the call, once."""
        with self._lock:
            if self._done:
                return
            self._done = True
        call = self.call
        usage: Usage | None
        stream_error = None
        if self.sse is not None:
            self.sse.close()
            usage = self.sse.usage
            stream_error = self.sse.error
            malformed = self.sse.malformed > 0 or (usage is None and call.stream_usage_expected)
        else:
            usage = None if self.undecodable else call.provider.usage_from_json(bytes(self.body))
            malformed = usage is None and not failed
        if usage is not None and call.estimate is not None:
            from pytest_llm_budget.providers.base import plausible_usage

            if not plausible_usage(usage, call.estimate):  # settled as if none was reported
                usage, malformed = None, True
        charge = call.provider.charge(usage) if usage is not None else call.charge
        refund = usage is not None and call.provider.counts_reported_usage
        # A token bucket settles its output dimension apart (unknown usage: max_tokens stays).
        output = (
            call.provider.output_charge(usage)
            if usage is not None and self.reservation.token_bucket
            else None
        )
        lost = backend_lost(
            lambda: self.reservation.settle(charge, refund=refund, output_tokens=output)
        )
        call.charged += charge if refund else max(charge, self.reservation.estimate)
        hold, costs = call.cost, call.session.costs
        if hold is not None:
            lost = backend_lost(lambda: costs.settle(hold, usage)) or lost
        cost = hold.cost_usd if hold is not None else None
        # A 2xx stream that ended in an error event (Anthropic): what it produced is charged.
        status = "error" if failed else "stream_error" if stream_error else "ok"
        code = lost or error_code
        call.record(usage, status, malformed=malformed, error_code=code, cost_usd=cost)


BACKEND_LOST = "LLM_BACKEND_UNAVAILABLE"


def backend_lost(step: Callable[[], object]) -> str | None:
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


def _meter_stream_iter(inner: Any, sink: UsageSink) -> Iterator[bytes]:
    with sink.watching():
        for chunk in inner:
            sink.feed(chunk)
            sink.past_deadline()
            yield chunk


async def _meter_stream_aiter(inner: Any, sink: UsageSink) -> AsyncIterator[bytes]:
    with sink.watching():
        async for chunk in inner:
            sink.feed(chunk)
            sink.past_deadline()
            yield chunk


class _Meter:
    """Byte stream wrapper: the caller gets every chunk unchanged; the sink sees a copy."""

    def __init__(self, inner: Any, sink: UsageSink) -> None:
        self._inner = inner
        self._sink = sink


class _SyncMeter(_Meter):
    def __iter__(self) -> Iterator[bytes]:
        return _meter_stream_iter(self._inner, self._sink)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._sink.finish(failed=False)


class _AsyncMeter(_Meter):
    def __aiter__(self) -> AsyncIterator[bytes]:
        return _meter_stream_aiter(self._inner, self._sink)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._sink.finish(failed=False)


_METER_TYPES: dict[str, tuple[type[_SyncMeter], type[_AsyncMeter]]] = {}


def meter_types(module_name: str) -> tuple[type[_SyncMeter], type[_AsyncMeter]]:
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
