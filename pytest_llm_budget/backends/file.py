"""File backend: all buckets' windows in one JSON file under a file lock, for local processes.

The state file holds `{"version": 1, "buckets": {name: WindowState.to_json()}}` (and, once a
token-bucket bucket is used, `"token_buckets": {name: TokenBucketState.to_json()}`); each bucket
keeps its own clock (the latest `now` it has seen), so decisions stay in time order across
processes. An idle bucket is not stored, clock included: the next caller starts it afresh, as
Redis does once a bucket's key expires. Each operation takes the lock (`<path>.lock`), reads the
file, applies one `WindowState` rule and, when anything changed, writes a temporary file beside
it and renames it over the old one, so a crash mid-write never leaves a torn file. Leases
remember their owner's pid: a lease whose process died (even by `kill -9`) is dropped at the next
admit, while the charges it made stay until they leave the window.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from filelock import FileLock, Timeout

from pytest_llm_budget.atomic import PRIVATE, open_file, read_file, write_all, write_atomically
from pytest_llm_budget.backends.base import (
    LimitRecord,
    StateBackend,
    budgets_seen,
    limit_record,
    merge_limits,
)
from pytest_llm_budget.backends.ledger import LedgerState
from pytest_llm_budget.errors import BackendUnavailable, StateFileLocked, StateFileWarning
from pytest_llm_budget.limiting.token_bucket import TokenBucketState
from pytest_llm_budget.limiting.window import WindowState

__all__ = ["FileBackend", "StateFileLocked", "StateFileWarning", "owner_pid", "pid_alive"]

FORMAT_VERSION = 1


def owner_pid(owner: str) -> int | None:
    """The pid in an owner string `pid[:worker]`, or None when it does not start with one."""
    head = owner.split(":", 1)[0].strip()
    try:
        pid = int(head)
    except ValueError:
        return None
    return pid if pid > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether a local process exists and is not a zombie; unknowable cases count as alive."""
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    try:  # A killed child its parent has not waited for yet is a zombie: dead for our purposes.
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


def reap_dead_owners(
    state: WindowState | TokenBucketState, now: float, lease_ttl: float | None
) -> int:
    """Drop leases whose owner's pid is dead (or older than `lease_ttl`); returns how many."""
    owners = {str(lease[0]) for lease in state.leases.values()}
    alive = set()
    for owner in owners:
        pid = owner_pid(owner)
        if pid is None or pid_alive(pid):
            alive.add(owner)
    if alive == owners and lease_ttl is None:
        return 0
    return state.reap(alive, now, lease_ttl)


