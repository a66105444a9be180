"""The folder an xdist controller shares with its workers: made, cleaned when stale, record spools.

Every worker appends each finished call to its own `records-<worker>-<pid>.jsonl` there, one
line per call written by a single `os.write` on an `O_APPEND` descriptor (so a worker killed with
`kill -9` loses at most the call in flight). A worker that ends normally also hands its records
over in `workeroutput`; the controller reads the spool of any worker that did not (it crashed),
so every finished call reaches the summary and reports exactly once.

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
from typing import Any

from pytest_llm_budget.atomic import open_file, write_all
from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.records import CallRecord

__all__ = [
    "PREFIX",
    "STALE_AFTER",
    "Handover",
    "RecordSpool",
    "clean_stale_dirs",
    "make_shared_dir",
    "read_spool",
]

PREFIX = "llm-budget-"
#: Seconds a dead controller's folder must have been left untouched before it is removed.
STALE_AFTER = 600.0
_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[A-Za-z0-9_]+$")
_SPOOL = re.compile(r"^records-(?P<worker>[A-Za-z0-9_]+)-(?P<pid>\d+)\.jsonl$")


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

    def delivered(self, spool_name: Any) -> None:
        """A worker handed its records over in `workeroutput`: its spool is not needed."""
        if isinstance(spool_name, str):
            self.taken.add(spool_name)

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
