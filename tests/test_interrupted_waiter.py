"""A waiter interrupted while it waits for budget leaves the queue, in every backend.

Limiter-level on the fake clock (memory, file, Redis), then the issue's scenario for real:
pytest-timeout's signal method kills a test that waits, the next test waits only for the
window, and the killed call is in the JSON report as cancelled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock
from redis_server import RedisServer, redis_server  # noqa: F401 - fixture

from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.backends.base import Backend
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter

W = 60.0
MARGIN = 0.5


class Interrupt(BaseException):
    """What pytest-timeout's signal handler raises in the waiting thread (a BaseException)."""


@pytest.fixture(params=["memory", "file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        made: Backend = MemoryBackend()
    elif request.param == "file":
        made = FileBackend(tmp_path / "state.json")
    else:
        import uuid

        from pytest_llm_budget.backends.redis import RedisBackend

        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisBackend.from_url(server.url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    yield made
    made.close()


class InterruptingClock(FakeClock):
    """A fake clock whose next sleep raises instead of sleeping, once `armed`."""

    armed = False

    def sleep(self, seconds: float) -> None:
        if self.armed:
            self.armed = False
            self.advance(3.0)  # killed 3 s into its wait
            raise Interrupt
        super().sleep(seconds)


def make(backend: Backend, clock: FakeClock, **kw: Any) -> Limiter:
    return Limiter(
        backend, [LimitRule("*", "*", 10_000)], headroom=0.0, window=W, margin=MARGIN,
        clock=clock.now, sleep=clock.sleep, asleep=clock.asleep, **kw,
    )


def test_an_interrupted_waiter_leaves_the_queue(backend: Backend) -> None:
    clock = InterruptingClock()
    limiter = make(backend, clock)
    start = clock.now()
    limiter.reserve(6000)
    clock.armed = True
    with pytest.raises(Interrupt):
        limiter.reserve(6000)  # must wait for the first charge; killed while it waits
    assert limiter.window_snapshot("openai:*").waiting == 0
    third = limiter.reserve(6000)
    # only the first charge is ahead of it: admitted one window after it, not two
    assert third.admitted_at == pytest.approx(start + W + MARGIN)
    assert limiter.window_snapshot("openai:*").used_tokens == 6000


def test_a_cancelled_async_waiter_leaves_the_queue(backend: Backend) -> None:
    clock = FakeClock()
    parked = asyncio.Event()

    async def park(seconds: float) -> None:  # a sleep that only a cancellation ends
        parked.set()
        await asyncio.Event().wait()

    limiter = Limiter(
        backend, [LimitRule("*", "*", 10_000)], headroom=0.0, window=W, margin=MARGIN,
        clock=clock.now, sleep=clock.sleep, asleep=park,
    )
    start = clock.now()

    async def scenario() -> float:
        await limiter.areserve(6000)
        waiter = asyncio.create_task(limiter.areserve(6000))
        await parked.wait()
        assert limiter.window_snapshot("openai:*").waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.window_snapshot("openai:*").waiting == 0
        limiter.asleep = clock.asleep
        clock.advance(3.0)
        return (await limiter.areserve(6000)).admitted_at

    assert asyncio.run(scenario()) == pytest.approx(start + W + MARGIN)


def test_an_interrupt_right_after_admission_gives_the_charge_back(clock: FakeClock) -> None:
    """Interrupted between the backend's admission and the caller getting its reservation."""
    limiter = make(MemoryBackend(), clock)

    def interrupted(*args: Any) -> Any:
        raise Interrupt

    limiter._admitted = interrupted  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        limiter.reserve(6000)
    assert limiter.window_snapshot("openai:*").used_tokens == 0


# -- the scenario, for real: pytest-timeout, the emulator, a JSON report ------------------
# Scaled by 1/4: tpm 3000 per 5 s window (budget 2550), calls of about 2000 tokens. test_2 is
# killed 1 s into its wait; test_3 then gets in one window after test_1's admission (it waits
# ~17 s in the 20 s window), not two windows after (~37 s there).
TIMEOUT_SUITE = """
import pytest

def _call(client):
    client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=2000, messages=[{"role": "user", "content": "hi"}]
    )

def test_1(openai_client, llm_emulator):
    _call(openai_client)

@pytest.mark.timeout(1)
def test_2(openai_client, llm_emulator):
    _call(openai_client)

def test_3(openai_client, llm_emulator):
    _call(openai_client)
"""


def test_a_test_killed_by_pytest_timeout_while_waiting(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_timeout", reason="pip install pytest-timeout")
    pytester.makepyfile(test_timeout=TIMEOUT_SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--timeout", "60", "--timeout-method", "signal",
        "--llm-tpm", "3000", "--llm-window", "5", "--llm-report", "run.json",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*test_2 - Failed: Timeout*"])
    calls = json.loads((pytester.path / "run.json").read_text())["calls"]
    by_test = {c["test"].rsplit("::", 1)[1]: c for c in calls}
    assert sorted(by_test) == ["test_1", "test_2", "test_3"]
    killed = by_test["test_2"]
    assert killed["status"] == "cancelled"
    assert killed["attempts"] == 0 and killed["prompt_tokens"] == 0
    assert 0.5 < killed["waited_s"] < 2.0
    first, third = by_test["test_1"], by_test["test_3"]
    assert third["status"] == "ok" and third["waited_s"] > 1.0
    gap = (third["t"] + third["waited_s"]) - (first["t"] + first["waited_s"])
    assert 4.9 < gap < 6.5, (first, third)  # one 5 s window (+ margin); 10 s with test_2 queued
