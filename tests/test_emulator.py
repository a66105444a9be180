"""The emulator over real HTTP with the real openai and google-genai SDKs (no mocks)."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec

BASE = EmulatorConfig(
    window=10.0,  # long enough that no test depends on machine speed
    openai=LimitSpec(tpm=500_000, rpm=10_000),
    gemini=LimitSpec(tpm=500_000, rpm=10_000),
)
MSG = [{"role": "user", "content": "Say something deterministic, please."}]


@pytest.fixture(scope="module")
def server() -> Iterator[Emulator]:
    with Emulator(BASE) as emu:
        yield emu


@pytest.fixture
def emu(server: Emulator) -> Iterator[Emulator]:
    server.configure(BASE)
    server.reset()
    yield server
    server.configure(BASE)
    server.reset()


@pytest.fixture
def oai(emu: Emulator) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    yield client
    client.close()


def gemini_client(emu: Emulator, version: str = "v1", **headers: str) -> genai.Client:
    opts = types.HttpOptions(base_url=emu.gemini_base_url, api_version=version, headers=headers)
    return genai.Client(api_key="k", http_options=opts)


@pytest.fixture
def gem(emu: Emulator) -> genai.Client:
    return gemini_client(emu)


def control(emu: Emulator, method: str, name: str, body: Any = None) -> tuple[int, Any]:
    """Call a /__emulator/ endpoint with the stdlib."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{emu.url}/__emulator/{name}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- endpoints ----------------------------------------------------------------------------------


def test_chat_completion_shape_usage_headers_and_determinism(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="gpt-5", messages=MSG, max_tokens=64)
    done = raw.parse()
    text = done.choices[0].message.content
    assert text and done.object == "chat.completion" and done.model == "gpt-5"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    chars = len(MSG[0]["content"])
    assert 0 < done.usage.prompt_tokens <= math.ceil(chars / 4) + 4
    assert 8 <= done.usage.completion_tokens <= 40
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert raw.headers["x-ratelimit-limit-tokens"] == "500000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 500_000 - (math.ceil(chars / 4) + 64)
    assert raw.headers["x-ratelimit-reset-tokens"] == "10s"
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    again = oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=64)
    assert again.choices[0].message.content == text


def test_chat_reply_respects_max_output_budget(oai: openai.OpenAI) -> None:
    done = oai.chat.completions.create(model="gpt-5", messages=MSG, max_completion_tokens=3)
    assert done.usage is not None and done.usage.completion_tokens == 3
    assert done.choices[0].finish_reason == "length"
    assert len((done.choices[0].message.content or "").split()) == 3


def test_chat_stream_with_include_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-5",
            messages=MSG,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=64)
    assert streamed == plain.choices[0].message.content
    assert final.usage.completion_tokens == len(streamed.split())


