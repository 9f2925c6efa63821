"""GPU throughput: a ResNet-50 (random weights, built in code) served by naiad over plain gRPC, system
shared memory and CUDA shared memory, against torch alone; then an identity model with 4 MB and 64 MB
tensors through perf_analyzer's three shared-memory modes. GPU busy time (NVML) is sampled beside
every row. Prints Markdown tables; one run takes about six minutes.

    python bench/gpu_throughput.py [--perf-analyzer PATH] [--seconds 4] [--torch-alone false] [-- NAIAD FLAGS]

Needs a CUDA build of torch, torchvision (for the ResNet-50 definition), perf_analyzer, and naiad
importable (installed, or the checkout on PYTHONPATH as the `naiad` package).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

import harness
from harness import Measurement
from naiad.daemon import gpus

IMAGE = (3, 224, 224)


def bool_flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


class GpuBusy:
    """The GPU's mean utilization (NVML, sampled every 50 ms) while the block runs."""

    def __enter__(self):
        self.samples, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.05):
            readings = gpus.readings()
            if readings:
                self.samples.append(readings[0].utilization)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.busy = sum(self.samples) / len(self.samples) if self.samples else float("nan")


def resnet50():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval().cuda()


def torch_alone(batch: int, host_input: bool, seconds: float) -> tuple[float, float]:
    """Images a second for torch by itself at this batch size; and the GPU's busy share."""
    model = torch.jit.trace(resnet50(), torch.zeros(batch, *IMAGE, device="cuda"))
    host = torch.randn(batch, *IMAGE)
    device = host.cuda()
    with torch.inference_mode():
        for _ in range(5):
            model(device)
        torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        with GpuBusy() as busy:
            while time.perf_counter() - start < seconds:
                x = host.cuda() if host_input else device
                out = model(x)
                if host_input:
                    out = out.cpu()
                done += batch
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start), busy.busy


def write_repository(repository: Path) -> None:
    resnet = repository / "resnet50"
    (resnet / "1").mkdir(parents=True)
    torch.jit.trace(resnet50(), torch.zeros(1, *IMAGE, device="cuda")).save(str(resnet / "1" / "model.pt"))
    (resnet / "config.yaml").write_text(yaml.safe_dump({
        "backend": "pytorch", "max_batch_size": 64,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": list(IMAGE)}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [1000]}],
        "instance_group": [{"kind": "KIND_GPU", "count": 2}],
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "parameters": {"ENABLE_CUDNN_BENCHMARK": "true"}}))

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.clone()

    identity = repository / "identity"
    (identity / "1").mkdir(parents=True)
    torch.jit.script(Identity()).save(str(identity / "1" / "model.pt"))
    (identity / "config.yaml").write_text(yaml.safe_dump({
        "backend": "pytorch", "max_batch_size": 0,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "instance_group": [{"kind": "KIND_GPU", "count": 1}]}))


def perf(analyzer: str, port: int, model: str, batch: int, concurrency: int, memory: str,
         seconds: float, output_bytes: int, *extra: str) -> tuple[Measurement, float]:
    """perf_analyzer's figures with this batch size and shared-memory mode; and the GPU's busy share."""
    options = ["-b", str(batch), "--shared-memory", memory, *extra]
    if memory != "none":
        options += ["--output-shared-memory-size", str(output_bytes)]
    with GpuBusy() as busy:
        found = harness.perf(analyzer, port, model, concurrency, seconds, *options)
    return found, busy.busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--torch-alone", type=bool_flag, default=True, metavar="BOOL")
    parser.add_argument("naiad_args", nargs="*", help="more `naiad serve` flags (after --)")
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name(0)}, {os.cpu_count()} cores, torch {torch.__version__}\n")

    if args.torch_alone:
        print("| torch alone, ResNet-50 FP32 | batch | images/s | GPU busy |\n| --- | --- | --- | --- |")
        for host_input in (False, True):
            for batch in (1, 16, 64):
                rate, busy = torch_alone(batch, host_input, args.seconds)
                where = "input from host, output back" if host_input else "input on the GPU"
                print(f"| {where} | {batch} | {rate:,.0f} | {busy:.0%} |", flush=True)
        torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        write_repository(repository)
        server = harness.start_naiad(repository, "--allow-client-shm", "true", *args.naiad_args)
        port = server.grpc_port
        try:
            print("\n| naiad, ResNet-50 (2 GPU instances, dynamic batching) | batch | concurrency | images/s "
                  "| avg latency ms | GPU busy |\n| --- | --- | --- | --- | --- | --- |")
            for memory in ("none", "system", "cuda"):
                for batch, concurrency in ((1, 16), (1, 64), (16, 8), (16, 16)):
                    found, busy = perf(args.perf_analyzer, port, "resnet50", batch, concurrency, memory,
                                       args.seconds, 4000 * batch)
                    print(f"| shared memory: {memory} | {batch} | {concurrency} | {found.throughput:,.0f} | "
                          f"{found.latency_ms:.1f} | {busy:.0%} |", flush=True)
            print("\n| identity (GPU instance), perf_analyzer | tensor | concurrency | infer/s | MB/s in "
                  "| avg latency ms |\n| --- | --- | --- | --- | --- | --- |")
            for megabytes in (4, 64):
                elements = megabytes * (1 << 20) // 4
                for memory in ("none", "system", "cuda"):
                    found, _ = perf(args.perf_analyzer, port, "identity", 1, 2, memory, args.seconds,
                                    elements * 4, "--shape", f"INPUT__0:{elements}")
                    print(f"| shared memory: {memory} | {megabytes} MB | 2 | {found.throughput:,.1f} | "
                          f"{found.throughput * megabytes:,.0f} | {found.latency_ms:.1f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
