"""Dynamic batching and instance counts, in naiad, Triton and MLServer, side by side in one run.

(a) `mlp`, a numpy MLP whose cost per sample falls with its batch, at concurrency 16: without and
    with dynamic batching (max_queue_delay 1 ms; MLServer: adaptive batching, max_batch_time 1 ms).
(b) `cpu_bound`, about 2 ms of pure-Python arithmetic per request, at concurrency 4: one instance
    against two (MLServer: parallel_workers 1 against 2).
The same model.py and config.pbtxt files (bench/models/) serve naiad and Triton; MLServer runs the
same arithmetic as runtimes (bench/mlserver_runtimes.py). perf_analyzer, gRPC, --async, batch 1.
Every server runs with OPENBLAS_NUM_THREADS=1: one BLAS thread per instance, on a 2-core machine.

    python bench/scheduling.py [--window-ms 3000] [--rounds 3] [--peers DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from compare_servers import HERE, Servers, free_port, measure, median_round, wait_http

VARIANTS = {  # name in the repository: (source model, extra config.pbtxt text)
    "mlp": ("mlp", ""),
    "mlp_dyna": ("mlp", "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"),
    "cpu_bound": ("cpu_bound", ""),
    "cpu_bound_x2": ("cpu_bound", None),  # count 2
}
# (workload, concurrency, [(label, server, model)])
WORKLOADS = [
    ("(a) mlp, c=16", 16, [
        ("naiad, no batching", "naiad", "mlp"), ("naiad, dynamic batching", "naiad", "mlp_dyna"),
        ("Triton, no batching", "triton", "mlp"), ("Triton, dynamic batching", "triton", "mlp_dyna"),
        ("MLServer, no batching", "mlserver", "mlp"), ("MLServer, adaptive batching", "mlserver", "mlp_dyna")]),
    ("(b) cpu_bound, c=4", 4, [
        ("naiad, 1 instance", "naiad", "cpu_bound"), ("naiad, 2 instances", "naiad", "cpu_bound_x2"),
        ("Triton, 1 instance", "triton", "cpu_bound"), ("Triton, 2 instances", "triton", "cpu_bound_x2"),
        ("MLServer, 1 worker", "mlserver", "cpu_bound"), ("MLServer, 2 workers", "mlserver2", "cpu_bound")]),
]


def triton_repository(work: Path) -> Path:
    """One repository, read by naiad and by Triton alike."""
    repository = work / "repository"
    for name, (source, extra) in VARIANTS.items():
        shutil.copytree(HERE / "models" / source, repository / name)
        config = repository / name / "config.pbtxt"
        text = config.read_text()
        if extra is None:
            text = text.replace("count: 1", "count: 2")
        config.write_text(f'name: "{name}"\n' + text + (extra or ""))
    return repository


def mlserver_folder(work: Path, label: str, workers: int, ports: tuple) -> Path:
    folder = work / label
    folder.mkdir()
    http, grpc, metrics = ports
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
        "parallel_workers": workers}))
    tensor = lambda name, width: {"name": name, "datatype": "FP32", "shape": [-1, width]}
    models = {"mlp": ("MLP", {}, 256, 10), "mlp_dyna": ("MLP", {"max_batch_size": 64, "max_batch_time": 0.001}, 256, 10),
              "cpu_bound": ("CPUBound", {}, 4, 1)}
    for name, (runtime, batching, width_in, width_out) in models.items():
        (folder / name).mkdir()
        (folder / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": f"mlserver_runtimes.{runtime}", **batching,
            "inputs": [tensor("INPUT0", width_in)], "outputs": [tensor("OUTPUT0", width_out)]}))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", type=Path, default=Path(os.environ.get(
        "NAIAD_PEERS", Path.home() / ".cache" / "naiad-peers")))
    args = parser.parse_args()
    perf_analyzer = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    work = Path(tempfile.mkdtemp(prefix="naiad-bench-"))
    repository = triton_repository(work)
    ports = {name: (free_port(), free_port(), free_port()) for name in ("naiad", "triton", "mlserver", "mlserver2")}
    servers = Servers(work)
    peers_sh = str(HERE / "peers" / "peers.sh")
    mlserver_python = str(args.peers / "mlserver" / "bin" / "python")
    compat = str(HERE / "peers" / "mlserver_perf_analyzer_compat.py")
    try:
        http, grpc, metrics = ports["naiad"]
        servers.start("naiad", [sys.executable, "-m", "naiad.daemon", "serve", "--model-repository",
                                str(repository), "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                                "--metrics-address", "127.0.0.1", "--http-port", str(http),
                                "--grpc-port", str(grpc), "--metrics-port", str(metrics)])
        servers.start("triton", ["bash", peers_sh, "triton", *map(str, ports["triton"]), str(repository)],
                      {"NAIAD_PEERS": str(args.peers)})
        for label, workers in (("mlserver", 1), ("mlserver2", 2)):
            folder = mlserver_folder(work, label, workers, ports[label])
            servers.start(label, [mlserver_python, compat, "start", str(folder)],
                          {"PYTHONPATH": str(HERE)})
        for name, (http, _, _) in ports.items():
            wait_http(f"http://127.0.0.1:{http}/v2/health/ready")
        rounds: dict = {}
        for _, concurrency, targets in WORKLOADS:  # warm-up
            for label, server, model in targets:
                measure(perf_analyzer, model, ports[server][1], concurrency, 1000, work / "warmup.csv")
        for round_ in range(args.rounds):
            for workload, concurrency, targets in WORKLOADS:
                for label, server, model in targets:
                    report = work / f"{server}-{model}-{round_}.csv"
                    result = measure(perf_analyzer, model, ports[server][1], concurrency, args.window_ms, report)
                    rounds.setdefault((workload, label), []).append(result)
                    print(workload, label, result, file=sys.stderr, flush=True)
    finally:
        servers.stop()
    print("| workload | server and setting | infer/s | p50 µs | p99 µs |")
    print("| --- | --- | --- | --- | --- |")
    for workload, _, targets in WORKLOADS:
        for label, _, _ in targets:
            r = median_round(rounds[(workload, label)])
            cells = ([f"{r['throughput']:,.0f}", f"{r['p50']:,}", f"{r['p99']:,}"] if "error" not in r
                     else ["error", " ".join(r["error"])[:60], ""])
            print(f"| {workload} | {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
