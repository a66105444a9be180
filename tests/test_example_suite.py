"""`pytest example_suite` from the repo root replays its 36 cassettes offline, with no key set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_example_suite_replays_36_cases_offline() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLM_BUDGET_", "OPENAI_", "GEMINI_", "GOOGLE_", "ANTHROPIC_"))
    }
    # No key and no base URL (issue 10, defect 9): the SDKs aim at the providers' own hosts,
    # and the cassettes, recorded against the emulator on 127.0.0.1, answer every request.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "example_suite", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"rootdir: {ROOT / 'example_suite'}" in out
    assert "configfile: pytest.ini" in out
    assert "collected 36 items" in out
    assert "LLM budget preflight: 36 LLM tests, ~0 tokens" in out
    assert "test_answers.py::test_answer_shape[openai:gpt-5-ALS_ONLY-grounded_auto]" in (
        subprocess.run(
            [sys.executable, "-m", "pytest", "example_suite", "--collect-only", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    assert re.search(r"^=+ LLM budget =+$", out, re.MULTILINE)
    assert "totals: calls: 36 (replayed: 36)" in out
    assert "waited: 0.0s" in out
    assert "36 passed" in out
    cassettes = list((ROOT / "example_suite" / "cassettes" / "test_answers").glob("*.yaml"))
    assert len(cassettes) == 36
