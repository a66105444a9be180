"""The learned estimate correction, on a fake clock against the emulator's own limit rules.

A simulated server (the emulator's `BucketLimiter`, sliding window or token bucket) charges
`fixed + f * uncertain` for each request, some time after the limiter admitted it, and answers
later still with its rate-limit figures; several limiters (processes) share one backend.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.emulator.limits import BucketLimiter
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter, Reservation

TPM, W = 10_000, 6.0


@dataclass
class Sim:
    """A fake clock whose sleeps deliver the requests and answers due meanwhile."""

    mode: str
    f: float
    rng: random.Random
    t: float = 1_000_000.0
    events: list[tuple[float, int, str, Any]] = field(default_factory=list)
    rejected: int = 0
    admitted: int = 0
    server: Any = None
    seq: Any = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.server = BucketLimiter(self.mode, W, TPM, None)  # type: ignore[arg-type]

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.run_until(self.t + seconds)

    def run_until(self, target: float) -> None:
        while self.events and self.events[0][0] <= target:
            at, _, kind, data = heapq.heappop(self.events)
            self.t = max(self.t, at)
            self.handle(kind, data)
        self.t = max(self.t, target)

    def send(self, r: Reservation, fixed: int, uncertain: int) -> None:
        """The request reaches the server a little after it left (within the margin)."""
        charge = fixed + round(self.f * uncertain)
        heapq.heappush(
            self.events, (self.t + self.rng.uniform(0, 0.05), next(self.seq), "arrive", (r, charge))
        )

    def handle(self, kind: str, data: Any) -> None:
        r, charge = data
        if kind == "arrive":
            decision = self.server.admit(charge, self.t)
            if not decision.admitted:
                self.rejected += 1
                r.release()
                return
            self.admitted += 1
            answer = self.t + self.rng.uniform(0.05, 1.5)
            heapq.heappush(self.events, (answer, next(self.seq), "answer", (r, decision)))
        else:
            d = charge
            r.observe(d.limit_tokens, d.remaining_tokens, d.reset_tokens)
            r.settle(r.estimate // 2)


def run(mode: str, f: float, *, procs: int = 3, calls: int = 45, learn: bool = True,
        seed: int = 1, headroom: float = 0.1) -> tuple[Sim, list[Limiter]]:
    """A burst of `calls` requests (about 3x the budget) from `procs` limiters on one backend."""
    rng = random.Random(seed)
    sim = Sim(mode, f, rng)
    backend = MemoryBackend()
    limiters = [
        Limiter(backend, [LimitRule(tpm=TPM)], window=W, headroom=headroom, clock=sim.now,
                sleep=sim.sleep, owner=f"p{i}")
        for i in range(procs)
    ]
    for i in range(calls):
        fixed, uncertain = rng.randint(200, 800), rng.randint(200, 800)
        r = limiters[i % procs].reserve(fixed + uncertain, uncertain=uncertain if learn else 0)
        sim.send(r, fixed, uncertain)
        sim.run_until(sim.t)
    sim.run_until(sim.t + 10 * W)
    return sim, limiters


def factor(limiters: list[Limiter]) -> float:
    return limiters[0].window_snapshot("openai:*").factor


@pytest.mark.parametrize("mode", ["sliding", "bucket"])
@pytest.mark.parametrize("f", [0.5, 0.8, 1.0, 1.2])
def test_a_burst_at_three_times_the_budget_sees_no_rejection(mode: str, f: float) -> None:
    sim, limiters = run(mode, f)
    assert sim.rejected == 0
    assert sim.admitted == 45
    learned = factor(limiters)
    assert learned >= min(1.0, f) - 1e-9  # never below what the server really charges
    if f > 1:
        assert learned >= f - 0.05  # an under-estimate raises the factor


@pytest.mark.parametrize("mode", ["sliding", "bucket"])
def test_a_systematic_over_estimate_is_learned_away_and_buys_pace(mode: str) -> None:
    learned_sim, limiters = run(mode, 0.5, procs=1, calls=60)
    # A burst admitted at once teaches one bound per batch (only what was answered before a
    # request left may count for it), so it learns more slowly than sequential calls do.
    assert factor(limiters) < 0.9
    plain_sim, plain = run(mode, 0.5, procs=1, calls=60, learn=False)
    assert factor(plain) == 1.0
    assert learned_sim.rejected == plain_sim.rejected == 0
    first_of_last = lambda s: s.t  # noqa: E731 - both ran the same schedule to the same end
    assert first_of_last(learned_sim) < first_of_last(plain_sim)


def test_learning_takes_a_few_calls() -> None:
    """Sequential calls (each answered before the next leaves) against a sliding window."""
    sim = Sim("sliding", 0.5, random.Random(3))
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=TPM)], window=W, headroom=0.1,
                      clock=sim.now, sleep=sim.sleep)
    seen = []
    for _ in range(8):
        r = limiter.reserve(1000, uncertain=600)
        sim.send(r, 400, 600)
        sim.run_until(sim.t + 2)
        seen.append(limiter.window_snapshot("openai:*").factor)
    # Reserving 1000 for a call the server counts as 700: after three calls, about 800.
    assert seen[0] < 0.9 and seen[2] < 0.7 and seen[-1] < 0.6, seen
    assert all(x >= 0.5 for x in seen)
    assert sim.rejected == 0


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(["sliding", "bucket"]),
    f=st.floats(0.5, 1.15),
    procs=st.integers(1, 4),
    seed=st.integers(0, 10_000),
)
def test_many_processes_in_flight_never_cause_a_rejection(
    mode: str, f: float, procs: int, seed: int
) -> None:
    sim, limiters = run(mode, f, procs=procs, calls=30, seed=seed)
    assert sim.rejected == 0
    assert factor(limiters) >= min(1.0, f) - 1e-9


# -- against the emulator over real HTTP (real time, short windows) ----------------------------
@pytest.mark.parametrize("mode", ["sliding", "bucket"])
@pytest.mark.parametrize("scale", [2.0, 0.85])
def test_learning_against_the_emulator_keeps_zero_429s(emu: Any, mode: str, scale: float) -> None:
    """Input estimated at `scale` x what the emulator charges (ceil(chars/4)); 3 budgets.

    Plain `urllib` (never routed by the plugin running this test) and the limiter's own API.
    """
    import json
    import urllib.request

    from pytest_llm_budget.emulator import EmulatorConfig, LimitSpec
    from pytest_llm_budget.providers.retry_hints import parse_go_duration

    spec = LimitSpec(tpm=3000, rpm=None)
    emu.configure(EmulatorConfig(window=2.0, mode=mode, openai=spec, gemini=spec))
    emu.reset()
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=3000)], window=2.0, headroom=0.1)
    text = "Please summarise these notes. " * 20  # 600 characters: 150 tokens charged
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], "max_tokens": 150}
    uncertain = round(150 * scale)
    statuses: list[int] = []

    def one() -> None:
        r = limiter.reserve(uncertain + 150, uncertain=uncertain)
        request = urllib.request.Request(
            f"{emu.openai_base_url}/chat/completions", data=json.dumps(body).encode(),
            headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        )
        r.sent()  # as the router does: a thread held up on a loaded machine dates from here
        with urllib.request.urlopen(request, timeout=30) as reply:
            statuses.append(reply.status)
            h = reply.headers
            usage = json.loads(reply.read())["usage"]
        reset = parse_go_duration(h.get("x-ratelimit-reset-tokens", ""))
        r.observe(int(h["x-ratelimit-limit-tokens"]), int(h["x-ratelimit-remaining-tokens"]), reset)
        r.settle(usage["total_tokens"])

    threads = [threading.Thread(target=lambda: [one() for _ in range(5)]) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert statuses == [200] * 30  # 30 x 300 tokens: three budgets of 2700
    assert [r.status for r in emu.log] == [200] * 30
    learned = limiter.window_snapshot("openai:*").factor
    if scale > 1:
        assert 1 / scale <= learned < 1.0  # learned down, never below the truth
    else:
        assert learned > 1.0  # the server counted more: up
