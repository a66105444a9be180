"""Prometheus metrics of the budget (prefix `llm_budget_`): live endpoint, textfile, Pushgateway.

Metrics exist only when `--llm-metrics-port`, `--llm-metrics-textfile` or `--llm-pushgateway` is
set; `prometheus_client` is imported then and only then. They live in a dedicated
`CollectorRegistry` (never the global one), read by one custom collector:

* per-call figures (`tokens_total`, `requests_total`, `rate_limit_events_total`, `wait_seconds`)
  are added up from `CallRecord`s, fed by `BudgetSession.observers` as each call ends; on every
  collection the collector also takes in any record of `session.calls` it has not seen (the
  records xdist workers send the controller), so nothing is missed and nothing counted twice;
* `cost_usd_total{vendor,model}` is the dollars of live calls (cost.py), fed like the tokens;
* `window_deferrals_total` is the sum of the buckets' `deferrals` (`session.bucket_stats()`, merged
  across workers: the figure the reports show), read at collection time;
* `active_concurrency` is the calls in flight in the buckets this process uses, read from the
  backend at collection time (with a shared file or Redis backend, every process's calls count);
* `next_slot_epoch` is the earliest clock time a deferred call of this process will try again
  (`Limiter.deferral_listeners`), 0 when no call is waiting.

Replayed (cassette) calls are not provider traffic: they are counted only in
`llm_budget_replayed_total{vendor,model}` and left out of the other per-call metrics.

Under pytest-xdist every worker is its own process, and only the controller has metrics: workers
serve nothing and write nothing. The controller's live endpoint shows its own figures, and each
worker's calls and bucket figures once that worker has finished; the textfile and the Pushgateway
push are written once, at the end, by the controller, with every worker's figures merged.
"""

from __future__ import annotations

import collections
import math
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .records import CallRecord

if TYPE_CHECKING:
    from .session import BudgetSession

__all__ = [
    "PUSH_JOB",
    "WAIT_BUCKETS",
    "BudgetMetrics",
]

