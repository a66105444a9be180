"""Dollars: prices equal genai-prices' own, caps never pass, unknown models, replays, reports."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from redis_server import RedisServer, redis_server  # noqa: F401 - fixture

from pytest_llm_budget import CostCapExceeded
from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.backends.ledger import IDLE_TTL, NANO
from pytest_llm_budget.backends.redis import RedisBackend
from pytest_llm_budget.cost import CostWarning, PriceBook, PriceFileError, load_price_file, usd
from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec
from pytest_llm_budget.providers.base import Usage
from pytest_llm_budget.providers.gemini import GeminiProvider
from pytest_llm_budget.providers.openai import OpenAIProvider
from pytest_llm_budget.records import CallRecord
from pytest_llm_budget.routing import clients
from pytest_llm_budget.session import TestContext
from pytest_llm_budget.settings import Settings, SettingsError

PROVIDER_ID = {"openai": "openai", "gemini": "google"}
REPLY = 200  # output tokens of every emulator reply in the cap tests


def calc(record: CallRecord) -> float:
    """genai-prices' own price of a record's reported usage."""
    counts: dict[str, int] = {
        "input_tokens": record.prompt_tokens,
        "output_tokens": record.completion_tokens,
    }
    if record.cached_tokens:
        counts["cache_read_tokens"] = record.cached_tokens
    if record.reasoning_tokens:
        counts["output_reasoning_tokens"] = record.reasoning_tokens
    context = {"service_tier": record.service_tier} if record.service_tier else None
    price = calc_price(
        PriceUsage(**counts),
        model_ref=record.model,
        provider_id=PROVIDER_ID[record.vendor],
        price_context=context,
    )
    return float(price.total_price)


def fixed_replies(emu: Emulator, tokens: int = REPLY) -> None:
    """Every reply exactly `tokens` long (capped by the request's output budget)."""
    emu.configure(
        EmulatorConfig(
            window=1.0,
            openai=LimitSpec(tpm=1_000_000, rpm=None),
            gemini=LimitSpec(tpm=1_000_000, rpm=None),
            reply_min_tokens=tokens,
            reply_max_tokens=tokens,
        )
    )


# -- prices -----------------------------------------------------------------------------------
def test_every_emulator_model_has_a_price() -> None:
    config = EmulatorConfig()
    book = PriceBook()
    for vendor, models in (("openai", config.models), ("gemini", config.gemini_models)):
        for model in models:
            assert book.worst_case(vendor, model, 1000, 1000), f"{vendor}:{model}"


def test_usd_has_four_significant_digits() -> None:
    assert usd(0.0012345) == "$0.001234" or usd(0.0012345) == "$0.001235"
    assert usd(1.23456) == "$1.235"
    assert usd(12.3456) == "$12.35"
    assert usd(1234.56) == "$1,235"
    assert usd(9.99996) == "$10.00"
    assert usd(0) == "$0" and usd(None) == "unknown"


CHAT_WITH_DETAILS = {
    "model": "gpt-5",
    "service_tier": "default",
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 900,
        "total_tokens": 2900,
        "prompt_tokens_details": {"cached_tokens": 1536},
        "completion_tokens_details": {"reasoning_tokens": 640},
    },
}
RESPONSES_WITH_DETAILS = {
    "model": "gpt-4.1",
    "service_tier": "flex",
    "usage": {
        "input_tokens": 3000,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 3500,
    },
}
GEMINI_WITH_DETAILS = {
    "usageMetadata": {
        "promptTokenCount": 5000,
        "cachedContentTokenCount": 4096,
        "candidatesTokenCount": 300,
        "thoughtsTokenCount": 1200,
        "totalTokenCount": 6500,
    }
}


