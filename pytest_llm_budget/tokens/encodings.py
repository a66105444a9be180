"""tiktoken encodings loaded offline, from a hash-checked cache file or bpe-openai, never the web.

Encodings come from a tiktoken cache file whose sha256 matches tiktoken's expected hash, else from
the `bpe-openai` package (same hash check), and the encoding is built from those verified bytes,
so tiktoken's own downloader is never reached. `seed_tiktoken_cache` fills a TIKTOKEN_CACHE_DIR
from bpe-openai for processes that load encodings through tiktoken itself. tiktoken is imported
only when an encoding is built.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import gzip
import hashlib
import importlib.util
import os
import re
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llm_budget.atomic import write_atomically
from pytest_llm_budget.errors import TiktokenSeedError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "CL100K_BASE",
    "O200K_BASE",
    "SEEDABLE_ENCODINGS",
    "encoding_name_for",
    "load_encoding",
    "seed_tiktoken_cache",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
SEEDABLE_ENCODINGS = (O200K_BASE, CL100K_BASE)

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


def _cached(path: Path, sha256: str) -> bytes | None:
    """The cache file's bytes when it exists and hashes to what tiktoken expects, else None."""
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    return None


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


def _bpe_openai_bytes(data_dir: Path, encoding: str, sha256: str) -> bytes:
    """An encoding's BPE file from bpe-openai's data folder, checked against tiktoken's sha256."""
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
    return data


def seed_tiktoken_cache(cache_dir: str | os.PathLike[str]) -> list[str]:
    """Fill a TIKTOKEN_CACHE_DIR from bpe-openai's files, hash-checked; return encodings seeded."""
    data_dir = _bpe_openai_data_dir()
    seeded: list[str] = []
    for encoding in SEEDABLE_ENCODINGS:
        url, sha256 = _blob_source(encoding)
        target = _cache_path(cache_dir, url)
        if _cached(target, sha256) is None:
            write_atomically(target, _bpe_openai_bytes(data_dir, encoding, sha256))
        seeded.append(encoding)
    return seeded


def _verified_bytes(encoding: str) -> bytes:
    """An encoding's BPE file from tiktoken's cache, else from bpe-openai; sha256-checked."""
    url, sha256 = _blob_source(encoding)
    cache_dir = _tiktoken_cache_dir()
    target = _cache_path(cache_dir, url) if cache_dir else None
    data = _cached(target, sha256) if target is not None else None
    if data is not None:
        return data
    data = _bpe_openai_bytes(_bpe_openai_data_dir(), encoding, sha256)
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
