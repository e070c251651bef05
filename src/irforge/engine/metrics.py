"""Counters, gauges and histograms of the engine, exposed with prometheus_client.

Each engine has its own registry (tests run several engines in one process); gauges are read
from the engine when /metrics is scraped, not kept up to date on the hot path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# `*_created` timestamps per series double the scrape for nothing a dashboard of this uses.
disable_created_metrics()

PREFIX = "irforge_"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# name: (kind, help, label names or histogram buckets)
SERIES: dict[str, tuple[str, str, tuple]] = {
    "requests_received_total": ("counter", "Requests admitted into the queue.", ()),
    "requests_rejected_total": ("counter", "Requests refused before queueing.", ("reason",)),
    "requests_finished_total": ("counter", "Requests done, by finish reason.", ("reason",)),
    "prompt_tokens_total": ("counter", "Prompt tokens prefilled.", ()),
    "generation_tokens_total": ("counter", "Tokens generated.", ()),
    "preemptions_total": (
        "counter",
        "Running requests whose pages were taken back (recomputed when readmitted).",
        (),
    ),
    "prefix_cache_lookups_total": ("counter", "Admissions that looked up the prefix cache.", ()),
    "prefix_cache_queried_tokens_total": (
        "counter",
        "Context tokens looked up in the prefix cache.",
        (),
    ),
    "prefix_cache_hit_tokens_total": (
        "counter",
        "Context tokens found in the prefix cache (not prefilled again).",
        (),
    ),
    "prefill_calls_total": ("counter", "prefill_bs{N} calls, by batch size.", ("bs",)),
    "decode_calls_total": ("counter", "decode_bs{N} calls, by batch size.", ("bs",)),
    "queue_depth": ("gauge", "Requests waiting for pages or prefill.", ()),
    "running_requests": ("gauge", "Requests holding pages (prefilled or generating).", ()),
    "kv_pages_free": ("gauge", "Free KV-cache pages (idle cached pages included).", ()),
    "kv_pages_cached": ("gauge", "KV-cache pages held by the prefix cache.", ()),
    "kv_pages_total": ("gauge", "KV-cache pages requests can use (scratch excluded).", ()),
    "time_to_first_token_seconds": (
        "histogram",
        "From submission to the first token.",
        TTFT_BUCKETS,
    ),
    "time_per_output_token_seconds": (
        "histogram",
        "Between consecutive tokens of a request.",
        TOKEN_BUCKETS,
    ),
}


class _Gauges(Collector):
    """The gauges handed to `Metrics.render`, read at scrape time."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (kind, text, _) in SERIES.items():
            if kind == "gauge" and name in self.values:
                yield GaugeMetricFamily(PREFIX + name, text, value=self.values[name])


class Metrics:
    """Thread-safe: the scheduler thread writes, the HTTP loop reads `render()`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._series: dict[str, Counter | Histogram] = {}
        for name, (kind, text, extra) in SERIES.items():
            if kind == "counter":  # prometheus_client adds the _total suffix itself
                self._series[name] = Counter(
                    PREFIX + name.removesuffix("_total"), text, extra, registry=self.registry
                )
            elif kind == "histogram":
                self._series[name] = Histogram(
                    PREFIX + name, text, buckets=extra, registry=self.registry
                )

    def _counter(self, name: str, labels: dict[str, str]) -> Counter:
        series = self._series[name]
        assert isinstance(series, Counter)
        return series.labels(**labels) if labels else series

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self._counter(name, labels).inc(value)

    def observe(self, name: str, value: float) -> None:
        series = self._series[name]
        assert isinstance(series, Histogram)
        series.observe(value)

    def counter(self, name: str, **labels: str) -> float:
        """The current value of a counter (for tests and benchmarks)."""
        return self.registry.get_sample_value(PREFIX + name, labels) or 0.0

    def render(self, gauges: dict[str, float]) -> str:
        """The exposition text: every counter, the given gauges, the histograms."""
        with self._lock:
            self._gauges.values = dict(gauges)
            return generate_latest(self.registry).decode()
