"""Unit tests of the emulator's pure parts: limits on an injected clock, parsing, synthesis."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llm_budget.emulator import (
    BucketLimiter,
    EmulatorConfig,
    EmulatorCore,
    LimitSpec,
    SlidingWindow,
    TokenBucket,
    parse_fault,
    parse_limit_rule,
)
from pytest_llm_budget.emulator.limits import WindowMax
from pytest_llm_budget.emulator.openai_api import parse_chat
from pytest_llm_budget.emulator.synth import request_digest, synthesize
from pytest_llm_budget.emulator.wire import Request, go_duration, proto_duration


class FakeClock:
    """A settable clock for the core."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- sliding window ---------------------------------------------------------------------------


def test_sliding_window_admits_up_to_limit_then_waits_for_oldest_to_expire() -> None:
    w = SlidingWindow(100, 10.0)
    assert w.wait_time(60, 0.0) == 0
    w.commit(60, 0.0)
    assert w.wait_time(40, 1.0) == 0
    w.commit(40, 1.0)
    assert w.wait_time(1, 2.0) == pytest.approx(8.0)  # the 60 at t=0 leaves at t=10
    assert w.wait_time(50, 9.999) > 0
    assert w.wait_time(50, 10.0) == 0  # (t - window, t] : the t=0 charge is out
    assert w.wait_time(70, 10.0) == pytest.approx(1.0)  # needs the t=1 charge gone too
    assert w.used(10.0) == 40
    assert w.reset_after(10.0) == pytest.approx(1.0)


def test_sliding_window_never_admits_more_than_limit() -> None:
    w = SlidingWindow(100, 10.0)
    assert math.isinf(w.wait_time(101, 0.0))


def test_token_bucket_refills_continuously_and_bursts_only_when_full() -> None:
    b = TokenBucket(600, 60.0)  # 10 tokens/s
    assert b.wait_time(600, 0.0) == 0  # full bucket: the whole per-minute figure at once
    b.commit(600, 0.0)
    assert b.wait_time(10, 0.0) == pytest.approx(1.0)
    assert b.wait_time(10, 1.0) == 0  # refilled 10 in 1 s (a sliding window would say 60 s)
    b.commit(10, 1.0)
    assert b.used(1.0) == pytest.approx(600)
    assert b.reset_after(1.0) == pytest.approx(60.0)
    assert b.wait_time(600, 61.0) == 0
    assert math.isinf(b.wait_time(601, 61.0))


def test_bucket_and_sliding_differ_on_the_same_schedule() -> None:
    sliding = BucketLimiter("sliding", 10.0, 100, None)
    bucket = BucketLimiter("bucket", 10.0, 100, None)
    for lim in (sliding, bucket):
        assert lim.admit(100, 0.0).admitted
    # 5 s later: the bucket has 50 back, the sliding window has nothing back until t=10
    assert bucket.admit(50, 5.0).admitted
    d = sliding.admit(50, 5.0)
    assert d.verdict == "tokens" and d.retry_after == pytest.approx(5.0)
    assert d.used == 100 and d.requested == 50 and d.limit == 100


def test_bucket_limiter_rpm_and_too_large_and_rejections_not_charged() -> None:
    lim = BucketLimiter("sliding", 1.0, 1000, 2)
    assert lim.admit(10, 0.0).admitted
    assert lim.admit(10, 0.1).admitted
    d = lim.admit(10, 0.2)
    assert d.verdict == "requests" and d.limit == 2 and d.requested == 1
    assert d.retry_after == pytest.approx(0.8)
    big = lim.admit(5000, 0.3)
    assert big.verdict == "too_large" and big.requested == 5000 and big.limit == 1000
    assert lim.admit(980, 1.05).admitted  # rejections above charged nothing
    assert lim.tokens is not None and lim.tokens.used(1.05) == pytest.approx(990)


