"""Prometheus metrics of the budget (prefix `llm_budget_`): live endpoint, textfile, Pushgateway.

Metrics exist only when `--llm-metrics-port`, `--llm-metrics-textfile` or `--llm-pushgateway` is
set; `prometheus_client` is imported then and only then. They live in a dedicated
`CollectorRegistry` (never the global one), as prometheus-client's own types:

* per-call figures (`tokens_total`, `requests_total`, `rate_limit_events_total`, `cost_usd_total`,
  `replayed_total`, the `wait_seconds` histogram) are `Counter`s and a `Histogram` fed from
  `session.calls`: it is append-only and also holds the records xdist workers send the
  controller, so each collection counts the records after the last one it counted, and nothing is
  missed or counted twice (like every prometheus-client counter, they carry `_created` samples);
* `window_deferrals_total` is the sum of the buckets' `deferrals` (`session.bucket_stats()`, merged
  across workers: the figure the reports show), read at collection time;
* `bucket_tokens_total{bucket,dimension,kind}` is what each bucket was charged at admission
  (`kind="charged"`) and settled to (`kind="settled"`) per dimension: `tokens` for a sliding
  window, `input_tokens` and `output_tokens` for a token-bucket bucket (Anthropic), and
  `bucket_capacity{bucket,dimension}` each dimension's budget per window (after headroom), both
  from the same merged bucket figures;
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

import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_llm_budget.session import BudgetSession

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
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.session = session
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._counted = 0  # how many of `session.calls`' records the metrics hold
        self._slots: list[float] = []
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.active = Gauge(
            f"{_P}active_concurrency", "LLM calls in flight now (this process's buckets).",
            registry=None,
        )
        self.active.set_function(self.active_concurrency)
        self.next_slot_epoch = Gauge(
            f"{_P}next_slot_epoch",
            "Epoch seconds when the next deferred LLM call may go; 0 when none waits.",
            registry=None,
        )
        self.next_slot_epoch.set_function(self.next_slot)
        self.rate_limits = Counter(
            f"{_P}rate_limit_events", "429 responses received.", ["vendor"], registry=None
        )
        self.tokens = Counter(
            f"{_P}tokens",
            "Tokens of live LLM calls: provider-reported prompt/completion, and estimated.",
            ["vendor", "model", "kind"],
            registry=None,
        )
        self.requests = Counter(
            f"{_P}requests",
            "Live LLM calls (logical calls, however many attempts) by outcome.",
            ["vendor", "model", "outcome"],
            registry=None,
        )
        self.replayed = Counter(
            f"{_P}replayed",
            "LLM calls answered from a cassette (no budget, no wait).",
            ["vendor", "model"],
            registry=None,
        )
        self.cost = Counter(
            f"{_P}cost_usd",
            "US dollars of live LLM calls, priced from their reported usage (unpriced models 0).",
            ["vendor", "model"],
            registry=None,
        )
        self.waits = Histogram(
            f"{_P}wait_seconds",
            "Seconds each live LLM call waited for budget before it left.",
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        self.registry.register(_Collector(self))
        session.limiter.deferral_listeners.append(self.deferred)

    # -- feeding ---------------------------------------------------------------------------
    def catch_up(self) -> None:
        """Count the session's records not counted yet (its log only grows, workers' included)."""
        records = self.session.calls.records()
        with self._lock:
            fresh, self._counted = records[self._counted :], len(records)
            for record in fresh:
                vendor, model = record.vendor, record.model
                if record.replayed:
                    self.replayed.labels(vendor, model).inc()
                    continue
                self.requests.labels(vendor, model, record.status).inc()
                self.tokens.labels(vendor, model, "prompt").inc(record.prompt_tokens)
                self.tokens.labels(vendor, model, "completion").inc(record.completion_tokens)
                self.tokens.labels(vendor, model, "estimated").inc(record.estimated)
                self.cost.labels(vendor, model).inc(record.cost_usd or 0.0)
                self.rate_limits.labels(vendor).inc(record.rate_limit_events)
                self.waits.observe(max(0.0, record.waited_s))

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
        """Write the metrics for node-exporter's textfile collector (atomically, mode 0644)."""
        from prometheus_client import generate_latest

        from pytest_llm_budget.atomic import PUBLIC, write_atomically

        write_atomically(path, bytes(generate_latest(self.registry)), PUBLIC)

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
        if self.deferred in self.session.limiter.deferral_listeners:
            self.session.limiter.deferral_listeners.remove(self.deferred)


class _Collector:
    """Yields every `llm_budget_` metric family of a `BudgetMetrics`, caught up first."""

    def __init__(self, metrics: BudgetMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        """The metric families, consistent with the reports at the moment of the scrape."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        m.catch_up()
        yield from m.active.collect()
        yield from m.next_slot_epoch.collect()
        stats = m.session.bucket_stats()
        yield CounterMetricFamily(
            f"{_P}window_deferrals",
            "LLM calls that had to wait for room in their bucket's window.",
            sum(b.deferrals for b in stats),
        )
        tokens = CounterMetricFamily(
            f"{_P}bucket_tokens",
            "Tokens each bucket was charged at admission (charged) and settled to (settled), "
            "per dimension (tokens; Anthropic: input_tokens, output_tokens).",
            labels=["bucket", "dimension", "kind"],
        )
        capacity = GaugeMetricFamily(
            f"{_P}bucket_capacity",
            "Each bucket's budget per window and dimension, after headroom.",
            labels=["bucket", "dimension"],
        )
        from pytest_llm_budget.limiting.buckets import UNKNOWN_TOKENS

        for b in stats:
            figures: list[tuple[str, int | None, int, int]] = [
                (name, d.limit, d.estimated, d.actual) for name, d in b.dimensions.items()
            ] or [("tokens", b.budget, b.estimated, b.actual)]
            for name, limit, charged, settled in figures:
                if limit is not None and limit < UNKNOWN_TOKENS:  # else not known yet (auto)
                    capacity.add_metric([b.name, name], limit)
                if name != "requests":
                    tokens.add_metric([b.name, name, "charged"], charged)
                    tokens.add_metric([b.name, name, "settled"], settled)
        yield tokens
        yield capacity
        for metric in (m.rate_limits, m.tokens, m.requests, m.replayed, m.cost, m.waits):
            yield from metric.collect()
