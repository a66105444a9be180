"""Limits learned from the provider: parsing, the limiter's buckets, the backends, whole runs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, redis_server  # noqa: F401 - fixture

from pytest_llm_budget.backends import Backend, MemoryBackend
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.errors import BudgetWaitTimeout
from pytest_llm_budget.events import LimitLearned
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter
from pytest_llm_budget.providers.base import LearnedLimits, RejectionKind
from pytest_llm_budget.providers.gemini import GeminiProvider
from pytest_llm_budget.providers.openai import OpenAIProvider

OPENAI = OpenAIProvider()
GEMINI = GeminiProvider()


def _openai_429(message: str, type_: str = "tokens") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "code": "rate_limit_exceeded"}}
    ).encode()


def _gemini_429(quota_id: str, value: str | None, message: str = "quota") -> bytes:
    violation: dict[str, object] = {"quotaId": quota_id, "quotaMetric": "x"}
    if value is not None:
        violation["quotaValue"] = value
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
    ]
    error = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": message, "details": details}
    return json.dumps({"error": error}).encode()


# -- providers ------------------------------------------------------------------------------------
def test_openai_states_its_limits_on_every_answer() -> None:
    headers = {"X-RateLimit-Limit-Tokens": "6000", "x-ratelimit-limit-requests": "500"}
    assert OPENAI.learned_limits(headers) == LearnedLimits(tokens=6000, requests=500)
    assert OPENAI.learned_limits({"x-ratelimit-limit-tokens": "n/a"}) is None
    assert OPENAI.learned_limits({}) is None


@pytest.mark.parametrize(
    ("message", "type_", "learned"),
    [
        (
            "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
            "Limit 30000, Used 29500, Requested 1200. Please try again in 1.4s.",
            "tokens",
            LearnedLimits(tokens=30000),
        ),
        (
            "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 20s.",
            "requests",
            LearnedLimits(requests=3),
        ),
        ("Limit 6,000, Used 5,500, Requested 1,200.", "tokens", LearnedLimits(tokens=6000)),
        (  # a daily limit is no per-window limit
            "Rate limit reached for gpt-4o-mini on tokens per day (TPD): Limit 90000, Used 89000,"
            " Requested 1200. Please try again in 7m12s.",
            "tokens",
            None,
        ),
    ],
)
def test_openai_429_message_states_a_limit(
    message: str, type_: str, learned: LearnedLimits | None
) -> None:
    rejection = OPENAI.classify(429, {}, _openai_429(message, type_), 0.0)
    assert OPENAI.learned_limits({}, rejection) == learned


def test_openai_per_day_429_is_named() -> None:
    message = "Rate limit reached on tokens per day (TPD): Limit 90000, Used 89000, Requested 9."
    rejection = OPENAI.classify(429, {}, _openai_429(message), 0.0)
    assert rejection.per_day and rejection.quota == "tokens per day (TPD)"
    assert rejection.dimension == "tokens" and rejection.limit == 90000


def test_gemini_quota_failure_states_a_per_minute_limit() -> None:
    body = _gemini_429("GenerateContentPaidTierInputTokensPerModelPerMinute", "1000000")
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.kind is RejectionKind.RATE_LIMIT
    assert rejection.quota == "GenerateContentPaidTierInputTokensPerModelPerMinute"
    assert GEMINI.learned_limits({}, rejection) == LearnedLimits(tokens=1000000)
    body = _gemini_429("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10")
    assert GEMINI.learned_limits({}, GEMINI.classify(429, {}, body, 0.0)) == LearnedLimits(
        requests=10
    )
    assert GEMINI.learned_limits({"x-ratelimit-limit-tokens": "5"}) is None  # no such headers


def test_gemini_message_states_a_limit_without_quota_value() -> None:
    message = (
        "You exceeded your current quota.\n* Quota exceeded for metric: generativelanguage."
        "googleapis.com/generate_content_input_token_count, limit: 250000, model: gemini-2.5-pro"
    )
    body = _gemini_429("", None, message).replace(b'"quotaId": ""', b'"x": 1')
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.dimension == "tokens" and rejection.limit == 250000
    assert GEMINI.learned_limits({}, rejection) == LearnedLimits(tokens=250000)


def test_gemini_per_day_quota_is_a_quota_and_no_limit() -> None:
    body = _gemini_429("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250")
    rejection = GEMINI.classify(429, {}, body, 0.0)
    assert rejection.kind is RejectionKind.QUOTA and rejection.per_day
    assert rejection.quota == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert GEMINI.learned_limits({}, rejection) is None


# -- the limiter, on the fake clock ---------------------------------------------------------------
AUTO = LimitRule("*", "*", None, None, per_model=True)


def _limiter(backend: Backend, clock: Any, *rules: LimitRule, **kw: Any) -> Limiter:
    kw.setdefault("headroom", 0.15)
    kw.setdefault("window", 6.0)
    return Limiter(
        backend, rules or (AUTO,), clock=clock.now, sleep=clock.sleep, asleep=clock.asleep, **kw
    )


def test_a_lower_server_limit_wins_with_one_notice(clock: Any) -> None:
    backend = MemoryBackend()
    limiter = _limiter(backend, clock, LimitRule("*", "*", 30000))
    told: list[LimitLearned] = []
    limiter.limit_listeners.append(told.append)
    bucket = limiter.bucket_for("openai", "gpt-4o-mini")
    assert limiter.limits(bucket).tokens == 25500
    with limiter.reserve(1000, model="gpt-4o-mini") as r:
        r.learn("gpt-4o-mini", LearnedLimits(tokens=6000, requests=500))
    assert limiter.limits(bucket).tokens == 5100  # 6000 less the 15% headroom, as configured
    assert limiter.limits(bucket).requests == 500
    assert limiter.limits(bucket).window == 6.0  # the window stays as configured
    assert [e.line() for e in told] == [
        "openai:* (gpt-4o-mini): the server allows 6000 tokens per window, configured 30000: "
        "using 6000",
        "openai:* (gpt-4o-mini): the server allows 500 requests per window, configured none: "
        "using 500",
    ]
    limiter.learn(bucket, "gpt-4o-mini", {"tokens": 6000})  # the same figure again: silent
    assert len(told) == 2
    [stats] = limiter.stats()
    assert (stats.budget, stats.tpm, stats.server_tpm, stats.server_rpm) == (5100, 30000, 6000, 500)


def test_a_token_bucket_vendor_learns_its_input_and_output_limits(clock: Any) -> None:
    from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits

    limiter = _limiter(MemoryBackend(), clock)
    bucket = limiter.bucket_for("anthropic", "claude-sonnet-4-5")
    assert limiter.probing(bucket) and limiter.budget(bucket) is None
    limiter.learn(bucket, "claude-sonnet-4-5", LearnedLimits(
        input_tokens=1000, output_tokens=500, requests=50).figures())
    limits = limiter.limits(bucket)
    assert isinstance(limits, TokenBucketLimits)
    assert (limits.tokens, limits.output, limits.requests) == (850, 425, 50)
    assert not limiter.probing(bucket) and limits.concurrency is None


def test_a_configured_limit_lower_than_the_servers_is_kept(clock: Any) -> None:
    limiter = _limiter(MemoryBackend(), clock, LimitRule("*", "*", 3000, 20))
    told: list[LimitLearned] = []
    limiter.limit_listeners.append(told.append)
    bucket = limiter.bucket_for("openai", "gpt-5")
    limiter.learn(bucket, "gpt-5", {"tokens": 30000, "requests": 500})
    assert (limiter.limits(bucket).tokens, limiter.limits(bucket).requests) == (2550, 20)
    assert told == []


def test_a_bucket_of_several_models_keeps_the_lowest_stated_limit(clock: Any) -> None:
    limiter = _limiter(MemoryBackend(), clock, LimitRule("openai", "gpt-5*", 100000))
    bucket = limiter.bucket_for("openai", "gpt-5")
    assert limiter.bucket_for("openai", "gpt-5-mini") == bucket == "openai:gpt-5*"
    limiter.learn(bucket, "gpt-5", {"tokens": 40000})
    limiter.learn(bucket, "gpt-5-mini", {"tokens": 20000})
    limiter.learn(bucket, "gpt-5", {"tokens": 50000})
    assert limiter.limits(bucket).tokens == 17000


def test_auto_probes_one_call_at_a_time_until_a_limit_is_known(clock: Any) -> None:
    limiter = _limiter(MemoryBackend(), clock, max_wait=1.0)
    bucket = limiter.bucket_for("openai", "gpt-4o-mini")
    assert limiter.budget(bucket) is None and limiter.probing(bucket)
    first = limiter.reserve(50_000, model="gpt-4o-mini")  # no token limit known: any size
    with pytest.raises(BudgetWaitTimeout, match="concurrency"):
        limiter.reserve(100, model="gpt-4o-mini")  # the probe is alone in its bucket
    other = limiter.reserve(100, model="gpt-5")  # another model: its own bucket, its own probe
    assert other.bucket == "openai:gpt-5"
    first.learn("gpt-4o-mini", LearnedLimits(tokens=60_000))
    first.settle(50_000)
    assert not limiter.probing(bucket) and limiter.budget(bucket) == 51_000
    second = limiter.reserve(100, model="gpt-4o-mini")  # paced at the learned limit, not alone
    third = limiter.reserve(100, model="gpt-4o-mini")
    assert second.waited_s == third.waited_s == 0.0
    assert limiter.probing("openai:gpt-5")  # gpt-4o-mini's figure does not limit gpt-5
    assert limiter.budget("openai:gpt-5") is None


def test_the_probe_and_learned_limits_are_shared_through_the_backend(
    clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "state.json"
    one = _limiter(FileBackend(path), clock, max_wait=0.5)
    two = _limiter(FileBackend(path), clock, max_wait=0.5)
    told: list[LimitLearned] = []
    one.limit_listeners.append(told.append)
    two.limit_listeners.append(told.append)
    probe = one.reserve(500, model="gpt-4o-mini")
    with pytest.raises(BudgetWaitTimeout, match="concurrency"):
        two.reserve(500, model="gpt-4o-mini")  # another process waits for the probe's answer
    probe.learn("gpt-4o-mini", LearnedLimits(tokens=6000))
    probe.settle(500)
    got = two.reserve(500, model="gpt-4o-mini")  # reads what `one` learned
    assert two.budget(got.bucket) == 5100
    assert len(told) == 1  # told once, by the process whose answer taught it
    two.learn(got.bucket, "gpt-4o-mini", {"tokens": 6000})
    assert len(told) == 1
    # A later run on the same file starts with them: no probe, and the preflight knows them.
    later = _limiter(FileBackend(path), clock)
    assert later.known_budget("openai", "gpt-4o-mini") == 5100
    assert not later.probing(later.bucket_for("openai", "gpt-4o-mini"))
    assert later.known_budget("openai", "gpt-5") is None


@pytest.fixture
def redis_backends(redis_server: RedisServer) -> Iterator[tuple[Any, Any]]:  # noqa: F811
    from pytest_llm_budget.backends.redis import RedisBackend

    prefix = f"t-{uuid.uuid4().hex[:8]}"
    one = RedisBackend.from_url(redis_server.url, prefix=prefix)
    two = RedisBackend.from_url(redis_server.url, prefix=prefix)
    yield one, two
    one.close()
    two.close()


def test_redis_dates_a_late_request_from_when_it_left(
    clock: Any, redis_backends: tuple[Any, Any]
) -> None:
    backend, _ = redis_backends
    limiter = Limiter(
        backend, [LimitRule(tpm=1000)], headroom=0.0, window=2.0, clock=clock.now,
        sleep=clock.sleep,
    )
    start = clock.t
    slow = limiter.reserve(600)
    clock.advance(0.5)
    slow.sent()
    limiter.reserve(600)
    assert clock.t - start >= 0.5 + 2.0 + limiter.margin - 1e-9


def test_learned_limits_live_in_redis(clock: Any, redis_backends: tuple[Any, Any]) -> None:
    first, second = redis_backends
    assert first.learn_limits("openai:gpt-4o", "gpt-4o", {"tokens": 6000}, 0.0) == {}
    before = second.learn_limits("openai:gpt-4o", "gpt-4o", {"requests": 50}, 0.0)
    assert before == {"gpt-4o": {"tokens": 6000}}
    both = {"gpt-4o": {"tokens": 6000, "requests": 50}}
    assert first.learned_limits("openai:gpt-4o", 0.0) == both
    assert 0 < first.client.ttl(first.limits_key("openai:gpt-4o")) <= 30 * 86400
    one, two = _limiter(first, clock, max_wait=0.5), _limiter(second, clock, max_wait=0.5)
    probe = one.reserve(100, model="gpt-5")
    with pytest.raises(BudgetWaitTimeout, match="concurrency"):
        two.reserve(100, model="gpt-5")
    probe.learn("gpt-5", LearnedLimits(tokens=1000))
    assert two.reserve(100, model="gpt-5").waited_s == 0.0
    assert two.budget("openai:gpt-5") == 850


# -- a reservation is timed from when its request leaves (the rare 429 under load) ----------------
def test_a_charge_is_dated_from_when_its_request_left(clock: Any) -> None:
    """The issue's 429 at -n 4 on a loaded machine: a request that left late stayed in the
    provider's window after it had left ours, and the next waiter got in too early."""
    limiter = Limiter(
        MemoryBackend(), [LimitRule(tpm=1000)], headroom=0.0, window=2.0,
        clock=clock.now, sleep=clock.sleep,
    )
    start = clock.t
    slow = limiter.reserve(600)
    clock.advance(0.5)  # the sender was descheduled between its admission and its send
    slow.sent()
    later = limiter.reserve(600)
    assert clock.t - start >= 0.5 + 2.0 + limiter.margin - 1e-9
    prompt = limiter.reserve(1)  # a request sent at once is not moved (no extra backend op)
    stamped = prompt.stamped_at
    clock.advance(limiter.margin / 4)
    prompt.sent()
    assert prompt.stamped_at == stamped == later.stamped_at