def test_decision_headers_figures() -> None:
    lim = BucketLimiter("sliding", 60.0, 1000, 10)
    d = lim.admit(300, 0.0)
    assert (d.limit_tokens, d.remaining_tokens, d.limit_requests, d.remaining_requests) == (
        1000,
        700,
        10,
        9,
    )
    assert d.reset_tokens == pytest.approx(60.0)


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["sliding", "bucket"]),
    arrivals=st.lists(st.tuples(st.floats(0, 0.7), st.integers(1, 400)), min_size=1, max_size=80),
)
def test_admitted_charges_respect_the_documented_bound(
    mode: str, arrivals: list[tuple[float, int]]
) -> None:
    window, tpm = 2.0, 1000
    lim = BucketLimiter(mode, window, tpm, None)  # type: ignore[arg-type]
    proof = WindowMax(window)
    now = 0.0
    for gap, charge in arrivals:
        now += gap
        if lim.admit(charge, now).admitted:
            proof.add(charge, now)
    bound = tpm if mode == "sliding" else 2 * tpm  # bucket: capacity + window * rate
    assert proof.max <= bound + 1e-6


def test_window_max_tracks_the_largest_window() -> None:
    wm = WindowMax(1.0)
    wm.add(5, 0.0)
    wm.add(5, 0.5)
    wm.add(5, 1.0)  # the t=0 one left at exactly t=1
    assert wm.max == 10
    wm.add(1, 1.2)
    assert wm.max == 11


# --- core on an injected clock ----------------------------------------------------------------


def _chat(model: str, text: str, max_tokens: int) -> Request:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }
    return Request(
        "POST",
        "/v1/chat/completions",
        {},
        {"authorization": "Bearer sk"},
        json.dumps(body).encode(),
    )


def test_core_sliding_window_on_fake_clock_and_retry_hint_is_exact() -> None:
    clock = FakeClock()
    core = EmulatorCore(EmulatorConfig(window=10, openai=LimitSpec(tpm=1000, rpm=None)), clock)
    ok = core.handle(_chat("gpt-5", "abcd" * 25, 575))  # 25 + 575 = 600
    assert ok.status == 200
    clock.t += 4
    rejected = core.handle(_chat("gpt-5", "abcd" * 25, 575))
    assert rejected.status == 429
    headers = dict(rejected.headers)
    assert headers["retry-after-ms"] == "6000" and headers["retry-after"] == "6"
    assert headers["x-ratelimit-remaining-tokens"] == "400"
    assert "Used 600, Requested 600" in rejected.json()["error"]["message"]
    clock.t += 6
    assert core.handle(_chat("gpt-5", "abcd" * 25, 575)).status == 200
    stats = core.stats()["buckets"]["openai:gpt-5"]
    assert stats["admitted"] == 2 and stats["rejected"] == {"tokens": 1}
    assert stats["max_window_tokens"] == 600


def test_core_bucket_mode_on_fake_clock() -> None:
    clock = FakeClock()
    cfg = EmulatorConfig(window=10, mode="bucket", openai=LimitSpec(tpm=1000, rpm=None))
    core = EmulatorCore(cfg, clock)
    assert core.handle(_chat("m", "x", 999)).status == 200  # 1 + 999: the whole bucket
    clock.t += 1  # 100 tokens back
    assert core.handle(_chat("m", "x", 99)).status == 200
    assert core.handle(_chat("m", "x", 99)).status == 429
    clock.t += 1
    assert core.handle(_chat("m", "x", 99)).status == 200


def test_core_per_model_rules_and_vendor_default() -> None:
    cfg = EmulatorConfig(
        window=10,
        openai=LimitSpec(tpm=100_000, rpm=None),
        model_limits=(parse_limit_rule("openai:small* tpm=100 rpm=none"),),
    )
    core = EmulatorCore(cfg, FakeClock())
    assert core.handle(_chat("small-1", "x", 150)).status == 429  # too large for the rule
    assert core.handle(_chat("gpt-5", "x", 150)).status == 200
    assert core.stats()["buckets"]["openai:small-1"]["rejected"] == {"too_large": 1}


