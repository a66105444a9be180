"""Cost of a pair (admit + settle) against the charges in one bucket's window, and a paced run.

Grid (closed loop): for each backend, charges in the window and client count, the bucket is
first filled with that many settled charges, then every client (a process) runs pairs back to
back for `--duration` seconds. The clients share a counter that dates pair k at T0 + k ms and
the window is (charges) ms long, so the window holds exactly that many charges throughout
(times are the backend's `now`; latency is measured on the real clock).

Paced (open loop): the real clock, a 60 s window filled with 10,000 charges, and clients
sending `--rate` pairs/s between them (an OpenAI tier-5 key: 10,000 RPM, ~167/s) on a fixed
schedule; latency counts from when a pair was due, so a backlog shows.

    python benchmarks/bench_scale.py                          # grid + paced, file and redis
    python benchmarks/bench_scale.py --charges 100,10000 --clients 1,8 --backends redis
    python benchmarks/bench_scale.py --paced-only --duration 60
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from bench_backends import pct  # noqa: E402

from pytest_llm_budget.backends import open_backend  # noqa: E402
from pytest_llm_budget.limiting.admission import Admitted, Limits  # noqa: E402

STEP = 0.001  # grid: fake seconds between pairs
FILL = """
local n, t0, step = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local e = {}
for i = 1, n do e[i] = {'fill' .. i, t0 + (i - 1) * step, 280, true} end
redis.call('SET', KEYS[1], cmsgpack.pack({e = e, l = {}, w = {}, p = 0, t = t0 + n * step,
  f = 1.0, q = {}, n = 0, g = {}}), 'PX', 3600000)
"""


def fill(spec: str, bucket: str, n: int, t0: float, step: float) -> None:
    """Store `n` settled charges of 280 tokens dated t0, t0 + step, ... straight into the state."""
    backend = open_backend(spec)
    if spec.startswith("file:"):
        entries = [[f"fill{i}", t0 + i * step, 280, True] for i in range(n)]
        state = {
            "entries": entries,
            "leases": {},
            "waiters": {},
            "paused_until": 0.0,
            "clock": t0 + n * step,
        }
        Path(spec[5:]).write_text(json.dumps({"version": 1, "buckets": {bucket: state}}))
    else:
        client = backend.client  # type: ignore[attr-defined]
        client.eval(FILL, 1, backend.key(bucket), n, repr(t0), repr(step))  # type: ignore[attr-defined]
    backend.close()


def state_bytes(spec: str, bucket: str) -> int:
    """How big the bucket's stored state is."""
    if spec.startswith("file:"):
        return Path(spec[5:]).stat().st_size
    backend = open_backend(spec)
    size = int(backend.client.strlen(backend.key(bucket)))  # type: ignore[attr-defined]
    backend.close()
    return size


def closed(
    spec: str,
    bucket: str,
    window: float,
    t0: float,
    counter: Any,
    start: Any,
    duration: float,
    out: Any,
) -> None:
    """Pairs back to back until `duration` is up, dated by the shared counter."""
    backend = open_backend(spec)
    limits = Limits(tokens=10**12, window=window)
    owner = f"{os.getpid()}:bench"
    times: list[float] = []
    start.wait()
    deadline = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < deadline:
        with counter.get_lock():
            counter.value += 1
            k = counter.value
        now = t0 + k * STEP
        ticket = f"{owner}:{i}"
        began = time.perf_counter()
        d = backend.admit(bucket, limits, ticket, 300, now, owner)
        assert isinstance(d, Admitted), d
        backend.settle(bucket, limits, ticket, 300, 280, now)
        times.append(time.perf_counter() - began)
        i += 1
    out.put(times)
    backend.close()


def paced(
    spec: str, bucket: str, rate: float, phase: float, begin: float, duration: float, out: Any
) -> None:
    """Pairs on a fixed schedule (one every 1 / `rate` s from `begin` + `phase`), real clock."""
    backend = open_backend(spec)
    limits = Limits(tokens=10**12, window=60.0)
    owner = f"{os.getpid()}:bench"
    times: list[float] = []
    due = begin + phase
    i = 0
    while due < begin + duration:
        pause = due - time.time()
        if pause > 0:
            time.sleep(pause)
        ticket = f"{owner}:{i}"
        d = backend.admit(bucket, limits, ticket, 300, time.time(), owner)
        assert isinstance(d, Admitted), d
        backend.settle(bucket, limits, ticket, 300, 280, time.time())
        times.append(time.time() - due)
        i += 1
        due += 1.0 / rate
    out.put((times, time.time()))
    backend.close()


def gather(
    ctx: Any, target: Any, args_for: list[tuple[Any, ...]], out: Any
) -> tuple[list[float], float]:
    """Start one process per argument tuple; their latencies, and when the last one finished."""
    children = [ctx.Process(target=target, args=a) for a in args_for]
    for child in children:
        child.start()
    results = [out.get(timeout=900) for _ in children]
    for child in children:
        child.join(timeout=60)
        if child.exitcode != 0:
            raise SystemExit(f"a benchmark process failed (exit {child.exitcode})")
    return [t for times, _ in results for t in times], max(end for _, end in results)


