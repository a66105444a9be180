"""HTTP-level building blocks shared by the vendor modules: the Answer type, JSON/SSE encoders."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Answer",
    "Request",
    "go_duration",
    "json_answer",
    "proto_duration",
    "sse_answer",
    "sse_event",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Request:
    """An HTTP request as the core sees it (header names lower-cased)."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Answer:
    """What to send back: a whole body, or SSE events (possibly cut short by `drop_after`)."""

    status: int
    headers: Headers = ()
    body: bytes = b""
    events: tuple[bytes, ...] | None = None
    drop_after: int | None = None
    event_delay: float = 0.0

    def with_headers(self, extra: Sequence[tuple[str, str]]) -> Answer:
        """A copy with more headers."""
        return replace(self, headers=self.headers + tuple(extra))

    def json(self) -> Any:
        """The body decoded (for tests and logs)."""
        return json.loads(self.body)


def json_answer(status: int, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """A JSON response."""
    body = json.dumps(payload).encode()
    return Answer(status, (("content-type", "application/json"), *headers), body)


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (`data` JSON-encoded unless already a str)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def sse_answer(
    events: Sequence[bytes], headers: Sequence[tuple[str, str]] = (), delay: float = 0.0
) -> Answer:
    """A text/event-stream response."""
    base = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
    return Answer(200, (*base, *headers), events=tuple(events), event_delay=delay)


def go_duration(seconds: float) -> str:
    """Go's time.Duration string at ms precision, rounded up: `6m0s`, `1.5s`, `20ms`, `0s`."""
    if not math.isfinite(seconds):
        return "0s"
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs = str(rem // 1000) if rem % 1000 == 0 else f"{rem / 1000:.3f}".rstrip("0")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def proto_duration(seconds: float) -> str:
    """google.protobuf.Duration JSON form, rounded up to ms: `26s`, `1.200s`."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms / 1000:.3f}s"
