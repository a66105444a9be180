"""The file backend's lock under contention: admit+settle pair latency against processes.

N processes (1, 4, 16) each run `--ops` admit+settle pairs back to back on one file bucket
(`bench_backends.py`'s worker), the window short enough to hold about 100 charges, as a 30k TPM
key at ~300 tokens a call would. Each configuration runs `--runs` times; the table shows the
medians of p50, p99, the worst process's p50, the total pairs per second and the charges the
window held (pairs/s x window).

    python benchmarks/bench_file_lock.py                    # 1,4,16 processes, 3 runs each

Then an open-loop row (`--paced 16x25`: 16 processes each offering 25 pairs a second, evenly):
the time from when each pair was due to when it was done, as a suite's calls see it.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import pct, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def paced_worker(
    spec: str, rate: float, seconds: float, window: float, seed: int, out: Any
) -> None:
    """Offer admit+settle pairs at `rate` a second (evenly, offset by `seed`) for `seconds`;
    report each pair's time from when it was due to when it was done."""
    from pytest_llm_budget.backends import open_backend
    from pytest_llm_budget.limiting.admission import Admitted, Limits

    backend = open_backend(spec)
    limits = Limits(tokens=10**12, window=window)
    owner = f"{os.getpid()}:bench"
    start = time.time() + 1.0 + (seed % 97) / 97 / rate
    times = []
    for i in range(int(rate * seconds)):
        due = start + i / rate
        if due > time.time():
            time.sleep(due - time.time())
        d = backend.admit("paced", limits, f"{owner}:{i}", 300, time.time(), owner)
        assert isinstance(d, Admitted), d
        backend.settle("paced", limits, f"{owner}:{i}", 300, 280, time.time())
        times.append(time.time() - max(due, start))
    out.put(times)
    backend.close()


def paced(spec: str, procs: int, rate: float, seconds: float, window: float) -> dict[str, float]:
    """`procs` processes offering `rate` pairs/s each: p50 and p99 of due-to-done, in ms."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    children = [ctx.Process(target=paced_worker, args=(spec, rate, seconds, window, n, out))
                for n in range(procs)]  # fmt: skip
    for child in children:
        child.start()
    everything = [t for _ in children for t in out.get(timeout=300)]
    for child in children:
        child.join(timeout=60)
    return {"p50": pct(everything, 0.5) * 1e3, "p99": pct(everything, 0.99) * 1e3,
            "ops_s": procs * rate}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse options, run each process count `--runs` times, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,4,16", help="comma list of process counts")
    parser.add_argument("--ops", type=int, default=300, help="admit+settle pairs per process")
    parser.add_argument("--window", type=float, default=0.1, help="window seconds (~100 held)")
    parser.add_argument("--runs", type=int, default=3, help="runs per process count (medians)")
    parser.add_argument("--paced", default="16x25", help="PROCSxRATE open-loop row ('' none)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the paced run")
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
    if args.paced:
        procs, rate = (float(v) for v in args.paced.split("x"))
        results = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                spec = f"file:{os.path.join(folder, 'state.json')}"
                results.append(paced(spec, int(procs), rate, args.seconds, args.window))
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"paced: {int(procs)} processes x {rate:g} pairs/s ({med['ops_s']:.0f}/s offered, "
              f"{args.seconds:g}s): due-to-done p50 {med['p50']:.2f} ms, p99 {med['p99']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
