"""The token-bucket contract (Anthropic's requests, input and output tokens) on every backend,
on a fake clock; the Lua port against token_bucket.py; processes sharing a file or a Redis."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import RedisCluster, RedisServer, redis_cluster, redis_server  # noqa: F401

from pytest_llm_budget.backends.base import Backend
from pytest_llm_budget.backends.memory import MemoryBackend
from pytest_llm_budget.limiting.admission import Admitted, Deferred
from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_000_000.0
B = "anthropic:claude-sonnet-4*"
# input 1000 per 6 s (166.7/s), output 600 (100/s), 5 requests (0.83/s)
LIMITS = TokenBucketLimits(tokens=1000, window=6.0, requests=5, output=600)


@pytest.fixture(params=["memory", "file", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, new_backend: Any) -> Backend:
    """Each backend, empty, on its own file / key prefix."""
    b: Backend = new_backend(request.param)
    return b


def admitted(d: object) -> Admitted:
    assert isinstance(d, Admitted), d
    return d


def deferred(d: object, reason: str) -> Deferred:
    assert isinstance(d, Deferred), d
    assert d.reason == reason, d
    return d


def admit(b: Backend, ticket: str, tokens: int, t: float, output: int = 0,
          limits: TokenBucketLimits = LIMITS) -> Admitted | Deferred:
    return b.admit(B, limits, ticket, tokens, T0 + t, "1", output=output)


def test_input_tokens_limit_on_their_own(backend: Backend) -> None:
    admitted(admit(backend, "a", 800, 0))
    d = deferred(admit(backend, "b", 300, 0), "input_tokens")
    assert d.wait == pytest.approx(100 / (1000 / 6))  # 100 over the capacity, refilled
    deferred(admit(backend, "b", 300, d.wait - 0.01), "input_tokens")
    admitted(admit(backend, "b", 300, d.wait))
    dims = backend.snapshot(B, LIMITS, T0 + d.wait).dimensions
    assert dims["input_tokens"].used == pytest.approx(1000)
    assert dims["requests"].used == pytest.approx(2 - d.wait * 5 / 6)
    assert dims["output_tokens"].used == 0


def test_requests_limit_on_their_own(backend: Backend) -> None:
    limits = TokenBucketLimits(tokens=10**6, window=6.0, requests=2, output=10**6)
    admitted(admit(backend, "a", 1, 0, limits=limits))
    admitted(admit(backend, "b", 1, 0, limits=limits))
    d = deferred(admit(backend, "c", 1, 0, limits=limits), "requests")
    assert d.wait == pytest.approx(3.0)  # one request refills every 6 / 2 s
    admitted(admit(backend, "c", 1, 3.0, limits=limits))


def test_output_tokens_in_flight_hold_the_next_request(backend: Backend) -> None:
    admitted(admit(backend, "a", 10, 0, output=600))  # expected output: all 600 (ratio 1)
    snap = backend.snapshot(B, LIMITS, T0)
    assert snap.dimensions["output_tokens"].in_flight == 600
    d = deferred(admit(backend, "b", 10, 0.1, output=100), "output_tokens")
    assert d.wait == pytest.approx(LIMITS.poll)  # only a settle can make room
    backend.settle(B, LIMITS, "a", 10, 10, T0 + 0.2, refund=True, output_tokens=300)
    # 300 produced; the ratio learned steps down from 1 toward 0.5: 0.85
    admitted(admit(backend, "b", 10, 0.2, output=600))  # 300 spent + nothing in flight < 600
    # in flight now ceil(600 x 0.85) = 510: 300 + 510 + 1 - 600 = 211 over, at 100/s
    d = deferred(admit(backend, "c", 10, 0.2, output=10), "output_tokens")
    assert d.wait == pytest.approx(2.11)
    admitted(admit(backend, "c", 10, 0.2 + 2.11, output=10))


def test_max_tokens_charged_at_admission_and_refunded_at_settle(backend: Backend) -> None:
    limits = TokenBucketLimits(tokens=1000, window=6.0, output=600, charge_max_tokens=True)
    admitted(admit(backend, "a", 10, 0, output=400, limits=limits))
    d = deferred(admit(backend, "b", 10, 0, output=400, limits=limits), "output_tokens")
    assert d.wait == pytest.approx(2.0)  # 200 over, at 100/s
    backend.settle(B, limits, "a", 10, 10, T0, refund=True, output_tokens=100)  # 300 back
    admitted(admit(backend, "b", 10, 0, output=400, limits=limits))
    assert backend.snapshot(B, limits, T0).dimensions["output_tokens"].used == pytest.approx(500)


def test_every_dimension_refills_to_full(backend: Backend) -> None:
    admitted(admit(backend, "a", 1000, 0, output=600))
    backend.settle(B, LIMITS, "a", 1000, 1000, T0, output_tokens=600)
    snap = backend.snapshot(B, LIMITS, T0 + 3)
    assert snap.dimensions["input_tokens"].used == pytest.approx(500)
    assert snap.dimensions["output_tokens"].used == pytest.approx(300)
    snap = backend.snapshot(B, LIMITS, T0 + 6)
    assert [d.used for d in snap.dimensions.values()] == [0, 0, 0]
    assert snap.used_tokens == 0 and snap.in_flight == 0


def test_a_settle_above_the_estimate_is_debt_refilled_from_below_zero(backend: Backend) -> None:
    admitted(admit(backend, "a", 500, 0))
    assert backend.settle(B, LIMITS, "a", 500, 1500, T0) == 1000  # no refund: the debt
    assert backend.snapshot(B, LIMITS, T0).dimensions["input_tokens"].used == pytest.approx(1500)
    d = deferred(admit(backend, "b", 100, 0), "input_tokens")
    assert d.wait == pytest.approx(600 / (1000 / 6))
    # A refund settle frees an over-estimate, never above full; a retried settle is harmless.
    admitted(admit(backend, "b", 100, d.wait))
    assert backend.settle(B, LIMITS, "b", 100, 40, T0 + d.wait, refund=True) == -60
    assert backend.settle(B, LIMITS, "b", 100, 40, T0 + d.wait, refund=True) == 0
    assert backend.snapshot(B, LIMITS, T0 + d.wait).used_tokens == 1000 - 60


def test_waiters_are_served_first_come_first_served(backend: Backend) -> None:
    admitted(admit(backend, "a", 1000, 0))
    first = deferred(admit(backend, "first", 600, 1), "input_tokens")
    second = deferred(admit(backend, "second", 600, 2), "input_tokens")
    # A small newcomer that would fit first still waits behind the queue.
    small = deferred(admit(backend, "small", 50, 2.1), "input_tokens")
    assert first.wait == pytest.approx(3.6 - 1)
    assert second.wait == pytest.approx(7.2 - 2)  # after first's 600: 1200 more to refill
    assert small.wait == pytest.approx(7.5 - 2.1)
    assert backend.snapshot(B, LIMITS, T0 + 2.1).waiting == 3
    deferred(admit(backend, "second", 600, 3.6), "input_tokens")  # first has not come back
    admitted(admit(backend, "first", 600, 3.61))
    admitted(admit(backend, "second", 600, 7.21))


def test_equal_enqueue_times_break_ties_by_ticket(backend: Backend) -> None:
    admitted(admit(backend, "a", 1000, 0))
    deferred(admit(backend, "t-9", 600, 1), "input_tokens")
    deferred(admit(backend, "t-10", 600, 1), "input_tokens")
    deferred(admit(backend, "t-9", 600, 3.6), "input_tokens")  # "t-10" < "t-9"
    admitted(admit(backend, "t-10", 600, 3.6))


def test_cancel_gives_every_charge_back(backend: Backend) -> None:
    limits = TokenBucketLimits(tokens=1000, window=6.0, requests=5, output=600,
                               charge_max_tokens=True)
    admitted(admit(backend, "a", 700, 0, output=500, limits=limits))
    assert backend.cancel(B, limits, "a", T0) == 700
    dims = backend.snapshot(B, limits, T0).dimensions
    assert [d.used for d in dims.values()] == [0, 0, 0]
    assert backend.cancel(B, limits, "a", T0) == 0


def test_a_429_takes_tokens_and_pauses(backend: Backend) -> None:
    backend.penalize(B, LIMITS, "x", 400, T0 + 5, T0)
    deferred(admit(backend, "a", 10, 1), "paused")
    snap = backend.snapshot(B, LIMITS, T0 + 1)
    assert snap.paused_for == pytest.approx(4)
    assert snap.used_tokens == math.ceil(400 - 1000 / 6)
    admitted(admit(backend, "a", 10, 5))


def test_the_server_raises_what_we_count_as_spent(backend: Backend) -> None:
    admitted(admit(backend, "a", 100, 0))
    assert backend.observe(B, LIMITS, "a", 1200, 700, T0, dimension="input_tokens") == 600
    assert backend.observe(B, LIMITS, "a", 1200, 100, T0, dimension="input_tokens") == 0
    assert backend.observe(B, LIMITS, "a", 900, 300, T0, dimension="output_tokens") == 300
    dims = backend.snapshot(B, LIMITS, T0).dimensions
    assert (dims["input_tokens"].used, dims["output_tokens"].used) == (700, 300)


def test_the_uncertain_input_is_scaled_by_the_learned_factor(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 100, T0, "1", 100))
    backend.settle(B, LIMITS, "a", 100, 200, T0, refund=True)  # the server counted double
    d = admitted(backend.admit(B, LIMITS, "b", 100, T0, "1", 100))
    assert d.charge == 200
    assert backend.snapshot(B, LIMITS, T0).factor == pytest.approx(2.0)


# -- the Lua port decides as token_bucket.py ---------------------------------------------------
@st.composite
def programs(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Random operations on one token-bucket bucket, at non-decreasing times."""
    ops: list[tuple[Any, ...]] = []
    t = 0.0
    for _ in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.0, 0.01, 0.3, 1.0, 4.0]))
        kind = draw(st.sampled_from(["admit", "admit", "admit", "settle", "settle", "observe",
                                     "release", "cancel", "penalize"]))
        ticket = f"t{draw(st.integers(0, 6))}"
        if kind == "admit":
            est = draw(st.integers(1, 900))
            ops.append(("admit", t, ticket, est, draw(st.integers(0, est)),
                        draw(st.integers(0, 800))))
        elif kind == "settle":
            ops.append(("settle", t, ticket, draw(st.integers(0, 1200)), draw(st.booleans()),
                        draw(st.sampled_from([None, 0, 50, 400, 900]))))
        elif kind == "observe":
            ops.append(("observe", t, ticket, draw(st.integers(0, 1200)),
                        draw(st.sampled_from(["input_tokens", "output_tokens", "requests"]))))
        elif kind == "penalize":
            ops.append(("penalize", t, ticket, draw(st.integers(0, 500)),
                        draw(st.sampled_from([0.0, 1.0]))))
        else:
            ops.append((kind, t, ticket))
    return ops