def test_cached_and_reasoning_tokens_are_read_and_priced_as_genai_prices_does(
    make_budget: Any,
) -> None:
    costs = make_budget().costs
    chat = OpenAIProvider().usage_from_json(json.dumps(CHAT_WITH_DETAILS).encode())
    assert chat == Usage(2000, 900, 2900, 1536, 640, "default")
    responses = OpenAIProvider().usage_from_json(json.dumps(RESPONSES_WITH_DETAILS).encode())
    assert responses == Usage(3000, 500, 3500, 1024, 0, "flex")
    gemini = GeminiProvider().usage_from_json(json.dumps(GEMINI_WITH_DETAILS).encode())
    assert gemini == Usage(5000, 1500, 6500, 4096, 1200)
    for vendor, model, usage in (
        ("openai", "gpt-5", chat),
        ("openai", "gpt-4.1", responses),
        ("gemini", "gemini-2.5-pro", gemini),
    ):
        assert usage is not None
        record = CallRecord(
            0, "t", vendor, model, 0, usage.prompt_tokens, usage.completion_tokens, "ok", 1, 0,
            cached_tokens=usage.cached_tokens, reasoning_tokens=usage.reasoning_tokens,
            service_tier=usage.service_tier,
        )
        price = costs.price(vendor, model, usage)
        assert price == calc(record)
        plain = Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        uncached = costs.price(vendor, model, plain)
        assert price is not None and uncached is not None and price < uncached


def test_preflight_worst_case_prices_every_token_as_output() -> None:
    from pytest_llm_budget.suite.preflight import TestEstimate, cost_note

    book = PriceBook()
    tests = [
        TestEstimate("a", 1000, "openai", "gpt-5"),
        TestEstimate("b", 1000, "gemini", "gemini-2.5-pro"),
        TestEstimate("c", 1000, "openai", None),
        TestEstimate("d", 1000, "openai", "gpt-5", replayed=True),
    ]
    assert cost_note(tests, book, 0.015) == (
        "LLM budget preflight: worst-case cost $0.02000 (1 of 3 live tests of unknown model or "
        "price not included; --llm-max-cost $0.01500: calls that would pass it are refused)"
    )
    assert cost_note(tests[2:3], book).endswith(
        "cost unknown (no live test declares a model with a known price: "
        "llm_budget(vendor=, model=) or llm_model)"
    )
    assert cost_note(tests[3:], book) is None


# -- live calls through the real SDKs, against the emulator --------------------------------------
def test_openai_chat_responses_and_streams_cost_what_genai_prices_says(
    emu: Any, make_budget: Any
) -> None:
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=50
    )
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}],
        max_completion_tokens=50, stream=True, stream_options={"include_usage": True},
    )
    list(stream)
    client.responses.create(model="gpt-4.1", input="responses", max_output_tokens=50)
    with client.responses.stream(model="gpt-5-mini", input="rs", max_output_tokens=50) as events:
        list(events)

    async def chat_async() -> None:
        aclient = clients.fixture_client("async_openai_client", budget)
        await aclient.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async"}],
            max_completion_tokens=50,
        )

    asyncio.run(chat_async())
    records = budget.calls.records()
    assert [r.model for r in records] == ["gpt-5", "gpt-4o", "gpt-4.1", "gpt-5-mini", "gpt-4o-mini"]
    for record in records:
        assert record.status == "ok" and record.completion_tokens > 0
        assert record.cost_usd == calc(record), record
    usage = budget.usage("<session>")
    assert usage.cost_usd == pytest.approx(sum(calc(r) for r in records))
    assert budget.calls.totals().cost_usd == pytest.approx(usage.cost_usd)


def test_gemini_sync_async_and_streams_cost_what_genai_prices_says(
    emu: Any, make_budget: Any
) -> None:
    budget = make_budget()
    client = clients.fixture_client("gemini_client", budget)
    client.models.generate_content(model="gemini-2.5-pro", contents="hi")
    list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="stream"))

    async def main() -> None:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="aio")
        stream = await client.aio.models.generate_content_stream(
            model="gemini-2.5-pro", contents="aio stream"
        )
        [chunk async for chunk in stream]

    asyncio.run(main())
    records = budget.calls.records()
    assert len(records) == 4
    for record in records:
        assert record.vendor == "gemini" and record.status == "ok"
        assert record.cost_usd == calc(record), record


