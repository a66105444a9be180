"""Cost of one reservation (admit + settle) on the file and Redis backends, under contention.

Each of N processes runs `--ops` admit+settle pairs back to back on one shared bucket whose
budget never makes anyone wait, and times each pair. The window is short (`--window`) so that
it holds about as many entries as a real suite's minute would (a 30k TPM key at ~300 tokens a
call holds at most ~100); the table shows how many it held at the end.

    python benchmarks/bench_backends.py                     # file + a throwaway redis-server
    python benchmarks/bench_backends.py --redis-url redis://host:6379/0 --procs 1,4,8,16
    python benchmarks/bench_backends.py --backends redis,redis-cluster   # + 3 local cluster nodes
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pytest_llm_budget.backends import open_backend  # noqa: E402
from pytest_llm_budget.limiting.admission import Admitted, Limits  # noqa: E402


def worker(spec: str, bucket: str, ops: int, window: float, barrier: Barrier, out: Any) -> None:
    """Time `ops` admit+settle pairs after a warm-up, then report the durations (seconds)."""
    backend = open_backend(spec)
    limits = Limits(tokens=10**12, window=window)
    owner = f"{os.getpid()}:bench"

    def one(ticket: str) -> None:
        d = backend.admit(bucket, limits, ticket, 300, time.time(), owner)
        assert isinstance(d, Admitted), d
        backend.settle(bucket, limits, ticket, 300, 280, time.time())

    for i in range(20):
        one(f"{owner}:warm{i}")
    barrier.wait()
    times = []
    for i in range(ops):
        start = time.perf_counter()
        one(f"{owner}:{i}")
        times.append(time.perf_counter() - start)
    out.put((os.getpid(), times))
    backend.close()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest-rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(spec: str, procs: int, ops: int, window: float) -> dict[str, float]:
    """One configuration: `procs` processes on one bucket; figures in milliseconds."""
    ctx = mp.get_context("spawn")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    children = [
        ctx.Process(target=worker, args=(spec, bucket, ops, window, barrier, out))
        for _ in range(procs)
    ]
    wall = time.perf_counter()
    for child in children:
        child.start()
    results = [out.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=60)
        if child.exitcode != 0:
            raise SystemExit(f"a benchmark process failed (exit {child.exitcode})")
    wall = time.perf_counter() - wall
    everything = [t for _, times in results for t in times]
    per_proc_p50 = [statistics.median(times) for _, times in results]
    backend = open_backend(spec)
    entries = backend.snapshot(bucket, Limits(tokens=10**12, window=window), time.time()).requests
    backend.close()
    return {
        "p50": pct(everything, 0.5) * 1e3,
        "p90": pct(everything, 0.9) * 1e3,
        "p99": pct(everything, 0.99) * 1e3,
        "worst_proc_p50": max(per_proc_p50) * 1e3,
        "ops_s": len(everything) / max(sum(times) for _, times in results),
        "entries": float(entries),
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every backend x process count, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", default="file,redis", help="comma list: file, redis, redis-cluster"
    )
    parser.add_argument("--procs", default="1,4,8", help="comma list of process counts")
    parser.add_argument("--ops", type=int, default=400, help="admit+settle pairs per process")
    parser.add_argument("--window", type=float, default=0.1, help="window seconds (see above)")
    parser.add_argument("--redis-url", default=None, help="default: start a local redis-server")
    parser.add_argument("--dir", default=None, help="where the file backend's state goes")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        specs: dict[str, str] = {}
        for name in args.backends.split(","):
            if name == "file":
                directory = args.dir or stack.enter_context(tempfile.TemporaryDirectory())
                specs["file"] = f"file:{os.path.join(directory, 'bench-state.json')}"
            elif name == "redis":
                if args.redis_url:
                    specs["redis"] = args.redis_url
                else:
                    from redis_server import running_redis

                    specs["redis"] = stack.enter_context(running_redis()).url
            elif name == "redis-cluster":  # three local nodes, or --redis-url redis+cluster://...
                from redis_server import running_cluster

                specs["cluster"] = stack.enter_context(running_cluster()).url
            else:
                parser.error(f"unknown backend {name!r}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, window {args.window:g}s, "
              f"{args.ops} timed admit+settle pairs per process")
        header = (f"{'backend':<8} {'procs':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                  f"{'worst-proc p50':>15} {'total ops/s':>12} {'entries':>8}")
        print(header)
        print("-" * len(header))
        for name, spec in specs.items():
            for procs in [int(p) for p in args.procs.split(",")]:
                r = run(spec, procs, args.ops, args.window)
                print(f"{name:<8} {procs:>5} {r['p50']:>8.3f} {r['p90']:>8.3f} {r['p99']:>8.3f} "
                      f"{r['worst_proc_p50']:>15.3f} {r['ops_s']:>12.0f} {r['entries']:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