def test_a_slow_sender_gets_no_429(emu: Any, make_budget: Any) -> None:
    """A real request held back between its admission and its send (a trace hook sleeping, as
    a loaded machine's scheduler would), then a prompt one: the server must see them a window
    apart."""
    import threading
    import time

    from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
    from pytest_llm_budget.routing import clients

    emu.configure(EmulatorConfig(window=2.0, openai=LimitSpec(tpm=1000, rpm=None)))
    emu.reset()
    budget = make_budget(tpm=1000, window=2.0, headroom=0.0, retries=0)
    http = clients.http_client(budget)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 540}
    headers = {"Authorization": "Bearer sk-test"}

    def slow_trace(name: str, info: dict[str, Any]) -> None:
        if name.endswith("send_request_headers.started"):
            time.sleep(0.6)

    def call(trace: Any = None) -> int:
        extensions = {"trace": trace} if trace else {}
        response = http.post(
            f"{emu.openai_base_url}/chat/completions", json=body, headers=headers,
            extensions=extensions,
        )
        return int(response.status_code)

    statuses: list[int] = []
    slow = threading.Thread(target=lambda: statuses.append(call(slow_trace)))
    slow.start()
    time.sleep(0.2)
    statuses.append(call())
    slow.join(10)
    assert statuses == [200, 200], [r.outcome for r in emu.log]
    ok = [r.t for r in emu.log if r.status == 200]
    assert ok[1] - ok[0] >= 2.0, ok


