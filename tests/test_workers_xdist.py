"""One budget for xdist workers and for separate pytest runs: real pytest-xdist, real emulator.

40 calls whose charge is 4x the emulator's budget per window must complete with zero 429s, and
the controller's single `LLM budget` summary must count every worker's calls.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, redis_server  # noqa: F401 - fixture

from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec

WINDOW = 2.0
TPM = 3000  # per WINDOW; each call charges ~300 (input + max_tokens 290): 40 calls = 4x
INNER = """
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_call(i, openai_client, llm_usage):
    openai_client.chat.completions.create(
        model="gpt-5", max_tokens=290,
        messages=[{{"role": "user", "content": "question number %d" % i}}],
    )
    assert llm_usage.calls == 1
"""


@pytest.fixture
def strict_emulator() -> Iterator[Emulator]:
    config = EmulatorConfig(window=WINDOW, openai=LimitSpec(tpm=TPM, rpm=None))
    with Emulator(config) as emu:
        yield emu


def budget_args(backend: str) -> list[str]:
    return [
        # Estimates equal the emulator's charges exactly, so headroom is the only slack for a
        # request that reaches the server later than the limiter's 0.1 s margin (seen on an
        # overloaded 2-core machine): 5% keeps one ~300-token call of it per window.
        f"--llm-tpm={TPM}", f"--llm-window={WINDOW}", "--llm-headroom=0.05",
        f"--llm-backend={backend}", "-p", "no:cacheprovider", "-q",
    ]


def env_for(emu: Emulator) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OPENAI_BASE_URL=emu.openai_base_url, OPENAI_API_KEY="sk-test")
    return env


def summary_totals(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("totals: calls:"))
    calls = int(re.search(r"calls: (\d+)", line).group(1))  # type: ignore[union-attr]
    rate_limits = int(re.search(r"429s: (\d+)", line).group(1))  # type: ignore[union-attr]
    return {"calls": calls, "429s": rate_limits}


def assert_no_window_went_over(emu: Emulator, admitted: int) -> None:
    stats = emu.stats()
    bucket = stats["buckets"]["openai:gpt-5"]
    assert bucket["admitted"] == admitted, stats
    assert sum(bucket["rejected"].values()) == 0, stats
    assert bucket["max_window_tokens"] <= TPM, stats


@pytest.mark.parametrize("backend", ["auto", "redis"])
def test_four_workers_share_one_budget(
    pytester: pytest.Pytester,
    strict_emulator: Emulator,
    backend: str,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    pytester.makepyfile(test_calls=INNER.format(n=40))
    spec = redis_server.url if backend == "redis" else "auto"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "4", *budget_args(spec)],
        cwd=pytester.path, env=env_for(strict_emulator), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("LLM budget ===") == 1  # printed once, by the controller
    assert summary_totals(result.stdout) == {"calls": 40, "429s": 0}
    assert_no_window_went_over(strict_emulator, admitted=40)


def run_two_at_once(
    pytester: pytest.Pytester, emu: Emulator, backend: str
) -> list[subprocess.CompletedProcess[str]]:
    """Two separate pytest processes (two 'machines') spending from one backend."""
    procs = []
    for name in ("a", "b"):
        folder = pytester.mkdir(name)
        (folder / "test_calls.py").write_text(INNER.format(n=20))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-n", "2", *budget_args(backend)],
            cwd=folder, env=env_for(emu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


def test_two_pytest_runs_share_one_redis(
    pytester: pytest.Pytester,
    strict_emulator: Emulator,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    results = run_two_at_once(pytester, strict_emulator, redis_server.url)
    for result in results:
        assert result.returncode == 0, result.stdout
        assert summary_totals(result.stdout) == {"calls": 20, "429s": 0}
    assert_no_window_went_over(strict_emulator, admitted=40)


def test_two_pytest_runs_share_one_file(
    pytester: pytest.Pytester, strict_emulator: Emulator, tmp_path: Path
) -> None:
    results = run_two_at_once(pytester, strict_emulator, f"file:{tmp_path / 'budget.json'}")
    for result in results:
        assert result.returncode == 0, result.stdout
        assert summary_totals(result.stdout) == {"calls": 20, "429s": 0}
    assert_no_window_went_over(strict_emulator, admitted=40)


def test_unreachable_redis_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--llm-backend=redis://:hunter2@127.0.0.1:1/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "--llm-backend" in err and "127.0.0.1:1" in err
    assert "hunter2" not in err + result.stdout.str()