# -- the caps ---------------------------------------------------------------------------------
def ask(client: Any, text: str, max_tokens: int) -> Any:
    return client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": text}],
        max_completion_tokens=max_tokens,
    )


def test_a_call_whose_worst_case_would_pass_the_cap_is_not_sent(
    emu: Any, make_budget: Any
) -> None:
    fixed_replies(emu)
    budget = make_budget(max_cost=0.0055)  # two 200-token gpt-5 replies ($0.002 each) fit
    client = clients.fixture_client("openai_client", budget)
    ask(client, "one", REPLY)
    ask(client, "two", REPLY)
    with pytest.raises(CostCapExceeded) as refused:
        ask(client, "three", REPLY)
    err = refused.value
    assert err.code == "LLM_COST_CAP" and "--llm-max-cost=$0.005500" in str(err)
    details = err.details
    assert details["spent_usd"] + details["held_usd"] + details["would_cost_usd"] > 0.0055
    assert details["spent_usd"] == pytest.approx(budget.calls.totals().cost_usd, abs=1e-9)
    assert len(emu.log) == 2  # the refused call never reached the provider
    ask(client, "small", 5)  # a call that still fits proceeds
    records = budget.calls.records()
    assert [r.status for r in records] == ["ok", "ok", "cost_cap", "ok"]
    assert records[2].cost_usd == 0 and records[2].error_code == "LLM_COST_CAP"
    totals = budget.calls.totals()
    assert totals.cost_refused == 1 and totals.cost_usd <= 0.0055
    state = budget.costs.run_state()
    assert state is not None and not state.holds and state.refused == 1
    assert state.spent == sum(-(-Decimal(str(r.cost_usd)) * NANO // 1) for r in records)


def test_async_calls_are_capped_and_a_stream_without_usage_keeps_its_worst_case(
    emu: Any, make_budget: Any
) -> None:
    fixed_replies(emu)
    budget = make_budget(max_cost=0.005)
    client = clients.fixture_client("async_openai_client", budget)

    async def main() -> None:
        stream = await client.chat.completions.create(  # no include_usage: no usage arrives
            model="gpt-5", messages=[{"role": "user", "content": "s"}],
            max_completion_tokens=REPLY, stream=True,
        )
        [chunk async for chunk in stream]
        await client.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "t"}],
            max_completion_tokens=REPLY,
        )
        with pytest.raises(CostCapExceeded):
            await client.chat.completions.create(
                model="gpt-5", messages=[{"role": "user", "content": "u"}],
                max_completion_tokens=REPLY,
            )

    asyncio.run(main())
    streamed, plain, refused = budget.calls.records()
    assert streamed.prompt_tokens == streamed.completion_tokens == 0
    # charged its worst case: the estimate's input plus the whole output budget, at gpt-5 rates
    assert streamed.cost_usd is not None and streamed.cost_usd > REPLY * 10 / 1e6
    assert plain.cost_usd == calc(plain) and refused.status == "cost_cap"
    state = budget.costs.run_state()
    assert state is not None and not state.holds
    assert state.spent / NANO == pytest.approx(streamed.cost_usd + plain.cost_usd, abs=1e-8)


def test_an_app_built_client_gets_the_refusal_as_a_final_429(emu: Any, make_budget: Any) -> None:
    import openai

    from pytest_llm_budget.routing import intercept

    fixed_replies(emu)
    budget = make_budget(max_cost=0.003)
    intercept.install(budget)
    try:
        app = openai.OpenAI()  # built by the code under test, with the SDK's own retries
        ask(app, "fits", REPLY)
        with pytest.raises(openai.RateLimitError, match=r"\[LLM_COST_CAP\]") as refused:
            ask(app, "would pass the cap", REPLY)
    finally:
        intercept.uninstall()
    assert refused.value.response.headers["x-llm-budget-error"] == "LLM_COST_CAP"
    assert len(emu.log) == 1  # refused before sending, and the SDK did not retry
    assert [r.status for r in budget.calls.records()] == ["ok", "cost_cap"]


