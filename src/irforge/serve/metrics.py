"""Counters, gauges and histograms of the engine, written in Prometheus' text format by hand."""

from __future__ import annotations

import bisect
import threading

PREFIX = "irforge_"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HELP = {
    "requests_received_total": ("counter", "Requests admitted into the queue."),
    "requests_rejected_total": ("counter", "Requests refused before queueing, by reason."),
    "requests_finished_total": ("counter", "Requests done, by finish reason."),
    "prompt_tokens_total": ("counter", "Prompt tokens prefilled."),
    "generation_tokens_total": ("counter", "Tokens generated."),
    "prefill_calls_total": ("counter", "prefill_bs{N} calls, by batch size."),
    "decode_calls_total": ("counter", "decode_bs{N} calls, by batch size."),
    "queue_depth": ("gauge", "Requests waiting for pages or prefill."),
    "running_requests": ("gauge", "Requests holding pages (prefilled or generating)."),
    "kv_pages_free": ("gauge", "Free KV-cache pages."),
    "kv_pages_total": ("gauge", "KV-cache pages requests can use (the scratch page excluded)."),
    "time_to_first_token_seconds": ("histogram", "From submission to the first token."),
    "time_per_output_token_seconds": ("histogram", "Between consecutive tokens of a request."),
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.sum!r}", f"{name}_count {running}"]
        return out


class Metrics:
    """Thread-safe: the scheduler thread writes, the HTTP loop reads `render()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._histograms = {
            "time_to_first_token_seconds": _Histogram(TTFT_BUCKETS),
            "time_per_output_token_seconds": _Histogram(TOKEN_BUCKETS),
        }

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0) + value

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._histograms[name].observe(value)

    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def render(self, gauges: dict[str, float]) -> str:
        """The exposition text: every counter, the given gauges, the histograms."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, text) in HELP.items():
                full = PREFIX + name
                if kind == "counter":
                    series = self._counters.get(name) or {(): 0}
                    body = [f"{full}{_labels(dict(k))} {_number(v)}" for k, v in series.items()]
                elif kind == "gauge":
                    if name not in gauges:
                        continue
                    body = [f"{full} {_number(gauges[name])}"]
                else:
                    body = self._histograms[name].lines(full)
                lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}", *body]
        return "\n".join(lines) + "\n"
