"""The folder an xdist controller shares with its workers: made, cleaned when stale, record spools.

Every worker appends each finished call to its own `records-<worker>-<pid>.jsonl` there, one
line per call written by a single `os.write` on an `O_APPEND` descriptor (so a worker killed with
`kill -9` loses at most the call in flight). A worker that ends normally also hands its records
over in `workeroutput`; the controller reads the spool of any worker that did not (it crashed),
so every finished call reaches the summary and reports exactly once.

When the controller is interrupted (Ctrl-C, SIGTERM) it leaves a `stop` file there: each
worker's `StopWatch` then stops its session from sending new calls, waits for its calls in flight
to end (and be spooled), and leaves `stopped-<worker>-<pid>`; the controller waits for those
(`Handover.stop_workers`) before it merges every spool and writes the reports.

Folder names carry the controller's pid (`llm-budget-<pid>-XXXXXXXX`): a controller starting up
removes the folders of controllers that are dead and have left them untouched for a while.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_llm_budget.atomic import PRIVATE, open_file, write_all, write_atomically
from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.records import CallRecord

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

__all__ = [
    "PREFIX",
    "STALE_AFTER",
    "STOP_FILE",
    "Handover",
    "RecordSpool",
    "StopWatch",
    "clean_stale_dirs",
    "make_shared_dir",
    "read_spool",
]

PREFIX = "llm-budget-"
#: Seconds a dead controller's folder must have been left untouched before it is removed.
STALE_AFTER = 600.0
_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[A-Za-z0-9_]+$")
_SPOOL = re.compile(r"^records-(?P<worker>[A-Za-z0-9_]+)-(?P<pid>\d+)\.jsonl$")
#: Left by an interrupted controller: workers send no new call.
STOP_FILE = "stop"


class StopWatch:
    """Worker side: once the `stop` file appears, send no new call and say when the calls in
    flight have ended (`stopped-<worker>-<pid>`); a daemon thread polling the folder."""

    def __init__(self, folder: str, worker: str, session: BudgetSession, poll: float = 0.05):
        self.folder = folder
        self.done = os.path.join(folder, f"stopped-{worker}-{os.getpid()}")
        self.session = session
        self.poll = poll
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="llm-budget-stop", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        stop = os.path.join(self.folder, STOP_FILE)
        while not self._closed.wait(self.poll):
            if os.path.exists(stop):
                self.session.stopping = True
                while self.session.calls_in_flight > 0 and not self._closed.wait(0.02):
                    pass
                write_atomically(self.done, b"", PRIVATE)
                return

    def close(self) -> None:
        """Stop watching."""
        self._closed.set()


def make_shared_dir() -> str:
    """Remove stale folders of dead controllers, then make this controller's folder."""
    clean_stale_dirs()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")


def clean_stale_dirs(
    root: str | None = None, *, now: float | None = None, min_age: float = STALE_AFTER
) -> list[str]:
    """Remove `llm-budget-<pid>-*` folders whose pid is dead and untouched for `min_age` s."""
    from pytest_llm_budget.backends.file import pid_alive

    root = root or tempfile.gettempdir()
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid) or _last_touched(entry.path) > now - min_age:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _last_touched(path: str) -> float:
    """The newest modification time of a folder and the files directly in it."""
    newest = os.stat(path).st_mtime
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return newest


class RecordSpool:
    """A worker's append-only file of finished calls; an observer of its `BudgetSession`."""

    def __init__(
        self, folder: str, worker: str, stats: Callable[[], Iterable[BucketStats]]
    ) -> None:
        self.name = f"records-{worker}-{os.getpid()}.jsonl"
        self.path = os.path.join(folder, self.name)
        self._stats = stats
        self._lock = threading.Lock()
        self._fd = open_file(self.path, os.O_WRONLY | os.O_APPEND)

    def __call__(self, record: CallRecord) -> None:
        """Append one record (and the worker's bucket figures so far) as one line."""
        line = {"record": record.to_json(), "buckets": [asdict(b) for b in self._stats()]}
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd >= 0:
                write_all(self._fd, data)

    def close(self) -> None:
        """Close the file (it stays for the controller)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_spool(path: str) -> tuple[list[CallRecord], list[BucketStats]]:
    """A spool's records and its last bucket figures; a line torn by a crash is skipped."""
    records: list[CallRecord] = []
    buckets: list[BucketStats] = []
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                line = json.loads(raw)
                records.append(CallRecord.from_json(line["record"]))
                buckets = [BucketStats(**b) for b in line["buckets"]]
            except (ValueError, TypeError, KeyError):
                continue
    return records, buckets


@dataclass
class Handover:
    """Controller side: which workers' records arrived, and the spools of those that crashed."""

    folder: str
    taken: set[str] = field(default_factory=set)

    def delivered(self, spool_name: Any) -> bool:
        """A worker handed its records over in `workeroutput`: its spool is not needed. False
        when that spool was merged already (an interrupted run merged every spool)."""
        if not isinstance(spool_name, str):
            return True
        if spool_name in self.taken:
            return False
        self.taken.add(spool_name)
        return True

    def workers(self) -> set[str]:
        """The workers that left a spool (every worker does, at start)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return set()
        return {m["worker"] for m in map(_SPOOL.match, names) if m is not None}

    def stop_workers(self, timeout: float) -> None:
        """Tell the workers to send no new call; wait (at most `timeout` s, or until a second
        Ctrl-C) until each live one says its calls in flight have ended."""
        from pytest_llm_budget.backends.file import pid_alive

        write_atomically(os.path.join(self.folder, STOP_FILE), b"", PRIVATE)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                names = set(os.listdir(self.folder))
                pending = [
                    m for m in map(_SPOOL.match, names)
                    if m is not None and f"stopped-{m['worker']}-{m['pid']}" not in names
                    and pid_alive(int(m["pid"]))
                ]
                if not pending:
                    return
                time.sleep(0.05)
        except KeyboardInterrupt:  # a second Ctrl-C: report what the spools hold now
            return

    def lost(self, worker: str | None = None) -> tuple[list[CallRecord], list[BucketStats]]:
        """Records and figures of spools not handed over (of `worker`'s dead processes, or all)."""
        from pytest_llm_budget.backends.file import pid_alive

        records: list[CallRecord] = []
        buckets: list[BucketStats] = []
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return records, buckets
        for name in names:
            match = _SPOOL.match(name)
            if match is None or name in self.taken:
                continue
            if worker is not None and (
                match["worker"] != worker or pid_alive(int(match["pid"]))
            ):
                continue
            self.taken.add(name)
            more, figures = read_spool(os.path.join(self.folder, name))
            records += more
            buckets += figures
        return records, buckets