def test_chat_stream_raw_ends_with_done(emu: Emulator) -> None:
    body = {"model": "gpt-5", "messages": MSG, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": "Bearer sk", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
    assert text.rstrip().endswith("data: [DONE]")
    assert '"usage"' not in text  # no include_usage -> no usage chunk


def test_responses_json(oai: openai.OpenAI) -> None:
    resp = oai.responses.create(
        model="gpt-5", input="Hello there", instructions="Be brief.", max_output_tokens=16
    )
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text and len(resp.output_text.split()) <= 16
    assert resp.usage is not None
    assert resp.usage.output_tokens == len(resp.output_text.split())
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    assert resp.usage.input_tokens <= math.ceil(len("Hello there" + "Be brief.") / 4) + 4


def test_responses_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="gpt-5", input="Stream me", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas
    usage = completed.response.usage
    assert usage is not None and usage.output_tokens == len(deltas.split()) and usage.total_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_models_list(oai: openai.OpenAI, emu: Emulator) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids == list(emu.config.models)


def test_gemini_generate_content(gem: genai.Client) -> None:
    cfg = types.GenerateContentConfig(max_output_tokens=5, system_instruction="Be short.")
    resp = gem.models.generate_content(
        model="gemini-2.5-flash", contents="Hello Gemini", config=cfg
    )
    usage = resp.usage_metadata
    assert resp.text and len(resp.text.split()) == usage.candidates_token_count <= 5
    assert usage.prompt_token_count == math.ceil(len("Hello Gemini" + "Be short.") / 4)
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count


def test_gemini_stream_and_v1beta(emu: Emulator) -> None:
    client = gemini_client(emu, "v1beta")
    parts = list(client.models.generate_content_stream(model="gemini-2.5-pro", contents="Hi"))
    assert len(parts) >= 2
    assert all(p.usage_metadata is None for p in parts[:-1])
    last = parts[-1].usage_metadata
    assert last is not None and last.candidates_token_count == len(
        "".join(p.text or "" for p in parts).split()
    )
    assert emu.log[-1].path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
    assert emu.log[-1].stream


# --- rejections ---------------------------------------------------------------------------------


def test_openai_tpm_429_fields_and_headers(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(openai={"tpm": 1000, "rpm": None})
    oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=600)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=600)
    err = info.value
    assert err.code == "rate_limit_exceeded" and err.type == "tokens"
    charge = math.ceil(len(MSG[0]["content"]) / 4) + 600
    assert (
        f"Rate limit reached for gpt-5 in organization org-emulator on tokens per min (TPM): "
        f"Limit 1000, Used {charge}, Requested {charge}. Please try again in "
    ) in err.message
    h = err.response.headers
    assert 9 <= int(h["retry-after"]) <= 10 and 9000 < int(h["retry-after-ms"]) <= 10_000
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == str(1000 - charge)
    assert h["x-ratelimit-reset-tokens"].endswith("s")
    assert "x-ratelimit-limit-requests" not in h  # rpm unlimited
    stats = emu.stats()["buckets"]["openai:gpt-5"]
    assert stats["rejected"] == {"tokens": 1} and stats["tokens_charged"] == charge


