"""Files the plugin writes: never through a planted symlink, fixed modes whatever the umask."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llm_budget import BudgetSession, Settings
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.errors import BackendUnavailable
from pytest_llm_budget.limiting.admission import Limits
from pytest_llm_budget.reporting.notices import NoticeRelay
from pytest_llm_budget.reporting.report import write_report
from pytest_llm_budget.shared_dir import RecordSpool

LIMITS = Limits(tokens=1000, window=60.0)
SECRET = b"victim: a file the plugin must never touch\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _use(backend: FileBackend) -> None:
    """One admit (state written) and one cost hold (ledger written)."""
    now = time.time()
    backend.admit("openai:*", LIMITS, "t1", 10, now, f"{os.getpid()}:main")
    backend.cost_hold("run:default", "h1", 100, None, now)


@pytest.mark.parametrize("suffix", [".cost.json", ".lock"])
def test_a_symlinked_ledger_or_lock_is_refused_at_start(
    tmp_path: Path, victim: Path, suffix: str
) -> None:
    state = tmp_path / "state.json"
    Path(f"{state}{suffix}").symlink_to(victim)
    with pytest.raises(ValueError, match="is a symlink"):
        _use(FileBackend(state))
    assert victim.read_bytes() == SECRET


def test_a_symlink_planted_mid_run_is_never_written_through(
    tmp_path: Path, victim: Path
) -> None:
    state = tmp_path / "state.json"
    backend = FileBackend(state)
    _use(backend)
    ledger = Path(f"{state}.cost.json")
    ledger.unlink()
    ledger.symlink_to(victim)
    with pytest.raises(BackendUnavailable, match="symlink"):
        backend.cost_hold("run:default", "h2", 100, None, time.time())
    state.unlink()
    state.symlink_to(victim)  # main's in-place write follows it
    with pytest.raises(BackendUnavailable, match="symlink"):
        backend.admit("openai:*", LIMITS, "t2", 10, time.time(), f"{os.getpid()}:main")
    assert victim.read_bytes() == SECRET
    backend.close()


def test_the_state_temp_file_has_no_fixed_name_to_plant_a_link_at(
    tmp_path: Path, victim: Path
) -> None:
    state = tmp_path / "state.json"
    Path(f"{state}.tmp").symlink_to(victim)  # main's fixed temp name
    backend = FileBackend(state, atomic_rename=True)
    _use(backend)
    _use(backend)
    assert victim.read_bytes() == SECRET
    assert state.exists() and not state.is_symlink()
    backend.close()


def test_report_and_metrics_temp_files_are_unique(tmp_path: Path, victim: Path) -> None:
    from pytest_llm_budget.reporting.metrics import BudgetMetrics

    report = tmp_path / "report.json"
    prom = tmp_path / "llm.prom"
    ident = threading.get_ident()
    # the temp names main used: report.json.PID.TID.tmp (atomic.py), llm.prom.PID.TID (prometheus)
    Path(f"{report}.{os.getpid()}.{ident}.tmp").symlink_to(victim)
    Path(f"{prom}.{os.getpid()}.{ident}").symlink_to(victim)
    write_report(str(report), {"calls": []})
    session = BudgetSession(Settings(metrics_textfile=str(prom)))
    try:
        BudgetMetrics(session).write_textfile(str(prom))
    finally:
        session.close()
    assert victim.read_bytes() == SECRET
    assert report.read_text().startswith("{") and "llm_budget_" in prom.read_text()


def test_a_report_path_that_is_a_symlink_is_replaced_not_followed(
    tmp_path: Path, victim: Path
) -> None:
    report = tmp_path / "report.json"
    report.symlink_to(victim)
    write_report(str(report), {"calls": []})
    assert victim.read_bytes() == SECRET
    assert not report.is_symlink() and report.read_text().startswith("{")


def test_spools_and_notice_files_refuse_a_planted_symlink(tmp_path: Path, victim: Path) -> None:
    spool_path = tmp_path / f"records-gw0-{os.getpid()}.jsonl"
    spool_path.symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        RecordSpool(str(tmp_path), "gw0", list)
    notices = tmp_path / "notices.jsonl"
    notices.symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        NoticeRelay(str(tmp_path))("a wait notice")
    assert victim.read_bytes() == SECRET


def test_files_have_fixed_modes_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    from pytest_llm_budget.reporting.metrics import BudgetMetrics

    state = tmp_path / "state.json"
    backend = FileBackend(state)
    _use(backend)
    _use(backend)  # the in-place path too
    backend.close()
    spool = RecordSpool(str(tmp_path), "gw0", list)
    spool.close()
    NoticeRelay(str(tmp_path))("a wait notice")
    write_report(str(tmp_path / "r.json"), {"calls": []})
    write_report(str(tmp_path / "r.html"), {"calls": [], "totals": {}, "buckets": []})
    session = BudgetSession(Settings())
    try:
        BudgetMetrics(session).write_textfile(str(tmp_path / "llm.prom"))
    finally:
        session.close()
    private = [state, Path(f"{state}.lock"), Path(f"{state}.cost.json"), Path(spool.path),
               tmp_path / "notices.jsonl"]
    assert {p.name: _mode(p) for p in private} == {p.name: 0o600 for p in private}
    public = [tmp_path / "r.json", tmp_path / "r.html", tmp_path / "llm.prom"]
    assert {p.name: _mode(p) for p in public} == {p.name: 0o644 for p in public}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_existing_file_keeps_its_mode_and_a_fifo_is_refused(tmp_path: Path) -> None:
    from pytest_llm_budget.atomic import UnsafeFileError, open_file, write_atomically

    shared = tmp_path / "shared.json"
    shared.write_text("{}")
    shared.chmod(0o660)  # a group share set up by hand
    os.close(open_file(shared, os.O_RDWR))
    assert _mode(shared) == 0o660
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        os.close(open_file(fifo, os.O_RDWR))
    with pytest.raises(IsADirectoryError):
        write_atomically(tmp_path, b"x")
