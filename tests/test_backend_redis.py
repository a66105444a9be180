"""The Redis backend on a real redis-server: URLs, outages, expiry, dead leases, many processes."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import RedisServer, free_port, redis_server  # noqa: F401 - fixture
from test_backend_file import admitted, dead_pid, deferred, hammer, hold_and_kill

from pytest_llm_budget.backends import MemoryBackend, open_backend
from pytest_llm_budget.backends.redis import BackendUnavailable, RedisBackend, mask_url
from pytest_llm_budget.limiting.admission import Admitted, Limits

T0 = 1_000_000.0
B = "openai:*"
LIMITS = Limits(tokens=1000, window=60.0, margin=0.5)


@pytest.fixture
def rb(redis_server: RedisServer) -> Iterator[RedisBackend]:  # noqa: F811
    """A backend on the session server with a fresh key prefix."""
    b = RedisBackend.from_url(redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}")
    yield b
    b.close()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may kill."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_mask_url() -> None:
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://user:s3cret@h:6380/2") == "rediss://user:***@h:6380/2"
    assert mask_url("redis://s3cret@h/0") == "redis://***@h/0"
    assert mask_url("redis://h:6379/0?password=s3cret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert mask_url("unix:///tmp/r.sock?db=0") == "unix:///tmp/r.sock?db=0"


def test_password_url_works_and_is_masked(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret-pw").start()
    try:
        b = open_backend(server.url)
        assert isinstance(b, RedisBackend)
        assert b.description == f"redis://:***@127.0.0.1:{server.port}/0"
        assert "s3cret" not in b.description
        admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))
        b.close()
        wrong = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(BackendUnavailable) as info:
            RedisBackend.from_url(wrong)
        assert "wrong-pw" not in str(info.value)
        assert f"redis://:***@127.0.0.1:{server.port}/0" in str(info.value)
    finally:
        server.stop()


def test_unreachable_at_open_fails_fast() -> None:
    url = f"redis://:pw-xyz@127.0.0.1:{free_port()}/0"
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"cannot reach .*redis://:\*\*\*@127\.0\.0\.1"):
        RedisBackend.from_url(url)
    assert time.monotonic() - start < 3


def test_server_killed_mid_run_raises_after_bounded_retries(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url, tries=3, backoff=0.1)
    admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))
    own_server.kill()
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"admit on bucket 'openai:\*' failed 3 times"):
        b.admit(B, LIMITS, "b", 10, T0 + 1, "1")
    assert 0.25 <= time.monotonic() - start < 5  # it did retry, and it did give up


def test_a_restarted_server_is_used_again(own_server: RedisServer) -> None:
    b = RedisBackend.from_url(own_server.url, tries=3, backoff=0.1)
    admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))
    b.client.script_flush()  # the script cache is gone, as after a restart: EVALSHA reloads it
    admitted(b.admit(B, LIMITS, "b", 10, T0, "1"))
    assert b.snapshot(B, LIMITS, T0).requests == 2


def test_keys_are_namespaced_and_expire(rb: RedisBackend) -> None:
    admitted(rb.admit(B, LIMITS, "a", 10, T0, "1"))
    assert rb.client.keys(f"{rb.prefix}:*") == [f"{rb.prefix}:{B}:state"]
    ttl = rb.client.pttl(rb.key(B))
    assert 600_000 < ttl <= 661_000  # a lease keeps the key for lease_ttl + 60 s
    rb.settle(B, LIMITS, "a", 10, 10, T0 + 1)
    ttl = rb.client.pttl(rb.key(B))
    assert 120_000 < ttl <= (2 * LIMITS.span + 60) * 1000  # charges only: 2 spans + 60 s
    rb.penalize(B, LIMITS, "x", 0, T0 + 1000, T0 + 1)
    assert rb.client.pttl(rb.key(B)) > 999_000  # a pause outlives the charges
    rb.release(B, LIMITS, "none", T0 + 5000)  # nothing left but the clock: it goes soon
    assert 0 < rb.client.pttl(rb.key(B)) <= (2 * LIMITS.span + 60) * 1000
    assert rb.client.strlen(rb.key(B)) < 40


def test_retried_admit_and_settle_are_harmless(rb: RedisBackend) -> None:
    admitted(rb.admit(B, LIMITS, "a", 100, T0, "1"))
    admitted(rb.admit(B, LIMITS, "a", 100, T0 + 0.1, "1"))
    assert rb.settle(B, LIMITS, "a", 100, 300, T0 + 1) == 200
    assert rb.settle(B, LIMITS, "a", 100, 300, T0 + 1) == 200
    snap = rb.snapshot(B, LIMITS, T0 + 1)
    assert (snap.used_tokens, snap.requests, snap.in_flight) == (300, 1, 0)


def test_leases_expire_after_lease_ttl(redis_server: RedisServer) -> None:  # noqa: F811
    b = RedisBackend.from_url(redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}", lease_ttl=30)
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    admitted(b.admit(B, limits, "a", 1, T0, f"{os.getpid()}:gw0"))
    deferred(b.admit(B, limits, "b", 1, T0 + 29, f"{os.getpid()}:gw0"), "concurrency")
    admitted(b.admit(B, limits, "b", 1, T0 + 31, f"{os.getpid()}:gw0"))
    b.close()


def test_dead_local_owners_are_reaped_but_not_other_hosts(rb: RedisBackend) -> None:
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    gone = dead_pid()
    admitted(rb.admit(B, limits, "dead", 1, T0, f"{gone}:gw1"))
    admitted(rb.admit(B, limits, "next", 1, T0 + 1, f"{os.getpid()}:gw0"))
    rb.settle(B, limits, "next", 1, 1, T0 + 2)
    here = rb.host
    rb.host = "some-other-host"  # the same dead pid on another machine says nothing
    admitted(rb.admit(B, limits, "remote", 1, T0 + 3, f"{gone}:gw1"))
    rb.host = here
    deferred(rb.admit(B, limits, "blocked", 1, T0 + 4, f"{os.getpid()}:gw0"), "concurrency")


def test_server_time_ignores_a_skewed_client_clock(redis_server: RedisServer) -> None:  # noqa: F811
    b = RedisBackend.from_url(
        redis_server.url, prefix=f"t-{uuid.uuid4().hex[:8]}", use_server_time=True
    )
    skewed = time.time() - 3600  # this host's clock is an hour late
    d = admitted(b.admit(B, LIMITS, "a", 10, skewed, "1"))
    assert abs(d.at - time.time()) < 5
    b.penalize(B, LIMITS, "x", 0, skewed + 30, skewed)  # "30 s from now" on the client's clock
    assert b.snapshot(B, LIMITS, skewed).paused_for == pytest.approx(30, abs=2)
    b.close()


def test_processes_sharing_redis_never_overflow_the_window(redis_server: RedisServer) -> None:  # noqa: F811
    hammer(redis_server.url)


def test_a_killed_lease_holder_does_not_block_the_others(redis_server: RedisServer) -> None:  # noqa: F811
    bucket = f"kill-{uuid.uuid4().hex[:6]}"
    hold_and_kill(redis_server.url, bucket)
    b = RedisBackend.from_url(redis_server.url)
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    assert b.snapshot(bucket, limits, time.time()).in_flight == 1  # the dead child's lease
    admitted(b.admit(bucket, limits, "next", 1, time.time(), f"{os.getpid()}:gw0"))
    assert b.snapshot(bucket, limits, time.time()).in_flight == 1
    b.client.delete(b.key(bucket))
    b.close()


@st.composite
def programs(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Random operations on one bucket, at non-decreasing times."""
    ops: list[tuple[Any, ...]] = []
    t = 0.0
    for i in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0.0, 0.01, 0.3, 2.0, 7.0]))
        kind = draw(
            st.sampled_from(["admit", "admit", "admit", "settle", "observe", "release", "cancel"])
        )
        n = draw(st.integers(0, 6))
        if kind == "admit":
            est = draw(st.integers(1, 600))
            ops.append(("admit", t, f"t{n}", est, draw(st.integers(0, est))))
        elif kind == "settle":
            ops.append(("settle", t, f"t{n}", draw(st.integers(0, 700)), draw(st.booleans())))
        elif kind == "observe":
            ops.append(("observe", t, f"t{n}", draw(st.integers(0, 1200)),
                        draw(st.sampled_from([None, 0.5, 6.0]))))
        else:
            ops.append((kind, t, f"t{n}"))
        del i
    return ops


