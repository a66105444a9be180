"""Uncontended reserve + settle cost of the in-process limiter, with 1 and 8 threads.

Run: python benchmarks/bench_limiter.py [--ops 20000]
Target: under 20 us per reserve+settle uncontended.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.limiting.buckets import LimitRule
from pytest_llm_budget.limiting.limiter import Limiter


def run(threads: int, ops: int, window: float) -> list[float]:
    """Per-op seconds (reserve + settle) measured in each of `threads` threads."""
    # A budget large enough never to wait; a short window keeps the state small, as in a
    # real run where old charges leave the window.
    limiter = Limiter(MemoryBackend(), [LimitRule(tpm=10**12)], window=window, headroom=0.0)
    per_thread = ops // threads
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker() -> None:
        samples = []
        barrier.wait()
        for _ in range(per_thread):
            t0 = time.perf_counter()
            limiter.reserve(100, vendor="openai", model="gpt-5").settle(90)
            samples.append(time.perf_counter() - t0)
        with lock:
            results.extend(samples)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{'threads':>7} {'p50 us':>8} {'p90 us':>8} {'mean us':>8}")
    for threads in (1, 8):
        samples = sorted(run(threads, args.ops, args.window))
        p50 = statistics.median(samples) * 1e6
        p90 = samples[int(len(samples) * 0.9)] * 1e6
        print(f"{threads:>7} {p50:>8.1f} {p90:>8.1f} {statistics.fmean(samples) * 1e6:>8.1f}")


if __name__ == "__main__":
    main()