#: The Pushgateway job every push uses.
PUSH_JOB = "pytest-llm-budget"
#: Upper bounds (seconds) of the `llm_budget_wait_seconds` histogram buckets (+Inf added).
WAIT_BUCKETS = (0.0, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_P = "llm_budget_"


class BudgetMetrics:
    """The metrics of one `BudgetSession`, in their own registry, with the three outputs."""

    def __init__(self, session: BudgetSession) -> None:
        from prometheus_client import CollectorRegistry

        self.session = session
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        # Records already counted, by id; the records themselves are kept so ids stay unique.
        self._seen: dict[int, CallRecord] = {}
        self._tokens: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._rate_limits: collections.Counter[str] = collections.Counter()
        self._replayed: collections.Counter[tuple[str, str]] = collections.Counter()
        self._cost: dict[tuple[str, str], float] = {}
        self._wait_counts = [0] * (len(WAIT_BUCKETS) + 1)  # per bucket (not cumulative), +Inf
        self._wait_sum = 0.0
        self._slots: list[float] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.registry.register(_Collector(self))
        session.observers.append(self.observe)
        session.limiter.deferral_listeners.append(self.deferred)

    # -- feeding ---------------------------------------------------------------------------
    def observe(self, record: CallRecord) -> None:
        """Count one finished call (a `BudgetSession` observer); a record is counted once."""
        with self._lock:
            self._add(record)

    def _add(self, record: CallRecord) -> None:
        if id(record) in self._seen:
            return
        self._seen[id(record)] = record
        if record.replayed:
            self._replayed[(record.vendor, record.model)] += 1
            return
        vendor, model = record.vendor, record.model
        self._requests[(vendor, model, record.status)] += 1
        self._tokens[(vendor, model, "prompt")] += record.prompt_tokens
        self._tokens[(vendor, model, "completion")] += record.completion_tokens
        self._tokens[(vendor, model, "estimated")] += record.estimated
        self._cost[(vendor, model)] = self._cost.get((vendor, model), 0.0) + (record.cost_usd or 0)
        self._rate_limits[vendor] += record.rate_limit_events
        waited = max(0.0, record.waited_s)
        index = next((i for i, b in enumerate(WAIT_BUCKETS) if waited <= b), len(WAIT_BUCKETS))
        self._wait_counts[index] += 1
        self._wait_sum += waited

    def catch_up(self) -> None:
        """Count the session's records no observer call brought (e.g. merged xdist workers')."""
        records = self.session.calls.records()
        with self._lock:
            for record in records:
                self._add(record)

    def deferred(self, bucket: str, ready_at: float) -> None:
        """Note that a call of `bucket` waits until `ready_at` (a `Limiter` deferral listener)."""
        with self._lock:
            now = self.session.limiter.clock()
            self._slots = [t for t in self._slots if t > now]
            self._slots.append(ready_at)

    def next_slot(self) -> float:
        """The earliest clock time a waiting call tries again, 0 when none waits."""
        now = self.session.limiter.clock()
        with self._lock:
            self._slots = [t for t in self._slots if t > now]
            return min(self._slots, default=0.0)

    def active_concurrency(self) -> float:
        """Calls in flight in this process's buckets, per the backend (NaN if it is down)."""
        limiter = self.session.limiter
        try:
            return float(sum(limiter.window_snapshot(s.name).in_flight for s in limiter.stats()))
        except Exception:  # an unreachable backend must not break a scrape
            return math.nan

    # -- outputs ---------------------------------------------------------------------------
    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve `/metrics` over HTTP in a daemon thread; returns the port (useful with 0)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def text(self) -> str:
        """The exposition text of every metric now."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry)).decode("utf-8")

    def write_textfile(self, path: str) -> None:
        """Write the metrics for node-exporter's textfile collector (atomically)."""
        from prometheus_client import write_to_textfile

        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        write_to_textfile(path, self.registry)

    def push(self, gateway: str, *, timeout: float = 10.0) -> None:
        """PUT the metrics to a Pushgateway under job `pytest-llm-budget`; raises on failure."""
        from prometheus_client import push_to_gateway

        push_to_gateway(gateway, job=PUSH_JOB, registry=self.registry, timeout=timeout)

    def finish(self) -> list[str]:
        """Write the textfile and push, as configured; returns problems (never raises for them)."""
        settings = self.session.settings
        problems: list[str] = []
        if settings.metrics_textfile:
            try:
                self.write_textfile(settings.metrics_textfile)
            except OSError as exc:
                problems.append(
                    f"could not write --llm-metrics-textfile={settings.metrics_textfile}: {exc}"
                )
        if settings.pushgateway:
            try:
                self.push(settings.pushgateway)
            except Exception as exc:  # urllib/socket errors vary; a push is never a failure
                problems.append(
                    f"could not push to --llm-pushgateway={settings.pushgateway}: {exc}"
                )
        return problems

    def close(self) -> None:
        """Stop serving and stop listening to the session."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.observe in self.session.observers:
            self.session.observers.remove(self.observe)
        if self.deferred in self.session.limiter.deferral_listeners:
            self.session.limiter.deferral_listeners.remove(self.deferred)


class _Collector:
    """Builds every `llm_budget_` metric family from a `BudgetMetrics` at collection time."""

    def __init__(self, metrics: BudgetMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        """The metric families, consistent with the reports at the moment of the scrape."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        m.catch_up()
        deferrals = sum(b.deferrals for b in m.session.bucket_stats())
        active = m.active_concurrency()
        next_slot = m.next_slot()
        with m._lock:
            tokens = sorted(m._tokens.items())
            requests = sorted(m._requests.items())
            rate_limits = sorted(m._rate_limits.items())
            replayed = sorted(m._replayed.items())
            cost = sorted(m._cost.items())
            wait_counts = list(m._wait_counts)
            wait_sum = m._wait_sum

        yield GaugeMetricFamily(
            f"{_P}active_concurrency", "LLM calls in flight now (this process's buckets).", active
        )
        yield GaugeMetricFamily(
            f"{_P}next_slot_epoch",
            "Epoch seconds when the next deferred LLM call may go; 0 when none waits.",
            next_slot,
        )
        yield CounterMetricFamily(
            f"{_P}window_deferrals",
            "LLM calls that had to wait for room in their bucket's window.",
            deferrals,
        )
        family = CounterMetricFamily(
            f"{_P}rate_limit_events", "429 responses received.", labels=["vendor"]
        )
        for vendor, count in rate_limits:
            family.add_metric([vendor], count)
        yield family
        family = CounterMetricFamily(
            f"{_P}tokens",
            "Tokens of live LLM calls: provider-reported prompt/completion, and estimated.",
            labels=["vendor", "model", "kind"],
        )
        for key, count in tokens:
            family.add_metric(list(key), count)
        yield family
        family = CounterMetricFamily(
            f"{_P}requests",
            "Live LLM calls (logical calls, however many attempts) by outcome.",
            labels=["vendor", "model", "outcome"],
        )
        for key, count in requests:
            family.add_metric(list(key), count)
        yield family
        family = CounterMetricFamily(
            f"{_P}replayed",
            "LLM calls answered from a cassette (no budget, no wait).",
            labels=["vendor", "model"],
        )
        for (vendor, model), count in replayed:
            family.add_metric([vendor, model], count)
        yield family
        family = CounterMetricFamily(
            f"{_P}cost_usd",
            "US dollars of live LLM calls, priced from their reported usage (unpriced models 0).",
            labels=["vendor", "model"],
        )
        for (vendor, model), dollars in cost:
            family.add_metric([vendor, model], dollars)
        yield family
        cumulative, running = [], 0
        for bound, count in zip((*WAIT_BUCKETS, math.inf), wait_counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == math.inf else repr(bound), float(running)))
        yield HistogramMetricFamily(
            f"{_P}wait_seconds",
            "Seconds each live LLM call waited for budget before it left.",
            buckets=cumulative,
            sum_value=wait_sum,
        )
