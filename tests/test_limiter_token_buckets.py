"""The limiter over Anthropic's token buckets, on a fake clock: the model per vendor, each
dimension limiting on its own, settle per dimension, stats and the JSON-ready figures."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llm_budget import BudgetWaitTimeout, LimitRule, RequestTooLarge
from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.limiting.limiter import Limiter
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits

W = 6.0
RULE = LimitRule("anthropic", "claude-sonnet-4*", 1500, 50, itpm=1500, otpm=800)


def make(clock: FakeClock, *rules: LimitRule, **kw: object) -> Limiter:
    kw.setdefault("headroom", 0.0)
    kw.setdefault("margin", 0.0)
    return Limiter(
        MemoryBackend(), rules or (RULE, LimitRule("*", "*", 1500)), window=W, clock=clock.now,
        sleep=clock.sleep, asleep=clock.asleep, **kw,  # type: ignore[arg-type]
    )


def reserve(limiter: Limiter, tokens: int, output: int = 0):  # type: ignore[no-untyped-def]
    return limiter.reserve(tokens, vendor="anthropic", model="claude-sonnet-4-5", output=output)


def test_the_admission_model_follows_the_vendor(clock: FakeClock) -> None:
    limiter = make(clock)
    anthropic = limiter.bucket_for("anthropic", "claude-sonnet-4-5")
    openai = limiter.bucket_for("openai", "gpt-5")
    assert isinstance(limiter.limits(anthropic), TokenBucketLimits)
    assert not isinstance(limiter.limits(openai), TokenBucketLimits)
    # an Anthropic bucket from a tpm-only rule: tpm is its input limit, output unlimited
    other = limiter.limits(limiter.bucket_for("anthropic", "claude-opus-4"))
    assert isinstance(other, TokenBucketLimits)
    assert (other.tokens, other.output) == (1500, None)


def test_headroom_shrinks_the_token_dimensions_not_the_requests(clock: FakeClock) -> None:
    limiter = make(clock, headroom=0.15)
    limits = limiter.limits(limiter.bucket_for("anthropic", "claude-sonnet-4-5"))
    assert isinstance(limits, TokenBucketLimits)
    assert limits.capacities() == (50, 1275, 680)


def test_input_waits_for_refill_and_output_is_charged_as_produced(clock: FakeClock) -> None:
    limiter = make(clock)
    start = clock.now()
    first = reserve(limiter, 1200, output=300)
    assert first.charges == {"requests": 1, "input_tokens": 1200, "output_tokens": 0}
    first.settle(1200, refund=True, output_tokens=250)
    second = reserve(limiter, 1200)  # 1200 spent: 900 must refill at 250/s
    assert second.admitted_at == pytest.approx(start + 900 / 250)
    assert clock.sleeps == [pytest.approx(3.6)]
    snap = limiter.window_snapshot(second.bucket)
    assert snap.dimensions["output_tokens"].used == 0  # 250 produced, refilled in 1.9 s
    assert snap.dimensions["input_tokens"].used == pytest.approx(1500)


def test_output_in_flight_holds_the_next_request_until_a_settle(clock: FakeClock) -> None:
    limiter = make(clock, max_wait=1.0)
    a = reserve(limiter, 10, output=800)  # expected to produce up to the whole 800
    with pytest.raises(BudgetWaitTimeout, match="output_tokens"):  # nothing settles meanwhile
        reserve(limiter, 10, output=10)
    assert clock.sleeps and max(clock.sleeps) == pytest.approx(0.05)  # it polled for a settle
    a.settle(10, refund=True, output_tokens=790)  # 790 of 800 produced
    b = reserve(limiter, 10, output=10)  # 10 left over: the bucket is not exhausted
    assert b.waited_s == 0


def test_debt_in_output_delays_the_next_request(clock: FakeClock) -> None:
    limiter = make(clock)
    a = reserve(limiter, 10, output=100)
    a.settle(10, refund=True, output_tokens=1000)  # more than the whole bucket: debt
    b = reserve(limiter, 10, output=100)  # needs 1000 + 1 - 800 refilled at 133.3/s
    assert b.waited_s == pytest.approx(201 / (800 / 6))
    stats = limiter.stats()[0]
    assert stats.dimensions["output_tokens"].actual == 1000


def test_charge_max_tokens_is_an_option(clock: FakeClock) -> None:
    limiter = make(clock, charge_max_tokens=True)
    a = reserve(limiter, 10, output=600)
    assert a.charges["output_tokens"] == 600
    with pytest.raises(RequestTooLarge, match="output tokens"):
        reserve(limiter, 10, output=900)
    b = reserve(limiter, 10, output=600)  # 400 more must refill at 133.3/s
    assert b.waited_s == pytest.approx(400 / (800 / 6))
    a.settle(10, refund=True, output_tokens=100)  # the rest of a's 600 comes back
    snap = limiter.window_snapshot(a.bucket)
    assert snap.dimensions["output_tokens"].used == pytest.approx(800 - 500)


def test_an_input_too_large_for_the_bucket_is_refused(clock: FakeClock) -> None:
    limiter = make(clock)
    with pytest.raises(RequestTooLarge, match=r"1501 input tokens.*itpm 1500"):
        reserve(limiter, 1501)
    reserve(limiter, 10, output=10**6)  # a huge max_tokens is fine when output is produced


def test_requests_limit_on_their_own(clock: FakeClock) -> None:
    limiter = make(clock, LimitRule("anthropic", "*", 10**6, 3, itpm=10**6))
    for _ in range(3):
        reserve(limiter, 1).settle(1, output_tokens=1)
    r = reserve(limiter, 1)
    assert r.waited_s == pytest.approx(W / 3)


def test_stats_and_snapshot_per_dimension_survive_json_and_merge(clock: FakeClock) -> None:
    limiter = make(clock)
    reserve(limiter, 1000, output=500).settle(900, refund=True, output_tokens=400)
    reserve(limiter, 400, output=500).settle(450, refund=True, output_tokens=None)
    stats = limiter.stats()[0]
    assert stats.admission == "token_bucket" and stats.rule == str(RULE)
    dims = stats.dimensions
    assert (dims["input_tokens"].estimated, dims["input_tokens"].actual) == (1400, 1350)
    assert dims["output_tokens"].actual == 400 + 500  # unknown output: max_tokens charged
    assert (dims["requests"].limit, dims["requests"].estimated) == (50, 2)
    assert dims["input_tokens"].peak == 1300  # 900 left, 400 more
    back = BucketStats(**json.loads(json.dumps(asdict(stats))))
    assert back == stats
    merged = stats.merged(back)
    assert merged.dimensions["input_tokens"].actual == 2700
    assert merged.dimensions["input_tokens"].peak == 1300


def test_reports_show_each_dimension(clock: FakeClock) -> None:
    from pytest_llm_budget.records import Totals
    from pytest_llm_budget.reporting.report import build_report, summary_lines

    limiter = make(clock)
    reserve(limiter, 1490, output=400).settle(1490, refund=True, output_tokens=790)
    reserve(limiter, 10, output=10).settle(10, refund=True, output_tokens=10)
    buckets = limiter.stats()
    lines = summary_lines(buckets, Totals(), window=W, backend="memory")
    row = next(line for line in lines if line.endswith("(peak / capacity per 6s)"))
    # the second admission found 1490 input and 790 output spent, and took 10 more of each
    assert row == "anthropic:claude-sonnet-4*  in 1500/1500  out 800/800  req 2/50  " \
        "(peak / capacity per 6s)"
    assert any("in 1500/6s" in line for line in lines)  # the table's budget cell
    entry = build_report({}, Totals(), buckets, [])["buckets"][0]
    assert entry["admission"] == "token_bucket"
    assert entry["dimensions"]["output_tokens"] == {
        "limit": 800, "estimated": 0, "actual": 800, "peak": 800
    }
    json.dumps(entry)


def test_window_vendors_keep_their_stats_shape(clock: FakeClock) -> None:
    limiter = make(clock)
    r = limiter.reserve(100, vendor="openai", model="gpt-5", output=999)
    assert r.charges == {"requests": 1, "tokens": 100}
    r.settle(120, output_tokens=5)
    stats = limiter.stats()[0]
    assert stats.admission == "window" and stats.dimensions == {}
    assert (stats.estimated, stats.actual, stats.debt) == (100, 120, 20)


def test_async_reserve_waits_on_the_buckets(clock: FakeClock) -> None:
    limiter = make(clock)

    async def run() -> float:
        await limiter.areserve(1500, vendor="anthropic", model="claude-sonnet-4")
        r = await limiter.areserve(750, vendor="anthropic", model="claude-sonnet-4")
        return r.waited_s

    assert asyncio.run(run()) == pytest.approx(3.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1500), st.integers(0, 1200), st.integers(0, 1200),
                          st.sampled_from([0.0, 0.5, 3.0])), min_size=1, max_size=30))
def test_no_dimension_is_ever_overdrawn_at_admission(
    program: list[tuple[int, int, int, float]],
) -> None:
    """Requests settled at once: replayed through exact buckets, every admission had room."""
    clock = FakeClock()
    limiter = make(clock)
    spent = [0.0, 0.0, 0.0]
    caps = (50, 1500, 800)
    last = clock.now()
    for tokens, max_tokens, produced, gap in program:
        clock.advance(gap)
        r = reserve(limiter, tokens, output=max_tokens)
        elapsed = r.admitted_at - last
        spent = [max(0.0, s - c / W * elapsed) for s, c in zip(spent, caps, strict=True)]
        last = r.admitted_at
        assert spent[0] + 1 <= caps[0] + 1e-6
        assert spent[1] + tokens <= caps[1] + 1e-6
        assert spent[2] + 1 <= caps[2] + 1e-6  # nothing in flight: not exhausted
        spent[0] += 1
        spent[1] += tokens
        r.settle(tokens, refund=True, output_tokens=produced)
        spent[2] += produced
