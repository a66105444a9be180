"""The session limiter on a fake clock: windows, RPM, concurrency, debt, 429s, errors, async."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llm_budget import BudgetWaitTimeout, RequestTooLarge
from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.limiting.admission import Admitted, Deferred
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter, Reservation

W = 60.0


def make(clock: FakeClock, tpm: int = 10_000, **kw: object) -> Limiter:
    rules = kw.pop("rules", [LimitRule("*", "*", tpm, kw.pop("rpm", None))])  # type: ignore[arg-type]
    kw.setdefault("headroom", 0.0)
    kw.setdefault("margin", 0.5)
    return Limiter(
        MemoryBackend(), rules, window=W, clock=clock.now, sleep=clock.sleep,
        asleep=clock.asleep, **kw,  # type: ignore[arg-type]
    )


def test_admits_within_budget_without_waiting(clock: FakeClock) -> None:
    limiter = make(clock)
    for _ in range(10):
        limiter.reserve(1000).settle(1000)
    assert clock.sleeps == []


def test_waits_until_the_oldest_charge_leaves_the_window(clock: FakeClock) -> None:
    limiter = make(clock)
    start = clock.now()
    first = limiter.reserve(6000)
    clock.advance(10)
    limiter.reserve(4000)
    r = limiter.reserve(3000)  # needs the first 6000 gone: at start + W + margin
    assert r.admitted_at == pytest.approx(start + W + 0.5)
    assert r.waited_s == pytest.approx(W + 0.5 - 10)
    first.settle(0)
    stats = limiter.stats()[0]
    assert stats.deferrals == 1 and stats.calls == 3


def test_headroom_shrinks_the_budget(clock: FakeClock) -> None:
    limiter = make(clock, tpm=10_000, headroom=0.15)
    limiter.reserve(8500)
    with pytest.raises(RequestTooLarge):
        limiter.reserve(8501)
    limiter.reserve(1)
    assert clock.sleeps  # the 1-token call had to wait: the window was full


@st.composite
def programs(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    ops = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["reserve", "reserve", "settle", "advance", "penalty"]))
        ops.append((kind, draw(st.integers(1, 5000)), draw(st.integers(0, 7000))))
    return ops


@settings(max_examples=80, deadline=None)
@given(programs(), st.sampled_from([None, 3]), st.sampled_from([None, 4]))
def test_no_window_ever_holds_more_than_the_budget(
    program: list[tuple[str, int, int]], rpm: int | None, concurrency: int | None
) -> None:
    """Random interleavings of reservations, settlements (with overruns), 429s and time."""
    clock = FakeClock()
    budget = 8000
    limiter = make(clock, tpm=budget, rpm=rpm)
    open_ = []
    # [admitted_at, estimate, settled_after_n_charges, actual(, "429")]
    charges: list[list[object]] = []
    for kind, a, b in program:
        if kind == "reserve":
            if concurrency is not None and len(open_) >= concurrency:
                r, rec = open_.pop(0)
                rec[2], rec[3] = len(charges), max(rec[1], b)
                r.settle(b)
            r = limiter.reserve(a)
            rec = [r.admitted_at, a, float("inf"), 0]
            charges.append(rec)
            open_.append((r, rec))
        elif kind == "settle" and open_:
            r, rec = open_.pop(a % len(open_))
            r.settle(b)
            rec[2], rec[3] = len(charges), max(rec[1], b)
        elif kind == "advance":
            clock.advance(a / 100)
        elif kind == "penalty" and open_:
            open_[0][0].rate_limited(b / 1000 or None)
            charges.append([clock.now(), limiter.penalty_tokens, len(charges), 1000, "429"])
    admissions = [c[0] for c in charges if len(c) == 4]
    for i, c in enumerate(charges):
        if len(c) != 4:
            continue
        t = c[0]
        # What was known at this admission: earlier charges in the window, settled or not.
        known = sum(
            (d[3] if d[2] <= i else d[1]) for d in charges[: i + 1] if t - W < d[0] <= t
        )
        assert known <= budget, (t, known)
    if rpm is not None:
        times = sorted(admissions)
        for i, t in enumerate(times):
            assert sum(1 for u in times[: i + 1] if t - W < u) <= rpm


def test_a_saturated_stream_reaches_95_percent_of_the_budget(clock: FakeClock) -> None:
    budget, each = 30_000, 1_700
    limiter = make(clock, tpm=budget, margin=0.25)
    start = clock.now()
    admitted = 0
    while clock.now() - start < 20 * W:
        limiter.reserve(each).settle(each)
        admitted += each
    elapsed = clock.now() - start
    assert admitted / (budget * elapsed / W) >= 0.95


def test_rpm_caps_requests_per_window(clock: FakeClock) -> None:
    limiter = make(clock, rpm=3)
    times = [limiter.reserve(1).admitted_at for _ in range(7)]
    assert times[3] == pytest.approx(times[0] + W + 0.5)
    assert times[6] == pytest.approx(times[3] + W + 0.5)


def test_concurrency_cap_waits_for_a_release(clock: FakeClock) -> None:
    limiter = make(clock, max_concurrency=1)
    held = limiter.reserve(10)
    released_at: list[float] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            released_at.append(clock.now())
            held.settle(10)

    limiter.sleep = sleep
    second = limiter.reserve(10)
    assert second.admitted_at == released_at[0]
    assert len(clock.sleeps) == 3


def test_concurrency_cap_times_out_when_nothing_is_released(clock: FakeClock) -> None:
    limiter = make(clock, max_concurrency=1, max_wait=5.0)
    limiter.reserve(10)
    with pytest.raises(BudgetWaitTimeout) as info:
        limiter.reserve(10)
    assert info.value.code == "LLM_BUDGET_TIMEOUT"
    assert "concurrency" in str(info.value)


def test_overrun_becomes_debt_seen_by_later_reservations(clock: FakeClock) -> None:
    limiter = make(clock)
    r = limiter.reserve(2000)
    assert r.settle(9000) == 7000  # 7000 tokens of debt at the reservation's time
    later = limiter.reserve(2000)
    assert later.admitted_at - r.admitted_at == pytest.approx(W + 0.5)
    stats = limiter.stats()[0]
    assert (stats.debt, stats.actual, stats.estimated) == (7000, 9000, 4000)


def test_unused_estimate_is_not_refunded(clock: FakeClock) -> None:
    limiter = make(clock)
    limiter.reserve(9000).settle(100)
    limiter.reserve(2000)
    assert clock.sleeps  # OpenAI charged max_tokens at admission; so do we


def test_debt_of_a_call_longer_than_the_window_is_charged_now(clock: FakeClock) -> None:
    limiter = make(clock)
    r = limiter.reserve(1000)
    clock.advance(2 * W)
    r.settle(9500)  # 8500 of debt, charged now
    waited_from = clock.now()
    limiter.reserve(2000)
    assert clock.now() == pytest.approx(waited_from + W + 0.5)


def test_429_penalty_and_pause_until_the_servers_hint(clock: FakeClock) -> None:
    limiter = make(clock)
    r = limiter.reserve(100)
    r.rate_limited(12.0)
    nxt = limiter.reserve(100)
    assert nxt.admitted_at == pytest.approx(r.admitted_at + 12.0)
    snap = limiter.window_snapshot(nxt.bucket)
    assert snap.used_tokens == 100 + 1000 + 100  # the penalty is charged
    assert limiter.stats()[0].rate_limit_events == 1


def test_a_request_above_the_whole_budget_fails_at_once(clock: FakeClock) -> None:
    limiter = make(clock, tpm=5000, headroom=0.2)
    with pytest.raises(RequestTooLarge) as info:
        limiter.reserve(4001, vendor="openai", model="gpt-5")
    err = info.value
    assert err.code == "LLM_REQUEST_TOO_LARGE"
    assert "4001" in str(err) and "4000" in str(err) and "gpt-5" in str(err)
    assert clock.sleeps == []


def test_wait_longer_than_max_wait_fails_without_sleeping(clock: FakeClock) -> None:
    limiter = make(clock, max_wait=30.0)
    limiter.reserve(9000)
    with pytest.raises(BudgetWaitTimeout) as info:
        limiter.reserve(5000)
    assert "--llm-max-wait=30s" in str(info.value)
    assert clock.sleeps == []
    # The timed-out ticket left the queue: a small request behind it is not blocked.
    limiter.reserve(500)


def test_a_small_request_goes_first_only_when_it_delays_no_waiter(clock: FakeClock) -> None:
    limiter = make(clock)
    limits = limiter.limits(limiter.bucket_for("openai", "m"))
    backend, t0 = limiter.backend, clock.now()
    assert isinstance(backend.admit("b", limits, "a", 5000, t0, "p"), Admitted)
    big = backend.admit("b", limits, "big", 8000, t0, "p")
    assert isinstance(big, Deferred) and big.wait == pytest.approx(W + 0.5)
    # Fits now, and at the big one's time there is still room for both: it goes first.
    assert isinstance(backend.admit("b", limits, "small", 2000, t0 + 1, "p"), Admitted)
    # Fits now too, but would still hold 1000 when "big" is due: it waits until after "big".
    late = backend.admit("b", limits, "late", 1000, t0 + 2, "p")
    assert isinstance(late, Deferred) and late.wait == pytest.approx(W + 0.5 - 1)
    assert isinstance(backend.admit("b", limits, "big", 8000, t0 + W + 0.5, "p"), Admitted)
    assert isinstance(backend.admit("b", limits, "late", 1000, t0 + 2 + late.wait, "p"), Admitted)


def test_a_sleeping_waiter_wakes_when_a_refund_frees_its_room(clock: FakeClock) -> None:
    """The real (interruptible) sleep; the fake clock never moves, so only a wake admits B."""
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=10_000)], window=W, headroom=0.0,
                      margin=0.5, clock=clock.now)
    held = limiter.reserve(9000, uncertain=9000)
    got: list[Reservation] = []
    waiter = threading.Thread(target=lambda: got.append(limiter.reserve(5000)))
    waiter.start()
    while not limiter._sleepers and waiter.is_alive():  # until B sleeps its ~60 s wait
        time.sleep(0.001)
    held.settle(1000, refund=True)  # Gemini-like: the server counted 1000
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert got[0].admitted_at == clock.now() and got[0].waited_s == 0.0


def test_buckets_per_rule_and_vendor(clock: FakeClock) -> None:
    rules = [LimitRule("openai", "gpt-5*", 5000), LimitRule("*", "*", 1000)]
    limiter = make(clock, rules=rules)
    assert limiter.bucket_for("openai", "gpt-5-mini") == "openai:gpt-5*"
    assert limiter.bucket_for("openai", "gpt-4o") == "openai:*"
    assert limiter.bucket_for("gemini", "gemini-2.5-pro") == "gemini:*"
    limiter.reserve(900, vendor="openai", model="gpt-4o")
    limiter.reserve(900, vendor="gemini", model="gemini-2.5-pro")  # its own bucket: no wait
    limiter.reserve(4000, vendor="openai", model="gpt-5")
    assert clock.sleeps == []


def test_calibration_believes_a_server_that_counts_more(clock: FakeClock) -> None:
    limiter = make(clock)
    limiter.reserve(1000)
    assert limiter.calibrate("openai", "x", server_limit=10_000, server_remaining=2_000) == 7000
    assert limiter.calibrate("openai", "x", server_limit=10_000, server_remaining=9_000) == 0
    assert limiter.window_snapshot("openai:*").used_tokens == 8000


def test_async_reserve_waits_on_the_event_loop(clock: FakeClock) -> None:
    limiter = make(clock)
    limiter.reserve(9000)

    async def main() -> float:
        r = await limiter.areserve(5000)
        r.settle(5000)
        return r.admitted_at

    start = clock.now()
    assert asyncio.run(main()) == pytest.approx(start + W + 0.5)


def test_async_reserve_does_not_block_other_tasks() -> None:
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=1000)], window=0.3, headroom=0.0)
    limiter.reserve(1000)
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main() -> None:
        await asyncio.gather(limiter.areserve(500), ticker())

    asyncio.run(main())
    assert len(ticks) == 5


def test_threads_never_overfill_a_real_window() -> None:
    window, budget = 0.4, 1000
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=budget)], window=window, headroom=0.0)
    admitted: list[tuple[float, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(6):
            r = limiter.reserve(150)
            with lock:
                admitted.append((r.admitted_at, 150))
            r.settle(150)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(admitted) == 48
    for t, _ in admitted:
        assert sum(c for u, c in admitted if t - window < u <= t) <= budget
