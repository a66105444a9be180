"""429 handling: each retry hint honoured; exhaustion, quota, too-large errors; malformed bodies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

from pytest_llm_budget import QuotaExhausted, RateLimitExhausted, RequestTooLarge
from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
from pytest_llm_budget.routing import clients

MSG = [{"role": "user", "content": "hi"}]
OK_BODY = {
    "id": "x", "object": "chat.completion", "created": 0, "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
GEMINI_OK = {"candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}}],
             "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,
                               "totalTokenCount": 5}}


class Scripted:
    """A real HTTP server answering from a script of (status, headers, body); logs arrivals."""

    def __init__(self, script: list[tuple[int, dict[str, str], Any]]) -> None:
        self.script = script
        self.arrivals: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.arrivals.append(time.monotonic())
                step = min(len(outer.arrivals), len(outer.script)) - 1
                status, headers, body = outer.script[step]
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def gap(self) -> float:
        return self.arrivals[1] - self.arrivals[0]


@pytest.fixture
def scripted() -> Iterator[Any]:
    made: list[Scripted] = []

    def build(script: list[tuple[int, dict[str, str], Any]]) -> Scripted:
        made.append(Scripted(script))
        return made[-1]

    yield build
    for s in made:
        s.server.shutdown()
        s.server.server_close()


def _openai_429(message: str = "Rate limit reached for gpt-4o: Limit 30000, Used 29990.") -> Any:
    return {"error": {"message": message, "type": "tokens", "code": "rate_limit_exceeded"}}


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"retry-after-ms": "400"}, 0.4, 0.9),
        ({"retry-after": "1"}, 1.0, 1.5),
        ({"x-ratelimit-reset-tokens": "450ms", "x-ratelimit-reset-requests": "1ms"}, 0.45, 0.95),
    ],
    ids=["retry-after-ms", "retry-after", "reset-tokens"],
)
def test_openai_hints_are_honoured(
    scripted: Any, make_budget: Any, headers: dict[str, str], low: float, high: float
) -> None:
    server = scripted([(429, headers, _openai_429()), (200, {}, OK_BODY)])
    budget = make_budget(backoff_base=3.0, backoff_max=10.0)  # a backoff would wait >= 3 s
    client = clients.fixture_client(
        "openai_client", budget, base_url=f"{server.url}/v1", api_key="k"
    )
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert low <= server.gap() < high, server.gap()
    [record] = budget.calls.records()
    assert (record.status, record.attempts, record.rate_limit_events) == ("ok", 2, 1)
    assert record.waited_s >= low - 0.05


def test_gemini_retry_info_is_honoured(scripted: Any, make_budget: Any) -> None:
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded.",
                      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": "0.5s"}]}}
    server = scripted([(429, {}, body), (200, {}, GEMINI_OK)])
    budget = make_budget(backoff_base=3.0, backoff_max=10.0)
    http = clients.http_client(budget)
    url = f"{server.url}/v1beta/models/gemini-2.5-flash:generateContent"
    response = http.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert response.status_code == 200
    assert 0.5 <= server.gap() < 1.0, server.gap()
    [record] = budget.calls.records()
    assert (record.vendor, record.status, record.attempts) == ("gemini", "ok", 2)


def test_no_hint_backs_off_exponentially(scripted: Any, make_budget: Any) -> None:
    server = scripted([(429, {}, _openai_429())] * 2 + [(200, {}, OK_BODY)])
    budget = make_budget(backoff_base=1.5, backoff_max=10.0)
    client = clients.fixture_client(
        "openai_client", budget, base_url=f"{server.url}/v1", api_key="k"
    )
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    first, second = (b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False))
    assert 1.5 <= first < 1.5 * 1.1 + 0.3, first
    assert 2.25 <= second < 2.25 * 1.1 + 0.3, second


def test_hint_beyond_max_wait_fails_fast(scripted: Any, make_budget: Any) -> None:
    """A 429 whose own delay no retry within --llm-max-wait can outlast is a quota: at once."""
    server = scripted([(429, {"retry-after": "30"}, _openai_429())])
    budget = make_budget(max_wait=5.0)
    client = clients.fixture_client(
        "openai_client", budget, base_url=f"{server.url}/v1", api_key="k"
    )
    start = time.monotonic()
    with pytest.raises(QuotaExhausted) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert time.monotonic() - start < 1.0
    assert len(server.arrivals) == 1
    assert "--llm-max-wait=5s" in str(excinfo.value) and "retry in 30s" in str(excinfo.value)


def test_waits_adding_up_past_max_wait_exhaust_the_retries(
    scripted: Any, make_budget: Any
) -> None:
    server = scripted([(429, {"retry-after": "0.6"}, _openai_429())] * 5)
    budget = make_budget(max_wait=1.0)
    client = clients.fixture_client(
        "openai_client", budget, base_url=f"{server.url}/v1", api_key="k"
    )
    with pytest.raises(RateLimitExhausted) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert "--llm-max-wait=1s" in str(excinfo.value)


def test_exhaustion_raises_structured_error(emu: Any, make_budget: Any) -> None:
    emu.queue_fault("rate_limit_no_hint", count=10)
    budget = make_budget(retries=2)
    client = clients.fixture_client("openai_client", budget)
    with pytest.raises(RateLimitExhausted) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    err = excinfo.value
    assert err.code == "LLM_RATE_LIMIT_EXHAUSTED"
    text = str(err)
    assert "openai model gpt-4o" in text and "after 3 attempt(s)" in text and "waited" in text
    assert "limit" in text
    assert len(emu.log) == 3  # 1 + 2 retries; no SDK retry on top
    [record] = budget.calls.records()
    assert (record.status, record.attempts, record.rate_limit_events) == ("rate_limited", 3, 3)
    assert record.error_code == "LLM_RATE_LIMIT_EXHAUSTED"


def test_quota_is_not_retried(emu: Any, make_budget: Any) -> None:
    emu.queue_fault("insufficient_quota", count=3)
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    with pytest.raises(QuotaExhausted) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert excinfo.value.code == "LLM_QUOTA_EXHAUSTED"
    assert len(emu.log) == 1
    [record] = budget.calls.records()
    assert (record.status, record.attempts) == ("quota", 1)


def test_gemini_quota_is_not_retried(emu: Any, make_budget: Any) -> None:
    emu.queue_fault("insufficient_quota", count=3)
    budget = make_budget()
    client = clients.fixture_client("gemini_client", budget)
    with pytest.raises(QuotaExhausted):
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert len(emu.log) == 1


def test_request_too_large_by_the_server_is_not_retried(emu: Any, make_budget: Any) -> None:
    emu.configure(EmulatorConfig(window=1.0, openai=LimitSpec(tpm=200, rpm=None)))
    budget = make_budget()
    client = clients.fixture_client("openai_client", budget)
    with pytest.raises(RequestTooLarge) as excinfo:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=500)
    assert excinfo.value.code == "LLM_REQUEST_TOO_LARGE"
    assert "limit 200" in str(excinfo.value)
    assert len(emu.log) == 1


def test_request_too_large_for_our_budget_never_leaves(emu: Any, make_budget: Any) -> None:
    budget = make_budget(tpm=300)
    client = clients.fixture_client("openai_client", budget)
    with pytest.raises(RequestTooLarge):
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=500)
    assert emu.log == []
    [record] = budget.calls.records()
    assert (record.status, record.attempts) == ("too_large", 0)


def test_malformed_json_is_counted_not_crashed(emu: Any, make_budget: Any) -> None:
    emu.queue_fault("malformed_json")
    budget = make_budget()
    http = clients.http_client(budget)
    response = http.post(
        f"{emu.openai_base_url}/chat/completions",
        json={"model": "gpt-4o", "messages": MSG, "max_tokens": 5},
        headers={"authorization": "Bearer k"},
    )
    assert response.status_code == 200
    [record] = budget.calls.records()
    assert record.status == "ok" and record.malformed and record.total_tokens == 0
    assert budget.bucket_stats()[0].actual == record.estimated  # settled with the estimate


def test_malformed_stream_event_and_dropped_stream(emu: Any, make_budget: Any) -> None:
    budget = make_budget()
    http = clients.http_client(budget)
    body = {"model": "gpt-4o", "messages": MSG, "max_tokens": 20, "stream": True,
            "stream_options": {"include_usage": True}}
    emu.queue_fault("malformed_json")
    with http.stream("POST", f"{emu.openai_base_url}/chat/completions", json=body,
                     headers={"authorization": "Bearer k"}) as response:
        list(response.iter_bytes())
    emu.queue_fault("drop_stream=2")
    with pytest.raises(httpx2.RemoteProtocolError), http.stream(
        "POST", f"{emu.openai_base_url}/chat/completions", json=body,
        headers={"authorization": "Bearer k"},
    ) as response:
        list(response.iter_bytes())
    broken, dropped = budget.calls.records()
    assert broken.status == "ok" and broken.malformed and broken.completion_tokens > 0
    assert dropped.status == "error"


def test_app_client_gets_final_429_without_sdk_retries(
    emu: Any, make_budget: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    from pytest_llm_budget.routing import intercept
    from pytest_llm_budget.routing.retry import errors_for

    budget = make_budget(retries=1)
    intercept.install(budget)
    try:
        client = openai.OpenAI()  # env vars point at the emulator; SDK retries left at 2
        emu.queue_fault("rate_limit_no_hint", count=2)
        with pytest.raises(openai.RateLimitError) as excinfo:
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
        emu.queue_fault("insufficient_quota", count=1)
        with pytest.raises(openai.RateLimitError) as quota:
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    finally:
        intercept.uninstall()
    assert "[LLM_RATE_LIMIT_EXHAUSTED]" in str(excinfo.value)
    assert excinfo.value.response.headers["x-llm-budget-error"] == "LLM_RATE_LIMIT_EXHAUSTED"
    assert "[LLM_QUOTA_EXHAUSTED]" in str(quota.value)
    assert len(emu.log) == 2 + 1  # plugin: 1 + 1 retry; quota: 1; the SDK retried nothing
    codes = [e.code for e in errors_for(budget, "<session>")]
    assert codes == ["LLM_RATE_LIMIT_EXHAUSTED", "LLM_QUOTA_EXHAUSTED"]


def test_failed_test_report_shows_the_structured_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import openai, pytest

        def test_app(llm_emulator):
            llm_emulator.queue_fault("insufficient_quota", count=5)
            client = openai.OpenAI()
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LLM budget*", "*[[]LLM_QUOTA_EXHAUSTED[]] openai model gpt-4o*"])


def test_a_final_429_with_a_non_ascii_hint_reaches_an_app_client(
    scripted: Any, make_budget: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    from pytest_llm_budget.routing import intercept

    arabic_three = "\u0663".encode().decode("latin-1")  # its UTF-8 bytes, as sent on the wire
    server = scripted([(429, {"retry-after": arabic_three}, _openai_429())])
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")  # an LLM host for the patch
    budget = make_budget(retries=1, backoff_base=0.05)
    intercept.install(budget)
    try:
        client = openai.OpenAI(api_key="k")
        start = time.monotonic()
        with pytest.raises(openai.RateLimitError) as excinfo:
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    finally:
        intercept.uninstall()
    assert "[LLM_RATE_LIMIT_EXHAUSTED]" in str(excinfo.value)
    assert (b"retry-after", "\u0663".encode()) in excinfo.value.response.headers.raw
    assert time.monotonic() - start < 2.0  # the hint "3" in Arabic-Indic digits is malformed
    assert len(server.arrivals) == 2
