"""Prometheus metrics at /metrics on the metrics port, with Triton's names and labels (`model`,
`version`; `reason` on failures; `gpu_uuid` on GPU gauges), so that Triton dashboards work unchanged.
Beyond Triton: latency histograms of request, queue and compute time, with the names Triton's
proposal for them uses (core PR #474), so that a fleet's p99 can be computed."""
from __future__ import annotations

import logging

from aiohttp import web

from naiad.daemon import gpus
from naiad.daemon.registry import Registry
from naiad.daemon.statistics import BUCKETS_US, FAILURE_REASONS, Histogram, ModelStatistics

log = logging.getLogger(__name__)

# (name, type, help, value of a model version's statistics)
COUNTERS = [
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "counter", "Number of inferences performed", lambda s: s.inference_count),
    ("nv_inference_exec_count", "counter", "Number of model executions performed",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative compute input duration in microseconds", lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative compute inference duration in microseconds", lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds", lambda s: s.compute_output.ns // 1000),
    ("nv_model_load_duration_secs", "gauge", "Model load time in seconds", lambda s: round(s.load_seconds, 6)),
]
HISTOGRAMS = [
    ("nv_inference_request_duration_histogram_us", "Inference request duration in microseconds",
     lambda s: s.request_histogram),
    ("nv_inference_queue_duration_histogram_us", "Inference queuing duration in microseconds",
     lambda s: s.queue_histogram),
    ("nv_inference_compute_duration_histogram_us",
     "Duration of each model execution (compute input, infer and output) in microseconds",
     lambda s: s.compute_histogram),
]


def escape_label(value) -> str:
    """A label value in Prometheus' text format: backslash, double quote and newline escaped, so that
    no value (a model's name) can end its label or its line."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _histogram_lines(name: str, labels: dict, histogram: Histogram) -> list[str]:
    lines, cumulative = [], 0
    for bound, count in zip(BUCKETS_US, histogram.counts):
        cumulative += count
        lines.append(f"{name}_bucket{_labels(**labels, le=bound)} {cumulative}")
    cumulative += histogram.counts[-1]
    lines.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {cumulative}")
    lines.append(f"{name}_sum{_labels(**labels)} {histogram.sum_ns / 1000:.3f}")
    lines.append(f"{name}_count{_labels(**labels)} {cumulative}")
    return lines


def render(registry: Registry) -> str:
    """The metrics in Prometheus' text format."""
    served: list[tuple[dict, ModelStatistics, int]] = []
    for name, entry in sorted(registry.models.items()):
        for version, model in sorted(entry.versions.items()):
            served.append(({"model": name, "version": str(version)}, model.stats, model.scheduler.queued()))
    lines = []

    def family(name: str, kind: str, text: str) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")

    family("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes")
    for labels, stats, _ in served:
        for reason in FAILURE_REASONS:
            lines.append(f"nv_inference_request_failure{_labels(**labels, reason=reason)} "
                         f"{stats.failures[reason]}")
    for name, kind, text, value in COUNTERS:
        family(name, kind, text)
        lines += [f"{name}{_labels(**labels)} {value(stats)}" for labels, stats, _ in served]
    family("nv_inference_pending_request_count", "gauge",
           "Instantaneous number of pending requests awaiting execution per-model")
    lines += [f"nv_inference_pending_request_count{_labels(**labels)} {pending}"
              for labels, _, pending in served]
    for name, text, histogram in HISTOGRAMS:
        family(name, "histogram", text)
        for labels, stats, _ in served:
            lines += _histogram_lines(name, labels, histogram(stats))
    readings = gpus.readings()
    if readings:
        for name, text, value in (
                ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", lambda g: g.utilization),
                ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", lambda g: g.memory_total),
                ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", lambda g: g.memory_used)):
            family(name, "gauge", text)
            lines += [f"{name}{_labels(gpu_uuid=g.uuid)} {value(g)}" for g in readings]
    return "\n".join(lines) + "\n"


async def start(registry: Registry, address: str, port: int) -> web.AppRunner:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=render(registry), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_port=False).start()
    log.info("metrics listening on %s:%d/metrics", address, port)
    return runner