class _Flock:
    """`fcntl.flock` on the same `.lock` file filelock uses, on a descriptor kept open.

    filelock re-opens the lock file and does its own bookkeeping on every acquire (about 0.4 ms
    here); this takes the same kind of lock, so it excludes filelock holders and vice versa, in
    a few microseconds. The descriptor is re-opened after a fork (a child must not share it).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._pid = -1

    def acquire(self, timeout: float) -> bool:
        """Take the lock, polling with a short backoff; False when `timeout` passed."""
        import fcntl

        if self._pid != os.getpid():
            self._fd = open_file(self.path, os.O_RDWR)
            self._pid = os.getpid()
        deadline = time.monotonic() + timeout
        delay = 0.00005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.001)

    @property
    def fd(self) -> int:
        """The descriptor, while the lock is held."""
        return self._fd

    def release(self) -> None:
        """Let the next process in."""
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptor (the lock file stays, as filelock leaves it)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1


class _FairFlock:
    """First come, first served on top of `_Flock`: a queue of node files, one per waiter.

    An acquisition flocks one of its two node files (`<lock>.<pid>-<id>-<0|1>`, kept open),
    swaps its name into `<lock>.queue` (the tail, under that file's own flock, held for a read
    and a write), waits until the node before it is unlocked (or gone), and only then takes the
    lock. Releasing unlocks the lock, then the node: that wakes exactly the next in line, where a
    plain flock wakes every waiter and lets the releaser take it straight back. A node is
    unlocked whatever ends its holder (release, a timeout, Ctrl-C, `kill -9`: the kernel drops a
    dead process's flocks), so nobody waits on a dead process, and the next one removes a dead
    process's nodes. The lock still does the excluding: a waiter let in early (the one before it
    gave up or died while waiting) only waits for the holder ahead, never overlaps it. Two nodes
    alternate so that a releaser queueing again never re-locks the node its successor is about
    to wait on. A blocked flock has no timeout and only the main thread gets signals, so the wait
    for the node before runs on a helper thread while the caller waits on an event (a timeout or
    Ctrl-C ends that).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = _Flock(path)
        self._queue = _Flock(f"{path}.queue")
        self._tag = f"{id(self):x}{os.urandom(3).hex()}"
        self._count = 0
        self._pid = -1
        self._nodes: list[tuple[str, int]] = []
        self._held = -1
        self._sweep()

    def _sweep(self) -> None:
        """Remove node files left by processes that died (or never closed their backend)."""
        folder, base = os.path.split(os.path.abspath(self.path))
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            pid = _node_pid(base, name)
            if pid is not None and not pid_alive(pid):
                _unlink(os.path.join(folder, name))

    def acquire(self, timeout: float) -> bool:
        """Wait for the turn, then the lock; False (out of the queue) when `timeout` passed."""
        import fcntl

        deadline = time.monotonic() + timeout
        if self._pid != os.getpid():
            self._nodes = []  # a forked child makes its own
            self._pid = os.getpid()
        if not self._nodes:
            names = [f"{self.path}.{self._pid}-{self._tag}-{i}" for i in (0, 1)]
            self._nodes = [(name, open_file(name, os.O_RDWR)) for name in names]
        self._count += 1
        name, fd = self._nodes[self._count % 2]
        fcntl.flock(fd, fcntl.LOCK_EX)  # its own node: no other process ever takes it
        self._held = fd
        try:
            before = self._enqueue(name, deadline)
            if before is None or (before and not self._wait_for(before, deadline)):
                self._leave()
                return False
            if not self.lock.acquire(max(0.0, deadline - time.monotonic())):
                self._leave()
                return False
            return True
        except BaseException:
            self._leave()
            raise

    def release(self) -> None:
        """Let the next in line in."""
        self.lock.release()
        self._leave()

    def _enqueue(self, name: str, deadline: float) -> str | None:
        """Write `name` as the tail; the node before it ("" for none), None on timeout."""
        if not self._queue.acquire(max(0.0, deadline - time.monotonic())):
            return None
        try:
            fd = self._queue.fd
            before = os.pread(fd, _TAIL, 0).decode("utf-8", "replace").strip()
            os.pwrite(fd, name.encode().ljust(_TAIL), 0)
        finally:
            self._queue.release()
        if _node_pid(self.path, before) is None:
            return ""  # empty, or not a node of this lock: nobody to wait for
        return before

    def _wait_for(self, before: str, deadline: float) -> bool:
        """Wait until the node before this one is unlocked or removed; False on timeout."""
        import fcntl

        try:
            fd = os.open(before, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
        except FileNotFoundError:
            return True  # its backend closed
        except OSError:
            return True  # another user's node (a state shared by a group): the lock still excludes
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _blocking_flock(fd, max(0.0, deadline - time.monotonic())):
                return False
        else:
            os.close(fd)
        pid = _node_pid(self.path, before)
        if pid is not None and pid != self._pid and not pid_alive(pid):
            for node in (f"{before[:-1]}0", f"{before[:-1]}1"):
                _unlink(node)  # a dead process's nodes: nobody else removes them
        return True

    def _leave(self) -> None:
        """Unlock this acquisition's node (the next in line goes on to the lock)."""
        import fcntl

        if self._held >= 0:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held = -1

    def close(self) -> None:
        """Close the descriptors, remove this backend's node files and any a dead process left
        (one that died while others waited may not have looked dead yet when they went on)."""
        self.lock.close()
        self._queue.close()
        if self._pid == os.getpid():
            for name, fd in self._nodes:
                _unlink(name)
                os.close(fd)
        self._nodes, self._pid = [], -1
        self._sweep()


#: Bytes of the queue file: one node name, padded with spaces.
_TAIL = 512
_NODE = re.compile(r"(\d+)-[0-9a-f]+-[01]")


def _node_pid(lock: str, name: str) -> int | None:
    """The pid in a node file's name, None when `name` is not a node of `lock`."""
    prefix = f"{lock}."
    found = _NODE.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
    return int(found.group(1)) if found else None


def _blocking_flock(fd: int, timeout: float) -> bool:
    """Take a shared flock on `fd` (then close it) on a helper thread; False after `timeout`.

    The helper closes the descriptor whenever its flock returns, waited for or not.
    """
    import fcntl

    done = threading.Event()

    def take() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        finally:
            os.close(fd)
            done.set()

    threading.Thread(target=take, name="llm-budget-lock-queue", daemon=True).start()
    return done.wait(timeout)


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


class FileBackend(StateBackend):
    """Windows in a JSON file guarded by `filelock`: one host, many processes (xdist workers)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = 30.0,
        lease_ttl: float | None = 600.0,
        poll_interval: float = 0.0005,
        atomic_rename: bool = False,
        max_skew: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.max_skew = max_skew
        self.wall_clock = wall_clock
        self.description = f"file:{self.path}"
        self.lock_timeout = lock_timeout
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.atomic_rename = atomic_rename or not hasattr(os, "pwrite")
        self._file_lock = FileLock(f"{self.path}.lock", timeout=lock_timeout)
        self._flock = _FairFlock(f"{self.path}.lock") if sys.platform != "win32" else None
        self._thread_lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        check_state_path(self.path)

    # -- storage ---------------------------------------------------------------------------
    @contextmanager
    def _storage(self) -> Iterator[None]:
        """The lock, and the state's I/O: an OS error (full disk, read-only) is one line."""
        try:
            with self._locked():
                yield
        except OSError as exc:
            raise BackendUnavailable(
                f"llm-budget state file {self.path}: {exc.strerror or exc} "
                f"({exc.filename or self.path}); the call's budget cannot be kept"
            ) from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the process-local and the cross-process lock, or raise StateFileLocked."""
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise StateFileLocked(self._timeout_message())
        try:
            if self._flock is not None:
                if not self._flock.acquire(self.lock_timeout):
                    raise StateFileLocked(self._timeout_message())
                try:
                    yield
                finally:
                    self._flock.release()
                return
            try:
                self._file_lock.acquire(poll_interval=self.poll_interval)
            except Timeout as exc:
                raise StateFileLocked(self._timeout_message()) from exc
            try:
                yield
            finally:
                self._file_lock.release()
        finally:
            self._thread_lock.release()

    def _timeout_message(self) -> str:
        return (
            f"llm-budget state file {self.path}: could not take {self.path}.lock within "
            f"{self.lock_timeout:g}s; another process holds it (remove the .lock file only if "
            "no pytest process is running)"
        )

    def _read(self) -> tuple[str, dict[str, WindowState], dict[str, TokenBucketState]]:
        """The file's text, windows and token buckets; an unreadable file warns and counts as
        empty.

        A file from before the buckets kept their own clock (`"clocks": {name: t}` beside
        them) loads with those clocks moved into the buckets.
        """
        try:
            blob = read_file(self.path)
        except FileNotFoundError:
            return "", {}, {}
        text = ""
        try:
            text = blob.decode("utf-8")
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unexpected format version {data.get('version')!r}"
                                 if isinstance(data, dict) else "not a JSON object")
            raw = data["buckets"]
            if not isinstance(raw, dict):
                raise ValueError("'buckets' is not an object")
            buckets = {str(k): WindowState.from_json(v) for k, v in raw.items()}
            token_buckets = {
                str(k): TokenBucketState.from_json(v)
                for k, v in dict(data.get("token_buckets", {})).items()
            }
            for name, clock in dict(data.get("clocks", {})).items():
                if name in buckets and "clock" not in raw[name]:
                    buckets[name].clock = float(clock)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = "empty" if not blob.strip() else f"unreadable ({exc})"
            warnings.warn(
                f"llm-budget state file {self.path} is {what}; starting from an empty window "
                "(charges recorded so far are forgotten)",
                StateFileWarning,
                stacklevel=5,
            )
            return "\0corrupt", {}, {}
        return text, buckets, token_buckets

    def _drop_future(
        self,
        buckets: dict[str, WindowState],
        now: float,
        token_buckets: dict[str, TokenBucketState] | None = None,
    ) -> None:
        """Treat times beyond now + `max_skew` as corrupt: warn, drop them, reset the clock.

        A state written by a machine whose clock runs fast (or a file copied from one) would
        otherwise freeze its buckets until real time caught up: every decision is taken on the
        bucket's clock, which never goes back. The newest of the caller's `now` and the wall
        clock is the reference, so a caller that read its clock before waiting for the lock is
        never mistaken for a corrupt state.
        """
        reference = max(float(now), self.wall_clock())
        limit = reference + self.max_skew
        found: list[str] = []
        ahead, tokens = 0.0, 0
        for name, state in sorted(buckets.items()):
            times = [e[1] for e in state.entries] + [float(v[1]) for v in state.leases.values()]
            times += [w[0] for w in state.waiters.values()]
            clock_ahead = state.clock > limit
            future = max(times, default=0.0) > limit or (
                clock_ahead and state.paused_until > limit
            )
            if not (future or clock_ahead):
                continue
            found.append(name)
            ahead = max(ahead, state.clock, *times)
            clock = 0.0 if clock_ahead else state.clock
            if future:
                tokens += sum(int(e[2]) for e in state.entries if e[1] > limit)
                buckets[name] = WindowState(
                    entries=[e for e in state.entries if e[1] <= limit],
                    leases={k: v for k, v in state.leases.items() if float(v[1]) <= limit},
                    waiters={k: w for k, w in state.waiters.items() if w[0] <= limit},
                    paused_until=0.0 if state.paused_until > limit else state.paused_until,
                    clock=clock,
                )
            else:
                state.clock = clock
        for name, tb in sorted((token_buckets or {}).items()):
            if tb.clock > limit or tb.paused_until > limit:
                found.append(name)
                ahead = max(ahead, tb.clock, tb.paused_until)
                token_buckets[name] = TokenBucketState()  # type: ignore[index]
        if found:
            warnings.warn(
                f"llm-budget state file {self.path} holds times up to {ahead - reference:.0f}s "
                "ahead of this machine's clock (a fast clock, or a file copied from another "
                f"machine) in bucket(s) {', '.join(found)}; dropped those times and their "
                f"{tokens} tokens of charges, as for a corrupt file",
                StateFileWarning,
                stacklevel=6,
            )

    def _write(
        self,
        buckets: dict[str, WindowState],
        old_text: str,
        token_buckets: dict[str, TokenBucketState] | None = None,
    ) -> None:
        """Write atomically (temp file + rename), skipping the write when nothing changed."""
        kept = {name: s.to_json() for name, s in sorted(buckets.items()) if not _idle(s)}
        data: dict[str, Any] = {"version": FORMAT_VERSION, "buckets": kept}
        tb = {n: s.to_json() for n, s in sorted((token_buckets or {}).items()) if not s.idle()}
        if tb:
            data["token_buckets"] = tb
        text = json.dumps(data, separators=(",", ":"))
        if text == old_text:
            return
        if self.atomic_rename or not old_text or old_text == "\0corrupt":
            write_atomically(self.path, text.encode("utf-8"), PRIVATE)
            return
        fd = open_file(self.path, os.O_WRONLY)
        try:
            _overwrite(fd, text.encode("utf-8"), len(old_text.encode("utf-8")))
        finally:
            os.close(fd)

    @contextmanager
    def _state(self, bucket: str, now: float) -> Iterator[WindowState]:
        with self._storage():
            old_text, buckets, token_buckets = self._read()
            self._drop_future(buckets, now, token_buckets)
            state = buckets.get(bucket)
            if state is None:
                state = buckets[bucket] = WindowState()
            yield state
            self._write(buckets, old_text, token_buckets)

    @contextmanager
    def _buckets_state(self, bucket: str, now: float) -> Iterator[TokenBucketState]:
        with self._storage():
            old_text, buckets, token_buckets = self._read()
            self._drop_future(buckets, now, token_buckets)
            state = token_buckets.get(bucket)
            if state is None:
                state = token_buckets[bucket] = TokenBucketState()
            yield state
            self._write(buckets, old_text, token_buckets)

    def _before_admit(self, state: WindowState | TokenBucketState, now: float) -> None:
        """Reap the leases of dead processes, so a killed worker's slot is free again."""
        reap_dead_owners(state, now, self.lease_ttl)

    @contextmanager
    def _ledger(self, ledger: str, now: float) -> Iterator[LedgerState]:
        """A cost ledger in `<path>.cost.json`, under the same lock, written in place."""
        path = f"{self.path}.cost.json"
        with self._storage():
            fd = open_file(path, os.O_RDWR)
            try:
                blob = b""
                while chunk := os.read(fd, 65536):
                    blob += chunk
                ledgers: dict[str, Any] = {}
                try:
                    ledgers = dict(json.loads(blob)) if blob.strip() else {}
                except (ValueError, TypeError) as exc:
                    warnings.warn(
                        f"llm-budget cost ledger {path} is unreadable ({exc}); starting from $0",
                        StateFileWarning,
                        stacklevel=4,
                    )
                raw = ledgers.get(ledger)
                state = LedgerState.from_json(raw) if isinstance(raw, dict) else LedgerState()
                state.expire(now)
                yield state
                ledgers[ledger] = state.to_json()
                text = json.dumps(ledgers, separators=(",", ":")).encode("utf-8")
                _overwrite(fd, text, len(blob))
            finally:
                os.close(fd)

    @contextmanager
    def _limits_file(self) -> Iterator[dict[str, LimitRecord]]:
        """The stated limits of every bucket, in `<path>.limits.json` under the same lock
        (kept when the windows go idle: a later run on this file starts with them)."""
        path = f"{self.path}.limits.json"
        with self._storage():
            try:
                raw: Any = json.loads(read_file(path))
            except (FileNotFoundError, ValueError, TypeError):
                raw = {}
            items = raw.items() if isinstance(raw, dict) else ()
            limits = {str(k): limit_record(v) for k, v in items}
            before = json.dumps(limits, sort_keys=True, separators=(",", ":"))
            yield limits
            text = json.dumps(limits, sort_keys=True, separators=(",", ":"))
            if text != before:
                write_atomically(path, text.encode("utf-8"), PRIVATE)

    def learn_limits(
        self, bucket: str, model: str, figures: Mapping[str, int], now: float
    ) -> LimitRecord:
        with self._limits_file() as limits:
            before = limits.get(bucket, {})
            limits[bucket] = merge_limits(before, model, figures)
            return before

    def learned_limits(self, bucket: str, now: float) -> LimitRecord:
        with self._limits_file() as limits:
            return limits.get(bucket, {})

    def announce_budget(self, bucket: str, tokens: int, now: float, ttl: float) -> list[int]:
        """Budgets live in `<path>.budgets.json` ({bucket: {tokens: last seen}}), same lock."""
        path = f"{self.path}.budgets.json"
        with self._storage():
            try:
                seen: dict[str, Any] = dict(json.loads(read_file(path)))
            except (FileNotFoundError, ValueError, TypeError):
                seen = {}
            budgets = budgets_seen(seen.get(bucket), tokens, now, ttl)
            seen[bucket] = budgets
            write_atomically(path, json.dumps(seen).encode("utf-8"), PRIVATE)
        return sorted(int(k) for k in budgets if int(k) != tokens)

    def close(self) -> None:
        """Close the lock file's descriptor."""
        with self._thread_lock:
            if self._flock is not None:
                self._flock.close()


def _overwrite(fd: int, blob: bytes, old_len: int) -> None:
    """Replace a file's `old_len` bytes by `blob` in place.

    A longer `blob` first grows the file with spaces after the old JSON (still valid JSON): on a
    full disk that write fails, is truncated away, and the old state stays untouched. The new
    text then goes over blocks already allocated, padded with JSON whitespace to the old length,
    so a process killed before the truncate still leaves valid JSON; every reader holds the
    lock, so none sees a half-written file. (ext4 flushes data on rename-over-existing, which
    costs milliseconds per operation on a busy disk; this costs microseconds.)
    """
    if len(blob) > old_len:
        try:
            write_all(fd, b" " * (len(blob) - old_len), old_len)
        except OSError:
            os.ftruncate(fd, old_len)
            raise
    write_all(fd, blob + b" " * max(0, old_len - len(blob)), 0)
    os.ftruncate(fd, len(blob))


def check_state_path(path: str) -> None:
    """Refuse a state path that cannot work (a symlink, a directory, a read-only folder) now."""
    for name in (path, f"{path}.lock", f"{path}.lock.queue", f"{path}.cost.json",
                 f"{path}.budgets.json"):  # fmt: skip
        if os.path.islink(name):
            raise ValueError(f"{name} is a symlink; the plugin never writes through one")
    if os.path.isdir(path):
        raise ValueError(f"state file {path} is a directory; give a file path (file:DIR/state)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"state file {path}: its folder {directory} is not writable")


def _idle(state: WindowState) -> bool:
    """A bucket with nothing in it need not be stored (nor its clock: see the module doc)."""
    return (
        not state.entries
        and not state.leases
        and not state.waiters
        and state.paused_until <= state.clock
        and state.factor == 1.0
    )
