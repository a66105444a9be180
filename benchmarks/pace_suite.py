"""The pace benchmark's test suite, generated from a fixed seed into a folder of its own.

25 tests, 28 calls: prompts of 200-1200 characters in English, German, Japanese and code,
max output 300-1500 tokens, OpenAI chat + Responses and Gemini generateContent, sync, async
(`asyncio.run`, one test with two concurrent calls) and streaming. Every test carries
`@pytest.mark.llm_budget(tokens=<what the whole test declares>, vendor=...)`.

The Anthropic rows run a suite of their own (`build_anthropic_suite`, so that the rows above
keep their figures comparable): 20 tests, 22 calls of the Messages API to two Claude models of
one class, sync, async (one test with two concurrent calls) and streamed, from the same prompt
pools and max output range.

The folder gets `cases.json` (every call's prompt and limits), `pace_calls.py` (how each kind of
call is made, from benchmarks/pace_suite_calls.py), `conftest.py` (clients: the plugin's fixtures
when it is on, plain SDK clients built from the environment when it is off, plus the optional
limiter of the alternatives, from benchmarks/pace_suite_conftest.py) and six test files.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "SEED",
    "Call",
    "Suite",
    "TestCase",
    "build_anthropic_suite",
    "build_suite",
    "describe",
    "mean_weight",
    "write_suite",
]

SEED = 20261128
FILES = 6

_EN = (
    "Summarise the following customer complaint in two sentences and name the product.",
    "The delivery arrived three days late and the box was damaged on one corner.",
    "Explain the difference between a sliding window and a token bucket rate limiter.",
    "List the risks of running integration tests against a paid API in CI.",
    "Our release notes must mention every breaking change in the configuration format.",
    "Translate the tone of this message into something calmer and more professional.",
    "Write a short answer a support agent could send to a worried first-time user.",
    "Which of the following statements about HTTP status 429 are correct, and why?",
)
_DE = (
    "Fasse die folgende Beschwerde in zwei Sätzen zusammen und nenne das Produkt.",
    "Die Lieferung kam drei Tage zu spät, und der Karton war an einer Ecke beschädigt.",
    "Erkläre den Unterschied zwischen einem gleitenden Fenster und einem Token-Bucket.",
    "Welche Risiken hat es, Integrationstests gegen eine kostenpflichtige API zu fahren?",
    "Die Versionshinweise müssen jede inkompatible Änderung der Konfiguration nennen.",
    "Formuliere die Nachricht freundlicher, aber ohne den Inhalt zu verändern.",
    "Schreibe eine kurze Antwort für einen besorgten Kunden, der zum ersten Mal bestellt.",
)
_JA = (
    "次の苦情を二文で要約し、製品名を挙げてください。",
    "配送は三日遅れで届き、箱の角が一か所へこんでいました。",
    "スライディングウィンドウとトークンバケットの違いを説明してください。",
    "有料APIに対して継続的インテグレーションでテストを実行するリスクを挙げてください。",
    "リリースノートには設定形式の互換性のない変更をすべて記載する必要があります。",
    "このメッセージをもっと落ち着いた丁寧な表現に書き換えてください。",
    "初めて注文したお客様への短い返信を書いてください。",
)
_CODE = (
    "def window_sum(events, now, width):\n"
    "    return sum(c for t, c in events if t > now - width)\n",
    "class Limiter:\n    def __init__(self, budget):\n"
    "        self.budget = budget\n        self.used = 0\n",
    "for attempt in range(retries):\n    try:\n        return send(request)\n"
    "    except RateLimited as e:\n        time.sleep(e.retry_after)\n",
    "async def fetch_all(client, prompts):\n"
    "    return await asyncio.gather(*(client.ask(p) for p in prompts))\n",
    "SELECT vendor, model, SUM(tokens) FROM calls GROUP BY vendor, model ORDER BY 3 DESC;\n",
    "if response.status_code == 429:\n"
    "    delay = float(response.headers.get('retry-after', '1'))\n",
)
_CODE_ASK = "Review this code and point out one bug or risk:\n"
_POOLS = {"en": _EN, "de": _DE, "ja": _JA, "code": _CODE}

#: (kind, vendor, model, calls in the test); 22 one-call tests and 3 two-call tests.
_PLAN: tuple[tuple[str, str, str, int], ...] = (
    *[("chat", "openai", "gpt-4o-mini", 1)] * 4,
    ("chat", "openai", "gpt-5-mini", 1),
    *[("chat_stream", "openai", "gpt-4o-mini", 1)] * 4,
    *[("chat_async", "openai", "gpt-4.1", 1)] * 2,
    *[("responses", "openai", "gpt-4.1", 1)] * 3,
    *[("responses_stream", "openai", "gpt-5", 1)] * 2,
    *[("gemini", "gemini", "gemini-2.5-flash", 1)] * 3,
    *[("gemini_stream", "gemini", "gemini-2.5-flash", 1)] * 2,
    ("gemini_async", "gemini", "gemini-2.5-pro", 1),
    ("chat", "openai", "gpt-4o-mini", 2),  # two calls one after the other
    ("chat_async_pair", "openai", "gpt-4o-mini", 2),  # two calls at once (asyncio.gather)
    ("gemini", "gemini", "gemini-2.5-flash", 2),
)
_MAX_TOKENS = (300, 600, 800, 1000, 1200, 1500, 1500)

#: The Anthropic suite's plan: 18 one-call tests and 2 two-call tests (one sequential, one
#: concurrent).
ANTHROPIC_SEED = 20261202
_ANTHROPIC_PLAN: tuple[tuple[str, str, str, int], ...] = (
    *[("claude", "anthropic", "claude-sonnet-4-5", 1)] * 6,
    *[("claude", "anthropic", "claude-sonnet-4", 1)] * 2,
    *[("claude_stream", "anthropic", "claude-sonnet-4-5", 1)] * 5,
    *[("claude_async", "anthropic", "claude-sonnet-4-5", 1)] * 5,
    ("claude", "anthropic", "claude-sonnet-4-5", 2),
    ("claude_async_pair", "anthropic", "claude-sonnet-4", 2),
)


@dataclass(frozen=True)
class Call:
    """One LLM call of the suite."""

    prompt: str
    max_tokens: int
    model: str
    lang: str

    @property
    def weight(self) -> int:
        """What a careful user estimates for it: ceil(chars / 4) + max output tokens."""
        return math.ceil(len(self.prompt) / 4) + self.max_tokens


@dataclass(frozen=True)
class TestCase:
    """One test: its kind of call, its vendor, its calls and the tokens its marker declares."""

    name: str
    kind: str
    vendor: str
    calls: tuple[Call, ...]

    @property
    def declared(self) -> int:
        """The marker's `tokens=`: the whole test's estimate, rounded up to a hundred."""
        return int(math.ceil(sum(c.weight for c in self.calls) / 100) * 100)


@dataclass(frozen=True)
class Suite:
    """The generated suite (the same for a given seed)."""

    seed: int
    tests: tuple[TestCase, ...]

    def calls(self, vendor: str | None = None) -> list[Call]:
        """Every call, optionally of one vendor."""
        return [c for t in self.tests if vendor in (None, t.vendor) for c in t.calls]

    def files(self) -> list[list[TestCase]]:
        """Tests dealt round-robin into the test files."""
        return [list(self.tests[i::FILES]) for i in range(FILES)]


def _prompt(rng: random.Random, lang: str, length: int) -> str:
    """Sentences of one language (or code snippets) until `length` characters."""
    pool = _POOLS[lang]
    text = _CODE_ASK if lang == "code" else ""
    sep = "" if lang in ("ja", "code") else " "
    while len(text) < length:
        text += rng.choice(pool) + sep
    return text[:length].rstrip() or text[:length]


def build_suite(
    seed: int = SEED, plan_of: Sequence[tuple[str, str, str, int]] = _PLAN
) -> Suite:
    """The suite for `seed`: kinds shuffled, languages, lengths and max tokens drawn."""
    rng = random.Random(seed)
    plan = list(plan_of)
    rng.shuffle(plan)
    langs = tuple(_POOLS)
    tests = []
    for index, (kind, vendor, model, n) in enumerate(plan, start=1):
        calls = tuple(
            Call(
                prompt=_prompt(rng, lang := rng.choice(langs), rng.randint(200, 1200)),
                max_tokens=rng.choice(_MAX_TOKENS),
                model=model,
                lang=lang,
            )
            for _ in range(n)
        )
        name = f"t{index:02d}_{kind}_{'_'.join(c.lang for c in calls)}"
        tests.append(TestCase(name=name, kind=kind, vendor=vendor, calls=calls))
    return Suite(seed=seed, tests=tuple(tests))


def build_anthropic_suite(seed: int = ANTHROPIC_SEED) -> Suite:
    """The Anthropic rows' suite (Messages API calls only), drawn as `build_suite` draws."""
    return build_suite(seed, _ANTHROPIC_PLAN)


