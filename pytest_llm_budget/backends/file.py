"""File backend: all buckets' windows in one JSON file under a file lock, for local processes.

The state file holds `{"version": 1, "buckets": {name: WindowState.to_json()}}`. Each operation
takes the lock (`<path>.lock`), reads the file, applies one `WindowState` rule and, when anything
changed, writes a temporary file beside it and renames it over the old one, so a crash mid-write
never leaves a torn file. Leases remember their owner's pid: a lease whose process died (even by
`kill -9`) is dropped at the next admit, while the charges it made stay until they leave the window.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from filelock import FileLock, Timeout

from ..window import Decision, Limits, WindowState
from .base import StateBackend
from .redis import BackendUnavailable

__all__ = ["FileBackend", "StateFileLocked", "StateFileWarning", "owner_pid", "pid_alive"]

FORMAT_VERSION = 1


class StateFileWarning(UserWarning):
    """The state file was unreadable (corrupt, truncated, empty) and was rebuilt empty."""


class StateFileLocked(BackendUnavailable):
    """The state file's lock could not be taken in time (another process holds it too long)."""


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


def reap_dead_owners(state: WindowState, now: float, lease_ttl: float | None) -> int:
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


class FileBackend(StateBackend):
    """Windows in a JSON file guarded by `filelock`: one host, many processes (xdist workers)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock_timeout: float = 30.0,
        lease_ttl: float | None = 600.0,
        poll_interval: float = 0.0005,
    ) -> None:
        self.path = os.fspath(path)
        self.description = f"file:{self.path}"
        self.lock_timeout = lock_timeout
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self._tmp = f"{self.path}.tmp"
        self._file_lock = FileLock(f"{self.path}.lock", timeout=lock_timeout)
        self._thread_lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)

    # -- storage ---------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the process-local and the cross-process lock, or raise StateFileLocked."""
        if not self._thread_lock.acquire(timeout=self.lock_timeout):
            raise StateFileLocked(self._timeout_message())
        try:
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

    def _read(self) -> tuple[str, dict[str, WindowState]]:
        """The file's text and its buckets; an unreadable file warns and counts as empty."""
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return "", {}
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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            what = "empty" if not blob.strip() else f"unreadable ({exc})"
            warnings.warn(
                f"llm-budget state file {self.path} is {what}; starting from an empty window "
                "(charges recorded so far are forgotten)",
                StateFileWarning,
                stacklevel=4,
            )
            return "\0corrupt", {}
        return text, buckets

    def _write(self, buckets: dict[str, WindowState], now: float, old_text: str) -> None:
        """Write atomically (temp file + rename), skipping the write when nothing changed."""
        kept = {name: s.to_json() for name, s in sorted(buckets.items()) if not _idle(s, now)}
        text = json.dumps({"version": FORMAT_VERSION, "buckets": kept}, separators=(",", ":"))
        if text == old_text:
            return
        with open(self._tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(self._tmp, self.path)

    @contextmanager
    def _state(self, bucket: str, now: float) -> Iterator[WindowState]:
        with self._locked():
            old_text, buckets = self._read()
            state = buckets.setdefault(bucket, WindowState())
            yield state
            self._write(buckets, now, old_text)

    # -- rules -----------------------------------------------------------------------------
    def admit(
        self, bucket: str, limits: Limits, ticket: str, estimate: int, now: float, owner: str
    ) -> Decision:
        """Reap leases of dead processes, then admit as `WindowState.admit` does."""
        with self._state(bucket, now) as state:
            reap_dead_owners(state, now, self.lease_ttl)
            return state.admit(limits, ticket, estimate, now, owner)

    def settle(self, bucket: str, limits: Limits, ticket: str, estimate: int, charge: int,
               now: float) -> int:
        """Prune first, so a reservation that already left the window charges its overrun now."""
        with self._state(bucket, now) as state:
            state.prune(limits, now)
            return state.settle(ticket, estimate, charge, now)

    def read_all(self) -> dict[str, Any]:
        """The whole state file as JSON (for debugging and reports)."""
        with self._locked():
            _, buckets = self._read()
        return {"version": FORMAT_VERSION, "buckets": {k: v.to_json() for k, v in buckets.items()}}


def _idle(state: WindowState, now: float) -> bool:
    """A bucket with nothing in it need not be stored."""
    return (
        not state.entries and not state.leases and not state.waiters and state.paused_until <= now
    )