def test_the_per_test_cap_counts_each_test_apart(emu: Any, make_budget: Any) -> None:
    fixed_replies(emu)
    budget = make_budget(max_cost_per_test=0.0045)
    client = clients.fixture_client("openai_client", budget)
    budget.test = TestContext(nodeid="test_a")
    ask(client, "a1", REPLY)
    ask(client, "a2", REPLY)
    with pytest.raises(CostCapExceeded, match="--llm-max-cost-per-test") as refused:
        ask(client, "a3", REPLY)
    assert refused.value.details["scope"] == "test"
    budget.test = TestContext(nodeid="test_b")
    ask(client, "b1", REPLY)
    assert budget.usage("test_a").cost_usd <= 0.0045 < budget.usage("test_a").cost_usd + 0.002
    assert budget.usage("test_b").calls == 1 and budget.usage("test_b").cost_usd > 0
    assert budget.costs.test_spent("test_a") == pytest.approx(
        budget.usage("test_a").cost_usd, abs=1e-8
    )


def test_provider_refusals_cost_nothing_and_free_their_hold(emu: Any, make_budget: Any) -> None:
    emu.configure(EmulatorConfig(window=1.0, openai=LimitSpec(tpm=1_000_000, rpm=None),
                                 insufficient_quota=True))
    budget = make_budget(max_cost=1.0)
    client = clients.fixture_client("openai_client", budget)
    with pytest.raises(Exception, match="LLM_QUOTA_EXHAUSTED"):
        ask(client, "quota", 100)
    (record,) = budget.calls.records()
    assert record.cost_usd == 0
    state = budget.costs.run_state()
    assert state is not None and state.spent == 0 and not state.holds


