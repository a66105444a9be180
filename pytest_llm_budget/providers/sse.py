"""A byte-level server-sent-events reader that hands each event's JSON data to a usage extractor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_llm_budget.providers.base import Usage, load_json

__all__ = ["JSONEventUsageParser"]

UsageExtractor = Callable[[Any], "Usage | None"]


class JSONEventUsageParser:
    """SSE parser (WHATWG framing: CRLF/LF/CR lines, blank line ends an event) with last usage."""

    def __init__(
        self, extract: UsageExtractor, *, ignore_data: frozenset[str] = frozenset()
    ) -> None:
        self._extract = extract
        self._ignore = ignore_data
        self._buffer = bytearray()
        self._scan = 0
        self._data: list[str] = []
        self._usage: Usage | None = None
        self._malformed = 0

    @property
    def usage(self) -> Usage | None:
        """The last usage seen, including an event still waiting for its blank line."""
        if self._data:
            pending = self._parse("\n".join(self._data))
            if pending is not None:
                return pending
        return self._usage

    @property
    def malformed(self) -> int:
        """Events whose data was not a JSON object."""
        return self._malformed

    @property
    def error(self) -> str | None:
        """OpenAI and Gemini streams name no error event."""
        return None

    def feed(self, chunk: bytes) -> None:
        """Consume bytes; only whole lines are decoded, so splits inside UTF-8 are harmless."""
        buffer = self._buffer
        buffer += chunk
        start = 0
        while True:
            end = _line_end(buffer, max(start, self._scan))
            if end < 0:
                self._scan = len(buffer)
                break
            if buffer[end] == 0x0D and end + 1 == len(buffer):
                self._scan = end
                break
            step = 2 if buffer[end : end + 2] == b"\r\n" else 1
            self._line(bytes(buffer[start:end]))
            start = end + step
        del buffer[:start]
        self._scan -= start

    def close(self) -> None:
        """Treat end of stream as the end of the last line and event."""
        if self._buffer:
            self._line(bytes(self._buffer.rstrip(b"\r")))
            self._buffer.clear()
            self._scan = 0
        self._dispatch()

    def _line(self, raw: bytes) -> None:
        """Apply one SSE line: blank dispatches, `data:` accumulates, other fields are ignored."""
        if not raw:
            self._dispatch()
            return
        line = raw.decode("utf-8", errors="replace")
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))

    def _dispatch(self) -> None:
        """Parse the accumulated event data; count it as malformed if it is not a JSON object."""
        if not self._data:
            return
        data = "\n".join(self._data)
        self._data.clear()
        if data.strip() in self._ignore:
            return
        obj = load_json(data)
        if not isinstance(obj, dict):
            self._malformed += 1
            return
        usage = self._safe_extract(obj)
        if usage is not None:
            self._usage = usage

    def _parse(self, data: str) -> Usage | None:
        """Usage from event data without recording anything (used to peek at a pending event)."""
        obj = load_json(data)
        return self._safe_extract(obj) if isinstance(obj, dict) else None

    def _safe_extract(self, obj: dict[str, Any]) -> Usage | None:
        """Run the extractor, treating any surprise in the object's shape as no usage."""
        try:
            return self._extract(obj)
        except (TypeError, ValueError, AttributeError, KeyError):
            return None


def _line_end(buffer: bytearray, start: int) -> int:
    """Index of the first CR or LF at or after start, or -1."""
    cr = buffer.find(b"\r", start)
    lf = buffer.find(b"\n", start)
    if cr < 0:
        return lf
    return cr if lf < 0 else min(cr, lf)