# -- whole runs against the emulator: limits the plugin was not told -----------------------------
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec  # noqa: E402

WINDOW = 2.0
REAL_TPM = 3000  # per WINDOW, per model; a call charges ~300 (input + max_tokens 290)
SUITE = """
import pytest

@pytest.mark.parametrize("i", range({n}))
@pytest.mark.parametrize("model", {models!r})
def test_call(i, model, openai_client):
    openai_client.chat.completions.create(
        model=model, max_tokens=290,
        messages=[{{"role": "user", "content": "question number %d" % i}}],
    )
"""
GEMINI_SUITE = """
import pytest

PROMPT = "tell me about the weather in a long sentence " * 40  # ~450 input tokens

@pytest.mark.parametrize("i", range({n}))
def test_call(i, gemini_client):
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents=PROMPT + str(i))
"""


@pytest.fixture
def real_limits() -> Iterator[Emulator]:
    """An emulator enforcing 3000 tokens per 2 s per model, stating them in its headers."""
    config = EmulatorConfig(
        window=WINDOW, openai=LimitSpec(tpm=REAL_TPM, rpm=None),
        gemini=LimitSpec(tpm=1000, rpm=None),
    ).updated({"limits": ["openai:gpt-5* tpm=1500 rpm=none"]})
    with Emulator(config) as emu:
        yield emu


