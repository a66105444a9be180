"""The request log (memory + optional JSONL file) and the per-bucket statistics built from it."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from .limits import WindowMax

__all__ = ["BucketStats", "RequestLog", "RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it; `outcome` is ok or the rejection kind."""

    t: float
    vendor: str
    model: str
    path: str
    status: int
    charge: int
    prompt_tokens: int
    completion_tokens: int
    in_flight: int
    fault: str | None
    outcome: str = "ok"
    bucket: str = ""
    stream: bool = False
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    levels: dict[str, float] | None = None

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class BucketStats:
    """Running totals for one bucket (vendor + model or rule)."""

    vendor: str
    model: str
    window: float
    tpm: int | None = None
    rpm: int | None = None
    requests: int = 0
    admitted: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens_charged: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0
    tokens_window: WindowMax | None = None
    requests_window: WindowMax | None = None
    otpm: int | None = None
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    min_level: dict[str, float] = dataclasses.field(default_factory=dict)
    output_window: WindowMax | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON view; `max_window_tokens` <= tpm is the proof no window went over (sliding)."""
        out = {
            "vendor": self.vendor,
            "model": self.model,
            "window": self.window,
            "tpm": self.tpm,
            "rpm": self.rpm,
            "requests": self.requests,
            "admitted": self.admitted,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "tokens_charged": self.tokens_charged,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "max_in_flight": self.max_in_flight,
            "max_window_tokens": int(self.tokens_window.max) if self.tokens_window else 0,
            "max_window_requests": int(self.requests_window.max) if self.requests_window else 0,
        }
        if self.vendor == "anthropic":
            out.update(self._anthropic())
        return out

    def _anthropic(self) -> dict[str, Any]:
        """Anthropic's figures; a `min_level_*` below 0 means that bucket was overdrawn.

        `tokens_charged` is the ITPM charge (input + cache creation). Only output can go below 0
        (replies are charged as produced): `min_level_output_tokens >= 0` proves a client never
        let its replies outrun OTPM; None means the dimension is unlimited.
        """
        out: dict[str, Any] = {
            "itpm": self.tpm,
            "otpm": self.otpm,
            "input_tokens_charged": self.tokens_charged,
            "output_tokens_charged": self.completion_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
            "max_window_output_tokens": int(self.output_window.max) if self.output_window else 0,
        }
        for dim in ("requests", "input_tokens", "output_tokens"):
            level = self.min_level.get(dim)
            out[f"min_level_{dim}"] = None if level is None else round(level, 3)
        return out


class RequestLog:
    """Thread-safe list of records with per-bucket stats, mirrored to a JSONL file if asked."""

    def __init__(self, path: str | None = None, limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._records: deque[RequestRecord] = deque(maxlen=limit)
        self._buckets: dict[str, BucketStats] = {}
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def add(
        self,
        record: RequestRecord,
        window: float,
        tpm: int | None,
        rpm: int | None,
        otpm: int | None = None,
    ) -> None:
        """Append a record and fold it into its bucket's stats (Anthropic: tpm is the ITPM)."""
        with self._lock:
            self._records.append(record)
            key = record.bucket or f"{record.vendor}:{record.model}"
            stats = self._buckets.get(key)
            if stats is None or stats.window != window:
                stats = self._buckets[key] = BucketStats(
                    record.vendor,
                    record.model,
                    window,
                    tokens_window=WindowMax(window),
                    requests_window=WindowMax(window),
                    output_window=WindowMax(window),
                )
            stats.tpm, stats.rpm, stats.otpm = tpm, rpm, otpm
            stats.requests += 1
            stats.max_in_flight = max(stats.max_in_flight, record.in_flight)
            if record.outcome == "ok":
                stats.admitted += 1
                stats.tokens_charged += record.charge
                stats.prompt_tokens += record.prompt_tokens
                stats.completion_tokens += record.completion_tokens
                if stats.tokens_window is not None and stats.requests_window is not None:
                    stats.tokens_window.add(record.charge, record.t)
                    stats.requests_window.add(1, record.t)
                if stats.output_window is not None:
                    stats.output_window.add(record.completion_tokens, record.t)
                stats.cache_read_tokens += record.cache_read_tokens
                stats.cache_creation_tokens += record.cache_creation_tokens
            else:
                stats.rejected[record.outcome] = stats.rejected.get(record.outcome, 0) + 1
            for dim, level in (record.levels or {}).items():
                stats.min_level[dim] = min(level, stats.min_level.get(dim, level))
            if self._file is not None:
                self._file.write(record.to_json() + "\n")
                self._file.flush()

    def records(self) -> list[RequestRecord]:
        """A snapshot of the records so far."""
        with self._lock:
            return list(self._records)

    def stats(self) -> dict[str, Any]:
        """Totals overall, per vendor and per bucket."""
        with self._lock:
            buckets = {k: v.to_dict() for k, v in self._buckets.items()}
        vendors: dict[str, dict[str, Any]] = {}
        for b in buckets.values():
            v = vendors.setdefault(
                b["vendor"],
                {"requests": 0, "admitted": 0, "rejected": {}, "tokens_charged": 0},
            )
            v["requests"] += b["requests"]
            v["admitted"] += b["admitted"]
            v["tokens_charged"] += b["tokens_charged"]
            for kind, n in b["rejected"].items():
                v["rejected"][kind] = v["rejected"].get(kind, 0) + n
        totals = {
            "requests": sum(b["requests"] for b in buckets.values()),
            "admitted": sum(b["admitted"] for b in buckets.values()),
            "rejected": sum(b["rejected_total"] for b in buckets.values()),
            "tokens_charged": sum(b["tokens_charged"] for b in buckets.values()),
        }
        return {"totals": totals, "vendors": vendors, "buckets": buckets}

    def clear(self) -> None:
        """Forget records and stats (the file keeps what was written)."""
        with self._lock:
            self._records.clear()
            self._buckets.clear()

    def close(self) -> None:
        """Close the JSONL file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