def grid_row(spec: str, charges: int, clients: int, duration: float) -> dict[str, float]:
    """One closed-loop configuration; milliseconds and pairs/s."""
    ctx = mp.get_context("fork")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    window = charges * STEP
    t0 = time.time() - 3600.0
    fill(spec, bucket, charges, t0 - window + STEP / 2, STEP)
    counter, start, out = ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    args = [(spec, bucket, window, t0, counter, start, duration, out) for _ in range(clients)]
    children = [ctx.Process(target=closed, args=a) for a in args]
    for child in children:
        child.start()
    time.sleep(0.3)
    start.set()
    results = [out.get(timeout=900) for _ in children]
    for child in children:
        child.join(timeout=60)
        if child.exitcode != 0:
            raise SystemExit(f"a benchmark process failed (exit {child.exitcode})")
    everything = [t for times in results for t in times]
    backend = open_backend(spec)
    held = backend.snapshot(
        bucket, Limits(tokens=10**12, window=window), t0 + counter.value * STEP
    ).requests
    backend.close()
    return {
        "p50": pct(everything, 0.5) * 1e3,
        "p99": pct(everything, 0.99) * 1e3,
        "pairs_s": len(everything) / duration,
        "held": float(held),
        "bytes": float(state_bytes(spec, bucket)),
    }


def paced_row(spec: str, rate: float, clients: int, duration: float) -> dict[str, float]:
    """The open-loop run: 10,000 charges in a 60 s window, `rate` pairs/s from `clients`."""
    ctx = mp.get_context("fork")
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    begin = time.time() + 1.0
    fill(spec, bucket, 10_000, begin - 60.0, 60.0 / 10_000)
    out = ctx.Queue()
    each = rate / clients
    args = [(spec, bucket, each, c / rate, begin, duration, out) for c in range(clients)]
    everything, finished = gather(ctx, paced, args, out)
    return {
        "p50": pct(everything, 0.5) * 1e3,
        "p99": pct(everything, 0.99) * 1e3,
        "max": max(everything) * 1e3,
        "pairs_s": len(everything) / (finished - begin),  # below the offered rate: a backlog
        "offered": rate,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the grid and the paced run, print tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="redis,file", help="comma list: file, redis")
    parser.add_argument("--charges", default="100,1000,10000,20000", help="comma list")
    parser.add_argument("--clients", default="1,8,32,64", help="comma list of process counts")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per grid row")
    parser.add_argument("--paced-duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--rate", type=float, default=10_000 / 60, help="paced pairs/s")
    parser.add_argument("--paced-clients", type=int, default=8)
    parser.add_argument("--paced-only", action="store_true")
    parser.add_argument("--no-paced", action="store_true")
    parser.add_argument("--redis-url", default=None, help="default: start a local redis-server")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        specs: dict[str, str] = {}
        for name in args.backends.split(","):
            if name == "file":
                directory = stack.enter_context(tempfile.TemporaryDirectory())
                specs["file"] = f"file:{os.path.join(directory, 'bench-state.json')}"
            elif name == "redis":
                if args.redis_url:
                    specs["redis"] = args.redis_url
                else:
                    from redis_server import running_redis

                    specs["redis"] = stack.enter_context(running_redis()).url
            else:
                parser.error(f"unknown backend {name!r}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
        if not args.paced_only:
            header = (
                f"{'backend':<8} {'charges':>8} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'pairs/s':>8} {'held':>7} {'state B':>8}"
            )
            print(header)
            print("-" * len(header))
            for name, spec in specs.items():
                base: dict[int, float] = {}
                for clients in [int(c) for c in args.clients.split(",")]:
                    for charges in [int(c) for c in args.charges.split(",")]:
                        r = grid_row(spec, charges, clients, args.duration)
                        base.setdefault(clients, r["p50"])
                        print(
                            f"{name:<8} {charges:>8} {clients:>7} {r['p50']:>8.3f} "
                            f"{r['p99']:>8.2f} {r['pairs_s']:>8.0f} {r['held']:>7.0f} "
                            f"{r['bytes']:>8.0f}   x{r['p50'] / base[clients]:.2f}",
                            flush=True,
                        )
        if not args.no_paced:
            print(
                f"\npaced: {args.rate:.0f} pairs/s offered from {args.paced_clients} clients, "
                f"10,000 charges in a 60 s window, {args.paced_duration:g} s"
            )
            for name, spec in specs.items():
                r = paced_row(spec, args.rate, args.paced_clients, args.paced_duration)
                print(
                    f"{name:<8} achieved {r['pairs_s']:.1f}/s  p50 {r['p50']:.2f} ms  "
                    f"p99 {r['p99']:.2f} ms  max {r['max']:.1f} ms",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
