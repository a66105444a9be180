"""Anthropic calls through routed clients: the real anthropic SDK over real HTTP.

The server is a small scripted Messages API (`MessagesServer`): answers of the shapes Anthropic
sends (JSON and SSE with usage and cache fields, 429 with retry-after, the spend cap, 529, a
stream that ends in `event: error`), queued per test, with every request it got kept.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_budget.errors import ProviderOverloaded, SpendCapReached
from pytest_llm_budget.routing import clients, intercept

anthropic = pytest.importorskip("anthropic")

MODEL = "claude-sonnet-4-5"
MSG = [{"role": "user", "content": "Say something short."}]
USAGE = {
    "input_tokens": 21,
    "cache_creation_input_tokens": 5,
    "cache_read_input_tokens": 7,
    "output_tokens": 9,
}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
RATE_LIMITED = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "This request would exceed the rate limit for your organization of 1,000 "
        "input tokens per minute.",
    },
}
SPEND_CAP = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "You have reached your specified API usage limits.",
        "details": {"error_code": "enforced_spend_limit_reached"},
    },
}


def message(text: str = "Hello there.") -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": dict(USAGE),
    }


def stream_events(error: bool = False) -> bytes:
    start = dict(message(), content=[], stop_reason=None, usage=dict(USAGE, output_tokens=1))
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ]
    if error:
        events.append(OVERLOADED)
    else:
        events += [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE["output_tokens"]},
            },
            {"type": "message_stop"},
        ]
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events
    )


@dataclass
class Answer:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stream_error: bool = False


class MessagesServer:
    """A scripted Messages API on a free port: queued answers first, else a normal answer."""

    def __init__(self) -> None:
        self.queue: deque[Answer] = deque()
        self.seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(size) or b"{}")
                with server.lock:
                    server.seen.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, request)
                    )
                    answer = server.queue.popleft() if server.queue else None
                if answer is None:
                    answer = server.normal(self.path, request)
                if request.get("stream") and answer.status == 200:
                    data = stream_events(error=answer.stream_error)
                    content_type = "text/event-stream"
                else:
                    data = json.dumps(answer.payload).encode()
                    content_type = "application/json"
                self.send_response(answer.status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.send_header("anthropic-ratelimit-input-tokens-limit", "400000")
                self.send_header("anthropic-ratelimit-input-tokens-remaining", "399000")
                self.send_header("anthropic-organization-id", "org-secret-id")
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def normal(self, path: str, request: dict[str, Any]) -> Answer:
        if path.endswith("/count_tokens"):
            return Answer(200, {"input_tokens": 14})
        return Answer(200, message())

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.queue.extend(answers)

    def statuses(self) -> list[str]:
        return [path for path, _, _ in self.seen]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[MessagesServer]:
    made = MessagesServer()
    yield made
    made.close()


@pytest.fixture
def api(server: MessagesServer, monkeypatch: pytest.MonkeyPatch) -> MessagesServer:
    """The server, emptied, with the SDK's env pointing at it."""
    server.queue.clear()
    server.seen.clear()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key-0123456789abcdefghij")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    return server


@pytest.fixture
def routed(make_budget: Any) -> Iterator[Any]:
    budget = make_budget()
    intercept.install(budget)
    yield budget
    intercept.uninstall()


