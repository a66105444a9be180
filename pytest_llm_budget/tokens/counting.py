"""Counting tokens: tiktoken counts with chat overhead, loaded once, and a fallback estimate.

`TokenCounter` counts with the model's encoding (`encodings.load_encoding`, offline). When no
encoding can be loaded, counts fall back to `fallback_tokens`, a character-class estimate, and
the counter warns once (`LLMBudgetWarning`).
"""

from __future__ import annotations

import json
import math
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.errors import LLMBudgetWarning
from pytest_llm_budget.tokens.encodings import encoding_name_for, load_encoding

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "NON_TEXT_PART_TOKENS",
    "TextMeasure",
    "TokenCounter",
    "default_counter",
    "fallback_tokens",
    "iter_message_texts",
]

NON_TEXT_PART_TOKENS = 1500
"""Allowance for one image/audio/file part: above gpt-4o's largest high-detail image (1445)."""

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


@dataclass(frozen=True)
class TextMeasure:
    """Token count (with chat overhead) and the character count of the text it came from."""

    tokens: int
    chars: int


def _part_texts(part: object) -> Iterator[str | None]:
    """Yield a content part's text, or None for a non-text part (image, audio, file)."""
    if isinstance(part, str):
        yield part
    elif isinstance(part, Mapping):
        kind = part.get("type")
        text = part.get("text")
        if isinstance(text, str) and (kind is None or kind in _TEXT_PART_TYPES):
            yield text
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            yield str(part["refusal"])
        else:
            yield None


def iter_message_texts(message: Mapping[str, Any]) -> Iterator[str | None]:
    """Yield each text of a chat message (role, name, content, tool calls); None = non-text part."""
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, str):
            yield value
        elif key == "content" and isinstance(value, list):
            for part in value:
                yield from _part_texts(part)
        else:
            yield json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_PIECE = re.compile(r"(\d+)|([^\W\d_]+)|(\s+)|([^\w\s]+|_+)")


def _char_weight(char: str, letter: bool) -> float:
    """Tokens one character is taken to cost in the fallback (see `fallback_tokens`)."""
    code = ord(char)
    if code < 128:
        return 0.25 if letter else 0.5
    if code >= 0x10000:
        return 2.0
    return 1.0 if code >= 0x2E80 else 0.5


def fallback_tokens(text: str) -> int:
    """Estimate o200k tokens without an encoding, from the classes of the text's characters."""
    # Pieces as o200k's pre-tokenizer cuts them: ASCII letters cost 1/4 a character, other
    # letters (accented Latin, Cyrillic, Arabic, Indic) 1/2, CJK and kana (U+2E80 up) 1, astral
    # characters (emoji, rare ideographs) 2; digits one per group of three; punctuation 1/2 a
    # character (ASCII); every piece at least 1; whitespace 1 per run but for one space before a
    # word. On English, German, French, Japanese, Chinese, Korean and code this is 1.2-1.6x the
    # o200k count (UTF-8 bytes were 2.7-5.3x); it falls short only on random base64 (0.6x) and
    # rare kanji (0.8x), which the safety margin partly covers.
    total = 0
    for match in _PIECE.finditer(text):
        digits, letters, space, other = match.groups()
        if digits:
            total += math.ceil(len(digits) / 3)
        elif space:
            next_char = text[match.end() : match.end() + 1]
            total += 0 if space == " " and next_char.isalpha() else 1
        else:
            piece = letters or other or ""
            total += max(1, math.ceil(sum(_char_weight(c, bool(letters)) for c in piece)))
    return total


class TokenCounter:
    """Thread-safe token counter with a lazy per-encoding cache and a fallback estimate."""

    def __init__(self, *, non_text_part_tokens: int = NON_TEXT_PART_TOKENS) -> None:
        self.non_text_part_tokens = non_text_part_tokens
        self._lock = threading.Lock()
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._warned = False

    @property
    def fallback_used(self) -> bool:
        """True once some count had to use the fallback estimate."""
        return any(enc is None for enc in self._encodings.values())

    def encoding_for(self, model: str) -> tiktoken.Encoding | None:
        """Return the model's tiktoken encoding, loading it once; None when unavailable."""
        name = encoding_name_for(model)
        with self._lock:
            if name not in self._encodings:
                self._encodings[name] = self._load(name)
            return self._encodings[name]

    def count_text(self, text: str, model: str) -> int:
        """Count the tokens of plain text (special-token strings are counted as ordinary text)."""
        if not text:
            return 0
        encoding = self.encoding_for(model)
        if encoding is None:
            return fallback_tokens(text)
        return len(encoding.encode_ordinary(text))

    def count_messages(self, messages: Sequence[Mapping[str, Any]], model: str) -> int:
        """Count chat messages as OpenAI reports prompt_tokens (cookbook overhead included)."""
        return self.measure_messages(messages, model).tokens

    def measure_messages(self, messages: Sequence[Mapping[str, Any]], model: str) -> TextMeasure:
        """Count chat messages with overhead (3/message, +1/name, +3), and their characters."""
        tokens = REPLY_PRIMING_TOKENS
        chars = 0
        for message in messages:
            tokens += TOKENS_PER_MESSAGE
            if not isinstance(message, Mapping):
                continue
            if "name" in message:
                tokens += TOKENS_PER_NAME
            texts = self.measure_texts(list(iter_message_texts(message)), model)
            tokens += texts.tokens
            chars += texts.chars
        return TextMeasure(tokens, chars)

    def measure_texts(self, texts: Sequence[str | None], model: str) -> TextMeasure:
        """Count loose texts (no chat overhead); None entries get the non-text allowance."""
        tokens = 0
        chars = 0
        for text in texts:
            if text is None:
                tokens += self.non_text_part_tokens
            else:
                tokens += self.count_text(text, model)
                chars += len(text)
        return TextMeasure(tokens, chars)

    def _load(self, name: str) -> tiktoken.Encoding | None:
        """Load an encoding from verified local bytes; None (and one warning) when impossible."""
        try:
            return load_encoding(name)
        except Exception as exc:
            self._warn_once(name, exc)
            return None

    def _warn_once(self, name: str, exc: BaseException) -> None:
        """Warn the first time this counter falls back, naming the cause and the cure."""
        if self._warned:
            return
        self._warned = True
        warnings.warn(
            f"tiktoken encoding {name} unavailable ({type(exc).__name__}: {exc}); Gemini input "
            "estimates use a character-class estimate instead (about 1.2-1.6x the real count, "
            "plus --llm-safety-margin). Install bpe-openai (a dependency of pytest-llm-budget), "
            "or seed a cache with pytest_llm_budget.tokens.seed_tiktoken_cache(dir) and set "
            "TIKTOKEN_CACHE_DIR=dir.",
            LLMBudgetWarning,
            stacklevel=4,
        )


_default_counter: TokenCounter | None = None
_default_lock = threading.Lock()


def default_counter() -> TokenCounter:
    """Return the process-wide counter, so encodings load and the fallback warns once."""
    global _default_counter
    with _default_lock:
        if _default_counter is None:
            _default_counter = TokenCounter()
        return _default_counter
