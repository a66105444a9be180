"""What the emulator derives from one API request: model, token figures, charge, reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Vendor
from .synth import Reply

__all__ = ["CacheBreakpoint", "Call", "text_chars"]

_TEXT_KEYS = frozenset(
    {"content", "text", "input", "instructions", "arguments", "output", "parts", "name"}
)
_SKIP_TYPES = frozenset({"image_url", "input_image", "input_file", "input_audio", "file"})


def text_chars(value: Any) -> int:
    """Characters of all text content in a request fragment (strings under text-bearing keys)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in _SKIP_TYPES or "inlineData" in value or "fileData" in value:
            return 0
        return sum(text_chars(v) for k, v in value.items() if k in _TEXT_KEYS)
    return 0


@dataclass(frozen=True)
class CacheBreakpoint:
    """An Anthropic `cache_control` mark: the prefix up to it, by identity and length."""

    key: str
    chars: int
    ttl: float


@dataclass(frozen=True)
class Call:
    """One parsed API call: what it is charged at admission and what it will answer."""

    vendor: Vendor
    api: str
    model: str
    stream: bool
    prompt_chars: int
    prompt_tokens: int
    max_output: int | None
    charge: int
    reply: Reply
    include_usage: bool = False
    payload: Any = None
    cache_read: int = 0
    cache_creation: int = 0
    breakpoints: tuple[CacheBreakpoint, ...] = ()

    @property
    def completion_tokens(self) -> int:
        """Output tokens the reply reports."""
        return self.reply.tokens
