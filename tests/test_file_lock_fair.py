"""The file backend's lock: first come, first served; nobody waits on a killed, timed-out or
interrupted process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_llm_budget.backends.file import FileBackend, _FairFlock
from pytest_llm_budget.limiting.admission import Admitted, Limits

HOLD = """
import sys, time
from pytest_llm_budget.backends.file import _FairFlock
lock = _FairFlock(sys.argv[1])
assert lock.acquire(10)
print("held", flush=True)
time.sleep(600)
"""


def _queued(lock_path: str, lock: _FairFlock) -> Callable[[], bool]:
    """True once `lock`'s latest node is the queue's tail (it has joined the queue)."""
    queue = Path(f"{lock_path}.queue")
    return lambda: queue.exists() and queue.read_text().strip() in {n for n, _ in lock._nodes}


def _until(condition: Callable[[], bool]) -> None:
    """Wait for `condition`; a guard of a minute against a hang, not a timing assertion."""
    event = threading.Event()
    for _ in range(12_000):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError("the waiter never joined the queue")


def _waiter(path: str, name: str, got: list[str], timeout: float = 60.0) -> tuple[
    _FairFlock, threading.Thread
]:
    lock = _FairFlock(path)

    def run() -> None:
        if lock.acquire(timeout):
            got.append(name)
            lock.release()
        else:
            got.append(f"{name}: timed out")

    thread = threading.Thread(target=run)
    thread.start()
    return lock, thread


def test_waiters_get_the_lock_in_the_order_they_asked(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json.lock")
    holder = _FairFlock(path)
    assert holder.acquire(5)
    got: list[str] = []
    threads = []
    for name in "abcdef":
        lock, thread = _waiter(path, name, got)
        _until(_queued(path, lock))  # each asks only once the one before it is queued
        threads.append((lock, thread))
    holder.release()
    for lock, thread in threads:
        thread.join(60)
        lock.close()
    holder.close()
    assert got == list("abcdef")


def test_a_waiter_that_times_out_leaves_the_queue_to_the_next(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json.lock")
    holder = _FairFlock(path)
    assert holder.acquire(5)
    got: list[str] = []
    early, first = _waiter(path, "early", got, timeout=0.2)
    _until(_queued(path, early))
    late, second = _waiter(path, "late", got)
    _until(_queued(path, late))
    first.join(60)
    assert got == ["early: timed out"]
    holder.release()
    second.join(60)
    assert got == ["early: timed out", "late"]
    for lock in (holder, early, late):
        lock.close()


class _Interrupt(BaseException):
    """What a Ctrl-C (or pytest-timeout's signal) raises in the waiting main thread."""


def test_an_interrupted_waiter_raises_and_lets_the_next_one_in(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json.lock")
    holder = _FairFlock(path)
    assert holder.acquire(5)
    got: list[str] = []
    interrupted = _FairFlock(path)

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(_Interrupt):
            interrupted.acquire(60)  # queued behind the holder when the signal comes
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    late, thread = _waiter(path, "late", got)
    _until(_queued(path, late))
    holder.release()
    thread.join(60)
    assert got == ["late"]
    for lock in (holder, interrupted, late):
        lock.close()


def test_a_holder_killed_with_waiters_queued_behind_it_lets_them_in(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json.lock")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"held"
    got: list[str] = []
    waiters = []
    for name in "ab":
        lock, thread = _waiter(path, name, got)
        _until(_queued(path, lock))
        waiters.append((lock, thread))
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    child.stdout.close()
    for lock, thread in waiters:
        thread.join(60)
        lock.close()
    assert got == ["a", "b"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["s.json.lock", "s.json.lock.queue"]  # the dead child's nodes were removed


def test_nodes_a_dead_process_left_are_swept_when_a_backend_opens(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for i in (0, 1):
        (tmp_path / f"state.json.lock.{dead}-abc123-{i}").write_text("")
    (tmp_path / "state.json.lock.notanode").write_text("")
    FileBackend(tmp_path / "state.json").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json.lock.notanode"]


def test_processes_sharing_the_backend_each_get_their_turns(tmp_path: Path) -> None:
    """Four threads, each its own backend (own descriptors, as processes have), one bucket."""
    path = tmp_path / "state.json"
    limits = Limits(tokens=10**9, window=60.0)
    counts: list[int] = []

    def work(n: int) -> None:
        backend = FileBackend(path)
        for i in range(30):
            decision = backend.admit("b", limits, f"{n}-{i}", 1, 1000.0, f"{os.getpid()}:t{n}")
            assert isinstance(decision, Admitted)
            backend.settle("b", limits, f"{n}-{i}", 1, 1, 1000.0)
        counts.append(n)
        backend.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(counts) == [0, 1, 2, 3]
    reader = FileBackend(path)
    assert reader.snapshot("b", limits, 1000.0).requests == 120
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "state.json", "state.json.lock", "state.json.lock.queue"
    ]  # each backend removed its nodes when closed
