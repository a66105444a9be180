"""Token counting against the real encodings (loaded offline), the fallback, and the policy."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget.tokens import (
    CL100K_BASE,
    NON_TEXT_PART_TOKENS,
    O200K_BASE,
    EstimatePolicy,
    LLMBudgetWarning,
    TiktokenSeedError,
    TokenCounter,
    chars_tokens,
    encoding_name_for,
    encodings,
    fallback_tokens,
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
    return TokenCounter()


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
    sources = encodings._tiktoken_sources()
    assert sources[O200K_BASE] == (O200K_URL, encodings._KNOWN_SOURCES[O200K_BASE][1])
    assert sources[CL100K_BASE] == (CL100K_URL, encodings._KNOWN_SOURCES[CL100K_BASE][1])


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
    monkeypatch.setattr(encodings, "_bpe_openai_data_dir", lambda: fake)
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
def test_counted_input_is_at_least_chars_over_4_and_tiktoken(
    counter: TokenCounter, kind: str
) -> None:
    text = TEXTS[kind]
    measure = counter.measure_texts([text], "gemini-2.5-flash")
    estimate = EstimatePolicy(safety_margin=0).counted_input(measure.tokens, measure.chars)
    assert estimate == max(chars_tokens(len(text)), EXPECTED[("gpt-4o", kind)])
    if kind == "japanese":
        assert estimate > chars_tokens(len(text)) * 2


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


def test_empty_cache_and_no_network_still_loads_from_bpe_openai(
    empty_cache: list[str], tmp_path: Path
) -> None:
    offline = TokenCounter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = {
            (model, kind): offline.count_text(text, model)
            for model in ("gpt-4o", "gpt-4")
            for kind, text in TEXTS.items()
        }
    assert counts == EXPECTED
    assert not offline.fallback_used
    assert empty_cache == []
    assert (tmp_path / "empty" / hashlib.sha1(O200K_URL.encode()).hexdigest()).is_file()


def test_disabled_cache_loads_from_bpe_openai_in_memory(
    empty_cache: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would download on every load
    assert TokenCounter().count_text(TEXTS["japanese"], "gpt-4o") == 48
    assert empty_cache == []


def test_without_bpe_openai_falls_back_and_warns_once(
    empty_cache: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    offline = TokenCounter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = {kind: offline.count_text(text, "gpt-4o") for kind, text in TEXTS.items()}
        offline.count_text("again", "gpt-4")
    budget_warnings = [w for w in caught if issubclass(w.category, LLMBudgetWarning)]
    assert len(budget_warnings) == 1
    assert "bpe-openai" in str(budget_warnings[0].message)
    assert offline.fallback_used
    assert empty_cache == []
    assert counts == {kind: fallback_tokens(text) for kind, text in TEXTS.items()}


def test_corrupt_cache_file_is_replaced_from_bpe_openai(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_cache: list[str]
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    cached = tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()
    cached.write_bytes(b"garbage")
    assert TokenCounter().count_text("héllo", "gpt-4o") == 2
    assert cached.stat().st_size > 1_000_000
    assert empty_cache == []


def test_tampered_bpe_openai_data_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_cache: list[str]
) -> None:
    fake = tmp_path / "data"
    fake.mkdir()
    (fake / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGk= 0\n"))
    monkeypatch.setattr(encodings, "_bpe_openai_data_dir", lambda: fake)
    with pytest.warns(LLMBudgetWarning, match="sha256"):
        assert TokenCounter().count_text("hello", "gpt-4o") == fallback_tokens("hello") == 2
    assert empty_cache == []


HARD_TEXTS = {
    "english": TEXTS["english"],
    "german": TEXTS["german"],
    "japanese": TEXTS["japanese"],
    "code": TEXTS["code"],
    "chinese": "根据东京都的天气预报，明天上午开始下雨，下午将有伴随雷电的大雨。",  # noqa: RUF001
    "korean": "서울의 날씨는 내일 오전부터 비가 내리고 오후에는 천둥을 동반한 강한 비가 옵니다.",
    "russian": EXTRA_TEXTS[3],
    "emoji": EXTRA_TEXTS[1],
    "punctuation": EXTRA_TEXTS[2],
    "json": EXTRA_TEXTS[4],
    "hex": "4f3a9c2e7b1d8f6a0c5e9b2d4a7f1e3c8b6d0a9e2f5c7b1d4e8a3f6c9b2e5d7a",
    "numbers": "3.14159265358979323846 2718281828 1234567890 42 7",
}


@pytest.mark.parametrize("kind", sorted(HARD_TEXTS))
def test_fallback_is_a_far_better_bound_than_bytes(counter: TokenCounter, kind: str) -> None:
    """Stated margin: at least the o200k count, at most 2x it (bytes were up to 5x here)."""
    text = HARD_TEXTS[kind]
    real = counter.count_text(text, "gpt-4o")
    estimate = fallback_tokens(text)
    assert real <= estimate <= 2 * real
    assert estimate <= len(text.encode("utf-8"))


def test_fallback_pieces() -> None:
    assert fallback_tokens("") == 0
    assert fallback_tokens("hello world") == 4  # two ASCII words of 5 letters
    assert fallback_tokens("1234567") == 3  # digits go by three
    assert fallback_tokens("東京") == 2  # one per CJK character
    assert fallback_tokens("🙂") == 2  # astral characters count two
    assert fallback_tokens("a  \n b") == 3


def test_policy_counted_input_rule() -> None:
    policy = EstimatePolicy()
    assert policy.counted_input(100, 100) == 120
    assert policy.counted_input(10, 400) == 120
    assert policy.counted_input(10, 401) == 122
    assert policy.counted_input(100, 0, grounded=True) == 138
    assert policy.counted_input(0, 0) == 0
    assert EstimatePolicy(safety_margin=0).counted_input(7, 0) == 7
    assert chars_tokens(401) == 101 and chars_tokens(0) == 0


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


def test_tiktoken_is_imported_lazily_and_never_for_openai() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pytest_llm_budget.tokens as t, pytest_llm_budget.providers.openai as p; "
        "body = b'{\"model\": \"gpt-5\", \"messages\": [{\"content\": \"hi\"}]}'; "
        "e = p.OpenAIProvider().estimate('/v1/chat/completions', body, t.TokenCounter(), "
        "t.EstimatePolicy()); assert e.total == 7001, e; "
        "bad = {'tiktoken', 'openai', 'google.genai', 'httpx', 'httpx2'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
