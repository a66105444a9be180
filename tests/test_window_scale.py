"""A window's state stays bounded however many charges it holds (settled charges are folded into
time slots), on memory, file and Redis alike, and folding admits at most one slot later."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from redis_server import redis_server  # noqa: F401 - fixture

from pytest_llm_budget.backends.base import Backend
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.backends.memory import MemoryBackend
from pytest_llm_budget.limiting import window
from pytest_llm_budget.limiting.admission import Admitted, Deferred, Limits
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits
from pytest_llm_budget.limiting.window import FOLD_AT, SLOTS, WindowState

T0 = 1_000_000.0
B = "openai:*"


@pytest.fixture(params=["memory", "file", "redis"])
def backend(request: pytest.FixtureRequest, new_backend: Any) -> Backend:
    """Each backend, empty."""
    b: Backend = new_backend(request.param)
    return b


def state_size(b: Backend, tmp_path: Path) -> int:
    """Bytes the bucket's window takes in its store (entries, for memory)."""
    if isinstance(b, MemoryBackend):
        return len(b._states[B].entries)
    if isinstance(b, FileBackend):
        return (tmp_path / "state.json").stat().st_size
    from pytest_llm_budget.backends.redis import RedisBackend

    assert isinstance(b, RedisBackend)
    return int(b.client.strlen(b.key(B)))


def test_twenty_thousand_settled_charges_keep_the_state_bounded(
    backend: Backend, tmp_path: Path
) -> None:
    limits = Limits(tokens=10**9, window=60.0, requests=10**6, margin=0.5)
    largest = 0
    for i in range(20_000):
        now = T0 + i * 0.003  # all 20,000 inside one window
        assert isinstance(backend.admit(B, limits, f"t{i}", 50, now, "1"), Admitted)
        backend.settle(B, limits, f"t{i}", 50, 40 + i % 20, now + 0.001)
        if i % 97 == 0:
            largest = max(largest, state_size(backend, tmp_path))
    snap = backend.snapshot(B, limits, T0 + 60.0)
    exact = sum(max(50, 40 + i % 20) for i in range(20_000))
    assert (snap.used_tokens, snap.requests) == (exact, 20_000)  # folding keeps the totals
    if isinstance(backend, MemoryBackend):
        assert largest <= FOLD_AT + 1
    else:
        assert largest < 16_000  # bytes; the 20,000 charges themselves would take 500 KB


def test_a_token_bucket_stays_bounded_too(backend: Backend, tmp_path: Path) -> None:
    limits = TokenBucketLimits(tokens=10**9, window=60.0, requests=10**6, output=10**9)
    sizes = []
    for i in range(3_000):
        now = T0 + i * 0.003
        assert isinstance(backend.admit(B, limits, f"t{i}", 50, now, "1", output=20), Admitted)
        backend.settle(B, limits, f"t{i}", 50, 45, now + 0.001, output_tokens=20)
        if i in (99, 2_999):
            if isinstance(backend, MemoryBackend):
                sizes.append(len(backend._token_buckets[B].to_json()["leases"]))
            elif isinstance(backend, FileBackend):
                sizes.append((tmp_path / "state.json").stat().st_size)
            else:
                from pytest_llm_budget.backends.redis import RedisBackend

                assert isinstance(backend, RedisBackend)
                sizes.append(int(backend.client.strlen(backend.buckets_key(B))))
    assert sizes[1] <= sizes[0] + 100, sizes  # spent totals, leases in flight: no history


def run(b: Backend, limits: Limits, n: int) -> list[tuple[str, float]]:
    """A busy sequence with waiters, requests limits, debts and refunds; the decisions."""
    rng = random.Random(7)
    out: list[tuple[str, float]] = []
    now = T0
    for i in range(n):
        now += rng.choice((0.0, 0.001, 0.01, 0.05))
        est = rng.randint(20, 120)
        # Uncertain estimates settle with refunds: a learned factor with a plain settle is
        # where the Lua port departs from WindowState.settle (max(charge, entry) vs entry +
        # debt), before and without folding.
        d = b.admit(B, limits, f"t{i:05d}", est, now, "1", uncertain=est // 4 if i % 2 else 0)
        if isinstance(d, Deferred):
            out.append((d.reason, round(d.wait, 6)))
            if i % 3:
                b.release(B, limits, f"t{i:05d}", now)
            continue
        out.append(("in", round(d.at - T0, 6)))
        b.settle(B, limits, f"t{i:05d}", est, est + rng.randint(-10, 10), now, refund=i % 2 == 1)
    return out


def test_every_backend_folds_and_decides_alike(backend: Backend) -> None:
    limits = Limits(tokens=40_000, window=10.0, requests=900, margin=0.5)
    got = run(backend, limits, 1_500)
    expected = run(MemoryBackend(), limits, 1_500)
    assert sum(1 for r, _ in got if r != "in") > 100  # it did queue
    assert got == expected


def settled_state(rng: random.Random, limits: Limits, n: int, now: float) -> WindowState:
    state = WindowState()
    times = sorted(now - rng.uniform(0, limits.span - 0.5) for _ in range(n))
    for i, t in enumerate(times):
        charge = rng.randint(1, 60)
        d = state.admit(limits, f"s{i}", charge, t, "1")
        assert isinstance(d, Admitted), d
        state.settle(limits, f"s{i}", charge, charge + rng.randint(0, 5), t)
    return state


@pytest.mark.parametrize("seed", range(10))
def test_folding_admits_no_earlier_and_at_most_one_slot_later(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = Limits(tokens=25_000, window=30.0, requests=800, margin=1.0)
    width = limits.span / SLOTS
    now = T0 + 100.0
    folded = settled_state(random.Random(seed), limits, 650, now)
    folded._fold(limits)  # all of it, not only what went past FOLD_AT
    monkeypatch.setattr(window, "FOLD_AT", 10**9)  # the exact window: nothing folds
    exact = settled_state(random.Random(seed), limits, 650, now)
    assert len(exact.entries) == 650
    assert len(folded.entries) <= SLOTS + 1
    rng = random.Random(seed)
    compared = 0
    for _ in range(6):  # a queue of up to 3 waiters, then a newcomer
        e, f = WindowState.from_json(exact.to_json()), WindowState.from_json(folded.to_json())
        for j in range(rng.randint(1, 4)):
            charge = rng.randint(500, 9000)
            a = e.admit(limits, f"w{j}", charge, now + j * 0.01, "1")
            with monkeypatch.context() as m:
                m.setattr(window, "FOLD_AT", FOLD_AT)
                b = f.admit(limits, f"w{j}", charge, now + j * 0.01, "1")
            if isinstance(a, Admitted):
                assert isinstance(b, Admitted) or b.wait <= width + 1e-9, (a, b, width)
                if isinstance(b, Deferred):
                    break  # the windows differ from here on
                continue
            assert isinstance(b, Deferred), (a, b)
            assert a.wait - 1e-9 <= b.wait <= a.wait + width + 1e-9, (j, a, b, width)
            compared += 1
    assert compared
