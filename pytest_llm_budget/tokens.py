"""Token estimation: admission-charge rules, tiktoken counts loaded offline, and a fallback.

OpenAI admits a request on a character estimate, ceil(characters / 4), of the text it carries
(`chars_tokens`), so OpenAI estimates never need a tokenizer. Gemini charges its own tokenizer's
input count; o200k_base stands in for it (`TokenCounter`). Encodings are never downloaded: they
come from a tiktoken cache file whose sha256 matches tiktoken's expected hash, else from the
`bpe-openai` package (same hash check), and the encoding is built from those verified bytes, so
tiktoken's own downloader is never reached. When neither is available, counts fall back to
`fallback_tokens`, a character-class estimate, and the counter warns once (`LLMBudgetWarning`).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gzip
import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import threading
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_atomically
from .errors import LLMBudgetWarning, TiktokenSeedError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "CL100K_BASE",
    "NON_TEXT_PART_TOKENS",
    "O200K_BASE",
    "EstimatePolicy",
    "LLMBudgetWarning",
    "TextMeasure",
    "TiktokenSeedError",
    "TokenCounter",
    "chars_tokens",
    "default_counter",
    "encoding_name_for",
    "fallback_tokens",
    "iter_message_texts",
    "load_encoding",
    "seed_tiktoken_cache",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
SEEDABLE_ENCODINGS = (O200K_BASE, CL100K_BASE)

NON_TEXT_PART_TOKENS = 1500
"""Allowance for one image/audio/file part: above gpt-4o's largest high-detail image (1445)."""

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_BLOB_BASE = "https://openaipublic.blob.core.windows.net/encodings/"
_KNOWN_SOURCES: dict[str, tuple[str, str]] = {
    O200K_BASE: (
        _BLOB_BASE + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    CL100K_BASE: (
        _BLOB_BASE + "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_CL100K_MODELS = re.compile(
    r"^(gpt-4(-|$)|gpt-3\.5|gpt-35|text-embedding-|davinci-002|babbage-002|text-davinci-)"
)
_MODEL_PREFIXES = ("ft:", "openai/", "models/", "tunedmodels/")
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


@dataclass(frozen=True)
class TextMeasure:
    """Token count (with chat overhead) and the character count of the text it came from."""

    tokens: int
    chars: int


def chars_tokens(chars: int) -> int:
    """OpenAI's admission estimate of an input: ceil(characters / 4), no tokenizer involved."""
    return math.ceil(chars / 4)


@dataclass(frozen=True)
class EstimatePolicy:
    """How counts become reservations: a margin only on input counts that are uncertain."""

    # safety_margin: on an input counted by a tokenizer that is not the provider's (o200k for
    # Gemini) or by the fallback; never on OpenAI's character estimate or output budgets.
    # grounded_overhead: on a grounded call's input where input tokens are charged (Gemini).
    safety_margin: float = 0.20
    grounded_overhead: float = 0.15
    default_output_tokens: int = 7000

    def __post_init__(self) -> None:
        if self.safety_margin < 0 or self.grounded_overhead < 0:
            raise ValueError("safety_margin and grounded_overhead must be >= 0")
        if self.default_output_tokens < 0:
            raise ValueError("default_output_tokens must be >= 0")

    def counted_input(self, counted: int, chars: int, *, grounded: bool = False) -> int:
        """Return ceil(max(counted, ceil(chars/4)) * (1 + margin) * (1 + grounded overhead))."""
        raw = max(counted, chars_tokens(chars))
        factor = (1 + self.safety_margin) * (1 + self.grounded_overhead if grounded else 1)
        return math.ceil(round(raw * factor, 6))

    def output_tokens(self, declared: int | None) -> int:
        """Return the declared output budget exactly, or the default when none is declared."""
        return self.default_output_tokens if declared is None else max(0, declared)


def encoding_name_for(model: str) -> str:
    """Return the tiktoken encoding for a model: cl100k for gpt-4/3.5/embeddings, else o200k."""
    name = model.strip().lower()
    for prefix in _MODEL_PREFIXES:
        name = name.removeprefix(prefix)
    return CL100K_BASE if _CL100K_MODELS.match(name) else O200K_BASE


def _blob_source(encoding: str) -> tuple[str, str]:
    """Return (URL, sha256) tiktoken uses for an encoding, read from tiktoken_ext if possible."""
    return _tiktoken_sources().get(encoding) or _KNOWN_SOURCES[encoding]


_sources_cache: dict[str, tuple[str, str]] | None = None


def _tiktoken_sources() -> dict[str, tuple[str, str]]:
    """Parse tiktoken_ext.openai_public (without importing it) for load_tiktoken_bpe's arguments."""
    global _sources_cache
    if _sources_cache is None:
        _sources_cache = {}
        try:
            spec = importlib.util.find_spec("tiktoken_ext.openai_public")
            if spec is not None and spec.origin is not None:
                _sources_cache = _parse_sources(Path(spec.origin).read_text("utf-8"))
        except (ImportError, OSError, SyntaxError, ValueError):
            _sources_cache = {}
    return _sources_cache


def _parse_sources(source: str) -> dict[str, tuple[str, str]]:
    """Find `load_tiktoken_bpe(url, expected_hash=...)` calls inside each encoding's function."""
    found: dict[str, tuple[str, str]] = {}
    for func in ast.parse(source).body:
        if not isinstance(func, ast.FunctionDef):
            continue
        for node in ast.walk(func):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id != "load_tiktoken_bpe" or not node.args:
                continue
            url = node.args[0]
            digest = next((k.value for k in node.keywords if k.arg == "expected_hash"), None)
            if (
                isinstance(url, ast.Constant)
                and isinstance(url.value, str)
                and isinstance(digest, ast.Constant)
                and isinstance(digest.value, str)
            ):
                found[func.name] = (url.value, digest.value)
    return found


def _cache_path(cache_dir: str | os.PathLike[str], url: str) -> Path:
    """Return tiktoken's cache file for a blob URL: sha1 of the URL under the cache dir."""
    return Path(cache_dir) / hashlib.sha1(url.encode()).hexdigest()


def _tiktoken_cache_dir() -> str:
    """Resolve the cache dir exactly as tiktoken.load.read_file_cached does ("" = disabled)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")




def _has_valid_file(path: Path, sha256: str) -> bool:
    """True when the cache file exists and hashes to what tiktoken expects."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _bpe_openai_data_dir() -> Path:
    """Locate bpe-openai's data folder without importing the package (and its native module)."""
    spec = importlib.util.find_spec("bpe_openai")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise TiktokenSeedError(
            "bpe-openai is not installed: `pip install bpe-openai` (it ships o200k_base and "
            "cl100k_base) or give tiktoken network access once"
        )
    return Path(locations[0]) / "data"


def seed_tiktoken_cache(cache_dir: str | os.PathLike[str]) -> list[str]:
    """Fill a TIKTOKEN_CACHE_DIR from bpe-openai's files, hash-checked; return encodings seeded."""
    data_dir = _bpe_openai_data_dir()
    seeded: list[str] = []
    for encoding in SEEDABLE_ENCODINGS:
        url, sha256 = _blob_source(encoding)
        target = _cache_path(cache_dir, url)
        if not _has_valid_file(target, sha256):
            archive = data_dir / f"{encoding}.tiktoken.gz"
            try:
                data = gzip.decompress(archive.read_bytes())
            except (OSError, EOFError) as exc:
                raise TiktokenSeedError(f"cannot read {archive}: {exc}") from exc
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise TiktokenSeedError(
                    f"{archive} has sha256 {actual}, tiktoken expects {sha256} for {encoding}"
                )
            write_atomically(target, data)
        seeded.append(encoding)
    return seeded


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


def _verified_bytes(encoding: str) -> bytes:
    """An encoding's BPE file from tiktoken's cache, else from bpe-openai; sha256-checked."""
    url, sha256 = _blob_source(encoding)
    cache_dir = _tiktoken_cache_dir()
    target = _cache_path(cache_dir, url) if cache_dir else None
    if target is not None:
        with contextlib.suppress(OSError):
            data = target.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha256:
                return data
    archive = _bpe_openai_data_dir() / f"{encoding}.tiktoken.gz"
    try:
        data = gzip.decompress(archive.read_bytes())
    except (OSError, EOFError) as exc:
        raise TiktokenSeedError(f"cannot read {archive}: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise TiktokenSeedError(f"{archive} has sha256 {actual}, tiktoken expects {sha256}")
    if target is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next process
            write_atomically(target, data)
    return data


def load_encoding(encoding: str) -> tiktoken.Encoding:
    """Build a tiktoken encoding from verified local bytes; tiktoken never goes to the network."""
    # tiktoken_ext's own constructor supplies the split pattern and special tokens; it runs with
    # a loader handing over the verified ranks instead of tiktoken's (downloading) file reader.
    import tiktoken
    import tiktoken_ext.openai_public as public

    url, sha256 = _blob_source(encoding)
    ranks: dict[bytes, int] = {}
    for line in _verified_bytes(encoding).splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    def offline_loader(path: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if (path, expected_hash) != (url, sha256):
            raise TiktokenSeedError(f"{encoding} wants {path} ({expected_hash}), not {url}")
        return ranks

    constructor = getattr(public, encoding)
    offline = types.FunctionType(
        constructor.__code__,
        {**constructor.__globals__, "load_tiktoken_bpe": offline_loader},
        constructor.__name__,
        constructor.__defaults__,
        constructor.__closure__,
    )
    return tiktoken.Encoding(**offline())


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
