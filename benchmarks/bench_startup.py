"""What the plugin adds to pytest start-up: a 50-test non-LLM suite with and without it.

Run: python benchmarks/bench_startup.py [--runs 15]
Target: under 30 ms added (median of whole-process runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORT = "import pytest; import pytest_llm_budget.plugin"


def suite(folder: Path) -> None:
    """Write 50 trivial tests."""
    body = "\n".join(f"def test_{i}():\n    assert {i} + 1 > {i}\n" for i in range(50))
    (folder / "test_plain.py").write_text(body)
    (folder / "pytest.ini").write_text("[pytest]\n")


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--all-plugins", action="store_true",
        help="load every installed plugin (default: only this one, so others' noise is out)",
    )
    args = parser.parse_args()
    env = dict(os.environ)
    # Users' Pythons cache bytecode; without it every run recompiles every module and the
    # figure measures the compiler, not the plugin.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if args.all_plugins:
        plugin, no_plugin = [*base], [*base, "-p", "no:llm_budget"]
    else:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        plugin, no_plugin = [*base, "-p", "pytest_llm_budget.plugin"], base
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        suite(folder)
        with_plugin, without = [], []
        timed(plugin, folder, env)  # warm the file cache
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            with_plugin.append(timed(plugin, folder, env))
            without.append(timed(no_plugin, folder, env))
        w, wo = statistics.median(with_plugin), statistics.median(without)
        print(f"pytest, 50 tests, median of {args.runs}: with plugin {w * 1e3:.0f} ms, "
              f"without {wo * 1e3:.0f} ms, added {(w - wo) * 1e3:.1f} ms ({w / wo:.3f}x)")
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", IMPORT],
            capture_output=True, text=True, check=True, env=env,
        ).stderr.splitlines()
        own = [line for line in out if "pytest_llm_budget" in line]
        cumulative = max(int(line.split("|")[1]) for line in own)
        print(f"python -X importtime: pytest_llm_budget.plugin adds {cumulative / 1e3:.1f} ms "
              "on top of pytest")


if __name__ == "__main__":
    main()