_HEADER = '''"""Generated by benchmarks/pace_suite.py (seed {seed}); do not edit."""

from __future__ import annotations

import pytest

import pace_calls

CASES = pace_calls.load_cases()
'''

_TEST = """

@pytest.mark.llm_budget(tokens={declared}, vendor="{vendor}")
def test_{name}({fixture}, gate):
    pace_calls.{kind}({fixture}, gate, CASES["{name}"])
"""

_FIXTURE = {"openai": "oa", "gemini": "gem", "anthropic": "cl"}
_ASYNC_FIXTURE = {
    "chat_async": "aoa", "chat_async_pair": "aoa", "gemini_async": "gem",
    "claude_async": "acl", "claude_async_pair": "acl",
}


def write_suite(suite: Suite, folder: Path) -> list[list[str]]:
    """Write the suite into `folder`; returns the test files' names, split for two processes."""
    here = Path(__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here / "pace_suite_calls.py", folder / "pace_calls.py")
    shutil.copyfile(here / "pace_suite_conftest.py", folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\n")
    cases = {t.name: [asdict(c) for c in t.calls] for t in suite.tests}
    (folder / "cases.json").write_text(json.dumps(cases, ensure_ascii=False, indent=1))
    names = []
    for index, tests in enumerate(suite.files()):
        body = _HEADER.format(seed=suite.seed)
        for t in tests:
            fixture = _ASYNC_FIXTURE.get(t.kind, _FIXTURE[t.vendor])
            body += _TEST.format(
                declared=t.declared, vendor=t.vendor, name=t.name, kind=t.kind, fixture=fixture
            )
        name = f"test_pace_{index}.py"
        (folder / name).write_text(body)
        names.append(name)
    return [names[0::2], names[1::2]]


def describe(suite: Suite, budget: float) -> dict[str, object]:
    """Figures about the suite for the results file."""
    by_lang: dict[str, int] = {}
    for c in suite.calls():
        by_lang[c.lang] = by_lang.get(c.lang, 0) + 1
    return {
        "seed": suite.seed,
        "tests": len(suite.tests),
        "calls": len(suite.calls()),
        "calls_by_vendor": {
            v: len(suite.calls(v)) for v in ("openai", "gemini", "anthropic") if suite.calls(v)
        },
        "calls_by_language": by_lang,
        "kinds": sorted({t.kind for t in suite.tests}),
        "prompt_chars": [
            min(len(c.prompt) for c in suite.calls()),
            max(len(c.prompt) for c in suite.calls()),
        ],
        "estimated_openai_charge": sum(c.weight for c in suite.calls("openai")),
        "budget": budget,
    }


def mean_weight(calls: Sequence[Call]) -> float:
    """Average estimated charge of some calls (what a hand-tuned calls/min limiter is set from)."""
    return sum(c.weight for c in calls) / len(calls) if calls else 0.0
