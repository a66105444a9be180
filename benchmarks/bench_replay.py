"""Offline replay of the 36-case example suite: pytest-llm-budget vs plain vcrpy (pytest-recording).

Both runs replay the same committed cassettes in a fresh pytest process. The baseline copies the
suite to a temp dir with a conftest that disables this plugin's cassettes (record mode off) and
lets pytest-recording's `vcr` marker replay each test's cassette with the same matching rules.
Prints the median wall time of each (N runs) and their ratio (target <= 1.2).

    python benchmarks/bench_replay.py [runs]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "example_suite"

BASELINE_CONFTEST = """
import os, sys
from pathlib import Path
import pytest
from pytest_llm_budget.replay.cassettes import cassette_name, _body_matcher

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OPENAI_BASE_URL", "http://127.0.0.1:8787/v1")
os.environ.setdefault("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:8787/")
os.environ.setdefault("ANTHROPIC_BASE_URL", "http://127.0.0.1:8787")
os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-baseline")
os.environ.setdefault("OPENAI_API_KEY", "sk-baseline")
os.environ.setdefault("GEMINI_API_KEY", "baseline")

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.vcr)

@pytest.fixture(scope="module")
def vcr_config():
    return {"match_on": ("method", "host", "path", "query", "llm_body"),
            "decode_compressed_response": True}

def pytest_recording_configure(config, vcr):
    vcr.register_matcher("llm_body", _body_matcher)

@pytest.fixture
def default_cassette_name(request):
    return cassette_name(request.node.nodeid.split("::", 1)[1])
"""


def _run(cwd: Path, args: list[str]) -> float:
    """Wall seconds of one pytest process; raises when it does not pass 36 tests."""
    keys = ("OPENAI_", "GOOGLE_", "GEMINI_", "ANTHROPIC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(keys)}
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or "36 passed" not in done.stdout:
        raise SystemExit(f"run failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main(runs: int) -> None:
    """Alternate the two runs `runs` times; print medians and the ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "suite"
        shutil.copytree(SUITE, base)
        (base / "conftest.py").write_text(BASELINE_CONFTEST)
        models = "".join(f"\n    {m}" for m in ("openai:gpt-5", "gemini:gemini-2.5-pro",
                                                  "anthropic:claude-sonnet-4-5"))
        (base / "pytest.ini").write_text(f"[pytest]\nllm_record_mode = off\nllm_models ={models}\n")
        ours, plain = [], []
        for _ in range(runs):
            ours.append(_run(SUITE, []))
            plain.append(_run(base, ["--record-mode", "none"]))
    mo, mp = statistics.median(ours), statistics.median(plain)
    print(f"runs: {runs} each (fresh pytest process per run, 36 replayed cases)")
    print(f"pytest-llm-budget replay : median {mo:.3f}s  (min {min(ours):.3f}s)")
    print(f"plain vcrpy (pytest-recording): median {mp:.3f}s  (min {min(plain):.3f}s)")
    print(f"ratio: {mo / mp:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
