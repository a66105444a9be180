"""The backend contract on memory, file and Redis (fake clock), then the file backend's duties."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock
from redis_server import redis_cluster, redis_server  # noqa: F401 - fixture

from pytest_llm_budget.backends.base import Backend
from pytest_llm_budget.backends.file import (
    FileBackend,
    StateFileLocked,
    StateFileWarning,
    owner_pid,
    pid_alive,
)
from pytest_llm_budget.limiting.admission import Admitted, Deferred, Limits

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_000_000.0
B = "openai:*"
LIMITS = Limits(tokens=1000, window=60.0, margin=0.5)
SPAN = LIMITS.span


@pytest.fixture(params=["memory", "file", "file-rename", "redis", "redis-cluster"])
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


# -- the contract ------------------------------------------------------------------------------
def test_admits_within_budget(backend: Backend) -> None:
    assert admitted(backend.admit(B, LIMITS, "a", 400, T0, "1")).at == T0
    assert admitted(backend.admit(B, LIMITS, "b", 600, T0 + 1, "1")).at == T0 + 1
    snap = backend.snapshot(B, LIMITS, T0 + 2)
    assert (snap.used_tokens, snap.requests, snap.in_flight, snap.waiting) == (1000, 2, 2, 0)


def test_defers_until_the_oldest_charge_leaves(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 600, T0, "1"))
    admitted(backend.admit(B, LIMITS, "b", 300, T0 + 10, "1"))
    d = deferred(backend.admit(B, LIMITS, "c", 200, T0 + 20, "1"), "tokens")
    assert d.wait == pytest.approx(SPAN - 20)
    deferred(backend.admit(B, LIMITS, "c", 200, T0 + 20 + d.wait - 0.01, "1"), "tokens")
    admitted(backend.admit(B, LIMITS, "c", 200, T0 + 20 + d.wait, "1"))
    assert backend.snapshot(B, LIMITS, T0 + 20 + d.wait).used_tokens == 500


def test_waiters_are_served_first_come_first_served(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 1000, T0, "1"))
    deferred(backend.admit(B, LIMITS, "first", 600, T0 + 1, "1"), "tokens")
    deferred(backend.admit(B, LIMITS, "second", 600, T0 + 2, "1"), "tokens")
    # A small newcomer fits alone but not with the queue ahead of it.
    deferred(backend.admit(B, LIMITS, "small", 100, T0 + 3, "1"), "tokens")
    assert backend.snapshot(B, LIMITS, T0 + 3).waiting == 3
    later = T0 + SPAN + 0.5
    deferred(backend.admit(B, LIMITS, "second", 600, later, "1"), "tokens")
    admitted(backend.admit(B, LIMITS, "first", 600, later, "1"))


def test_equal_enqueue_times_break_ties_by_ticket_like_python(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 1000, T0, "1"))
    deferred(backend.admit(B, LIMITS, "t-9", 600, T0 + 1, "1"), "tokens")
    deferred(backend.admit(B, LIMITS, "t-10", 600, T0 + 1, "1"), "tokens")
    later = T0 + SPAN + 0.5
    deferred(backend.admit(B, LIMITS, "t-9", 600, later, "1"), "tokens")  # "t-10" < "t-9"
    admitted(backend.admit(B, LIMITS, "t-10", 600, later, "1"))


def test_a_later_request_passes_a_waiter_only_when_both_fit(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 800, T0, "1"))
    deferred(backend.admit(B, LIMITS, "big", 300, T0 + 1, "1"), "tokens")
    later = T0 + SPAN + 1  # "a" left; "big" has not come back yet
    admitted(backend.admit(B, LIMITS, "small", 100, later, "1"))
    admitted(backend.admit(B, LIMITS, "big", 300, later + 0.1, "1"))


def test_requests_per_window(backend: Backend) -> None:
    limits = Limits(tokens=10**6, window=60.0, requests=2, margin=0.5)
    admitted(backend.admit(B, limits, "a", 1, T0, "1"))
    admitted(backend.admit(B, limits, "b", 1, T0 + 5, "1"))
    d = deferred(backend.admit(B, limits, "c", 1, T0 + 10, "1"), "requests")
    assert d.wait == pytest.approx(SPAN - 10)
    admitted(backend.admit(B, limits, "c", 1, T0 + SPAN, "1"))


def test_concurrency_leases(backend: Backend) -> None:
    limits = Limits(tokens=10**6, window=60.0, concurrency=1, poll=0.05)
    me = str(os.getpid())
    admitted(backend.admit(B, limits, "a", 10, T0, me))
    assert deferred(backend.admit(B, limits, "b", 10, T0 + 1, me), "concurrency").wait == 0.05
    assert backend.settle(B, limits, "a", 10, 10, T0 + 2) == 0
    admitted(backend.admit(B, limits, "b", 10, T0 + 2, me))
    backend.release(B, limits, "b", T0 + 3)
    admitted(backend.admit(B, limits, "c", 10, T0 + 3, me))
    snap = backend.snapshot(B, limits, T0 + 3)
    assert (snap.in_flight, snap.used_tokens) == (1, 30)


def test_settle_charges_the_debt_at_reservation_time(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 100, T0, "1"))
    assert backend.settle(B, LIMITS, "a", 100, 250, T0 + 1) == 150
    admitted(backend.admit(B, LIMITS, "b", 100, T0 + 2, "1"))
    assert backend.settle(B, LIMITS, "b", 100, 40, T0 + 3) == 0
    assert backend.snapshot(B, LIMITS, T0 + 3).used_tokens == 350
    assert backend.snapshot(B, LIMITS, T0 + SPAN + 0.5).used_tokens == 100  # "a" left at T0+span


def test_settle_after_the_window_charges_the_overrun_from_now(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 100, T0, "1"))
    assert backend.settle(B, LIMITS, "a", 100, 400, T0 + 100) == 300
    snap = backend.snapshot(B, LIMITS, T0 + 100)
    assert (snap.used_tokens, snap.requests, snap.in_flight) == (300, 0, 0)


def test_penalize_charges_and_pauses(backend: Backend) -> None:
    backend.penalize(B, LIMITS, "x", 500, T0 + 30, T0)
    snap = backend.snapshot(B, LIMITS, T0)
    assert (snap.used_tokens, snap.requests, snap.paused_for) == (500, 0, 30.0)
    d = deferred(backend.admit(B, LIMITS, "a", 100, T0 + 10, "1"), "paused")
    assert d.wait == pytest.approx(20.0)
    backend.penalize(B, LIMITS, "y", 0, T0 + 5, T0 + 11)  # an earlier pause never shortens one
    assert backend.snapshot(B, LIMITS, T0 + 11).paused_for == pytest.approx(19.0)
    admitted(backend.admit(B, LIMITS, "a", 100, T0 + 30, "1"))


def test_calibrate_raises_usage_to_the_servers_figure(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 100, T0, "1"))
    assert backend.calibrate(B, LIMITS, "x", 400, T0 + 1) == 300
    assert backend.calibrate(B, LIMITS, "x", 200, T0 + 2) == 0
    assert backend.snapshot(B, LIMITS, T0 + 2).used_tokens == 400
    d = deferred(backend.admit(B, LIMITS, "b", 800, T0 + 3, "1"), "tokens")
    assert d.wait == pytest.approx(SPAN - 2)  # the 300 calibrated at T0+1 must leave too


def test_release_takes_a_waiter_out_of_the_queue(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 1000, T0, "1"))
    deferred(backend.admit(B, LIMITS, "b", 500, T0 + 1, "1"), "tokens")
    assert backend.snapshot(B, LIMITS, T0 + 1).waiting == 1
    backend.release(B, LIMITS, "b", T0 + 2)
    assert backend.snapshot(B, LIMITS, T0 + 2).waiting == 0


def test_cancel_takes_back_a_charge_that_never_left(backend: Backend) -> None:
    limits = Limits(tokens=1000, window=60.0, requests=5, concurrency=2, margin=0.5)
    admitted(backend.admit(B, limits, "a", 300, T0, "1"))
    admitted(backend.admit(B, limits, "b", 600, T0 + 1, "1"))
    assert backend.cancel(B, limits, "a", T0 + 2) == 300
    snap = backend.snapshot(B, limits, T0 + 2)
    assert (snap.used_tokens, snap.requests, snap.in_flight) == (600, 1, 1)
    admitted(backend.admit(B, limits, "c", 400, T0 + 2, "1"))  # room only because "a" is gone
    assert backend.cancel(B, limits, "a", T0 + 3) == 0  # twice: nothing more to take back


def test_buckets_are_independent(backend: Backend) -> None:
    admitted(backend.admit("openai:*", LIMITS, "a", 1000, T0, "1"))
    admitted(backend.admit("gemini:*", LIMITS, "b", 1000, T0, "1"))
    assert backend.snapshot("gemini:*", LIMITS, T0).used_tokens == 1000


def test_a_newcomer_overtakes_a_waiter_only_when_it_delays_no_one(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 500, T0, "1"))
    big = deferred(backend.admit(B, LIMITS, "big", 800, T0, "1"), "tokens")
    assert big.wait == pytest.approx(SPAN)
    admitted(backend.admit(B, LIMITS, "small", 200, T0 + 1, "1"))  # 800 + 200 fit at T0 + span
    late = deferred(backend.admit(B, LIMITS, "late", 100, T0 + 2, "1"), "tokens")
    assert late.wait == pytest.approx(SPAN - 1)  # after "big" and once "small" has left
    deferred(backend.admit(B, LIMITS, "big", 800, T0 + SPAN - 0.01, "1"), "tokens")
    admitted(backend.admit(B, LIMITS, "big", 800, T0 + SPAN, "1"))
    admitted(backend.admit(B, LIMITS, "late", 100, T0 + 2 + late.wait, "1"))


def test_a_queued_waiter_can_be_overtaken_later_but_not_delayed(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 600, T0, "1"))
    admitted(backend.admit(B, LIMITS, "b", 300, T0 + 10, "1"))
    first = deferred(backend.admit(B, LIMITS, "first", 700, T0 + 11, "1"), "tokens")
    assert first.wait == pytest.approx(SPAN - 11)  # once "a" left: 300 + 700
    # 200 fits alone once "a" has left, but not beside "first" until "b" leaves too.
    small = deferred(backend.admit(B, LIMITS, "small", 200, T0 + 12, "1"), "tokens")
    assert small.wait == pytest.approx(SPAN + 10 - 12)


def test_an_early_answer_drops_the_margin(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 600, T0, "1"))
    backend.settle(B, LIMITS, "a", 600, 600, T0 + 0.1)  # reached the server by T0 + 0.1
    admitted(backend.admit(B, LIMITS, "b", 300, T0 + 1, "1"))
    backend.observe(B, LIMITS, "b", 0, 0, T0 + 1.2)
    admitted(backend.admit(B, LIMITS, "c", 100, T0 + 2, "1"))
    backend.settle(B, LIMITS, "c", 100, 100, T0 + 3)  # later than the margin: kept as it was
    d = deferred(backend.admit(B, LIMITS, "d", 600, T0 + 10, "1"), "tokens")
    assert d.wait == pytest.approx(0.1 + 60 - 10)  # "a" leaves one window after its answer
    backend.release(B, LIMITS, "d", T0 + 10)
    d = deferred(backend.admit(B, LIMITS, "e", 800, T0 + 10, "1"), "tokens")
    assert d.wait == pytest.approx(1.2 + 60 - 10)  # so does "b"


def test_settle_with_refund_charges_exactly_the_reported_figure(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 500, T0, "1"))
    assert backend.settle(B, LIMITS, "a", 500, 200, T0 + 1, refund=True) == -300
    assert backend.snapshot(B, LIMITS, T0 + 1).used_tokens == 200
    admitted(backend.admit(B, LIMITS, "b", 800, T0 + 2, "1"))  # the 300 freed are usable now
    assert backend.settle(B, LIMITS, "b", 800, 900, T0 + 3, refund=True) == 100  # debt
    assert backend.snapshot(B, LIMITS, T0 + 3).used_tokens == 1100
    # A call longer than the window: only the overrun counts, from now.
    admitted(backend.admit(B, LIMITS, "c", 100, T0 + 200, "1"))
    assert backend.settle(B, LIMITS, "c", 100, 40, T0 + 300, refund=True) == 0
    assert backend.settle(B, LIMITS, "c", 100, 40, T0 + 300, refund=True) == 0  # retried
    admitted(backend.admit(B, LIMITS, "d", 100, T0 + 400, "1"))
    assert backend.settle(B, LIMITS, "d", 100, 150, T0 + 500, refund=True) == 50
    assert backend.snapshot(B, LIMITS, T0 + 500).used_tokens == 50


def test_the_uncertain_part_is_scaled_by_the_learned_factor(backend: Backend) -> None:
    # Server charged 100 fixed + 0.5 x 200 uncertain: the factor steps 30% toward the bound.
    assert admitted(backend.admit(B, LIMITS, "a", 300, T0, "1", uncertain=200)).charge == 300
    assert backend.observe(B, LIMITS, "a", 1200, 200, T0) == 0
    factor = backend.snapshot(B, LIMITS, T0).factor
    assert factor == pytest.approx(1 - 0.3 * (1 - 0.5))
    b = admitted(backend.admit(B, LIMITS, "b", 300, T0 + 1, "1", uncertain=200))
    assert b.charge == 100 + math.ceil(200 * factor)
    assert admitted(backend.admit(B, LIMITS, "c", 300, T0 + 1, "1")).charge == 300  # no part


def test_requests_in_flight_never_teach_a_lower_factor(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 300, T0, "1", uncertain=200))
    admitted(backend.admit(B, LIMITS, "b", 300, T0, "1", uncertain=200))
    # "b" reached the server first and "a" is still on its way: the server holds only "b".
    assert backend.observe(B, LIMITS, "b", 1200, 300, T0 + 0.01) == 0
    assert backend.observe(B, LIMITS, "a", 1200, 600, T0 + 0.02) == 0
    assert backend.snapshot(B, LIMITS, T0 + 0.02).factor == 1.0
    # Answers seen before a request left count for it: 3 x 200 at the server for 3 x 300 here.
    admitted(backend.admit(B, LIMITS, "c", 300, T0 + 0.03, "1", uncertain=200))
    backend.observe(B, LIMITS, "c", 1200, 600, T0 + 0.03)
    drain = 1200 / 60 * 0.03
    assert backend.snapshot(B, LIMITS, T0 + 0.03).factor == pytest.approx(
        1 - 0.3 * (1 - (600 + drain - 300) / 600)
    )


def test_a_server_counting_more_raises_the_factor_at_once(backend: Backend) -> None:
    admitted(backend.admit(B, LIMITS, "a", 300, T0, "1", uncertain=200))
    assert backend.observe(B, LIMITS, "a", 1200, 400, T0 + 0.1) == 100  # charged as a gap too
    assert backend.snapshot(B, LIMITS, T0 + 0.1).factor == pytest.approx(1.5)
    admitted(backend.admit(B, LIMITS, "b", 300, T0 + 0.2, "1", uncertain=200))
    assert backend.observe(B, LIMITS, "b", 1200, 2000, T0 + 0.2) > 0
    assert backend.snapshot(B, LIMITS, T0 + 0.2).factor == LIMITS.factor_cap


def test_refund_settles_teach_the_factor_both_ways(backend: Backend) -> None:
    ROOMY = Limits(tokens=10_000, window=60.0, margin=0.5)
    admitted(backend.admit(B, ROOMY, "a", 400, T0, "1", uncertain=400))
    backend.settle(B, ROOMY, "a", 400, 200, T0 + 1, refund=True)  # counted half
    assert backend.snapshot(B, ROOMY, T0 + 1).factor == pytest.approx(0.85)
    for i in range(10):
        t, at = f"x{i}", T0 + 2 + i
        charge = admitted(backend.admit(B, ROOMY, t, 400, at, "1", uncertain=400)).charge
        assert charge < 400
        backend.settle(B, ROOMY, t, charge, 200, at, refund=True)
    assert backend.snapshot(B, ROOMY, T0 + 20).factor == pytest.approx(0.5, abs=0.02)
    charge = admitted(backend.admit(B, ROOMY, "big", 400, T0 + 30, "1", uncertain=400)).charge
    backend.settle(B, ROOMY, "big", charge, 480, T0 + 30, refund=True)  # 1.2x: up at once
    assert backend.snapshot(B, ROOMY, T0 + 30).factor == pytest.approx(1.2)


def test_the_factor_stays_within_floor_and_cap(backend: Backend) -> None:
    limits = Limits(tokens=1000, window=60.0, margin=0.5, factor_floor=0.7, factor_cap=1.1)
    for i in range(8):
        admitted(backend.admit(B, limits, f"a{i}", 100, T0, "1", uncertain=100))
        backend.settle(B, limits, f"a{i}", 100, 1, T0, refund=True)
    assert backend.snapshot(B, limits, T0).factor == pytest.approx(0.7)
    admitted(backend.admit(B, limits, "b", 100, T0, "1", uncertain=100))
    backend.settle(B, limits, "b", 70, 900, T0, refund=True)
    assert backend.snapshot(B, limits, T0).factor == pytest.approx(1.1)
    # A corrected charge never exceeds the window's budget.
    c = admitted(backend.admit(B, limits, "c", 1000, T0 + 100, "1", uncertain=900))
    assert c.charge == 1000


# -- file backend ------------------------------------------------------------------------------
def test_state_file_format_and_description(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    b = FileBackend(path)
    assert b.description == f"file:{path}"
    admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["buckets"][B]["entries"] == [["a", T0, 10, True]]
    assert FileBackend(path).snapshot(B, LIMITS, T0).used_tokens == 10  # another instance sees it


def test_state_file_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    b = FileBackend(path)
    limits = Limits(tokens=10**6, window=5.0)
    for i in range(300):
        admitted(b.admit(B, limits, f"t{i}", 10, T0 + i, "1"))
        b.settle(B, limits, f"t{i}", 10, 10, T0 + i)
    assert len(json.loads(path.read_text())["buckets"][B]["entries"]) <= 6
    assert path.stat().st_size < 600
    b.snapshot(B, limits, T0 + 1000)  # everything left the window: the idle bucket is dropped
    assert json.loads(path.read_text())["buckets"] == {}


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b'{"version": 1, "buckets": {"openai:*": {"entries": [["a", 1',
     b'{"version": 1, "buckets": {"openai:*": {"entries": 5}}}', b"[1, 2]",
     b'{"version": 99, "buckets": {}}', b"\xff\xfe garbage"],
    ids=["empty", "garbage", "truncated", "malformed-bucket", "not-object", "version", "binary"],
)
def test_corrupt_state_file_is_rebuilt_with_one_warning(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    b = FileBackend(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))
        admitted(b.admit(B, LIMITS, "b", 10, T0, "1"))
        assert b.snapshot(B, LIMITS, T0).used_tokens == 20
    assert [w.category for w in caught] == [StateFileWarning]
    assert str(path) in str(caught[0].message)
    assert json.loads(path.read_text())["version"] == 1


def test_lock_timeout_raises_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    b = FileBackend(path, lock_timeout=0.3)
    holder = FileLock(f"{path}.lock", thread_local=False)
    done = threading.Event()
    ready = threading.Event()

    def hold() -> None:
        with holder:
            ready.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        ready.wait(5)
        start = time.monotonic()
        with pytest.raises(StateFileLocked, match=r"could not take .*s\.json\.lock within 0\.3s"):
            b.admit(B, LIMITS, "a", 10, T0, "1")
        assert time.monotonic() - start < 2
    finally:
        done.set()
        t.join()
    admitted(b.admit(B, LIMITS, "a", 10, T0, "1"))


def test_threads_share_one_backend_safely(tmp_path: Path) -> None:
    b = FileBackend(tmp_path / "s.json")
    limits = Limits(tokens=10**6, window=60.0)

    def work(n: int) -> None:
        for i in range(25):
            admitted(b.admit(B, limits, f"{n}-{i}", 1, T0, "1"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.snapshot(B, limits, T0).requests == 150


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_pid_parsing_and_liveness() -> None:
    assert owner_pid("123:gw0") == 123
    assert owner_pid("123") == 123
    assert owner_pid("gw0") is None
    assert owner_pid("0") is None
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombie detection uses /proc")
def test_a_zombie_counts_as_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # exited but not waited for: a zombie
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":
            break
        time.sleep(0.01)
    assert not pid_alive(proc.pid)
    proc.wait()


def test_leases_of_dead_processes_are_reaped_on_admit(tmp_path: Path) -> None:
    b = FileBackend(tmp_path / "s.json")
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    admitted(b.admit(B, limits, "dead", 50, T0, f"{dead_pid()}:gw1"))
    admitted(b.admit(B, limits, "mine", 50, T0 + 1, f"{os.getpid()}:gw0"))
    snap = b.snapshot(B, limits, T0 + 1)
    assert (snap.in_flight, snap.used_tokens) == (1, 100)  # the dead call's tokens stay charged
    deferred(b.admit(B, limits, "other", 50, T0 + 2, "not-a-pid"), "concurrency")


def test_leases_without_pid_expire_after_lease_ttl(tmp_path: Path) -> None:
    b = FileBackend(tmp_path / "s.json", lease_ttl=30.0)
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    admitted(b.admit(B, limits, "a", 1, T0, "worker-without-pid"))
    deferred(b.admit(B, limits, "b", 1, T0 + 29, "x"), "concurrency")
    admitted(b.admit(B, limits, "b", 1, T0 + 31, "x"))


# -- many processes ----------------------------------------------------------------------------
HAMMER = textwrap.dedent(
    """
    import json, os, sys, time
    from pytest_llm_budget.backends import open_backend
    from pytest_llm_budget.limiting.admission import Admitted, Limits
    spec, bucket, n, est, tokens, window, start_at = sys.argv[1:]
    b = open_backend(spec)
    limits = Limits(tokens=int(tokens), window=float(window), poll=0.01)
    while time.time() < float(start_at):
        time.sleep(0.001)
    out = []
    for i in range(int(n)):
        ticket = f"{os.getpid()}-{i}"
        while True:
            d = b.admit(bucket, limits, ticket, int(est), time.time(), f"{os.getpid()}:w")
            if isinstance(d, Admitted):
                break
            time.sleep(d.wait)
        out.append([d.at, int(est)])
        b.settle(bucket, limits, ticket, int(est), int(est), time.time())
    print(json.dumps(out))
    """
)

HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pytest_llm_budget.backends import open_backend
    from pytest_llm_budget.limiting.admission import Admitted, Limits
    b = open_backend(sys.argv[1])
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    d = b.admit(sys.argv[2], limits, "held", 1, time.time(), f"{os.getpid()}:gw1")
    print("held" if isinstance(d, Admitted) else f"refused {d}", flush=True)
    time.sleep(60)
    """
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def hammer(spec: str, procs: int = 4, n: int = 15, est: int = 100, tokens: int = 1000,
           window: float = 0.5) -> None:
    """`procs` processes reserve `n` x `est` each on a real clock; check no window overflows."""
    bucket = f"hammer-{uuid.uuid4().hex[:6]}"
    start_at = time.time() + 1.0
    args = [spec, bucket, str(n), str(est), str(tokens), str(window), repr(start_at)]
    children = [
        subprocess.Popen([sys.executable, "-c", HAMMER, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=child_env())
        for _ in range(procs)
    ]
    admissions: list[tuple[float, int]] = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        admissions += [(float(t), int(c)) for t, c in json.loads(out)]
    admissions.sort()
    assert len(admissions) == procs * n
    times = [t for t, _ in admissions]
    for t in times:  # every window (t - span, t] the rule looks at holds at most the budget
        assert sum(c for u, c in admissions if t - window < u <= t) <= tokens
    total = procs * n * est
    rate = (total - tokens) / (times[-1] - times[0])
    assert rate >= 0.6 * tokens / window, f"throughput {rate:.0f} tokens/s is too low"


def hold_and_kill(spec: str, bucket: str) -> None:
    """A child takes the only concurrency slot and is SIGKILLed; reap lets the next one in."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, spec, bucket],
                             stdout=subprocess.PIPE, env=child_env())
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"held"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def test_processes_sharing_a_file_never_overflow_the_window(tmp_path: Path) -> None:
    hammer(f"file:{tmp_path / 'state.json'}")


def test_a_killed_lease_holder_does_not_block_the_others(tmp_path: Path) -> None:
    spec = f"file:{tmp_path / 'state.json'}"
    hold_and_kill(spec, B)
    b = FileBackend(tmp_path / "state.json")
    limits = Limits(tokens=10**6, window=60.0, concurrency=1)
    assert b.snapshot(B, limits, time.time()).in_flight == 1  # the dead child's lease
    admitted(b.admit(B, limits, "next", 1, time.time(), f"{os.getpid()}:gw0"))
    assert b.snapshot(B, limits, time.time()).in_flight == 1


def test_state_dated_in_the_future_is_dropped_with_a_warning(tmp_path: Path) -> None:
    """Defect 7: a state an hour ahead (fast clock, copied file) froze the budget, silently."""
    path = tmp_path / "s.json"
    now = time.time()
    fast = now + 3600  # written by a machine whose clock is an hour fast
    state = {"entries": [["f1", fast, 900, True], ["f1:429", fast, 100, False]], "leases": {},
             "waiters": {}, "paused_until": fast + 30}
    path.write_text(json.dumps({"version": 1, "buckets": {B: state}, "clocks": {B: fast}}))
    limits = Limits(tokens=1000, window=60.0)
    b = FileBackend(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = admitted(b.admit(B, limits, "a", 900, now, "1"))
        assert b.snapshot(B, limits, now).used_tokens == 900
    assert got.at == now
    assert [w.category for w in caught] == [StateFileWarning]
    message = str(caught[0].message)
    assert str(path) in message and "3600s ahead" in message and "1000 tokens" in message
    data = json.loads(path.read_text())  # written in the old layout (clocks beside buckets)
    assert "clocks" not in data and data["buckets"][B]["clock"] == now


def test_late_callers_and_skew_are_not_mistaken_for_a_future_state(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    now = time.time()
    b = FileBackend(path, wall_clock=lambda: now, max_skew=5.0)
    limits = Limits(tokens=1000, window=60.0)
    admitted(b.admit(B, limits, "a", 400, now + 4, "1"))  # within the skew
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a caller whose `now` was read long before it got the lock: the wall clock is newer
        deferred(b.admit(B, limits, "b", 700, now - 20, "1"), "tokens")
        assert b.snapshot(B, limits, now).used_tokens == 400


def test_the_bucket_clock_is_kept_in_the_state_across_processes(tmp_path: Path) -> None:
    """A caller whose `now` predates another process's last call is dated at that call."""
    path = tmp_path / "s.json"
    admitted(FileBackend(path).admit(B, LIMITS, "a", 10, T0 + 5, "1"))
    assert json.loads(path.read_text())["buckets"][B]["clock"] == T0 + 5
    late = admitted(FileBackend(path).admit(B, LIMITS, "b", 10, T0, "1"))
    assert late.at == T0 + 5


def test_a_file_in_the_old_layout_loads_with_its_clocks(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    state = {"entries": [["a", T0, 10, True]], "leases": {}, "waiters": {}, "paused_until": 0.0}
    path.write_text(json.dumps({"version": 1, "buckets": {B: state}, "clocks": {B: T0 + 5}}))
    b = FileBackend(path, wall_clock=lambda: T0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert admitted(b.admit(B, LIMITS, "b", 10, T0 + 1, "1")).at == T0 + 5
    data = json.loads(path.read_text())
    assert "clocks" not in data and data["buckets"][B]["clock"] == T0 + 5


def test_a_bucket_clock_in_the_future_is_reset_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    b = FileBackend(path, wall_clock=lambda: T0)
    admitted(b.admit(B, LIMITS, "a", 10, T0 + 3600, "1"))  # a fast clock, now corrected
    b.release(B, LIMITS, "a", T0 + 3600)
    data = json.loads(path.read_text())
    data["buckets"][B]["entries"] = []
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert admitted(b.admit(B, LIMITS, "b", 10, T0, "1")).at == T0
    assert [w.category for w in caught] == [StateFileWarning]
    assert "3600s ahead" in str(caught[0].message)