def _apply(backend: Any, op: tuple[Any, ...], charged: dict[str, int]) -> Any:
    limits = Limits(tokens=1000, window=6.0, margin=0.1, requests=None)
    kind, t, ticket = op[0], T0 + op[1], op[2]
    if kind == "admit":
        if ticket in charged:  # tickets are never reused (a retried admit is Redis's own test)
            return "skip"
        d = backend.admit("b", limits, ticket, op[3], t, "1", uncertain=op[4])
        if isinstance(d, Admitted):
            charged[ticket] = d.charge
            return ("in", d.at, d.charge)
        return ("wait", round(d.wait, 9), d.reason)
    if kind == "settle":
        if charged.get(f"{ticket}:settled"):  # a Reservation settles once
            return "skip"
        charged[f"{ticket}:settled"] = 1
        return backend.settle("b", limits, ticket, charged.get(ticket, 1), op[3], t, refund=op[4])
    if kind == "observe":
        return backend.observe("b", limits, ticket, 1200, op[3], t, reset_s=op[4])
    if kind == "cancel":
        return backend.cancel("b", limits, ticket, t)
    backend.release("b", limits, ticket, t)
    return None


@settings(max_examples=60, deadline=None)
@given(program=programs())
def test_the_lua_port_decides_exactly_as_window_py(
    redis_server: RedisServer, program: list[tuple[Any, ...]]  # noqa: F811
) -> None:
    server = redis_server
    memory = MemoryBackend()
    redis = RedisBackend.from_url(server.url, prefix=f"eq-{uuid.uuid4().hex[:8]}")
    try:
        mine: dict[str, int] = {}
        theirs: dict[str, int] = {}
        for op in program:
            assert _apply(memory, op, mine) == _apply(redis, op, theirs), op
            limits = Limits(tokens=1000, window=6.0, margin=0.1)
            a = memory.snapshot("b", limits, T0 + op[1])
            b = redis.snapshot("b", limits, T0 + op[1])
            assert a.used_tokens == b.used_tokens and a.waiting == b.waiting, op
            assert a.factor == pytest.approx(b.factor, rel=1e-12), op
    finally:
        redis.close()



def test_a_state_written_by_a_fast_clock_expires_within_minutes(rb: RedisBackend) -> None:
    """Issue 10, defect 7, Redis side: unlike a state file, a future-dated state does not outlive
    the host that wrote it by more than two spans and a minute (its key's expiry is relative)."""
    now = time.time()
    admitted(rb.admit(B, LIMITS, "fast", 900, now + 3600, "1"))  # a host an hour fast
    rb.settle(B, LIMITS, "fast", 900, 900, now + 3600)
    ttl_ms = rb.client.pttl(rb.key(B))
    assert 0 < ttl_ms <= (2 * LIMITS.span + 60) * 1000