def test_openai_rpm_429(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(openai={"tpm": None, "rpm": 2})
    for _ in range(2):
        oai.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    assert info.value.type == "requests"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1." in info.value.message
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_openai_request_too_large(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(openai={"tpm": 30000})
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=50_000)
    err = info.value
    assert err.code == "rate_limit_exceeded" and err.type == "tokens"
    assert isinstance(err.body, dict)
    requested = math.ceil(len(MSG[0]["content"]) / 4) + 50_000
    assert err.body["message"].startswith(
        "Request too large for gpt-5 in organization org-emulator on "
        f"tokens per min (TPM): Limit 30000, Requested {requested}."
    )
    assert "retry-after" not in err.response.headers
    assert emu.stats()["buckets"]["openai:gpt-5"]["rejected"] == {"too_large": 1}


def test_openai_insufficient_quota_config_and_header(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(insufficient_quota=True)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG)
    assert info.value.code == "insufficient_quota" and info.value.type == "insufficient_quota"
    emu.configure(insufficient_quota=False)
    with pytest.raises(openai.RateLimitError) as info2:
        oai.chat.completions.create(
            model="gpt-5", messages=MSG, extra_headers={"x-emulator-fault": "insufficient_quota"}
        )
    assert info2.value.code == "insufficient_quota"
    assert emu.stats()["vendors"]["openai"]["rejected"] == {"insufficient_quota": 2}


def test_gemini_429_with_retry_info(emu: Emulator, gem: genai.Client) -> None:
    emu.configure(gemini={"tpm": 300})
    gem.models.generate_content(model="gemini-2.5-flash", contents="a" * 800)  # 200 tokens
    with pytest.raises(genai_errors.ClientError) as info:
        gem.models.generate_content(model="gemini-2.5-flash", contents="a" * 800)
    err = info.value
    assert err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    details = err.details["error"]["details"]
    types_ = [d["@type"] for d in details]
    assert "type.googleapis.com/google.rpc.QuotaFailure" in types_
    retry = next(d for d in details if d["@type"].endswith("RetryInfo"))
    assert retry["retryDelay"].endswith("s") and 9 < float(retry["retryDelay"][:-1]) <= 10
    quota = details[0]["violations"][0]
    assert quota["quotaValue"] == "300" and quota["quotaDimensions"]["model"] == "gemini-2.5-flash"


def test_gemini_vertex_style_429_has_no_retry_info(emu: Emulator, gem: genai.Client) -> None:
    emu.configure(gemini={"tpm": 300}, gemini_retry_info=False)
    gem.models.generate_content(model="gemini-2.5-flash", contents="a" * 800)
    with pytest.raises(genai_errors.ClientError) as info:
        gem.models.generate_content(model="gemini-2.5-flash", contents="a" * 800)
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    assert "details" not in info.value.details["error"]


def test_openai_401(emu: Emulator) -> None:
    no_key = openai.OpenAI(
        api_key="sk",
        base_url=emu.openai_base_url,
        max_retries=0,
        default_headers={"Authorization": "Basic abc"},
    )
    with pytest.raises(openai.AuthenticationError) as info:
        no_key.chat.completions.create(model="gpt-5", messages=MSG)
    assert "You didn't provide an API key" in info.value.message
    emu.configure(valid_keys=["sk-good"])
    wrong = openai.OpenAI(api_key="sk-wrong-key", base_url=emu.openai_base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info2:
        wrong.chat.completions.create(model="gpt-5", messages=MSG)
    assert info2.value.code == "invalid_api_key"
    good = openai.OpenAI(api_key="sk-good", base_url=emu.openai_base_url, max_retries=0)
    assert good.chat.completions.create(model="gpt-5", messages=MSG).choices
    assert emu.stats()["buckets"]["openai:"]["rejected"] == {"auth": 2}


def test_gemini_401_without_key(emu: Emulator) -> None:
    client = gemini_client(emu, **{"x-goog-api-key": ""})
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 401 and info.value.status == "UNAUTHENTICATED"
    url = f"{emu.url}/v1/models/gemini-2.5-flash:generateContent?key=abc"
    body = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as resp:
        assert json.loads(resp.read())["usageMetadata"]["promptTokenCount"] == 1


# --- the limit under concurrency ----------------------------------------------------------------


def test_concurrent_burst_never_exceeds_the_window(emu: Emulator) -> None:
    emu.configure(openai={"tpm": 10_000, "rpm": None})
    client = openai.OpenAI(api_key="sk-test", base_url=emu.openai_base_url, max_retries=0)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(40)

    def worker() -> None:
        barrier.wait()
        try:
            client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=990)
            code = 200
        except openai.RateLimitError:
            code = 429
        with lock:
            statuses.append(code)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    client.close()
    charge = math.ceil(len(MSG[0]["content"]) / 4) + 990
    stats = emu.stats()["buckets"]["openai:gpt-5"]
    assert len(statuses) == 40 and statuses.count(200) == 10_000 // charge
    assert stats["admitted"] == statuses.count(200)
    assert stats["rejected"] == {"tokens": 40 - statuses.count(200)}
    assert stats["max_window_tokens"] <= 10_000
    admitted = [r for r in emu.log if r.outcome == "ok"]
    assert sum(r.charge for r in admitted) <= 10_000


def test_sixty_concurrent_connections_are_served(emu: Emulator) -> None:
    emu.configure(fault="latency=0.3")
    results: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(60)
    body = json.dumps({"model": "gpt-5-mini", "messages": MSG, "max_tokens": 5})

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
        barrier.wait()
        conn.request("POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk"})
        status = conn.getresponse().status
        conn.close()
        with lock:
            results.append(status)

    threads = [threading.Thread(target=worker) for _ in range(60)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert results == [200] * 60
    assert time.monotonic() - started < 5  # served in parallel, not 60 x 0.3 s
    assert emu.stats()["buckets"]["openai:gpt-5-mini"]["max_in_flight"] >= 50


def test_bucket_mode_refills_faster_than_sliding_window(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(window=2, mode="bucket", openai={"tpm": 2000, "rpm": None})  # 1000 tokens/s
    oai.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "x"}], max_tokens=1999
    )
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=300)
    assert int(info.value.response.headers["retry-after-ms"]) <= 320
    time.sleep(0.35)
    assert oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=300).choices
    emu.configure(mode="sliding")
    oai.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "x"}], max_tokens=1999
    )
    time.sleep(0.35)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=300)


