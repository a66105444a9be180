"""Live notices under xdist: how late the controller prints a worker's wait notice.

A paced suite (10 calls of ~1000 tokens against 2550 tokens per 2 s window) runs under `-n 2`
against the bundled emulator. A conftest's `pytest_llm_budget_estimate` hook stamps when each
call asks for budget (the notice follows within the same admission attempt); this script stamps
when each notice line reaches the controller's stdout. Target: no notice later than 0.5 s.

Run: python benchmarks/bench_notices.py [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = '''
import pytest

@pytest.mark.llm_budget(tokens=1000)
@pytest.mark.parametrize("n", range(10))
def test_call(openai_client, llm_emulator, n):
    openai_client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=1000, messages=[{"role": "user", "content": f"hi {n}"}]
    )
'''
CONFTEST = '''
import json, os, time

def pytest_llm_budget_estimate(request, vendor, model, estimate):
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    with open(os.environ["ASKED_LOG"], "a") as handle:
        handle.write(json.dumps({"test": test, "t": time.time()}) + "\\n")
'''
NOTICE = re.compile(r"llm-budget: waiting .* - (\S+) \[gw\d+\]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "test_paced.py").write_text(SUITE)
        (root / "conftest.py").write_text(CONFTEST)
        (root / "pytest.ini").write_text("[pytest]\nllm_tpm = 3000\nllm_window = 2\n")
        asked_log = root / "asked.jsonl"
        env = {**os.environ, "ASKED_LOG": str(asked_log)}
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n",
                   str(args.workers), "--llm-notice-after", "0.5"]
        arrivals: list[tuple[str, float]] = []
        with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                match = NOTICE.match(line.strip())
                if match:
                    arrivals.append((match[1], time.time()))
        if proc.returncode != 0 or not arrivals:
            raise SystemExit(f"the run failed or printed no notice (exit {proc.returncode})")
        asked: dict[str, float] = {}
        for raw in asked_log.read_text().splitlines():
            entry = json.loads(raw)
            asked.setdefault(entry["test"], entry["t"])
        lags = [t - asked[test] for test, t in arrivals]
    print(f"{len(lags)} notices under -n {args.workers}: from the call asking to the "
          f"controller's line max {max(lags) * 1000:.0f} ms, mean "
          f"{sum(lags) / len(lags) * 1000:.0f} ms (target < 500 ms)")


if __name__ == "__main__":
    main()