def test_sync_fixture_client_settles_reported_usage(api: MessagesServer, make_budget: Any) -> None:
    from pytest_llm_budget.limiting.buckets import LimitRule

    rule = LimitRule("anthropic", "*", itpm=1_000_000, otpm=1_000_000, rpm=1000)
    budget = make_budget(limits=(rule,))
    client = clients.fixture_client("anthropic_client", budget)
    reply = client.messages.create(model=MODEL, max_tokens=64, messages=MSG)
    [record] = budget.calls.records()
    assert (record.vendor, record.model, record.status, record.attempts) == (
        "anthropic", MODEL, "ok", 1
    )
    usage = reply.usage
    cache = usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    all_input = usage.input_tokens + cache
    assert (record.prompt_tokens, record.completion_tokens) == (all_input, usage.output_tokens)
    assert (record.cached_tokens, record.cache_write_tokens) == (7, 5)
    assert 0 < record.estimated < 64  # the input estimate; max_tokens goes to the output
    [bucket] = budget.bucket_stats()
    assert bucket.actual == 21 + 5  # input + cache writes, never cache reads
    dims = bucket.dimensions
    assert (dims["input_tokens"].estimated, dims["input_tokens"].actual) == (
        record.estimated, 21 + 5
    )
    assert (dims["output_tokens"].estimated, dims["output_tokens"].actual) == (0, 9)
    assert (dims["requests"].estimated, dims["requests"].actual) == (1, 1)
    [(path, headers, _)] = api.seen
    assert path == "/v1/messages" and headers.get("x-stainless-retry-count") == "0"


def test_rate_limit_headers_teach_each_dimension_only_what_is_sure(
    api: MessagesServer, make_budget: Any
) -> None:
    from pytest_llm_budget.limiting.buckets import LimitRule

    rule = LimitRule("anthropic", "*", itpm=100_000, otpm=50_000, rpm=100)
    budget = make_budget(limits=(rule,), window=3600.0)  # refill negligible while it runs
    stated = {
        "anthropic-ratelimit-requests-limit": "100",
        "anthropic-ratelimit-requests-remaining": "60",  # exact: 40 spent
        "anthropic-ratelimit-output-tokens-limit": "50000",
        "anthropic-ratelimit-output-tokens-remaining": "30000",  # 30000-30999 left
    }
    # input: 400000 / 399000 (the server's defaults) is at most 1000 spent, surely 1
    api.script(Answer(200, message(), stated))
    client = clients.fixture_client("anthropic_client", budget)
    client.messages.create(model=MODEL, max_tokens=500, messages=MSG)
    dims = budget.limiter.window_snapshot("anthropic:*").dimensions
    assert dims["requests"].used == pytest.approx(40, abs=0.5)
    # surely spent: 50000 - 30999 less this call's own max_tokens (its output settles apart),
    # then the 9 it produced
    assert dims["output_tokens"].used == pytest.approx(50000 - 30999 - 500 + 9, abs=30)
    assert dims["input_tokens"].used < 100  # our own charge: the rounded figure taught nothing