def test_sliding_window_frees_after_the_advertised_delay(emu: Emulator, oai: openai.OpenAI) -> None:
    emu.configure(window=1, openai={"tpm": 1000, "rpm": None})
    oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=600)
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=600)
    delay_ms = int(info.value.response.headers["retry-after-ms"])
    assert 500 < delay_ms <= 1000
    time.sleep(delay_ms / 1000)
    assert oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=600).choices
    assert emu.stats()["buckets"]["openai:gpt-5"]["max_window_tokens"] <= 1000


# --- faults -------------------------------------------------------------------------------------


def test_fault_latency_header_and_config(emu: Emulator, oai: openai.OpenAI) -> None:
    start = time.monotonic()
    oai.chat.completions.create(
        model="gpt-5", messages=MSG, extra_headers={"x-emulator-fault": "latency=0.2"}
    )
    assert time.monotonic() - start >= 0.2
    emu.configure(fault="latency=0.15")
    start = time.monotonic()
    oai.chat.completions.create(model="gpt-5", messages=MSG)
    assert time.monotonic() - start >= 0.15
    assert emu.log[-1].fault == "latency=0.15"


def test_fault_queue_503_burst(emu: Emulator, oai: openai.OpenAI, gem: genai.Client) -> None:
    status, body = control(emu, "POST", "faults", {"fault": "status=503", "count": 2})
    assert status == 200 and body == {"queued": 2}
    with pytest.raises(openai.InternalServerError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MSG)
    assert info.value.status_code == 503
    with pytest.raises(genai_errors.ServerError) as ginfo:
        gem.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ginfo.value.code == 503 and ginfo.value.status == "UNAVAILABLE"
    assert oai.chat.completions.create(model="gpt-5", messages=MSG).choices  # burst over
    emu.queue_fault("status=500")
    with pytest.raises(openai.InternalServerError) as info500:
        oai.chat.completions.create(model="gpt-5", messages=MSG)
    assert info500.value.status_code == 500
    assert [r.outcome for r in emu.log].count("fault") == 3
    assert emu.stats()["totals"]["tokens_charged"] == emu.log[2].charge  # faults not charged


