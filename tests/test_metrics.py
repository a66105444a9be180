"""Prometheus metrics: values on a fake clock, textfile, live endpoint, Pushgateway, the plugin."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pytest_llm_budget.backends import MemoryBackend
from pytest_llm_budget.records import CallRecord
from pytest_llm_budget.reporting.metrics import PUSH_JOB, BudgetMetrics
from pytest_llm_budget.session import BudgetSession
from pytest_llm_budget.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Clock:
    """A fake clock: time moves only when the limiter sleeps; `on_sleep` sees each sleep first."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0
        self.on_sleep: Any = None

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.t += seconds


def _session(clock: Clock, **settings: Any) -> BudgetSession:
    base = Settings(tpm=10_000, headroom=0.0, window=60.0, backend="memory")
    return BudgetSession(
        dataclasses.replace(base, **settings),
        backend=MemoryBackend(),
        clock=clock.now,
        sleep=clock.sleep,
    )


def _samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _call(vendor: str = "openai", model: str = "gpt-5", **kw: Any) -> CallRecord:
    values: dict[str, Any] = dict(
        t=1_800_000_000.0, test="t.py::test", vendor=vendor, model=model, estimated=1000,
        prompt_tokens=100, completion_tokens=50, status="ok", attempts=1, waited_s=0.0,
    )
    values.update(kw)
    return CallRecord(**values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Iterator[BudgetMetrics]:
    m = BudgetMetrics(_session(clock))
    yield m
    m.close()


def test_metrics_count_recorded_calls(metrics: BudgetMetrics) -> None:
    session = metrics.session
    session.record(_call(prompt_tokens=100, completion_tokens=50, estimated=1000, waited_s=0.0))
    session.record(_call(prompt_tokens=300, completion_tokens=20, estimated=900, waited_s=12.0,
                         status="error", attempts=4, rate_limit_events=3))
    session.record(_call("gemini", "gemini-2.5-pro", waited_s=0.3, prompt_tokens=7,
                         completion_tokens=0, estimated=40))
    session.record(_call(replayed=True, prompt_tokens=999, completion_tokens=999, waited_s=0.0))
    s = _samples(metrics.text())
    tokens = "llm_budget_tokens_total"
    assert _get(s, tokens, vendor="openai", model="gpt-5", kind="prompt") == 400
    assert _get(s, tokens, vendor="openai", model="gpt-5", kind="completion") == 70
    assert _get(s, tokens, vendor="openai", model="gpt-5", kind="estimated") == 1900
    assert _get(s, tokens, vendor="gemini", model="gemini-2.5-pro", kind="prompt") == 7
    requests = "llm_budget_requests_total"
    assert _get(s, requests, vendor="openai", model="gpt-5", outcome="ok") == 1
    assert _get(s, requests, vendor="openai", model="gpt-5", outcome="error") == 1
    assert _get(s, requests, vendor="gemini", model="gemini-2.5-pro", outcome="ok") == 1
    assert _get(s, "llm_budget_rate_limit_events_total", vendor="openai") == 3
    assert _get(s, "llm_budget_rate_limit_events_total", vendor="gemini") == 0
    # the replayed call is counted apart, and in nothing else
    assert _get(s, "llm_budget_replayed_total", vendor="openai", model="gpt-5") == 1
    assert _get(s, "llm_budget_wait_seconds_count") == 3
    assert _get(s, "llm_budget_wait_seconds_sum") == pytest.approx(12.3)
    assert _get(s, "llm_budget_wait_seconds_bucket", le="0.0") == 1
    assert _get(s, "llm_budget_wait_seconds_bucket", le="0.5") == 2
    assert _get(s, "llm_budget_wait_seconds_bucket", le="10.0") == 2
    assert _get(s, "llm_budget_wait_seconds_bucket", le="30.0") == 3
    assert _get(s, "llm_budget_wait_seconds_bucket", le="+Inf") == 3
    assert _get(s, "llm_budget_window_deferrals_total") == 0
    assert _get(s, "llm_budget_active_concurrency") == 0
    assert _get(s, "llm_budget_next_slot_epoch") == 0


def test_deferrals_concurrency_and_next_slot_follow_the_limiter(
    metrics: BudgetMetrics, clock: Clock
) -> None:
    session = metrics.session
    seen: list[tuple[float, Samples]] = []
    clock.on_sleep = lambda seconds: seen.append((clock.t + seconds, _samples(metrics.text())))
    first = session.reserve(6000, vendor="openai", model="gpt-5")
    assert _get(_samples(metrics.text()), "llm_budget_active_concurrency") == 1
    second = session.reserve(6000, vendor="openai", model="gpt-5")  # waits for `first` to age out
    assert seen, "the second reservation should have waited"
    ready_at, during = seen[0]
    assert ready_at > 1_800_000_000.0 + 60
    assert _get(during, "llm_budget_next_slot_epoch") == pytest.approx(ready_at)
    assert _get(during, "llm_budget_window_deferrals_total") == 1
    assert _get(during, "llm_budget_active_concurrency") == 1
    after = _samples(metrics.text())
    assert _get(after, "llm_budget_next_slot_epoch") == 0  # nobody waits any more
    assert _get(after, "llm_budget_active_concurrency") == 2
    first.settle(6000)
    second.settle(5000)
    assert _get(_samples(metrics.text()), "llm_budget_active_concurrency") == 0
    with session.reserve(6000, vendor="gemini", model="g"):
        pass  # another bucket, and a third deferral-free call
    final = _samples(metrics.text())
    assert _get(final, "llm_budget_window_deferrals_total") == 1
    assert final == _samples(metrics.text())  # collecting twice changes nothing


def test_records_merged_from_elsewhere_are_counted_once(metrics: BudgetMetrics) -> None:
    session = metrics.session
    session.record(_call(prompt_tokens=10))
    session.calls.extend([_call(prompt_tokens=1000, worker="gw0")])  # an xdist worker's record
    for _ in range(2):  # a second collection counts nothing again
        s = _samples(metrics.text())
        assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5",
                    kind="prompt") == 1010
        assert _get(s, "llm_budget_requests_total", vendor="openai", model="gpt-5",
                    outcome="ok") == 2