def _apply(backend: Backend, limits: TokenBucketLimits, op: tuple[Any, ...],
           seen: set[str]) -> Any:
    kind, t, ticket = op[0], T0 + op[1], op[2]
    if kind == "admit":
        if ticket in seen:  # tickets are never reused
            return "skip"
        d = backend.admit(B, limits, ticket, op[3], t, "1", op[4], output=op[5])
        if isinstance(d, Admitted):
            seen.add(ticket)
            return ("in", d.at, d.charge, [round(x, 6) for x in d.fill])
        return ("wait", round(d.wait, 9), d.reason)
    if kind == "settle":
        return backend.settle(B, limits, ticket, 0, op[3], t, refund=op[4], output_tokens=op[5])
    if kind == "observe":
        return backend.observe(B, limits, ticket, 1200, op[3], t, dimension=op[4])
    if kind == "penalize":
        return backend.penalize(B, limits, ticket, op[3], t + op[4] if op[4] else 0.0, t)
    if kind == "cancel":
        return backend.cancel(B, limits, ticket, t)
    backend.release(B, limits, ticket, t)
    return None


@settings(max_examples=60, deadline=None)
@given(program=programs(), charge_max=st.booleans(), requests=st.sampled_from([None, 3]))
def test_the_lua_port_decides_exactly_as_token_bucket_py(
    redis_server: RedisServer,  # noqa: F811
    program: list[tuple[Any, ...]],
    charge_max: bool,
    requests: int | None,
) -> None:
    from pytest_llm_budget.backends.redis import RedisBackend

    limits = TokenBucketLimits(tokens=1000, window=6.0, margin=0.1, requests=requests,
                               output=600, charge_max_tokens=charge_max)
    memory = MemoryBackend()
    redis = RedisBackend.from_url(redis_server.url, prefix=f"tbeq-{uuid.uuid4().hex[:8]}")
    try:
        mine: set[str] = set()
        theirs: set[str] = set()
        for op in program:
            assert _apply(memory, limits, op, mine) == _apply(redis, limits, op, theirs), op
            a = memory.snapshot(B, limits, T0 + op[1])
            b = redis.snapshot(B, limits, T0 + op[1])
            assert (a.in_flight, a.waiting) == (b.in_flight, b.waiting), op
            assert a.factor == pytest.approx(b.factor, rel=1e-12), op
            for name, dim in a.dimensions.items():
                other = b.dimensions[name]
                assert dim.used == pytest.approx(other.used, abs=1e-6), (op, name)
                assert dim.in_flight == other.in_flight, (op, name)
    finally:
        redis.close()