def test_fault_rate_limit_no_hint(emu: Emulator, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai.chat.completions.create(
            model="gpt-5", messages=MSG, extra_headers={"x-emulator-fault": "rate_limit_no_hint"}
        )
    headers = info.value.response.headers
    assert info.value.code == "rate_limit_exceeded"
    assert not [k for k in headers if k.startswith(("retry-after", "x-ratelimit"))]
    client = gemini_client(emu, **{"x-emulator-fault": "rate_limit_no_hint"})
    with pytest.raises(genai_errors.ClientError) as ginfo:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert ginfo.value.code == 429 and "details" not in ginfo.value.details["error"]


def test_fault_malformed_json(oai: openai.OpenAI, emu: Emulator) -> None:
    with pytest.raises(json.JSONDecodeError):
        oai.chat.completions.create(
            model="gpt-5", messages=MSG, extra_headers={"x-emulator-fault": "malformed_json"}
        )
    assert emu.log[-1].status == 200 and emu.log[-1].fault == "malformed_json"


def test_fault_drop_stream_raw_and_sdk(emu: Emulator, oai: openai.OpenAI) -> None:
    body = {"model": "gpt-5", "messages": MSG, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(body),
        {"Authorization": "Bearer sk", "x-emulator-fault": "drop_stream=2"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    conn.close()
    assert info.value.partial.count(b"data: ") == 2
    stream = oai.chat.completions.create(
        model="gpt-5",
        messages=MSG,
        stream=True,
        extra_headers={"x-emulator-fault": "drop_stream=3"},
    )
    got = []
    # openai 3.x wraps the broken stream in APIConnectionError; 2.x lets httpx's error through
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 3


def test_bad_fault_header_is_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model="gpt-5", messages=MSG, extra_headers={"x-emulator-fault": "explode"}
        )
    assert "bad fault item" in info.value.message


# --- control plane, log, lifecycle, CLI ---------------------------------------------------------


def test_control_endpoints(emu: Emulator, oai: openai.OpenAI) -> None:
    status, cfg = control(emu, "POST", "config", {"tpm": 700, "mode": "bucket"})
    assert status == 200 and cfg["openai"]["tpm"] == 700 and cfg["gemini"]["tpm"] == 700
    assert emu.config.mode == "bucket"
    oai.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=10)
    status, stats = control(emu, "GET", "stats")
    assert status == 200 and stats["totals"]["requests"] == 1
    assert stats["buckets"]["openai:gpt-5"]["tpm"] == 700
    assert control(emu, "POST", "config", {"window": -1})[0] == 400
    assert control(emu, "POST", "reset", {})[0] == 200
    assert control(emu, "GET", "stats")[1]["totals"]["requests"] == 0
    assert control(emu, "GET", "nothing")[0] == 404


def test_jsonl_log_file(tmp_path: Any) -> None:
    path = tmp_path / "emu.jsonl"
    with Emulator(EmulatorConfig(window=1, log_path=str(path))) as emu:
        client = openai.OpenAI(api_key="sk", base_url=emu.openai_base_url, max_retries=0)
        client.chat.completions.create(model="gpt-5", messages=MSG, max_tokens=7)
        client.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1
    expected = {
        "t",
        "vendor",
        "model",
        "path",
        "status",
        "charge",
        "prompt_tokens",
        "completion_tokens",
        "in_flight",
        "fault",
    }
    assert expected <= rows[0].keys()
    assert rows[0]["charge"] == math.ceil(len(MSG[0]["content"]) / 4) + 7


def test_stop_is_quick_with_idle_keepalive_connection() -> None:
    emu = Emulator(EmulatorConfig()).start()
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    conn.request("GET", "/__emulator/stats")
    assert conn.getresponse().read()
    port = emu.port
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
    conn.close()


def test_cli_runs_a_server(tmp_path: Any) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_llm_budget.emulator",
            "--port",
            "0",
            "--tpm",
            "1234",
            "--window",
            "1",
            "--mode",
            "bucket",
            "--limit",
            "openai:gpt-5* tpm=99",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with urllib.request.urlopen(f"{url}/__emulator/config", timeout=5) as resp:
            cfg = json.loads(resp.read())
        assert cfg["openai"]["tpm"] == 1234 and cfg["mode"] == "bucket"
        assert cfg["model_limits"] == ["openai:gpt-5* tpm=99 rpm=None"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_cli_rejects_bad_arguments() -> None:
    from pytest_llm_budget.emulator.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--limit", "mistral:* tpm=1"])
    assert info.value.code == 2


def test_gemini_raw_paths_models_list_and_json_array_stream(emu: Emulator) -> None:
    headers = {"x-goog-api-key": "k", "Content-Type": "application/json"}
    req = urllib.request.Request(f"{emu.url}/v1/models", headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        names = [m["name"] for m in json.loads(resp.read())["models"]]
    assert names == [f"models/{m}" for m in emu.config.gemini_models]
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}).encode()
    url = f"{emu.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=5) as resp:
        chunks = json.loads(resp.read())
    assert isinstance(chunks, list) and "usageMetadata" in chunks[-1]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_insufficient_quota_fault(emu: Emulator) -> None:
    client = gemini_client(emu, **{"x-emulator-fault": "insufficient_quota"})
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    details = info.value.details["error"]["details"]
    assert not [d for d in details if d["@type"].endswith("RetryInfo")]
    assert emu.stats()["vendors"]["gemini"]["rejected"] == {"insufficient_quota": 1}


def test_a_client_resetting_an_idle_connection_prints_nothing(
    emu: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    import socket
    import struct

    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", emu.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # SO_LINGER 0: the server's read sees ECONNRESET
    time.sleep(0.3)
    with urllib.request.urlopen(f"{emu.url}/__emulator/stats", timeout=5) as answer:
        assert answer.status == 200
    assert "Traceback" not in capfd.readouterr().err
