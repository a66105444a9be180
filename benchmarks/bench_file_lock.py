"""The file backend's lock under contention: admit+settle pair latency against processes.

N processes (1, 4, 16) each run `--ops` admit+settle pairs back to back on one file bucket
(`bench_backends.py`'s worker), the window short enough to hold about 100 charges, as a 30k TPM
key at ~300 tokens a call would. Each configuration runs `--runs` times; the table shows the
medians of p50, p99, the worst process's p50, the total pairs per second and the charges the
window held (pairs/s x window).

    python benchmarks/bench_file_lock.py                    # 1,4,16 processes, 3 runs each
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import run


def main(argv: list[str] | None = None) -> int:
    """Parse options, run each process count `--runs` times, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,4,16", help="comma list of process counts")
    parser.add_argument("--ops", type=int, default=300, help="admit+settle pairs per process")
    parser.add_argument("--window", type=float, default=0.1, help="window seconds (~100 held)")
    parser.add_argument("--runs", type=int, default=3, help="runs per process count (medians)")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"
          f", {args.ops} pairs per process, medians of {args.runs} runs")
    header = (f"{'procs':>5} {'p50 ms':>8} {'p99 ms':>8} {'worst-proc p50':>15} "
              f"{'pairs/s':>8} {'held~':>6}")
    print(header)
    print("-" * len(header))
    for procs in [int(p) for p in args.procs.split(",")]:
        results = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                spec = f"file:{os.path.join(folder, 'state.json')}"
                results.append(run(spec, procs, args.ops, args.window))
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"{procs:>5} {med['p50']:>8.2f} {med['p99']:>8.2f} {med['worst_proc_p50']:>15.2f} "
              f"{med['ops_s']:>8.0f} {med['ops_s'] * args.window:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
