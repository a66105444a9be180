"""Storage failures: a full disk keeps the old state; a read-only, odd or full store is one line."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from pytest_llm_budget import BudgetSession, Settings, summary_text
from pytest_llm_budget.backends.file import FileBackend
from pytest_llm_budget.errors import BackendUnavailable
from pytest_llm_budget.limiting.admission import Limits
from pytest_llm_budget.routing import clients

LIMITS = Limits(tokens=10**6, window=60.0)
MSG = [{"role": "user", "content": "hi"}]
OWNER = f"{os.getpid()}:main"


def _admit(backend: FileBackend, ticket: str) -> None:
    backend.admit("openai:*", LIMITS, ticket, 10, time.time(), OWNER)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """`fill()`: from then on, files under tmp_path cannot grow (os.pwrite/os.write short)."""
    real_pwrite, real_write = os.pwrite, os.write

    def ours(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))
        except OSError:
            return False

    def pwrite(fd: int, data: Any, offset: int) -> int:
        room = os.fstat(fd).st_size - offset
        if not ours(fd) or len(data) <= room:
            return real_pwrite(fd, data, offset)
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, bytes(data[:room]), offset)  # what fits in blocks it has

    def write(fd: int, data: Any) -> int:
        if ours(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    class Disk:
        def fill(self) -> None:
            monkeypatch.setattr(os, "pwrite", pwrite)
            monkeypatch.setattr(os, "write", write)

        def free(self) -> None:
            monkeypatch.undo()

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd (Linux) to tell the state's files apart")
    return Disk()


def test_a_full_disk_fails_the_call_and_leaves_the_old_state(
    tmp_path: Path, full_disk: Any
) -> None:
    state = tmp_path / "state.json"
    backend = FileBackend(state)
    for i in range(5):
        _admit(backend, f"t{i}")
    before = state.read_bytes()
    full_disk.fill()
    with pytest.raises(BackendUnavailable, match="No space left on device") as err:
        _admit(backend, "t5")
    full_disk.free()
    assert "\n" not in str(err.value)
    assert state.read_bytes() == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "state file is unreadable" rebuild
        _admit(backend, "t6")
    assert backend.snapshot("openai:*", LIMITS, time.time()).used_tokens == 60
    backend.close()


def test_a_full_disk_mid_run_is_counted_in_the_summary(
    emu: Any, tmp_path: Path, full_disk: Any
) -> None:
    budget = BudgetSession(Settings(tpm=10**6, window=1.0, backend=f"file:{tmp_path}/state"))
    client = clients.fixture_client("openai_client", budget)
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    full_disk.fill()
    try:
        with pytest.raises(BackendUnavailable, match=r"state file .*No space left"):
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    finally:
        full_disk.free()
        budget.close()
    assert [r.status for r in budget.calls.records()] == ["ok", "backend_error"]
    assert "errors: 1" in summary_text(budget)
    assert emu.stats()["totals"]["admitted"] == 1  # nothing was sent unpaced


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """`mount(options)`: a tiny tmpfs under tmp_path (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the simulated full-disk tests run anyway)")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)],
                              capture_output=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_tmpfs_leaves_the_old_state(tmpfs: Any) -> None:
    disk = tmpfs("size=64k")
    state = disk / "state.json"
    backend = FileBackend(state)
    _admit(backend, "t0")
    filler = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(filler, b"x" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(filler)
    admitted = 1
    with pytest.raises(BackendUnavailable, match="No space left on device"):
        for i in range(1, 500):  # until the state needs one more page
            _admit(backend, f"t{i}")
            admitted += 1
    tickets = json.loads(state.read_text())["buckets"]["openai:*"]
    assert len(tickets["entries"]) == admitted
    (disk / "filler").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _admit(backend, "after")
    assert backend.snapshot("openai:*", LIMITS, time.time()).used_tokens == 10 * (admitted + 1)
    backend.close()


def test_a_read_only_state_folder_fails_calls_in_one_line(tmpfs: Any) -> None:
    disk = tmpfs("size=64k")
    backend = FileBackend(disk / "state.json")
    _admit(backend, "t0")
    backend.close()  # its lock file's descriptor, open for writing, would keep the mount busy
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(BackendUnavailable, match="Read-only file system") as err:
        _admit(backend, "t1")
    assert "\n" not in str(err.value)
    backend.close()


RESERVE_TEST = """
def test_reserve(llm_budget):
    with llm_budget.reserve(100):
        pass
"""


def _usage_error(pytester: pytest.Pytester, backend: str) -> str:
    pytester.makepyfile(RESERVE_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llm-backend={backend}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str().strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_state_path_that_is_a_directory_is_a_usage_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    (tmp_path / "state").mkdir()
    assert "is a directory" in _usage_error(pytester, f"file:{tmp_path}/state")


def test_a_read_only_state_folder_is_a_usage_error(
    pytester: pytest.Pytester, tmp_path: Path, tmpfs: Any
) -> None:
    disk = tmpfs("size=64k,ro")
    assert "is not writable" in _usage_error(pytester, f"file:{disk}/state.json")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Any]]:
    import redis as redis_py

    server = RedisServer(tmp_path).start()
    client = redis_py.Redis.from_url(server.url)
    yield server, client
    client.close()
    server.stop()