def test_metrics_use_their_own_registry(metrics: BudgetMetrics) -> None:
    metrics.session.record(_call())
    names = {f.name for f in REGISTRY.collect()}
    assert not any(n.startswith("llm_budget_") for n in names)
    assert metrics.registry is not REGISTRY


def test_close_detaches_from_the_session(clock: Clock) -> None:
    session = _session(clock)
    m = BudgetMetrics(session)
    assert session.observers == [] and session.limiter.deferral_listeners == [m.deferred]
    m.close()
    assert session.observers == [] and session.limiter.deferral_listeners == []


def test_a_failing_observer_warns_and_the_call_is_still_logged(clock: Clock) -> None:
    session = _session(clock)

    def broken(record: CallRecord) -> None:
        raise KeyError("boom")

    session.observers.append(broken)
    with pytest.warns(RuntimeWarning, match="observer .* failed: KeyError"):
        session.record(_call())
    assert session.calls.totals().calls == 1


def test_metrics_enabled_only_with_an_output(clock: Clock) -> None:
    assert not _session(clock).settings.metrics_wanted
    assert _session(clock, metrics_port=9999).settings.metrics_wanted
    assert _session(clock, metrics_textfile="m.prom").settings.metrics_wanted
    assert _session(clock, pushgateway="http://127.0.0.1:9091").settings.metrics_wanted