def run_suite(
    pytester: pytest.Pytester, emu: Emulator, *args: str, workers: int = 0, suite: str = ""
) -> subprocess.CompletedProcess[str]:
    if suite:
        pytester.makepyfile(test_calls=suite)
    env = dict(os.environ)
    env.update(
        OPENAI_BASE_URL=emu.openai_base_url, OPENAI_API_KEY="sk-test",
        GOOGLE_GEMINI_BASE_URL=emu.gemini_base_url, GEMINI_API_KEY="g-test",
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
               f"--llm-window={WINDOW}", "--llm-headroom=0.05", *args]
    if workers:
        command += ["-n", str(workers)]
    return subprocess.run(
        command, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=180
    )


def rejected(emu: Emulator) -> int:
    return sum(sum(b["rejected"].values()) for b in emu.stats()["buckets"].values())


def never_over(emu: Emulator) -> None:
    for name, bucket in emu.stats()["buckets"].items():
        limit = bucket.get("tpm") or (1500 if "gpt-5" in name else REAL_TPM)
        assert bucket["max_window_tokens"] <= limit, (name, bucket)


@pytest.mark.parametrize("workers", [0, 2])
def test_told_a_limit_five_times_too_high(
    pytester: pytest.Pytester, real_limits: Emulator, workers: int
) -> None:
    suite = SUITE.format(n=16, models=["gpt-4o-mini"])
    report = pytester.path / "report.json"
    result = run_suite(
        pytester, real_limits, f"--llm-tpm={5 * REAL_TPM}", f"--llm-report={report}",
        workers=workers, suite=suite,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    line = "the server allows 3000 tokens per window, configured 15000: using 3000"
    assert f"llm-budget: openai:* (gpt-4o-mini): {line}" in out  # the notice, once
    assert out.count(f"(gpt-4o-mini): {line}") == 1
    assert f"openai:*: {line}" in out  # the summary's line
    assert re.search(r"^openai:\*\s+2850/2s\s", out, re.M), out
    assert rejected(real_limits) <= 2  # target 0: the first calls fit the real limit
    never_over(real_limits)
    document = json.loads(report.read_text())
    assert document["limits"] == [f"openai:*: {line}"]
    [bucket] = document["buckets"]
    assert bucket["budget"] == 2850
    assert bucket["limits"] == {
        "configured": {"tokens": 15000, "requests": None},
        "server": {"tokens": 3000, "requests": None},
    }


@pytest.mark.parametrize("workers", [0, 4])
def test_told_nothing_learns_each_models_limit(
    pytester: pytest.Pytester, real_limits: Emulator, workers: int
) -> None:
    suite = SUITE.format(n=8, models=["gpt-4o-mini", "gpt-5"])
    result = run_suite(pytester, real_limits, workers=workers, suite=suite)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert rejected(real_limits) == 0  # each bucket's first call went alone
    never_over(real_limits)
    assert ("openai:gpt-4o-mini: the server allows 3000 tokens per window, configured auto: "
            "using 3000") in out
    assert ("openai:gpt-5: the server allows 1500 tokens per window, configured auto: "
            "using 1500") in out  # gpt-4o-mini's figure does not limit gpt-5
    assert re.search(r"^openai:gpt-5\s+1425/2s\s", out, re.M), out
    assert "429s: 0" in out


def test_gemini_limits_come_from_a_429s_quota_failure(
    pytester: pytest.Pytester, real_limits: Emulator
) -> None:
    result = run_suite(
        pytester, real_limits, "--llm-tpm=15000", suite=GEMINI_SUITE.format(n=8)
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert ("gemini:* (gemini-2.5-flash): the server allows 1000 tokens per window, "
            "configured 15000: using 1000") in out
    assert 1 <= rejected(real_limits) <= 2  # Gemini states no limit until it refuses
    assert re.search(r"^gemini:\*\s+950/2s\s", out, re.M), out


def test_gemini_per_day_quota_fails_at_once_naming_it(
    pytester: pytest.Pytester, real_limits: Emulator
) -> None:
    real_limits.configure(gemini_rpd=1)  # the second request of the day is refused
    suite = """
import pytest
from pytest_llm_budget import QuotaExhausted

QUOTA = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"

def test_call(gemini_client):
    gemini_client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    with pytest.raises(QuotaExhausted) as caught:
        gemini_client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert caught.value.quota == QUOTA and f"quota {QUOTA}" in str(caught.value)
    assert caught.value.details["per_day"] is True
"""
    result = run_suite(pytester, real_limits, suite=suite)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(real_limits.log) == 2  # the refused one never retried


def test_a_daily_limit_no_retry_can_outlast_fails_at_once(
    pytester: pytest.Pytester, real_limits: Emulator
) -> None:
    real_limits.queue_fault("daily_quota", count=1)  # OpenAI RPD: retry-after until the day turns
    suite = """
import pytest
from pytest_llm_budget import QuotaExhausted

def test_call(openai_client):
    with pytest.raises(QuotaExhausted) as caught:
        openai_client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.quota == "requests per day (RPD)"
    assert "longer than --llm-max-wait=600s" in str(caught.value)
"""
    result = run_suite(pytester, real_limits, suite=suite)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(real_limits.log) == 1


def test_without_limit_headers_the_429_message_teaches_the_limit(
    pytester: pytest.Pytester, real_limits: Emulator
) -> None:
    real_limits.configure(limit_headers=False, openai={"tpm": 700})  # two calls per window
    result = run_suite(pytester, real_limits, suite=SUITE.format(n=8, models=["gpt-4o-mini"]))
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert rejected(real_limits) == 1  # one at a time until the first 429 says "Limit 700"
    assert ("openai:gpt-4o-mini: the server allows 700 tokens per window, configured auto: "
            "using 700") in out
    assert re.search(r"^openai:gpt-4o-mini\s+665/2s\s", out, re.M), out


def test_two_processes_on_one_redis_learn_once(
    pytester: pytest.Pytester, real_limits: Emulator, redis_server: RedisServer  # noqa: F811
) -> None:
    procs = []
    for name in ("a", "b"):
        folder = pytester.mkdir(name)
        (folder / "test_calls.py").write_text(SUITE.format(n=8, models=["gpt-4o-mini"]))
        env = dict(os.environ, OPENAI_BASE_URL=real_limits.openai_base_url,
                   OPENAI_API_KEY="sk-test")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
             f"--llm-window={WINDOW}", "--llm-headroom=0.05",
             f"--llm-backend={redis_server.url}"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outs
    assert rejected(real_limits) == 0  # one probe for both hosts
    never_over(real_limits)
    notice = "llm-budget: openai:gpt-4o-mini: the server allows 3000 tokens per window"
    assert sum(out.count(notice) for out in outs) == 1  # told by the host that learned it
