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

# Read at scrape time from the engine (Engine.gauges): name -> help.
GAUGES = {
    "queue_depth": "Requests waiting for pages or prefill.",
    "running_requests": "Requests holding pages (prefilled or generating).",
    "kv_pages_free": "Free KV-cache pages (idle cached pages included).",
    "kv_pages_cached": "KV-cache pages held by the prefix cache.",
    "kv_pages_total": "KV-cache pages requests can use (scratch excluded).",
    "spec_decode_acceptance_rate": "Proposed tokens kept by speculative decoding, 0 to 1.",
}


# The series the Gateway API Inference Extension's endpoint picker (llm-d, KServe) reads from
# model servers by default, named and meant as vLLM's (vllm/v1/metrics/loggers.py), so it
# routes to irforge pods unchanged. vLLM labels them with the served model's name.
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_KV_USAGE = "vllm:kv_cache_usage_perc"
VLLM_CACHE_INFO = "vllm:cache_config_info"


class _Gauges(Collector):
    """The gauges handed to `Metrics.render`, read at scrape time."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.model_name = ""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.values
        for name, text in GAUGES.items():
            if name in v:
                yield GaugeMetricFamily(PREFIX + name, text, value=v[name])
        if not {"queue_depth", "running_requests", "kv_pages_free", "kv_pages_total"} <= set(v):
            return
        model = [self.model_name]
        for name, key, text in (
            (VLLM_WAITING, "queue_depth", "Requests waiting to be scheduled (as vLLM's)."),
            (VLLM_RUNNING, "running_requests", "Requests being prefilled or decoded."),
        ):
            family = GaugeMetricFamily(name, text, labels=["model_name"])
            family.add_metric(model, v[key])
            yield family
        total = v["kv_pages_total"]
        # vLLM's block pool counts cached pages no request holds as free, as kv_pages_free does
        used = 1.0 - v["kv_pages_free"] / total if total else 0.0
        usage = GaugeMetricFamily(
            VLLM_KV_USAGE, "KV-cache usage, 0 to 1 (1 is full).", labels=["model_name"]
        )
        usage.add_metric(model, used)
        yield usage
        info = GaugeMetricFamily(
            VLLM_CACHE_INFO,
            "KV-cache configuration: tokens per page, pages (value 1).",
            labels=["block_size", "num_gpu_blocks"],
        )
        info.add_metric([str(int(v.get("page_tokens", 0))), str(int(total))], 1)
        yield info


class Metrics:
    """The engine's series, one prometheus_client object each, in the engine's own registry.

    Thread-safe: the scheduler thread writes, the HTTP loop reads `render()`. prometheus_client
    adds `_total` to a counter's name in the exposition (`irforge_requests_received_total`).
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._gauges = _Gauges()
        r.register(self._gauges)

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, text, labels, registry=r)

        self.requests_received = counter("requests_received", "Requests admitted into the queue.")
        self.requests_rejected = counter(
            "requests_rejected", "Requests refused before queueing.", ("reason",)
        )
        self.requests_finished = counter(
            "requests_finished", "Requests done, by finish reason.", ("reason",)
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.preemptions = counter(
            "preemptions",
            "Running requests whose pages were taken back (recomputed when readmitted).",
        )
        self.prefix_cache_lookups = counter(
            "prefix_cache_lookups", "Admissions that looked up the prefix cache."
        )
        self.prefix_cache_queried_tokens = counter(
            "prefix_cache_queried_tokens", "Context tokens looked up in the prefix cache."
        )
        self.prefix_cache_hit_tokens = counter(
            "prefix_cache_hit_tokens",
            "Context tokens found in the prefix cache (not prefilled again).",
        )
        self.prefill_calls = counter(
            "prefill_calls", "prefill_bs{N} calls, by batch size.", ("bs",)
        )
        self.decode_calls = counter("decode_calls", "decode_bs{N} calls, by batch size.", ("bs",))
        self.verify_calls = counter(
            "verify_calls", "verify_bs{N} calls (speculative decoding), by batch size.", ("bs",)
        )
        # as vLLM's vllm:spec_decode_num_drafts / _num_draft_tokens / _num_accepted_tokens
        self.spec_decode_drafts = counter(
            "spec_decode_drafts", "Proposals verified (one per request per verify step)."
        )
        self.spec_decode_draft_tokens = counter(
            "spec_decode_draft_tokens", "Tokens proposed by speculative decoding and verified."
        )
        self.spec_decode_accepted_tokens = counter(
            "spec_decode_accepted_tokens", "Proposed tokens kept (equal to the model's own)."
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "From submission to the first token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            PREFIX + "time_per_output_token_seconds",
            "Between consecutive tokens of a request.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )

    def counter(self, name: str, **labels: str) -> float:
        """The current value of a series by its exposed name less the prefix (for tests and
        benchmarks): `counter("prefill_calls_total", bs="4")`."""
        return self.registry.get_sample_value(PREFIX + name, labels) or 0.0

    def render(self, gauges: dict[str, float], model_name: str = "") -> str:
        """The exposition text: every counter, the given gauges (and vLLM's series made from
        them, labelled with `model_name`), the histograms."""
        with self._lock:
            self._gauges.values = dict(gauges)
            self._gauges.model_name = model_name
            return generate_latest(self.registry).decode()