# -- processes sharing one bucket --------------------------------------------------------------
HAMMER = textwrap.dedent(
    """
    import json, sys, time
    from pytest_llm_budget.backends import open_backend
    from pytest_llm_budget.limiting.admission import Admitted
    from pytest_llm_budget.limiting.token_bucket import TokenBucketLimits
    spec, bucket, n, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    limits = TokenBucketLimits(tokens=1000, window=1.0, requests=8, output=500)
    b = open_backend(spec)
    out = []
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(n):
        ticket = f"{__import__('os').getpid()}-{i}"
        while True:
            d = b.admit(bucket, limits, ticket, 150, time.time(), "1", output=100)
            if isinstance(d, Admitted):
                break
            time.sleep(d.wait)
        b.settle(bucket, limits, ticket, 150, 150, time.time(), refund=True, output_tokens=60)
        out.append((d.at, d.charge))
    print(json.dumps(out))
    """
)


def hammer(spec: str, procs: int = 3, n: int = 12) -> None:
    """`procs` processes admit `n` requests each; replaying the admissions through an exact
    token bucket, no dimension ever goes over its capacity."""
    import os

    bucket = f"tb-hammer-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    start_at = time.time() + 1.0
    children = [
        subprocess.Popen([sys.executable, "-c", HAMMER, spec, bucket, str(n), repr(start_at)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for _ in range(procs)
    ]
    admissions: list[tuple[float, int]] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        admissions += [(float(t), int(c)) for t, c in json.loads(out)]
    admissions.sort()
    assert len(admissions) == procs * n
    span = 1.0  # window + margin (0)
    spent_in = spent_req = 0.0
    last = admissions[0][0]
    for t, charge in admissions:
        spent_in = max(0.0, spent_in - 1000 / span * (t - last))
        spent_req = max(0.0, spent_req - 8 / span * (t - last))
        last = t
        spent_in += charge
        spent_req += 1
        assert spent_in <= 1000 + 1e-6 and spent_req <= 8 + 1e-6, (t, spent_in, spent_req)
    # Pace: the input binds (36 x 150 at 1000/s after the first 1000; requests need 3.5 s).
    fastest = (procs * n * 150 - 1000) / 1000
    busy = admissions[-1][0] - admissions[0][0]
    assert busy >= fastest * 0.97
    assert busy <= 2 * fastest, f"{busy:.2f}s: far slower than the buckets allow ({fastest}s)"


def test_processes_sharing_a_file_never_overfill_a_bucket(tmp_path: Path) -> None:
    hammer(f"file:{tmp_path / 'state.json'}")


def test_processes_sharing_redis_never_overfill_a_bucket(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    hammer(redis_server.url)


def test_processes_sharing_a_redis_cluster_never_overfill_a_bucket(
    redis_cluster: RedisCluster,  # noqa: F811
) -> None:
    hammer(redis_cluster.url)