def test_streams_settle_at_the_end(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("anthropic_client", budget)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hi" and final.usage.output_tokens == 9
    events = list(client.messages.create(model=MODEL, max_tokens=64, messages=MSG, stream=True))
    assert events[-1].type == "message_stop"
    helper, raw = budget.calls.records()
    for record in (helper, raw):
        assert record.status == "ok" and not record.malformed
        assert (record.prompt_tokens, record.completion_tokens) == (33, 9)


def test_async_client_json_and_stream(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget()

    async def main() -> tuple[Any, list[Any]]:
        client = clients.fixture_client("async_anthropic_client", budget)
        reply = await client.messages.create(model=MODEL, max_tokens=32, messages=MSG)
        stream = await client.messages.create(
            model=MODEL, max_tokens=32, messages=MSG, stream=True
        )
        events = [e async for e in stream]
        await client.close()
        return reply, events

    reply, events = asyncio.run(main())
    first, second = budget.calls.records()
    assert first.completion_tokens == reply.usage.output_tokens
    assert second.completion_tokens == 9 and events[-1].type == "message_stop"
    assert len(api.seen) == 2


def test_app_built_clients_of_both_kinds_are_routed(api: MessagesServer, routed: Any) -> None:
    app = anthropic.Anthropic()  # the SDK's own retries left on
    app.messages.create(model=MODEL, max_tokens=16, messages=MSG)

    async def main() -> None:
        client = anthropic.AsyncAnthropic()
        await client.messages.create(model=MODEL, max_tokens=16, messages=MSG)
        await client.close()

    asyncio.run(main())
    wrapped = clients.wrap(anthropic.Anthropic(), routed)
    wrapped.messages.create(model=MODEL, max_tokens=16, messages=MSG)
    records = routed.calls.records()
    assert [(r.vendor, r.status) for r in records] == [("anthropic", "ok")] * 3
    assert len(api.seen) == 3  # never routed twice


def test_429_is_retried_after_its_retry_after(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget()
    api.script(Answer(429, RATE_LIMITED, {"retry-after": "0.2"}))
    client = clients.fixture_client("anthropic_client", budget)
    client.messages.create(model=MODEL, max_tokens=16, messages=MSG)
    [record] = budget.calls.records()
    assert (record.status, record.attempts, record.rate_limit_events) == ("ok", 2, 1)
    assert record.waited_s >= 0.2
    [bucket] = budget.bucket_stats()
    assert bucket.rate_limit_events == 1


def test_spend_cap_fails_fast_for_fixture_and_app_clients(
    api: MessagesServer, make_budget: Any, routed: Any
) -> None:
    api.script(Answer(429, SPEND_CAP))
    with pytest.raises(SpendCapReached) as caught:
        clients.fixture_client("anthropic_client", make_budget()).messages.create(
            model=MODEL, max_tokens=16, messages=MSG
        )
    assert caught.value.code == "LLM_SPEND_CAP"
    assert len(api.seen) == 1
    api.script(Answer(429, SPEND_CAP))
    app = anthropic.Anthropic()  # max_retries=2: the final 429 says x-should-retry: false
    with pytest.raises(anthropic.RateLimitError) as app_error:
        app.messages.create(model=MODEL, max_tokens=16, messages=MSG)
    assert "[LLM_SPEND_CAP]" in str(app_error.value)
    assert len(api.seen) == 2
    [record] = routed.calls.records()
    assert (record.status, record.error_code, record.attempts) == (
        "spend_cap", "LLM_SPEND_CAP", 1
    )


def test_529_backs_off_without_pausing_the_bucket(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget(backoff_base=0.05, retries=2)
    client = clients.fixture_client("anthropic_client", budget)
    api.script(Answer(529, OVERLOADED), Answer(529, OVERLOADED))
    client.messages.create(model=MODEL, max_tokens=16, messages=MSG)
    [record] = budget.calls.records()
    assert (record.status, record.attempts, record.overloaded) == ("ok", 3, 2)
    assert record.rate_limit_events == 0
    assert budget.bucket_stats()[0].rate_limit_events == 0
    api.script(*[Answer(529, OVERLOADED)] * 3)
    with pytest.raises(ProviderOverloaded):
        client.messages.create(model=MODEL, max_tokens=16, messages=MSG)
    assert budget.calls.records()[-1].status == "overloaded"
    assert len(api.seen) == 6


def test_stream_ending_in_an_error_event(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("anthropic_client", budget)
    api.script(Answer(200, stream_error=True))
    with pytest.raises(anthropic.APIStatusError):
        list(client.messages.create(model=MODEL, max_tokens=16, messages=MSG, stream=True))
    [record] = budget.calls.records()
    assert record.status == "stream_error" and record.prompt_tokens == 33


def test_count_tokens_is_a_request_of_no_tokens(api: MessagesServer, make_budget: Any) -> None:
    budget = make_budget()
    client = clients.fixture_client("anthropic_client", budget)
    assert client.messages.count_tokens(model=MODEL, messages=MSG).input_tokens == 14
    [record] = budget.calls.records()
    assert record.status == "ok" and record.total_tokens == 0
    assert budget.bucket_stats()[0].actual == 0


def test_cost_equals_genai_prices(api: MessagesServer, make_budget: Any) -> None:
    genai_prices = pytest.importorskip("genai_prices")
    budget = make_budget()
    client = clients.fixture_client("anthropic_client", budget)
    reply = client.messages.create(model=MODEL, max_tokens=64, messages=MSG)
    [record] = budget.calls.records()
    expected = genai_prices.calc_price(
        genai_prices.extract_usage(reply.model_dump(), provider_id="anthropic").usage,
        model_ref=MODEL,
        provider_id="anthropic",
    ).total_price
    assert record.cost_usd == pytest.approx(float(expected), rel=1e-9)
    assert record.cost_usd and record.cost_usd > 0


# -- pytest runs: fixtures, cassettes, xdist --------------------------------------------------
SUITE = """
import asyncio

def test_sync(anthropic_client, llm_usage):
    reply = anthropic_client.messages.create(
        model="claude-sonnet-4-5", max_tokens=32,
        messages=[{"role": "user", "content": "hello"}])
    assert reply.content[0].text
    assert llm_usage.calls == 1

def test_stream(anthropic_client):
    with anthropic_client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=32,
        messages=[{"role": "user", "content": "stream"}]) as stream:
        assert "".join(stream.text_stream) == "Hi"

def test_async(async_anthropic_client):
    async def main():
        reply = await async_anthropic_client.messages.create(
            model="claude-sonnet-4-5", max_tokens=32,
            messages=[{"role": "user", "content": "async"}])
        await async_anthropic_client.close()
        return reply
    assert asyncio.run(main()).usage.output_tokens == 9
"""


def run_suite(pytester: pytest.Pytester, *args: str) -> tuple[Any, dict[str, Any]]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--llm-report=r.json", *args)
    return result, json.loads(Path(pytester.path, "r.json").read_text())


def test_fixtures_under_xdist(
    api: MessagesServer, pytester: pytest.Pytester
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_claude=SUITE)
    result, report = run_suite(pytester, "-n", "2")
    result.assert_outcomes(passed=3)
    assert report["totals"]["calls"] == 3
    assert {c["vendor"] for c in report["calls"]} == {"anthropic"}
    assert {c["worker"] for c in report["calls"]} <= {"gw0", "gw1"}
    assert len(api.seen) == 3


def test_cassettes_record_without_keys_and_replay_without_one(
    api: MessagesServer, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vcr")
    pytester.makepyfile(test_claude=SUITE)
    result, _ = run_suite(pytester, "--llm-record-mode=once")
    result.assert_outcomes(passed=3)
    tapes = sorted(Path(pytester.path).rglob("*.yaml"))
    assert len(tapes) == 3
    text = "".join(t.read_text() for t in tapes)
    assert "sk-ant-test-key" not in text and "org-secret-id" not in text
    assert "x-api-key" not in text.lower() and "authorization" not in text.lower()
    assert "event: message_delta" in text  # the stream is kept whole
    recorded = len(api.seen)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    result, report = run_suite(pytester, "--llm-record-mode=none")
    result.assert_outcomes(passed=3)
    assert len(api.seen) == recorded  # nothing live
    assert report["totals"]["replayed"] == 3
    assert {(c["prompt_tokens"], c["completion_tokens"]) for c in report["calls"]} == {(33, 9)}


def test_matrix_takes_anthropic_models_and_the_preflight_knows_the_fixture(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        llm_models =
            openai:gpt-5
            anthropic:claude-sonnet-4-5
        llm_limits =
            anthropic:claude-sonnet-4* tpm=14000 rpm=50
        """
    )
    pytester.makepyfile(
        test_m="""
        import pytest

        def test_case(llm_model):
            assert llm_model.vendor in ("openai", "anthropic")

        @pytest.mark.llm_budget(tokens=9000, model="claude-sonnet-4-5")
        def test_fixture(anthropic_client):
            pass
        """
    )
    ids = pytester.runpytest_inprocess("--collect-only", "-q")
    ids.stdout.fnmatch_lines(["*test_case[[]anthropic:claude-sonnet-4-5[]]*"])
    result = pytester.runpytest_inprocess("-q")
    result.assert_outcomes(passed=3)
    # 7000 (the matrix case) + 9000 (the fixture's vendor) in the Anthropic rule's bucket
    # of 14000 * 0.85 = 11900 per window: the busiest of 2
    result.stdout.fnmatch_lines(
        [
            "*LLM budget preflight: 3 LLM tests, ~23000 tokens*"
            "busiest bucket anthropic:claude-sonnet-4* of 2*"
        ]
    )


# -- against the bundled emulator (its Messages API, token buckets and faults) ----------------
@pytest.fixture
def claude_emu(emu: Any) -> Any:
    """The session emulator with roomy Anthropic buckets (1 s refill window)."""
    from pytest_llm_budget.emulator import AnthropicLimitSpec

    emu.configure(anthropic=AnthropicLimitSpec(rpm=None, itpm=1_000_000, otpm=1_000_000))
    emu.reset()
    return emu


def test_emulator_usage_matches_and_the_sdk_env_points_at_it(
    claude_emu: Any, make_budget: Any
) -> None:
    budget = make_budget()
    client = clients.fixture_client("anthropic_client", budget)
    reply = client.messages.create(model=MODEL, max_tokens=40, messages=MSG)
    streamed = list(client.messages.create(model=MODEL, max_tokens=40, messages=MSG, stream=True))
    plain, stream = budget.calls.records()
    assert (plain.prompt_tokens, plain.completion_tokens) == (
        reply.usage.input_tokens, reply.usage.output_tokens
    )
    assert stream.status == "ok" and stream.completion_tokens > 0
    assert streamed[-1].type == "message_stop"
    seen = claude_emu.log
    assert [(r.vendor, r.status) for r in seen] == [("anthropic", 200)] * 2
    expected = [plain.completion_tokens, stream.completion_tokens]
    assert [r.completion_tokens for r in seen] == expected


def test_emulator_429s_from_its_input_bucket_are_retried(
    claude_emu: Any, make_budget: Any
) -> None:
    from pytest_llm_budget.emulator import AnthropicLimitSpec

    # No limit headers: the plugin would learn itpm=300 from them and never be refused.
    claude_emu.configure(
        anthropic=AnthropicLimitSpec(rpm=None, itpm=300, otpm=None), limit_headers=False
    )
    budget = make_budget(tpm=1_000_000)
    client = clients.fixture_client("anthropic_client", budget)
    text = "Tell me about cereal brands in Spain, please. " * 12
    for i in range(3):
        client.messages.create(
            model=MODEL, max_tokens=20, messages=[{"role": "user", "content": f"{i} {text}"}]
        )
    records = budget.calls.records()
    assert {r.status for r in records} == {"ok"}
    events = sum(r.rate_limit_events for r in records)
    rejected = [r for r in claude_emu.log if r.status == 429]
    assert events == len(rejected) > 0
    assert sum(r.attempts for r in records) == 3 + events


def test_emulator_faults_spend_cap_overload_and_stream_error(
    claude_emu: Any, make_budget: Any
) -> None:
    budget = make_budget(backoff_base=0.05, retries=3)
    client = clients.fixture_client("anthropic_client", budget)
    claude_emu.queue_fault("spend_limit", count=1)
    with pytest.raises(SpendCapReached):
        client.messages.create(model=MODEL, max_tokens=20, messages=MSG)
    claude_emu.queue_fault("overloaded", count=2)
    client.messages.create(model=MODEL, max_tokens=20, messages=MSG)
    claude_emu.queue_fault("stream_error", count=1)
    with pytest.raises(anthropic.APIStatusError):
        list(client.messages.create(model=MODEL, max_tokens=20, messages=MSG, stream=True))
    capped, overloaded, cut = budget.calls.records()
    assert (capped.status, capped.attempts) == ("spend_cap", 1)
    assert (overloaded.status, overloaded.attempts, overloaded.overloaded) == ("ok", 3, 2)
    assert overloaded.rate_limit_events == 0
    assert cut.status == "stream_error"
    assert [r.status for r in claude_emu.log] == [429, 529, 529, 200, 200]
