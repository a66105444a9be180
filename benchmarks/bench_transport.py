"""Transport benchmark: per-call overhead of routing, and pacing efficiency at 4x the budget.

Run: python benchmarks/bench_transport.py [--calls N]. Needs no network (local emulator).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2

from pytest_llm_budget import BudgetSession, Settings
from pytest_llm_budget.emulator import Emulator, EmulatorConfig, LimitSpec
from pytest_llm_budget.routing import clients
from pytest_llm_budget.routing.router import router_for
from pytest_llm_budget.routing.transport import BudgetTransport
from pytest_llm_budget.tokens import seed_tiktoken_cache

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
HEADERS = {"authorization": "Bearer sk-bench"}


def _median_ms(client: httpx2.Client, url: str, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.post(url, json=BODY, headers=HEADERS).read()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def mock_overhead(n: int) -> float:
    """Per-call cost (ms) of the router alone: routed minus plain over an in-memory transport."""
    import json

    body = json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 20}}
    ).encode()

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    session = BudgetSession(Settings(tpm=10**12))
    router = router_for(session, raise_errors=True)
    plain = httpx2.Client(transport=httpx2.MockTransport(answer))
    routed = httpx2.Client(
        transport=BudgetTransport(httpx2.MockTransport(answer), router)  # type: ignore[arg-type]
    )
    url = "http://api.openai.com/v1/chat/completions"
    times = {}
    for name, client in [("plain", plain), ("routed", routed)] * 2:
        _median_ms(client, url, 200)
        times[name] = _median_ms(client, url, n)
    session.close()
    return times["routed"] - times["plain"]


def overhead(n: int) -> tuple[float, float]:
    """Median latency (ms) through a plain and a routed httpx2 client, interleaved rounds."""
    config = EmulatorConfig(openai=LimitSpec(tpm=None, rpm=None))
    with Emulator(config) as emu:
        url = f"{emu.openai_base_url}/chat/completions"
        session = BudgetSession(Settings(tpm=10**12))
        plain, routed = httpx2.Client(), clients.http_client(session)
        for client in (plain, routed):
            _median_ms(client, url, 50)  # warm connections, tokenizer, code paths
        plains, routeds = [], []
        for _ in range(5):
            plains.append(_median_ms(plain, url, n // 5))
            routeds.append(_median_ms(routed, url, n // 5))
        session.close()
        return statistics.median(plains), statistics.median(routeds)


def saturated(
    calls: int = 40, window: float = 2.0, margin: float | None = None
) -> tuple[float, float, int]:
    """Wall time of `calls` calls charging 4x the budget per window, the ideal, and 429s."""
    per_call = 102  # emulator charge: 2 input tokens + max_tokens 100
    tpm = calls * per_call // 4  # 40 calls = 4 windows' worth
    config = EmulatorConfig(window=window, openai=LimitSpec(tpm=tpm, rpm=None))
    with Emulator(config) as emu:
        session = BudgetSession(Settings(tpm=tpm, headroom=0.0, window=window))
        if margin is not None:
            session.limiter.margin = margin
        client = clients.fixture_client(
            "openai_client", session, base_url=emu.openai_base_url, api_key="sk-b"
        )
        # The limiter reserves the estimate (input with margin + max_tokens): that is the
        # charge that paces it, so the ideal uses it rather than the server's smaller charge.
        def one(i: int) -> None:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=100
            )

        start = time.monotonic()
        with ThreadPoolExecutor(calls) as pool:
            list(pool.map(one, range(calls)))
        wall = time.monotonic() - start
        estimate = session.calls.records()[0].estimated
        per_window = tpm // estimate
        waves = -(-calls // per_window)  # ceil
        ideal = (waves - 1) * window
        rejected = int(emu.stats()["totals"]["rejected"])
        session.close()
        return wall, ideal, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        cache = os.path.join(tempfile.gettempdir(), "pytest-llm-budget-tiktoken")
        seed_tiktoken_cache(cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
    print(f"router alone (in-memory transport): {mock_overhead(args.calls * 4):.3f} ms per call")
    plain, routed = overhead(args.calls)
    print(f"emulator: plain {plain:.3f} ms, routed {routed:.3f} ms, "
          f"per-call overhead {routed - plain:.3f} ms (target < 0.5 ms)")
    for margin in (None, 0.1):
        wall, ideal, rejected = saturated(margin=margin)
        label = "default margin" if margin is None else f"margin {margin:g}s"
        print(f"saturated ({label}): 40 calls at 4x the budget: wall {wall:.2f}s, "
              f"ideal {ideal:.2f}s, ratio {wall / ideal:.3f} (target <= 1.10), 429s {rejected}")


if __name__ == "__main__":
    main()