def _fill(client: Any) -> None:
    """maxmemory below what Redis uses, noeviction: every write is refused with OOM."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")


def test_a_full_redis_at_start_is_a_usage_error(pytester: pytest.Pytester, redis: Any) -> None:
    server, client = redis
    _fill(client)
    err = _usage_error(pytester, server.url)
    assert "cannot write to the llm-budget Redis" in err and "OutOfMemoryError" in err, err


def test_a_redis_full_mid_run_fails_calls_in_one_line_and_counts_them(
    emu: Any, redis: Any
) -> None:
    server, client = redis
    budget = BudgetSession(Settings(tpm=10**6, window=1.0, backend=server.url))
    openai_client = clients.fixture_client("openai_client", budget)
    openai_client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    _fill(client)
    try:
        with pytest.raises(BackendUnavailable, match=r"refused .*OutOfMemoryError") as err:
            openai_client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=5)
    finally:
        client.config_set("maxmemory", "0")
        budget.close()
    assert "\n" not in str(err.value)
    assert [r.status for r in budget.calls.records()] == ["ok", "backend_error"]
    assert "errors: 1" in summary_text(budget)


def _run_with_report(pytester: pytest.Pytester, report: str) -> pytest.RunResult:
    pytester.makepyfile(RESERVE_TEST)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--llm-report={report}")


def _assert_report_failure_is_a_warning(result: pytest.RunResult, report: str) -> None:
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, out
    result.assert_outcomes(passed=1)
    assert "Traceback" not in out and "INTERNALERROR" not in out + result.stderr.str(), out
    assert f"could not write the LLM budget report {report}" in out, out
    result.stdout.fnmatch_lines(["*= LLM budget =*", f"LLM budget report: {report} (not written:*"])


def test_a_report_that_cannot_be_written_warns_and_keeps_the_summary(
    pytester: pytest.Pytester,
) -> None:
    (pytester.path / "out").write_text("a file where the report's folder should be")
    result = _run_with_report(pytester, "out/report.json")
    _assert_report_failure_is_a_warning(result, "out/report.json")


def test_a_report_on_a_full_or_read_only_disk_warns_and_keeps_the_summary(
    pytester: pytest.Pytester, tmpfs: Any
) -> None:
    full = tmpfs("size=4k")
    (full / "filler").write_bytes(b"x" * 4096)
    read_only = tmpfs("size=64k,ro")
    for report in (f"{full}/report.json", f"{read_only}/report.html"):
        _assert_report_failure_is_a_warning(_run_with_report(pytester, report), report)
