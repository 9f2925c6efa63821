"""The GPU check: serves the PyTorch and XGBoost examples on KIND_GPU instances beside KIND_CPU ones and
checks that their outputs agree; also KIND_AUTO, a Python model's GPU instance, the ONNX model's
KIND_GPU refusal without onnxruntime-gpu, and the GPU metrics. Prints a report; exits 1 on a failure.

    python bench/gpu_check.py [--out DIR]

Runs from a checkout without installing naiad (it puts the checkout's folders under a `naiad` package
on a temporary path); needs torch with CUDA, xgboost built with CUDA, cupy, onnx, grpcio, aiohttp,
numpy, pyyaml, ml_dtypes. Uses naiad's own protobuf modules as the client, so tritonclient is not needed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["proto", "daemon", "backends", "batching", "ensembles", "clients"]
# tolerances of GPU against CPU results, float32: cuBLAS and the CPU sum in different orders
RTOL, ATOL = 1e-5, 1e-6


def importable_checkout() -> str:
    """A folder holding `naiad/<package>` links to this checkout's folders."""
    top = Path(tempfile.mkdtemp(prefix="naiad-path-"))
    (top / "naiad").mkdir()
    for package in PACKAGES:
        (top / "naiad" / package).symlink_to(ROOT / package)
    return str(top)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_repository(repository: Path) -> None:
    import importlib.util
    import yaml
    spec = importlib.util.spec_from_file_location("make_models", ROOT / "model_repository" / "make_models.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    torch_io = {"max_batch_size": 64, "input": [{"name": "input", "data_type": "FP32", "dims": [8]}],
                "output": [{"name": "OUTPUT__0", "data_type": "FP32", "dims": [3]}]}
    gpu = [{"kind": "KIND_GPU", "count": 1, "gpus": [0]}]
    cpu = [{"kind": "KIND_CPU", "count": 1}]
    models = {
        "torch_gpu": (make.torchscript_mlp, "model.pt", {**torch_io, "instance_group": gpu}),
        "torch_cpu": (make.torchscript_mlp, "model.pt", {**torch_io, "instance_group": cpu}),
        "torch_auto": (make.torchscript_mlp, "model.pt", {**torch_io, "instance_group": [{"kind": "KIND_AUTO"}]}),
        "export_gpu": (make.exported_mlp, "model.pt2", {"max_batch_size": 64, "instance_group": gpu}),
        "xgb_gpu": (make.xgboost_classifier, "model.json", {"max_batch_size": 64, "instance_group": gpu,
                                                            "parameters": {"output_class": "true", "predict_proba": "true"}}),
        "xgb_cpu": (make.xgboost_classifier, "model.json", {"max_batch_size": 64, "instance_group": cpu,
                                                            "parameters": {"output_class": "true", "predict_proba": "true"}}),
        "onnx_gpu": (make.onnx_mlp, "model.onnx", {"max_batch_size": 8, "instance_group": gpu}),
    }
    for name, (build, filename, config) in models.items():
        build(repository / name / "1" / filename)
        (repository / name / "config.yaml").write_text(yaml.safe_dump(config))
    python_gpu = repository / "python_gpu"
    (python_gpu / "1").mkdir(parents=True)
    (python_gpu / "config.yaml").write_text(yaml.safe_dump({
        "backend": "python", "max_batch_size": 8, "instance_group": [{"kind": "KIND_GPU", "count": 2}],
        "input": [{"name": "INPUT0", "data_type": "FP32", "dims": [4]}],
        "output": [{"name": "OUTPUT0", "data_type": "FP32", "dims": [4]},
                   {"name": "DEVICE", "data_type": "INT32", "dims": [1]}]}))
    (python_gpu / "1" / "model.py").write_text('''
import numpy as np
import torch
from naiad.backends.python_api import InferenceResponse, Tensor

class TritonPythonModel:
    def initialize(self, args):
        self.device = torch.device("cuda:" + args["model_instance_device_id"])
        self.kind = args["model_instance_kind"]

    def execute(self, requests):
        out = []
        for r in requests:
            x = torch.from_numpy(r.input("INPUT0").copy()).to(self.device)
            y = (x * 2).cpu().numpy()
            device = np.full((len(y), 1), self.device.index if self.kind == "GPU" else -1, np.int32)
            out.append(InferenceResponse([Tensor("OUTPUT0", y), Tensor("DEVICE", device)]))
        return out
''')


