"""Time and size of the JSON and HTML reports against the number of calls (synthetic records).

A synthetic run: `n` live calls over one OpenAI bucket (1M tokens per 60 s window, a high-tier
key), ten calls a test, a call every 0.01 s (so the window holds up to 6,000 calls: the case
where the old chart was quadratic), one in fifty waiting, one in two hundred with a 429, one in
a hundred failed. Each size is built with `build_report` and
rendered to JSON and HTML `--runs` times; the table shows medians.

    python benchmarks/bench_reports.py                      # 1k, 5k, 20k calls, 3 runs
    python benchmarks/bench_reports.py --calls 20000 --runs 1 --profile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from pytest_llm_budget.limiting.buckets import BucketStats  # noqa: E402
from pytest_llm_budget.records import CallRecord, Totals  # noqa: E402
from pytest_llm_budget.reporting.html_report import render_html  # noqa: E402
from pytest_llm_budget.reporting.report import build_report  # noqa: E402

T0 = 1_760_000_000.0
SPACING = 0.01
BUDGET = 1_000_000


def synthetic_document(n: int) -> dict[str, Any]:
    """A report document of `n` live calls (see the module doc)."""
    calls = []
    for i in range(n):
        waited = 1.5 if i % 50 == 7 else 0.0
        failed = i % 100 == 3
        calls.append(
            CallRecord(
                t=T0 + i * SPACING,
                test=f"tests/test_suite.py::test_case[{i // 10}-param]",
                vendor="openai",
                model="gpt-4o-mini",
                estimated=110,
                prompt_tokens=0 if failed else 40 + i % 30,
                completion_tokens=0 if failed else 50 + i % 20,
                status="error" if failed else "ok",
                attempts=1 + int(i % 200 == 11),
                waited_s=waited,
                worker=f"gw{i % 2}",
                rate_limit_events=int(i % 200 == 11),
                error_code="APIConnectionError" if failed else None,
                cost_usd=0.00004,
                charged=110,
            )
        )
    totals = Totals(
        calls=n,
        prompt_tokens=sum(c.prompt_tokens for c in calls),
        completion_tokens=sum(c.completion_tokens for c in calls),
        total_tokens=sum(c.total_tokens for c in calls),
        rate_limit_events=sum(c.rate_limit_events for c in calls),
        waited_s=sum(c.waited_s for c in calls),
        errors=sum(c.status != "ok" for c in calls),
        cost_usd=round(0.00004 * n, 12),
    )
    bucket = BucketStats(
        name="openai:*", rule="openai:*", budget=BUDGET, calls=n, estimated=110 * n,
        actual=totals.total_tokens, tpm=BUDGET,
    )
    settings = {"tpm": BUDGET, "window": 60.0, "backend": "memory", "cli_limits": [],
                "limits": []}
    document = build_report(settings, totals, [bucket], calls)
    document["run"] = {"started": T0 - 2, "finished": T0 + n * SPACING + 1,
                       "wall_s": n * SPACING + 3,
                       "first_test": T0 - 1, "workers": 2, "backend": "memory"}
    return document


def measure(n: int, runs: int) -> dict[str, float]:
    """Medians over `runs` of the JSON and HTML rendering time (s) and size (MB) for `n`."""
    json_s, html_s = [], []
    json_mb = html_mb = 0.0
    for _ in range(runs):
        document = synthetic_document(n)
        start = time.perf_counter()
        text = json.dumps(document, indent=2, sort_keys=False) + "\n"
        json_s.append(time.perf_counter() - start)
        json_mb = len(text.encode()) / 1e6
        start = time.perf_counter()
        page = render_html(document)
        html_s.append(time.perf_counter() - start)
        html_mb = len(page.encode()) / 1e6
    return {"json_s": statistics.median(json_s), "json_mb": json_mb,
            "html_s": statistics.median(html_s), "html_mb": html_mb}


def main(argv: list[str] | None = None) -> int:
    """Parse options, measure each size, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1000,5000,20000", help="comma list of call counts")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (medians)")
    parser.add_argument("--profile", action="store_true", help="cProfile the HTML of the last")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.calls.split(",")]
    print(f"python {sys.version.split()[0]}, medians of {args.runs} run(s)")
    header = f"{'calls':>7} {'JSON s':>8} {'JSON MB':>8} {'HTML s':>8} {'HTML MB':>8}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        r = measure(n, args.runs)
        print(f"{n:>7} {r['json_s']:>8.2f} {r['json_mb']:>8.1f} {r['html_s']:>8.2f} "
              f"{r['html_mb']:>8.1f}")
    if args.profile:
        import cProfile
        import pstats

        document = synthetic_document(sizes[-1])
        profiler = cProfile.Profile()
        profiler.runcall(render_html, document)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
