"""Per model-version counters behind the statistics extension (ModelStatistics, /v2/models/m/stats)
and the Prometheus metrics.

Triton's meaning: `success`, `fail` and `queue` count requests; `compute_*` count requests too, each
request of a batch adding the whole batch's duration; `batch_stats` count executions per batch size;
`inference_count` adds each request's batch size and `execution_count` one per execution. Beyond
Triton, histograms of request and queue time (per request) and of compute time (per execution).
Updated only from the event loop's thread, so plain integers suffice.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

# histogram bucket bounds, microseconds (Prometheus' `le`)
BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
              500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000)
_BUCKETS_NS = tuple(b * 1000 for b in BUCKETS_US)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_US) + 1))  # last: +Inf
    sum_ns: int = 0

    def observe(self, ns: int) -> None:
        self.counts[bisect.bisect_left(_BUCKETS_NS, ns)] += 1
        self.sum_ns += ns


@dataclass(slots=True)
class BatchTimes:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchTimes] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_REASONS, 0))
    request_histogram: Histogram = field(default_factory=Histogram)
    queue_histogram: Histogram = field(default_factory=Histogram)
    compute_histogram: Histogram = field(default_factory=Histogram)
    load_seconds: float = 0.0

    def record_request(self, ns: int, failure: str | None = None) -> None:
        """One request's end-to-end time; `failure` is its reason when it failed."""
        if failure is None:
            self.success.add(ns)
        else:
            self.fail.add(ns)
            self.failures[failure] += 1
        self.request_histogram.observe(ns)

    def record_execution(self, requests: int, batch_size: int, queue_ns: list[int], input_ns: int,
                         infer_ns: int, output_ns: int) -> None:
        """One execution of `requests` requests (their queue times) holding `batch_size` inferences."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = time.time_ns() // 1_000_000
        for ns in queue_ns:
            self.queue.add(ns)
            self.queue_histogram.observe(ns)
        self.compute_input.add(input_ns * requests, requests)
        self.compute_infer.add(infer_ns * requests, requests)
        self.compute_output.add(output_ns * requests, requests)
        self.compute_histogram.observe(input_ns + infer_ns + output_ns)
        times = self.batches.get(batch_size)
        if times is None:
            times = self.batches[batch_size] = BatchTimes()
        times.compute_input.add(input_ns)
        times.compute_infer.add(infer_ns)
        times.compute_output.add(output_ns)


def to_dict(name: str, version: str, stats: ModelStatistics) -> dict:
    """One model version's statistics in the statistics extension's JSON form."""
    def duration(d: Duration) -> dict:
        return {"count": d.count, "ns": d.ns}

    return {
        "name": name,
        "version": version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": duration(stats.success),
            "fail": duration(stats.fail),
            "queue": duration(stats.queue),
            "compute_input": duration(stats.compute_input),
            "compute_infer": duration(stats.compute_infer),
            "compute_output": duration(stats.compute_output),
            "cache_hit": duration(Duration()),
            "cache_miss": duration(Duration()),
        },
        "batch_stats": [
            {"batch_size": size,
             "compute_input": duration(times.compute_input),
             "compute_infer": duration(times.compute_infer),
             "compute_output": duration(times.compute_output)}
            for size, times in sorted(stats.batches.items())],
    }