# -- the ledger, on every backend ---------------------------------------------------------------
@pytest.fixture(params=["memory", "file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryBackend()
    elif request.param == "file":
        yield FileBackend(tmp_path / "state.json")
    else:
        server = request.getfixturevalue("redis_server")
        b = RedisBackend.from_url(server.url, prefix=f"t-{uuid.uuid4().hex[:8]}")
        yield b
        b.close()


def test_ledger_holds_refuses_settles_and_expires(backend: Any) -> None:
    now = 1000.0
    assert backend.cost_hold("run:x", "a", 600, 1000, now).admitted
    answer = backend.cost_hold("run:x", "b", 500, 1000, now)
    assert (answer.admitted, answer.spent, answer.held) == (False, 0, 600)
    assert backend.cost_settle("run:x", "a", 250, now) == 250
    assert backend.cost_hold("run:x", "b", 500, 1000, now).admitted
    assert backend.cost_hold("run:y", "c", 1000, 1000, now).admitted  # ledgers are apart
    state = backend.cost_state("run:x", now)
    assert (state.spent, state.holds, state.refused) == (250, {"b": 500}, 1)
    assert backend.cost_settle("run:x", "b", 0, now) == 250  # released: nothing billed
    assert backend.cost_hold("run:x", "d", 1, None, now).admitted  # no cap
    later = now + IDLE_TTL + 1
    assert backend.cost_state("run:x", later).spent == 0  # an idle ledger starts afresh


def test_ledger_threads_never_pass_the_cap(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "state.json")
    admitted: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            hold = f"{n}-{i}"
            if backend.cost_hold("run:t", hold, 7, 500, 1.0).admitted:
                with lock:
                    admitted.append(hold)
                backend.cost_settle("run:t", hold, 7, 1.0)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 500 // 7
    assert backend.cost_state("run:t", 1.0).spent == 7 * (500 // 7) <= 500


# -- unknown models, price files, settings --------------------------------------------------------
def test_an_unknown_model_costs_unknown_warns_once_and_is_never_refused(
    emu: Any, make_budget: Any
) -> None:
    budget = make_budget(max_cost=0.000001)
    client = clients.fixture_client("openai_client", budget)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for text in ("a", "b"):
            client.chat.completions.create(
                model="acme-private-1", messages=[{"role": "user", "content": text}],
                max_completion_tokens=20,
            )
    cost_warnings = [w for w in caught if issubclass(w.category, CostWarning)]
    assert len(cost_warnings) == 1 and "acme-private-1" in str(cost_warnings[0].message)
    records = budget.calls.records()
    assert [r.status for r in records] == ["ok", "ok"]
    assert [r.cost_usd for r in records] == [None, None]
    totals = budget.calls.totals()
    assert (totals.cost_usd, totals.cost_unknown) == (0, 2)
    assert budget.usage("<session>").cost_unknown == 2


def test_without_genai_prices_costs_are_unknown_and_a_cap_needs_a_price_file(
    emu: Any, make_budget: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # as if the `cost` extra were absent
    with pytest.raises(PriceFileError, match=r"pip install 'pytest-llm-budget\[cost\]'"):
        make_budget(max_cost=1.0)
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ask(client, "a", 10)
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "b"}], max_tokens=10
        )
    assert [r.cost_usd for r in budget.calls.records()] == [None, None]
    assert len([w for w in caught if issubclass(w.category, CostWarning)]) == 1
    prices = tmp_path / "p.toml"
    prices.write_text('["openai:*"]\ninput_mtok = 1\noutput_mtok = 1\n')
    capped = make_budget(max_cost=1.0, prices=str(prices))
    ask(clients.fixture_client("openai_client", capped), "c", 10)
    assert capped.calls.records()[0].cost_usd


PRICES = """
["openai:acme-*"]
input_mtok = 2.0
cached_input_mtok = 0.5
output_mtok = 8

["openai:gpt-5"]
input_mtok = 100
output_mtok = 100
"""


def test_a_price_file_adds_and_overrides_prices(tmp_path: Path, make_budget: Any) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(PRICES)
    costs = make_budget(prices=str(path)).costs
    assert costs.price("openai", "acme-tuned", Usage(1000, 100, 1100, cached_tokens=400)) == (
        float((600 * Decimal(2) + 400 * Decimal("0.5") + 100 * Decimal(8)) / 1_000_000)
    )
    assert costs.price("openai", "gpt-5", Usage(1000, 1000, 2000)) == 0.2
    with pytest.warns(CostWarning, match="gemini model 'acme-tuned'"):
        assert costs.price("gemini", "acme-tuned", Usage(1, 1, 2)) is None  # vendor must match


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ('["gpt-5"]\ninput_mtok = 1\noutput_mtok = 1\n', "'vendor:model'"),
        ('["openai:x"]\ninput_mtok = 1\n', "missing output_mtok"),
        ('["openai:x"]\ninput_mtok = 1\noutput_mtok = 1\nspeed = 2\n', "unknown key(s) speed"),
        ('["openai:x"]\ninput_mtok = -1\noutput_mtok = 1\n', "input_mtok=-1"),
        ('["openai:x"]\ninput_mtok = nan\noutput_mtok = 1\n', "input_mtok=nan"),
        ('["openai:x"]\ninput_mtok = 1\noutput_mtok = inf\n', "output_mtok=inf"),
        ('["openai:x"]\ninput_mtok = 1\noutput_mtok = 1\ncached_input_mtok = -inf\n',
         "cached_input_mtok=-inf"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_bad_price_file_says_what_is_wrong(tmp_path: Path, text: str, fault: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(PriceFileError, match="--llm-prices") as err:
        load_price_file(str(path))
    assert fault in str(err.value)


def test_cost_options_are_validated() -> None:
    settings = Settings.resolve({"max_cost": "$2.50"}, {"LLM_BUDGET_MAX_COST_PER_TEST": "0.1"}, {})
    assert (settings.max_cost, settings.max_cost_per_test) == (2.5, 0.1)
    assert Settings.resolve({}, {}, {"max_cost": "3"}).max_cost == 3.0
    for bad in ("0", "-1", "five"):
        with pytest.raises(SettingsError, match=f"--llm-max-cost={bad!r}"):
            Settings.resolve({"max_cost": bad}, {}, {})


# -- whole runs: summary, reports, metrics, preflight, xdist, two hosts, replay -------------------
def run(
    cwd: Path, emu: Emulator | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = dict(os.environ, **env)
    if emu is not None:
        environ.update(OPENAI_BASE_URL=emu.openai_base_url, OPENAI_API_KEY="sk-test",
                       GOOGLE_GEMINI_BASE_URL=emu.gemini_base_url, GEMINI_API_KEY="g")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd, env=environ, capture_output=True, text=True, timeout=180,
    )


@pytest.fixture
def fixed_emulator() -> Iterator[Emulator]:
    config = EmulatorConfig(
        window=1.0, openai=LimitSpec(tpm=1_000_000, rpm=None),
        gemini=LimitSpec(tpm=1_000_000, rpm=None), reply_min_tokens=REPLY, reply_max_tokens=REPLY,
    )
    with Emulator(config) as emu:
        yield emu


SHOWN = """
import pytest

@pytest.mark.llm_budget(tokens=400, vendor="openai", model="gpt-5")
def test_openai(openai_client, llm_usage):
    openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=100)
    assert llm_usage.cost_usd == llm_usage.records[0].cost_usd > 0

@pytest.mark.llm_budget(tokens=400, vendor="gemini", model="gemini-2.5-flash")
def test_gemini(gemini_client, llm_usage):
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert llm_usage.cost_usd > 0
"""


def test_a_run_shows_costs_in_summary_reports_metrics_and_preflight(
    tmp_path: Path, fixed_emulator: Emulator
) -> None:
    (tmp_path / "test_shown.py").write_text(SHOWN)
    result = run(
        tmp_path, fixed_emulator, "--llm-max-cost=1", "--llm-report=r.json",
        "--llm-report=r.html", "--llm-metrics-textfile=m.prom",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # every declared token priced as output: 400 at gpt-5's $10/M + 400 at flash's $2.50/M
    assert "LLM budget preflight: worst-case cost $0.005000 (--llm-max-cost $1.000)" in out
    document = json.loads((tmp_path / "r.json").read_text())
    calls = document["calls"]
    assert [c["model"] for c in calls] == ["gpt-5", "gemini-2.5-flash"]
    for call in calls:
        record = CallRecord.from_json(call)
        assert call["cost_usd"] == calc(record) > 0
    total = calls[0]["cost_usd"] + calls[1]["cost_usd"]
    assert document["totals"]["cost_usd"] == pytest.approx(total)
    assert [t["cost_usd"] for t in document["tests"]] == [c["cost_usd"] for c in calls]
    assert {b["name"]: b["cost_usd"] for b in document["buckets"]} == {  # auto: per model
        "openai:gpt-5": calls[0]["cost_usd"], "gemini:gemini-2.5-flash": calls[1]["cost_usd"],
    }
    header = next(line for line in out.splitlines() if line.startswith("bucket"))
    assert header.split()[-1] == "cost"
    assert f"cost: {usd(total)} (2 live calls); cap $1.000" in out
    assert usd(calls[0]["cost_usd"]) in (tmp_path / "r.html").read_text()
    prom = (tmp_path / "m.prom").read_text()
    assert 'llm_budget_cost_usd_total{model="gpt-5",vendor="openai"}' in prom


CAPPED = """
import pytest
from pytest_llm_budget import CostCapExceeded

CASES = [("big", i) for i in range({big})] + [("small", i) for i in range({small})]

@pytest.mark.parametrize(("size", "i"), CASES)
def test_call(size, i, openai_client):
    try:
        openai_client.chat.completions.create(
            model="gpt-5", messages=[{{"role": "user", "content": "question %s %d" % (size, i)}}],
            max_completion_tokens={reply} if size == "big" else 1)
    except CostCapExceeded as err:
        d = err.details
        assert size == "big", "a small call must always fit"
        assert d["spent_usd"] + d["held_usd"] + d["would_cost_usd"] > d["cap_usd"]
        pytest.skip("refused by the cost cap")
"""
#: 5 big calls ($0.0020-0.00205 worst, >= $0.0020 actual) and every small one (< $0.00006) fit
#: in any order; a sixth big one never does.
CAP = "0.0112"


def cap_results(reports: list[Path]) -> tuple[float, int, int]:
    """Total cost, ok calls and refused calls over the JSON reports of one shared run."""
    calls = [c for r in reports for c in json.loads(r.read_text())["calls"]]
    assert all(c["cost_usd"] == calc(CallRecord.from_json(c)) for c in calls if c["status"] == "ok")
    total = sum(c["cost_usd"] for c in calls)
    return total, sum(c["status"] == "ok" for c in calls), sum(
        c["error_code"] == "LLM_COST_CAP" for c in calls
    )


def test_the_cap_holds_across_four_xdist_workers(tmp_path: Path, fixed_emulator: Emulator) -> None:
    (tmp_path / "test_capped.py").write_text(CAPPED.format(big=12, small=10, reply=REPLY))
    result = run(
        tmp_path, fixed_emulator, "-n", "4", f"--llm-max-cost={CAP}", "--llm-report=r.json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    total, ok, refused = cap_results([tmp_path / "r.json"])
    assert total <= float(CAP)
    assert (ok, refused) == (15, 7)
    assert "(15 live calls); cap $0.01120; 7 calls refused by the cost cap" in result.stdout
    assert len(fixed_emulator.log) == 15


def test_the_cap_holds_across_two_processes_on_one_redis(
    tmp_path: Path, fixed_emulator: Emulator, redis_server: RedisServer  # noqa: F811
) -> None:
    run_id = uuid.uuid4().hex
    procs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "test_capped.py").write_text(CAPPED.format(big=6, small=5, reply=REPLY))
        environ = dict(os.environ, LLM_BUDGET_RUN_ID=run_id, OPENAI_API_KEY="sk-test",
                       OPENAI_BASE_URL=fixed_emulator.openai_base_url)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2",
             f"--llm-backend={redis_server.url}", f"--llm-max-cost={CAP}", "--llm-report=r.json"],
            cwd=folder, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
    total, ok, refused = cap_results([tmp_path / "a" / "r.json", tmp_path / "b" / "r.json"])
    assert total <= float(CAP)
    assert (ok, refused) == (15, 7)


REPLAYED = """
import pytest

@pytest.mark.llm_budget(tokens=300)
def test_chat(openai_client):
    openai_client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=50)

@pytest.mark.llm_budget(tokens=300)
def test_gemini_stream(gemini_client):
    list(gemini_client.models.generate_content_stream(model="gemini-2.5-pro", contents="hi"))
"""


def test_replayed_calls_cost_nothing_and_show_their_live_price(tmp_path: Path) -> None:
    (tmp_path / "test_rec.py").write_text(REPLAYED)
    with Emulator() as emu:
        live = run(tmp_path, emu, "--llm-record-mode=all", "--llm-report=live.json")
        assert live.returncode == 0, live.stdout + live.stderr
        urls = {"OPENAI_BASE_URL": emu.openai_base_url,
                "GOOGLE_GEMINI_BASE_URL": emu.gemini_base_url}
    # the emulator is gone: replay works offline
    replay = run(tmp_path, None, "--llm-record-mode=none", "--llm-report=replay.json",
                 OPENAI_API_KEY="sk-test", GEMINI_API_KEY="g", **urls)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    recorded = json.loads((tmp_path / "live.json").read_text())["calls"]
    replayed = json.loads((tmp_path / "replay.json").read_text())
    assert [c["replayed"] for c in replayed["calls"]] == [True, True]
    assert [c["cost_usd"] for c in replayed["calls"]] == [0, 0]
    assert [c["would_cost_usd"] for c in replayed["calls"]] == [c["cost_usd"] for c in recorded]
    assert replayed["totals"]["cost_usd"] == 0
    assert replayed["totals"]["would_cost_usd"] == pytest.approx(
        sum(c["cost_usd"] for c in recorded)
    )
    assert "replayed calls cost $0 (live they would have cost $" in replay.stdout


def test_a_bad_price_file_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    (tmp_path / "prices.toml").write_text('["openai:x"]\ninput_mtok = 1\n')
    (tmp_path / "pytest.ini").write_text("[pytest]\nllm_prices = prices.toml\n")
    result = run(tmp_path, None)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--llm-prices" in result.stderr and "missing output_mtok" in result.stderr
