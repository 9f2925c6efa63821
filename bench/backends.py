"""Each framework backend's overhead: a model served through naiad (perf_analyzer, gRPC, --async)
against the framework itself called in a plain Python loop on the same batches, in the same run. Both
count inferences (rows) per second; their ratio is what serving costs.

Two sizes per backend, made by model_repository/make_models.py: the shipped examples, which take
microseconds (so the ratio shows naiad's fixed cost per request), and large ones that take
milliseconds per batch (so it shows what that cost is worth on a model of some size). No dynamic
batching: each request is one batch of the size measured. Every framework runs on one thread, alone and
served (OMP_NUM_THREADS=1, ONNX Runtime's intra_op_thread_count 1), so that the ratio is the cost of
serving, not the loss of a second core to the client on this 2-core machine.

    python bench/backends.py [--batch 8 64] [--concurrency 2] [--window-ms 3000]
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from compare_servers import ROOT, Servers, free_port, measure, wait_http

spec = importlib.util.spec_from_file_location("make_models", ROOT / "model_repository" / "make_models.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)

LARGE = {"features": 512, "hidden": 2048}
# name: (builder, file, extra builder arguments, config, input name, width)
MODELS = {
    "onnx_mlp": (make.onnx_mlp, "model.onnx", {}, {}, "x", 8),
    "onnx_large": (make.onnx_mlp, "model.onnx", LARGE, {}, "x", 512),
    "torch_mlp": (make.torchscript_mlp, "model.pt", {}, {"width": 8}, "input", 8),
    "torch_large": (make.torchscript_mlp, "model.pt", LARGE, {"width": 512}, "input", 512),
    "xgboost_classifier": (make.xgboost_classifier, "model.json", {}, {}, "input__0", 4),
    "xgboost_large": (make.xgboost_classifier, "model.json", {"rounds": 300, "depth": 8}, {}, "input__0", 4),
}


def write(repository: Path) -> None:
    for name, (build, filename, arguments, config, _, _) in MODELS.items():
        build(repository / name / "1" / filename, **arguments)
        text = {"max_batch_size": 128}
        if filename == "model.onnx":
            text["parameters"] = {"intra_op_thread_count": "1"}
        if "width" in config:  # TorchScript: the configuration names the tensors
            text |= {"input": [{"name": "input", "data_type": "FP32", "dims": [config["width"]]}],
                     "output": [{"name": "OUTPUT__0", "data_type": "FP32", "dims": [3]}]}
        (repository / name / "config.yaml").write_text(yaml.safe_dump(text))


def framework_loop(repository: Path, name: str, batch: int, seconds: float = 3.0) -> float:
    """Rows per second of the framework alone, called on one batch after another."""
    _, filename, _, _, input_name, width = MODELS[name]
    path = repository / name / "1" / filename
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    if filename == "model.onnx":
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, {input_name: x})
    elif filename == "model.pt":
        import torch
        torch.set_num_threads(1)
        module = torch.jit.load(str(path))
        tensor = torch.from_numpy(x)

        def call():
            with torch.inference_mode():
                return module(tensor).numpy()
    else:
        import xgboost
        booster = xgboost.Booster(model_file=str(path))
        booster.set_param({"nthread": 1})
        call = lambda: booster.inplace_predict(x)
    for _ in range(20):
        call()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--window-ms", type=int, default=3000)
    args = parser.parse_args()
    perf_analyzer = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    work = Path(tempfile.mkdtemp(prefix="naiad-bench-"))
    repository = work / "repository"
    write(repository)
    http, grpc, metrics = free_port(), free_port(), free_port()
    servers = Servers(work)
    rows = []
    try:
        servers.start("naiad", [sys.executable, "-m", "naiad.daemon", "serve", "--model-repository", str(repository),
                                "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
                                "--metrics-address", "127.0.0.1", "--http-port", str(http),
                                "--grpc-port", str(grpc), "--metrics-port", str(metrics)])
        wait_http(f"http://127.0.0.1:{http}/v2/health/ready")
        for name in MODELS:
            for batch in args.batch:
                own = framework_loop(repository, name, batch)
                served = measure(perf_analyzer, name, grpc, args.concurrency, args.window_ms,
                                 work / f"{name}-{batch}.csv", extra=["-b", str(batch)])
                rows.append((name, batch, own, served))
                print(name, batch, own, served, file=sys.stderr, flush=True)
    finally:
        servers.stop()
    print(f"| model | batch | framework alone: rows/s (µs a batch) | served by naiad, c={args.concurrency}: "
          f"rows/s | served / alone | served p50 / p99 µs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch, own, served in rows:
        alone = f"{own:,.0f} ({batch / own * 1e6:,.0f})"
        if "error" in served:
            print(f"| {name} | {batch} | {alone} | error: {' '.join(served['error'])[:50]} | | |")
            continue
        print(f"| {name} | {batch} | {alone} | {served['throughput']:,.0f} | {served['throughput'] / own:.2f} "
              f"| {served['p50']:,} / {served['p99']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
