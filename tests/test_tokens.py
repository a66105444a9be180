"""Token counting against the real encodings (seeded offline), the fallback, and the policy."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget import tokens
from pytest_llm_budget.tokens import (
    CL100K_BASE,
    NON_TEXT_PART_TOKENS,
    O200K_BASE,
    EstimatePolicy,
    LLMBudgetWarning,
    TiktokenSeedError,
    TokenCounter,
    encoding_name_for,
    seed_tiktoken_cache,
)

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

TEXTS = {
    "english": (
        "The quick brown fox jumps over the lazy dog. Please summarise the following quarterly "
        "report in three bullet points, focusing on revenue growth and risks."
    ),
    "german": (
        "Größenänderungen der Straßenüberführung müssen vom Bauausschuss genehmigt werden; "
        "die Ausschreibung endet übermorgen um 12:00 Uhr."
    ),
    "japanese": (
        "東京都の天気予報によると、明日は午前中から雨が降り、午後には雷を伴う激しい雨になる"
        "見込みです。外出の際は傘を忘れずに。"
    ),
    "code": (
        "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
        "    return fib(n - 1) + fib(n - 2)\n\nprint([fib(i) for i in range(10)])\n"
    ),
}
EXPECTED = {
    ("gpt-4o", "english"): 29,
    ("gpt-4o", "german"): 33,
    ("gpt-4o", "japanese"): 48,
    ("gpt-4o", "code"): 47,
    ("gpt-4", "english"): 29,
    ("gpt-4", "german"): 38,
    ("gpt-4", "japanese"): 71,
    ("gpt-4", "code"): 47,
}
EXTRA_TEXTS = [
    "鬱蒼とした森の奥で、麒麟と鳳凰が邂逅し、魑魅魍魎が跋扈する。",
    "🙂🚀🔥👍🏽🧪🦄",
    "a,b;c.d!e?f:g|h&i^j~k",
    "Пожалуйста, подготовьте отчёт о продажах за третий квартал к пятнице.",  # noqa: RUF001
    '{"a":[1,2,3],"b":{"c":null,"d":true},"e":"x\\ny"}',
    "<|endoftext|> is counted as text",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A seeded TIKTOKEN_CACHE_DIR for the whole module."""
    path = tmp_path_factory.mktemp("tiktoken-cache")
    seed_tiktoken_cache(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def counter(cache_dir: Path) -> TokenCounter:
    """A counter that can only use the seeded cache."""
    return TokenCounter(allow_download=False)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Point tiktoken at an empty cache and record any attempt to reach the network."""
    import tiktoken.load

    attempts: list[str] = []

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(url))
        raise OSError("network disabled in this test")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return attempts


def test_seed_writes_tiktoken_cache_layout(cache_dir: Path) -> None:
    for url in (O200K_URL, CL100K_URL):
        assert (cache_dir / hashlib.sha1(url.encode()).hexdigest()).is_file()
    assert seed_tiktoken_cache(cache_dir) == [O200K_BASE, CL100K_BASE]


def test_seeded_cache_is_read_by_tiktoken_without_network(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.load

    def fail(url: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {url}")

    monkeypatch.setattr(tiktoken.load, "read_file", fail)
    expected = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    ranks = tiktoken.load.load_tiktoken_bpe(O200K_URL, expected_hash=expected)
    assert len(ranks) == 199998


def test_expected_hashes_are_read_from_tiktoken_ext() -> None:
    sources = tokens._tiktoken_sources()
    assert sources[O200K_BASE] == (O200K_URL, tokens._KNOWN_SOURCES[O200K_BASE][1])
    assert sources[CL100K_BASE] == (CL100K_URL, tokens._KNOWN_SOURCES[CL100K_BASE][1])


def test_seed_without_bpe_openai_raises_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TiktokenSeedError, match="pip install bpe-openai"):
        seed_tiktoken_cache(tmp_path)


def test_seed_hash_mismatch_raises_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "data"
    fake.mkdir()
    for name in (O200K_BASE, CL100K_BASE):
        (fake / f"{name}.tiktoken.gz").write_bytes(gzip.compress(b"not a vocabulary\n"))
    monkeypatch.setattr(tokens, "_bpe_openai_data_dir", lambda: fake)
    target = tmp_path / "cache"
    with pytest.raises(TiktokenSeedError, match="sha256"):
        seed_tiktoken_cache(target)
    assert not target.exists() or not any(target.iterdir())


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K_BASE),
        ("gpt-4o-mini-2024-07-18", O200K_BASE),
        ("chatgpt-4o-latest", O200K_BASE),
        ("gpt-4.1-nano", O200K_BASE),
        ("gpt-5", O200K_BASE),
        ("gpt-5-mini", O200K_BASE),
        ("o1-preview", O200K_BASE),
        ("o3-mini", O200K_BASE),
        ("o4-mini", O200K_BASE),
        ("gemini-2.5-flash", O200K_BASE),
        ("models/gemini-2.0-flash", O200K_BASE),
        ("my-azure-deployment", O200K_BASE),
        ("gpt-4", CL100K_BASE),
        ("gpt-4-0613", CL100K_BASE),
        ("gpt-4-turbo", CL100K_BASE),
        ("gpt-3.5-turbo", CL100K_BASE),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", CL100K_BASE),
        ("gpt-35-turbo", CL100K_BASE),
        ("text-embedding-3-small", CL100K_BASE),
        ("text-embedding-ada-002", CL100K_BASE),
    ],
)
def test_encoding_name_for(model: str, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


@pytest.mark.parametrize(("model", "kind"), sorted(EXPECTED))
def test_count_text_matches_real_encodings(counter: TokenCounter, model: str, kind: str) -> None:
    assert counter.count_text(TEXTS[kind], model) == EXPECTED[(model, kind)]
    assert not counter.fallback_used


@pytest.mark.parametrize("kind", sorted(TEXTS))
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_input_estimate_is_at_least_chars_over_4_and_tiktoken(
    counter: TokenCounter, model: str, kind: str
) -> None:
    text = TEXTS[kind]
    measure = counter.measure_texts([text], model)
    estimate = EstimatePolicy().input_tokens(measure.tokens, measure.chars)
    assert estimate >= math.ceil(len(text) / 4)
    assert estimate >= EXPECTED[(model, kind)]
    if kind == "japanese":
        assert estimate > math.ceil(len(text) / 4) * 2


def test_message_overhead_follows_cookbook(counter: TokenCounter) -> None:
    import tiktoken

    enc = tiktoken.get_encoding(O200K_BASE)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "name": "bob", "content": "Hi"},
    ]
    words = ["system", "You are terse.", "user", "bob", "Hi"]
    expected = sum(len(enc.encode(w)) for w in words) + 3 * 2 + 1 + 3
    assert counter.count_messages(messages, "gpt-4o") == expected == 18
    assert counter.count_messages([], "gpt-4o") == 3


def test_content_parts_count_text_and_allow_for_images(counter: TokenCounter) -> None:
    text_only = [{"role": "user", "content": "Describe this picture."}]
    with_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture."},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    plain = counter.count_messages(text_only, "gpt-4o")
    assert counter.count_messages(with_parts, "gpt-4o") == plain + NON_TEXT_PART_TOKENS
    chars = counter.measure_messages(with_parts, "gpt-4o").chars
    assert chars == len("user") + len("Describe this picture.")


def test_tool_calls_are_counted(counter: TokenCounter) -> None:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert counter.count_messages([call], "gpt-4o") > 3 + 3 + 10


def test_offline_empty_cache_falls_back_and_warns_once(empty_cache: list[str]) -> None:
    offline = TokenCounter(allow_download=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = {
            (model, kind): offline.count_text(text, model)
            for model in ("gpt-4o", "gpt-4")
            for kind, text in TEXTS.items()
        }
        offline.count_text("again", "gpt-4o")
    budget_warnings = [w for w in caught if issubclass(w.category, LLMBudgetWarning)]
    assert len(budget_warnings) == 1
    assert "seed_tiktoken_cache" in str(budget_warnings[0].message)
    assert offline.fallback_used
    assert empty_cache == []
    for key, real in EXPECTED.items():
        assert counts[key] >= real


def test_download_is_attempted_with_a_timeout_then_falls_back(
    empty_cache: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    timeouts: list[float] = []

    def refuse(url: str, timeout: float) -> Any:
        timeouts.append(timeout)
        raise OSError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    online = TokenCounter(download_timeout_s=0.5)
    with pytest.warns(LLMBudgetWarning, match="OSError: offline"):
        assert online.count_text("hello world", "gpt-4o") == len("hello world")
    assert timeouts == [0.5]
    assert empty_cache == []


def test_corrupt_cache_file_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_cache: list[str]
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    (tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()).write_bytes(b"garbage")
    with pytest.warns(LLMBudgetWarning):
        assert TokenCounter(allow_download=False).count_text("héllo", "gpt-4o") == 6
    assert empty_cache == []


def test_fallback_is_never_below_real_counts_on_hard_texts(
    counter: TokenCounter, empty_cache: list[str]
) -> None:
    offline = TokenCounter(allow_download=False)
    with pytest.warns(LLMBudgetWarning):
        for text in [*TEXTS.values(), *EXTRA_TEXTS]:
            for model in ("gpt-4o", "gpt-4"):
                assert offline.count_text(text, model) >= counter.count_text(text, model)


def test_policy_input_rule() -> None:
    policy = EstimatePolicy()
    assert policy.input_tokens(100, 100) == 120
    assert policy.input_tokens(10, 400) == 120
    assert policy.input_tokens(10, 401) == 122
    assert policy.input_tokens(100, 0, grounded=True) == 138
    assert policy.input_tokens(0, 0) == 0
    assert EstimatePolicy(safety_margin=0).input_tokens(7, 0) == 7


def test_policy_output_is_exact_or_default() -> None:
    policy = EstimatePolicy()
    assert policy.output_tokens(None) == 7000
    assert policy.output_tokens(512) == 512
    assert EstimatePolicy(default_output_tokens=100).output_tokens(None) == 100


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="safety_margin"):
        EstimatePolicy(safety_margin=-0.1)
    with pytest.raises(ValueError, match="default_output_tokens"):
        EstimatePolicy(default_output_tokens=-1)


def test_tiktoken_is_imported_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pytest_llm_budget.tokens, pytest_llm_budget.providers; "
        "bad = {'tiktoken', 'openai', 'google.genai', 'httpx', 'httpx2'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
