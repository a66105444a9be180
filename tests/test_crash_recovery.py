"""Nothing lost when a process dies: a kill -9 worker's calls, a dead controller's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llm_budget.emulator import Emulator
from pytest_llm_budget.limiting.buckets import BucketStats
from pytest_llm_budget.records import CallRecord
from pytest_llm_budget.shared_dir import (
    STALE_AFTER,
    Handover,
    RecordSpool,
    clean_stale_dirs,
    read_spool,
)

CRASH_SUITE = """
import os
import pytest

def ask(client, text):
    client.chat.completions.create(
        model="gpt-5", max_tokens=20, messages=[{"role": "user", "content": text}])

@pytest.mark.parametrize("i", range(16))
def test_two_calls(i, openai_client):
    ask(openai_client, f"first {i}")
    ask(openai_client, f"second {i}")

def test_killed_after_three_calls_and_mid_stream(openai_client):
    for n in range(3):
        ask(openai_client, f"before the crash {n}")
    stream = openai_client.chat.completions.create(
        model="gpt-5", max_tokens=20, stream=True,
        messages=[{"role": "user", "content": "in flight when the worker dies"}])
    next(iter(stream))  # admitted and answering: the call in flight
    os.kill(os.getpid(), 9)
"""


def _record(n: int) -> CallRecord:
    return CallRecord(
        t=float(n), test=f"t{n}", vendor="openai", model="gpt-5", estimated=10,
        prompt_tokens=3, completion_tokens=4, status="ok", attempts=1, waited_s=0.0,
    )


def test_kill_9_of_a_worker_loses_no_finished_call(pytester: pytest.Pytester) -> None:
    """Defect 4: a killed worker's finished calls vanished from the summary and the report."""
    pytester.makepyfile(test_crash=CRASH_SUITE)
    with Emulator() as emulator:
        env = pytester._monkeypatch
        env.setenv("OPENAI_BASE_URL", emulator.openai_base_url)
        env.setenv("OPENAI_API_KEY", "sk-test")
        result = pytester.runpytest_subprocess(
            "-n", "4", "-p", "no:cacheprovider", "-p", "no:randomly", "--llm-report", "r.json"
        )
        admitted = emulator.stats()["totals"]["admitted"]
    out = result.stdout.str()
    assert "replacing crashed worker" in out, out
    result.assert_outcomes(passed=16, failed=1)
    assert admitted == 16 * 2 + 3 + 1
    finished = admitted - 1  # all but the stream in flight when the worker died
    assert f"totals: calls: {finished} (replayed: 0)" in out, out
    report = json.loads((pytester.path / "r.json").read_text())
    assert report["totals"]["calls"] == len(report["calls"]) == finished
    crashed = [c for c in report["calls"] if "test_killed_after" in c["test"]]
    assert len(crashed) == 3
    assert sum(b["calls"] for b in report["buckets"]) == finished


def test_spool_round_trip_skips_a_line_torn_by_a_crash(tmp_path: Path) -> None:
    stats = [BucketStats(name="openai:*", rule="*:*", budget=100, calls=2)]
    spool = RecordSpool(str(tmp_path), "gw3", lambda: stats)
    spool(_record(1))
    spool(_record(2))
    spool.close()
    with open(spool.path, "ab") as handle:
        handle.write(b'{"record": {"t": 3.0, "te')  # killed mid-write
    records, buckets = read_spool(spool.path)
    assert records == [_record(1), _record(2)]
    assert buckets == stats


def test_handover_reads_only_spools_not_delivered(tmp_path: Path) -> None:
    done = RecordSpool(str(tmp_path), "gw0", list)
    done(_record(1))
    done.close()
    dead_pid = _dead_pid()
    (tmp_path / f"records-gw1-{dead_pid}.jsonl").write_text(
        json.dumps({"record": _record(2).to_json(), "buckets": []}) + "\n"
    )
    handover = Handover(str(tmp_path))
    handover.delivered(done.name)
    assert handover.lost("gw1") == ([_record(2)], [])
    assert handover.lost() == ([], [])  # each spool is read once


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_folders_of_dead_controllers_are_removed_at_start(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Defect 8: a killed controller's `llm-budget-*` temp folder stayed behind for ever."""
    root = tmp_path / "tmp"
    root.mkdir()
    old = time.time() - STALE_AFTER - 60
    dead = _dead_pid()
    folders = {
        "dead_old": root / f"llm-budget-{dead}-abc12345",
        "dead_recent": root / f"llm-budget-{dead}-def67890",
        "live_old": root / f"llm-budget-{os.getpid()}-ghi13579",
        "not_ours": root / "llm-budget-redis-jkl24680",
    }
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "llm-budget-state.json").write_text("{}")
        if name != "dead_recent":
            for path in (folder / "llm-budget-state.json", folder):
                os.utime(path, (old, old))
    pytester.makepyfile("def test_x():\n    pass\n")
    pytester._monkeypatch.setenv("TMPDIR", str(root))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    left = {p.name for p in root.iterdir()}
    assert folders["dead_old"].name not in left
    assert {folders[k].name for k in ("dead_recent", "live_old", "not_ours")} <= left
    assert not [n for n in left if n.startswith(f"llm-budget-{dead}-abc")]
    # the run's own folder is gone too, and nothing else of the run's stayed behind
    assert left == {folders[k].name for k in ("dead_recent", "live_old", "not_ours")}


def test_clean_stale_dirs_never_touches_a_live_owner(tmp_path: Path) -> None:
    mine = tmp_path / f"llm-budget-{os.getppid()}-aaaa1111"
    mine.mkdir()
    assert clean_stale_dirs(str(tmp_path), now=time.time() + 10 * STALE_AFTER) == []
    assert mine.exists()
