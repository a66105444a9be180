"""Deterministic token approximation and reply synthesis, so recordings against it are stable."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Reply", "chars_tokens", "request_digest", "synthesize"]

_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip

_VOLATILE = frozenset({"stream", "stream_options", "user", "metadata", "store"})


def chars_tokens(chars: int) -> int:
    """The dependency-free estimate providers use for admission: ceil(chars / 4)."""
    return math.ceil(chars / 4)


def request_digest(payload: Any, *extra: str) -> bytes:
    """A stable hash of the request (streaming flags left out, so stream and not agree)."""
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k not in _VOLATILE}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256("\x00".join((text, *extra)).encode()).digest()


@dataclass(frozen=True)
class Reply:
    """The synthesized answer: its words (one token each) and why it stopped."""

    words: tuple[str, ...]
    truncated: bool
    digest: str

    @property
    def text(self) -> str:
        """The reply text."""
        return " ".join(self.words)

    @property
    def tokens(self) -> int:
        """Output tokens the reply is reported to have used."""
        return len(self.words)

    def pieces(self, n: int = 4) -> list[str]:
        """The text split into about `n` stream deltas that concatenate back to `text`."""
        words = list(self.words)
        size = max(1, math.ceil(len(words) / n))
        chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
        return [c if i == 0 else " " + c for i, c in enumerate(chunks)]


def synthesize(digest: bytes, max_output: int | None, lo: int, hi: int) -> Reply:
    """A reply of lo..hi tokens chosen by the digest, capped by the request's output budget."""
    natural = lo + int.from_bytes(digest[:4], "big") % (hi - lo + 1)
    cap = natural if max_output is None else max(1, min(natural, max_output))
    words = tuple(_WORDS[digest[(4 + i) % len(digest)] % len(_WORDS)] for i in range(cap))
    return Reply(words=words, truncated=cap < natural, digest=digest.hex()[:24])