def test_configure_changes_limits_in_place() -> None:
    clock = FakeClock()
    core = EmulatorCore(EmulatorConfig(window=10, openai=LimitSpec(tpm=1000, rpm=None)), clock)
    assert core.handle(_chat("m", "x", 499)).status == 200
    core.configure({"openai": {"tpm": 400}})
    assert core.handle(_chat("m", "x", 9)).status == 429  # 500 already in the window
    with pytest.raises(ValueError, match="unknown"):
        core.configure({"nope": 1})


# --- parsing and synthesis --------------------------------------------------------------------


def test_parse_fault_syntax() -> None:
    f = parse_fault("latency=0.2, status=503; count=3")
    assert (f.latency, f.status, f.count) == (0.2, 503, 3)
    assert parse_fault("drop_stream").drop_stream == 1
    assert parse_fault("drop_stream=4").drop_stream == 4
    assert parse_fault("rate_limit_no_hint").rate_limit_no_hint
    assert parse_fault("malformed_json").malformed_json
    assert parse_fault("insufficient_quota").insufficient_quota
    for bad in ("status=200", "latency=-1", "explode", "count=0"):
        with pytest.raises(ValueError, match="bad fault item"):
            parse_fault(bad)


def test_parse_limit_rule() -> None:
    rule = parse_limit_rule("gemini:gemini-2.5-* tpm=250000 rpm=10")
    assert rule.matches("gemini", "gemini-2.5-flash") and not rule.matches("openai", "gemini-2.5")
    assert rule.limits == LimitSpec(250_000, 10)
    with pytest.raises(ValueError):
        parse_limit_rule("mistral:* tpm=1")
    with pytest.raises(ValueError, match="want tpm=N or rpm=N"):
        parse_limit_rule("openai:* itpm=1")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(360, "6m0s"), (1.5, "1.5s"), (0.02, "20ms"), (0, "0s"), (3723.25, "1h2m3.25s"), (2, "2s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_proto_duration() -> None:
    assert proto_duration(26) == "26s"
    assert proto_duration(1.2) == "1.200s"


def test_reply_is_deterministic_small_and_within_budget() -> None:
    payload = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}
    a = synthesize(request_digest(payload), None, 8, 40)
    b = synthesize(request_digest({**payload, "stream": True}), None, 8, 40)
    assert a == b and 8 <= a.tokens <= 40
    capped = synthesize(request_digest(payload), 3, 8, 40)
    assert capped.tokens == 3 and capped.truncated
    assert "".join(a.pieces()) == a.text


@settings(max_examples=80, deadline=None)
@given(
    contents=st.lists(st.text(max_size=300), min_size=1, max_size=8),
    max_tokens=st.one_of(st.none(), st.integers(1, 5000)),
)
def test_openai_prompt_tokens_never_above_the_estimate_bound(
    contents: list[str], max_tokens: int | None
) -> None:
    payload: dict[str, object] = {
        "model": "gpt-5",
        "messages": [{"role": "user", "content": c} for c in contents],
    }
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    call = parse_chat(payload, 4096, 8, 40)
    chars = sum(len(c) for c in contents)
    assert call.prompt_tokens <= math.ceil(chars / 4) + 4 * len(contents)
    assert call.charge == math.ceil(chars / 4) + (max_tokens or 4096)
    assert call.completion_tokens <= (max_tokens or 40)


def test_emulator_import_is_light_and_pytest_free() -> None:
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys, pytest_llm_budget.emulator as e; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'openai', 'google', 'tiktoken', 'httpx', 'httpx2'}); print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    package = pathlib.Path(__file__).parent.parent / "pytest_llm_budget" / "emulator"
    sources = {p.name: p.read_text() for p in package.glob("*.py")}
    assert sources and not [n for n, s in sources.items() if "import pytest" in s]