class Client:
    """ModelInfer and RepositoryIndex over gRPC, with naiad's own protobuf modules."""

    def __init__(self, port: int):
        import grpc
        from naiad.proto import grpc_service_pb2 as pb
        self.pb = pb
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        service = "/inference.GRPCInferenceService/"
        self.infer_call = self.channel.unary_unary(service + "ModelInfer", pb.ModelInferRequest.SerializeToString,
                                                   pb.ModelInferResponse.FromString)
        self.index_call = self.channel.unary_unary(service + "RepositoryIndex",
                                                   pb.RepositoryIndexRequest.SerializeToString,
                                                   pb.RepositoryIndexResponse.FromString)

    def infer(self, model: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
        request = self.pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        response = self.infer_call(request, timeout=60)
        types = {"FP32": np.float32, "INT32": np.int32}
        return {o.name: np.frombuffer(raw, types[o.datatype]).reshape(list(o.shape))
                for o, raw in zip(response.outputs, response.raw_output_contents)}

    def index(self) -> dict[str, dict]:
        rows = self.index_call(self.pb.RepositoryIndexRequest(), timeout=10).models
        return {row.name: {"state": row.state, "reason": row.reason} for row in rows}


def environment() -> dict:
    import torch
    found = {"python": sys.version.split()[0], "torch": torch.__version__,
             "cuda_available": torch.cuda.is_available(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import xgboost
        found["xgboost"] = xgboost.__version__
        found["xgboost_cuda"] = bool(xgboost.build_info().get("USE_CUDA"))
    except ImportError as e:
        found["xgboost"] = f"missing: {e}"
    try:
        import onnxruntime
        found["onnxruntime"] = f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}"
    except ImportError as e:
        found["onnxruntime"] = f"missing: {e}"
    import google.protobuf
    found["protobuf"] = google.protobuf.__version__
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    path = importable_checkout()
    sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])
    report = {"environment": environment(), "checks": []}
    work = Path(tempfile.mkdtemp(prefix="naiad-gpu-"))
    write_repository(work / "repository")
    ports = [free_port() for _ in range(3)]
    log = open(work / "naiad.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "naiad.daemon", "serve", "--model-repository",
                               str(work / "repository"), "--http-address", "127.0.0.1", "--http-port", str(ports[0]),
                               "--grpc-address", "127.0.0.1", "--grpc-port", str(ports[1]),
                               "--metrics-address", "127.0.0.1", "--metrics-port", str(ports[2])],
                              stdout=log, stderr=subprocess.STDOUT)
    failures = 0

    def check(name: str, ok: bool, detail) -> None:
        nonlocal failures
        failures += not ok
        report["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        client = Client(ports[1])
        index = client.index()
        for name in ("torch_gpu", "torch_cpu", "torch_auto", "export_gpu", "xgb_gpu", "xgb_cpu", "python_gpu"):
            check(f"{name} is ready", index[name]["state"] == "READY", index[name])
        check("onnx_gpu is refused without onnxruntime-gpu, with the fix",
              index["onnx_gpu"]["state"] == "UNAVAILABLE" and "onnxruntime-gpu" in index["onnx_gpu"]["reason"],
              index["onnx_gpu"])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/torch_auto/config") as r:
            kind = json.load(r)["instance_group"][0]["kind"]
        check("KIND_AUTO picks the GPU for PyTorch", kind == "KIND_GPU", kind)
        rng = np.random.default_rng(0)
        compare(client, check, rng)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        try:
            result = client.infer("python_gpu", "INPUT0", x)
            check("python_gpu computes on cuda:0", np.array_equal(result["OUTPUT0"], x * 2)
                  and int(result["DEVICE"][0, 0]) == 0, result["DEVICE"].reshape(-1).tolist())
        except Exception as e:
            check("python_gpu computes on cuda:0", False, repr(e))
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics") as r:
            metrics = r.read().decode()
        gpu_lines = [line for line in metrics.splitlines() if line.startswith("nv_gpu_")]
        check("GPU metrics are exported", any(l.startswith("nv_gpu_memory_used_bytes") for l in gpu_lines),
              gpu_lines)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    report["server_log_tail"] = (work / "naiad.log").read_text()[-4000:]
    if failures:
        print(report["server_log_tail"])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["environment"]))
    print(f"{failures} failure(s)")
    return 1 if failures else 0


def compare(client: Client, check, rng) -> None:
    """GPU instances against CPU ones, same inputs, batch sizes 1, 7 and 64."""
    pairs = [("torch_gpu", "torch_cpu", "input", 8, "OUTPUT__0"), ("torch_auto", "torch_cpu", "input", 8, "OUTPUT__0"),
             ("export_gpu", "torch_cpu", "input", 8, "OUTPUT__0"), ("xgb_gpu", "xgb_cpu", "input__0", 4, "output__0")]
    for batch in (1, 7, 64):
        for gpu_model, cpu_model, input_name, width, output_name in pairs:
            name = f"{gpu_model} batch {batch} equals {cpu_model} (rtol {RTOL}, atol {ATOL})"
            x = rng.standard_normal((batch, width)).astype(np.float32)
            try:
                gpu = client.infer(gpu_model, input_name, x)[output_name]
                cpu = client.infer(cpu_model, input_name, x)[output_name]
            except Exception as e:
                check(name, False, repr(e)[:300])
                continue
            gap = float(np.max(np.abs(gpu - cpu)))
            check(name, np.allclose(gpu, cpu, rtol=RTOL, atol=ATOL), f"largest difference {gap:.3g}")


if __name__ == "__main__":
    sys.exit(main())
