"""Parse the providers' retry hints: Go durations, Retry-After, rate-limit reset headers, RetryInfo.

Header precedence in `retry_delay_from_headers`: `retry-after-ms`, then `retry-after`, then the
`x-ratelimit-reset-*` headers. Those reset headers give the time until a limit is fully restored
(an upper bound on the useful wait): with `limit_type` "tokens" or "requests" (the 429 body's
`error.type`) the matching header is used, otherwise the larger of the two, so that both limits
have room again when the retry goes out.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from typing import Any

from pytest_llm_budget.providers.base import lower_headers

__all__ = [
    "parse_gemini_retry_info",
    "parse_go_duration",
    "parse_retry_after",
    "parse_retry_hint_in_message",
    "retry_delay_from_headers",
]

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)", re.ASCII)
_MESSAGE_HINT = re.compile(r"(?:try|retry) again in ([0-9][0-9a-zµμ.]*)|retry in ([0-9.]+\s*s)")
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def parse_go_duration(value: str) -> float | None:
    """Seconds in a Go duration ("1m30.5s", "6m0s", "20ms"); negative -> 0, invalid -> None."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    total = 0.0
    position = 0
    for match in _GO_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text) or not math.isfinite(total):
        return None
    return max(0.0, sign * total)


def _ascii_number(text: str) -> float:
    """A number written in ASCII (float() also takes other scripts' digits); else ValueError."""
    if not text.isascii():
        raise ValueError(f"not ASCII: {text!r}")
    return float(text)


def parse_retry_after(value: str, now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date; past -> 0."""
    text = value.strip()
    if not text.isascii():
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _reset_delay(headers: Mapping[str, str], limit_type: str | None) -> float | None:
    """Delay from x-ratelimit-reset-tokens/-requests per the module's documented rule."""
    delays: dict[str, float] = {}
    for kind in ("tokens", "requests"):
        raw = headers.get(f"x-ratelimit-reset-{kind}")
        parsed = parse_go_duration(raw) if raw is not None else None
        if parsed is None and raw is not None:
            parsed = parse_retry_after(raw, 0.0)
        if parsed is not None:
            delays[kind] = parsed
    if limit_type in delays:
        return delays[limit_type]
    return max(delays.values()) if delays else None


def retry_delay_from_headers(
    headers: Mapping[str, str], now: float, *, limit_type: str | None = None
) -> float | None:
    """Seconds to wait from response headers (precedence in the module docstring), or None."""
    lowered = lower_headers(headers)
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            millis = _ascii_number(raw_ms.strip())
        except ValueError:
            millis = math.nan
        if math.isfinite(millis):
            return max(0.0, millis / 1000.0)
    raw = lowered.get("retry-after")
    if raw is not None:
        delay = parse_retry_after(raw, now)
        if delay is not None:
            return delay
    return _reset_delay(lowered, limit_type)


def parse_retry_hint_in_message(message: str) -> float | None:
    """Seconds from "Please try again in 1.5s" (OpenAI) or "Please retry in 26.5s" (Gemini)."""
    match = _MESSAGE_HINT.search(message)
    if match is None:
        return None
    hint = (match.group(1) or match.group(2) or "").replace(" ", "").rstrip(".")
    return parse_go_duration(hint)


def _proto_duration(value: object) -> float | None:
    """Seconds in a protobuf Duration: JSON string "1.250s" or {"seconds": .., "nanos": ..}."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("s"):
            return None
        try:
            seconds = float(text[:-1])
        except ValueError:
            return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    if isinstance(value, Mapping):
        try:
            seconds = float(value.get("seconds", 0) or 0) + float(value.get("nanos", 0) or 0) / 1e9
        except (TypeError, ValueError):
            return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return None


def parse_gemini_retry_info(body: Mapping[str, Any]) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail of a Google error body, or None."""
    error = body.get("error") if isinstance(body, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, Mapping) and detail.get("@type") == _RETRY_INFO:
            delay = _proto_duration(detail.get("retryDelay"))
            if delay is not None:
                return delay
    return None