def test_textfile_is_written_at_finish(clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "node" / "llm.prom"
    m = BudgetMetrics(_session(clock, metrics_textfile=str(path)))
    try:
        m.session.record(_call(prompt_tokens=123))
        assert m.finish() == []
    finally:
        m.close()
    s = _samples(path.read_text())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 123
    assert _get(s, "llm_budget_requests_total", vendor="openai", model="gpt-5", outcome="ok") == 1


def test_textfile_failure_is_a_problem_not_an_error(clock: Clock, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    m = BudgetMetrics(_session(clock, metrics_textfile=str(blocker / "x.prom")))
    try:
        problems = m.finish()
    finally:
        m.close()
    assert len(problems) == 1 and "--llm-metrics-textfile" in problems[0]


def test_live_endpoint_serves_on_loopback_and_stops(metrics: BudgetMetrics) -> None:
    port = metrics.serve(0)
    assert metrics._server.server_address[0] == "127.0.0.1"
    metrics.session.record(_call(prompt_tokens=42))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        s = _samples(response.read().decode())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 42
    assert not any(name.startswith("python_gc") for name, _ in s)  # not the global registry
    metrics.session.record(_call(prompt_tokens=8))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        s = _samples(response.read().decode())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 50
    thread = metrics._thread
    assert thread is not None and thread.is_alive()
    metrics.close()
    assert not thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def _store(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _store

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Gateway,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()
    thread.join()


def test_push_to_gateway(clock: Clock, gateway: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, received = gateway
    m = BudgetMetrics(_session(clock, pushgateway=url))
    try:
        m.session.record(_call(prompt_tokens=77, rate_limit_events=2))
        assert m.finish() == []
    finally:
        m.close()
    assert len(received) == 1
    method, path, body = received[0]
    assert method == "PUT" and path == f"/metrics/job/{PUSH_JOB}"
    s = _samples(body.decode())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 77
    assert _get(s, "llm_budget_rate_limit_events_total", vendor="openai") == 2


def test_push_failure_is_a_problem_not_an_error(clock: Clock) -> None:
    m = BudgetMetrics(_session(clock, pushgateway=f"http://127.0.0.1:{_free_port()}"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            problems = m.finish()
    finally:
        m.close()
    assert len(problems) == 1 and "could not push to --llm-pushgateway" in problems[0]


# -- through the plugin ----------------------------------------------------------------------
INNER = """
import time
import urllib.request

from pytest_llm_budget.records import CallRecord


def _record(llm_budget, test, prompt):
    llm_budget.record(CallRecord(t=time.time(), test=test, vendor="openai", model="gpt-5",
        estimated=500, prompt_tokens=prompt, completion_tokens=5, status="ok", attempts=1,
        waited_s=0.0))


def test_one(llm_budget, request):
    with llm_budget.reserve(500, vendor="openai", model="gpt-5") as r:
        r.settle(300)
    _record(llm_budget, request.node.nodeid, 100)


def test_two(llm_budget, request):
    _record(llm_budget, request.node.nodeid, 20)
    port = request.config.getoption("llm_metrics_port")
    if port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'llm_budget_requests_total{model="gpt-5",outcome="ok",vendor="openai"} 2.0' in text
"""


def test_plugin_serves_live_and_writes_the_textfile(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    port = _free_port()
    result = pytester.runpytest(
        "--llm-metrics-port", str(port), "--llm-metrics-textfile", "out/llm.prom",
        "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    s = _samples((pytester.path / "out" / "llm.prom").read_text())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 120
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5",
                kind="estimated") == 1000
    with pytest.raises(urllib.error.URLError):  # the endpoint stopped with the session
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_plugin_push_failure_warns_and_the_run_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    dead = f"http://127.0.0.1:{_free_port()}"
    result = pytester.runpytest("--llm-pushgateway", dead, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*LLMBudgetMetricsWarning*could not push to --llm-pushgateway*"])
    strict = pytester.runpytest("--llm-pushgateway", dead, "-W", "error", "-p", "no:cacheprovider")
    strict.assert_outcomes(passed=2)
    assert strict.ret == 0  # warnings as errors still do not turn a failed push into a failure
    strict.stdout.fnmatch_lines(["*pytest-llm-budget: warning: could not push*"])


def test_under_xdist_the_controller_writes_merged_figures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        "-p", "xdist", "-n", "2", "--llm-metrics-textfile", "llm.prom", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    s = _samples((pytester.path / "llm.prom").read_text())
    assert _get(s, "llm_budget_tokens_total", vendor="openai", model="gpt-5", kind="prompt") == 120
    assert _get(s, "llm_budget_requests_total", vendor="openai", model="gpt-5", outcome="ok") == 2
    assert not list(pytester.path.glob("**/*.prom.*"))  # no worker wrote a file of its own


def test_prometheus_client_is_imported_only_when_a_metrics_option_is_set(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_inner="""
        import sys

        def test_modules(request):
            wanted = bool(request.config.getoption("llm_metrics_textfile"))
            assert ("prometheus_client" in sys.modules) is wanted
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    with_metrics = pytester.runpytest_subprocess(
        "--llm-metrics-textfile", "m.prom", "-p", "no:cacheprovider"
    )
    with_metrics.assert_outcomes(passed=1)
