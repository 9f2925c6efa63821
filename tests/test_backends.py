"""The framework backends: served outputs equal the framework's own, exactly, over gRPC and HTTP, at
batch 1 and at max_batch_size; auto-complete; each way a framework model can fail to load."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import xgboost

from tests.conftest import session_server
from tests.models import make_models, write_framework_model as write


@pytest.fixture(scope="session")
def framework_repository(tmp_path_factory):
    repository = tmp_path_factory.mktemp("frameworks")
    write(repository, "onnx_auto", None, make_models.onnx_mlp, "model.onnx")  # no config at all
    write(repository, "onnx_threads", {"max_batch_size": 8, "parameters": {
        "intra_op_thread_count": "1", "execution_mode": "sequential", "graph_optimization_level": "all"}},
          make_models.onnx_mlp, "model.onnx", seed=1)
    write(repository, "torchscript", {"max_batch_size": 8,
                                      "input": [{"name": "input", "data_type": "FP32", "dims": [8]}],
                                      "output": [{"name": "OUTPUT__0", "data_type": "FP32", "dims": [3]}]},
          make_models.torchscript_mlp, "model.pt")
    write(repository, "exported", {"max_batch_size": 16}, make_models.exported_mlp, "model.pt2")
    write(repository, "exported_compiled", {"max_batch_size": 16, "parameters": {"torch_compile": "true"}},
          make_models.exported_mlp, "model.pt2")
    for name, parameters in (("xgb_value", {}), ("xgb_proba", {"output_class": "true", "predict_proba": "true"}),
                             ("xgb_class", {"output_class": "true"}), ("xgb_margin", {"output_margin": "true"})):
        write(repository, name, {"max_batch_size": 64, "parameters": parameters},
              make_models.xgboost_classifier, "model.json")
    # broken on purpose
    (repository / "onnx_corrupt" / "1").mkdir(parents=True)
    (repository / "onnx_corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    write(repository, "onnx_contradicts", {"max_batch_size": 8,
                                           "input": [{"name": "x", "data_type": "INT32", "dims": [9]}]},
          make_models.onnx_mlp, "model.onnx")
    write(repository, "onnx_misnamed", {"input": [{"name": "features"}]}, make_models.onnx_mlp, "model.onnx")
    write(repository, "torchscript_untyped", {"max_batch_size": 8}, make_models.torchscript_mlp, "model.pt")
    write(repository, "torchscript_compiled", {"max_batch_size": 8, "parameters": {"torch_compile": "true"},
                                               "input": [{"name": "input", "data_type": "FP32", "dims": [8]}],
                                               "output": [{"name": "OUTPUT__0", "data_type": "FP32", "dims": [3]}]},
          make_models.torchscript_mlp, "model.pt")
    (repository / "torch_missing" / "1").mkdir(parents=True)
    (repository / "torch_missing" / "config.yaml").write_text("backend: pytorch\n")
    write(repository, "xgb_bad_parameter", {"parameters": {"output_class": "yes"}},
          make_models.xgboost_classifier, "model.json")
    return repository


@pytest.fixture(scope="session")
def framework_server(framework_repository, tmp_path_factory):
    yield from session_server(framework_repository, tmp_path_factory, "frameworks")


def features(batch: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, width)).astype(np.float32)


def served(server, model: str, inputs: dict[str, np.ndarray], protocol: str) -> dict[str, np.ndarray]:
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = module.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(model, tensors)
        names = [o["name"] for o in (result.get_response(as_json=True) if protocol == "grpc"
                                     else result.get_response())["outputs"]]
        return {name: result.as_numpy(name) for name in names}
    finally:
        client.close()


PROTOCOLS = ["grpc", "http"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model,batch", [("onnx_auto", 1), ("onnx_auto", 4), ("onnx_threads", 1),
                                         ("onnx_threads", 8)])
def test_onnx_equals_onnxruntime(framework_server, framework_repository, protocol, model, batch):
    x = features(batch, 8)
    session = onnxruntime.InferenceSession(str(framework_repository / model / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    np.testing.assert_array_equal(served(framework_server, model, {"x": x}, protocol)["probabilities"],
                                  expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model,batch", [("torchscript", 1), ("torchscript", 8), ("exported", 1),
                                         ("exported", 16)])
def test_pytorch_equals_torch(framework_server, framework_repository, protocol, model, batch):
    x = features(batch, 8)
    folder = framework_repository / model / "1"
    module = (torch.jit.load(str(folder / "model.pt")) if model == "torchscript"
              else torch.export.load(str(folder / "model.pt2")).module())
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    name = "OUTPUT__0"
    np.testing.assert_array_equal(served(framework_server, model, {"input": x}, protocol)[name], expected)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 64])
def test_xgboost_equals_booster(framework_server, framework_repository, protocol, batch):
    x = features(batch, 4)
    booster = xgboost.Booster(model_file=str(framework_repository / "xgb_value" / "1" / "model.json"))
    probabilities = booster.inplace_predict(x)
    margins = booster.inplace_predict(x, predict_type="margin")
    got = {model: served(framework_server, model, {"input__0": x}, protocol)["output__0"]
           for model in ("xgb_value", "xgb_proba", "xgb_class", "xgb_margin")}
    np.testing.assert_array_equal(got["xgb_value"], probabilities)
    np.testing.assert_array_equal(got["xgb_proba"], probabilities)
    np.testing.assert_array_equal(got["xgb_class"], probabilities.argmax(axis=1)[:, None].astype(np.int32))
    np.testing.assert_array_equal(got["xgb_margin"], margins)


def test_torch_compile(framework_server, framework_repository):
    x = features(5, 8)
    module = torch.export.load(str(framework_repository / "exported_compiled" / "1" / "model.pt2")).module()
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    got = served(framework_server, "exported_compiled", {"input": x}, "grpc")["OUTPUT__0"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # compiled kernels sum in their order


def test_batched_requests_get_their_own_rows(framework_server, framework_repository):
    """Concurrent requests to an auto-completed (dynamically batched) ONNX model: each gets its slice."""
    import asyncio
    import tritonclient.grpc.aio as aiogrpc
    session = onnxruntime.InferenceSession(str(framework_repository / "onnx_auto" / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])

    async def burst():
        async with aiogrpc.InferenceServerClient(framework_server.grpc_url) as client:
            async def one(seed):
                x = features(1 + seed % 3, 8, seed)
                tensor = aiogrpc.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer("onnx_auto", [tensor])
                np.testing.assert_allclose(result.as_numpy("probabilities"), session.run(None, {"x": x})[0],
                                           rtol=1e-6, atol=1e-7)
            await asyncio.gather(*(one(seed) for seed in range(48)))

    asyncio.run(burst())
    stats = grpcclient.InferenceServerClient(framework_server.grpc_url).get_inference_statistics(
        "onnx_auto", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) > int(stats["execution_count"])  # batches formed


def test_auto_complete(framework_server):
    client = httpclient.InferenceServerClient(framework_server.http_url)
    onnx = client.get_model_config("onnx_auto")
    assert onnx["backend"] == "onnxruntime" and onnx["max_batch_size"] == 4 and "dynamic_batching" in onnx
    assert [(i["name"], i["data_type"], i["dims"]) for i in onnx["input"]] == [("x", "TYPE_FP32", [8])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in onnx["output"]] == [
        ("probabilities", "TYPE_FP32", [3])]
    exported = client.get_model_config("exported")
    assert exported["backend"] == "pytorch" and exported["max_batch_size"] == 16
    assert [(i["name"], i["dims"]) for i in exported["input"]] == [("input", [8])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in exported["output"]] == [
        ("OUTPUT__0", "TYPE_FP32", [3])]
    trees = client.get_model_config("xgb_proba")
    assert trees["input"][0]["dims"] == [4] and trees["output"][0]["dims"] == [3]
    assert client.get_model_config("xgb_class")["output"][0]["data_type"] == "TYPE_INT32"
    assert client.get_model_metadata("onnx_auto")["inputs"] == [{"name": "x", "datatype": "FP32",
                                                                 "shape": [-1, 8]}]


@pytest.mark.parametrize("model,words", [
    ("onnx_corrupt", ["onnx_corrupt/1/model.onnx", "ONNX Runtime cannot load it"]),
    ("onnx_contradicts", ["input[0].data_type: TYPE_INT32, but model.onnx has TYPE_FP32 for 'x'",
                          "input[0].dims: [9], but model.onnx has [8] for 'x'"]),
    ("onnx_misnamed", ["input[0].name: 'features' is not an input of model.onnx; its inputs are x"]),
    ("torchscript_untyped", ["a TorchScript file keeps no data types or shapes",
                             "forward() takes input, e.g. input: [{name: input, data_type: TYPE_FP32"]),
    ("torch_missing", ["torch_missing/1/model.pt: missing", "model.pt or model.pt2"]),
    ("torchscript_compiled", ["parameters.torch_compile: torch.compile takes a torch.export program"]),
    ("xgb_bad_parameter", ["parameters.output_class: expected \"true\" or \"false\", got 'yes'"]),
])
def test_load_errors_name_the_file_and_the_fix(framework_server, model, words):
    client = httpclient.InferenceServerClient(framework_server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index[model]["state"] == "UNAVAILABLE"
    for word in words:
        assert word in index[model]["reason"], index[model]["reason"]
    assert client.is_model_ready("onnx_auto")  # the rest serves


def test_missing_framework_package_names_the_extra(tmp_path, framework_repository, start_server):
    """A server whose Python cannot import onnxruntime: the ONNX model says which pip extra to install;
    the others serve."""
    shadow = tmp_path / "shadow"
    (shadow / "onnxruntime").mkdir(parents=True)
    (shadow / "onnxruntime" / "__init__.py").write_text("raise ImportError('onnxruntime is not installed')\n")
    repository = tmp_path / "repository"
    for name in ("onnx_auto", "xgb_value"):
        shutil.copytree(framework_repository / name, repository / name)
    import os
    os.environ["PYTHONPATH"] = f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    try:
        server = start_server(repository)
    finally:
        os.environ["PYTHONPATH"] = os.environ["PYTHONPATH"].split(os.pathsep, 1)[1]
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["onnx_auto"]["state"] == "UNAVAILABLE"
    assert "pip install 'naiad[onnxruntime]'" in index["onnx_auto"]["reason"]
    assert client.is_model_ready("xgb_value")


def test_kind_gpu_without_a_gpu(tmp_path, framework_repository, start_server):
    repository = tmp_path / "repository"
    shutil.copytree(framework_repository / "onnx_auto", repository / "onnx_gpu")
    (repository / "onnx_gpu" / "config.yaml").write_text(json.dumps({"instance_group": [{"kind": "KIND_GPU"}]}))
    shutil.copytree(framework_repository / "onnx_auto", repository / "onnx_auto_kind")
    (repository / "onnx_auto_kind" / "config.yaml").write_text(json.dumps({"instance_group": [{"kind": "KIND_AUTO"}]}))
    server = start_server(repository)
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the GPU check script covers KIND_GPU")
    assert index["onnx_gpu"]["state"] == "UNAVAILABLE"
    assert "KIND_GPU but this machine has no usable NVIDIA GPU" in index["onnx_gpu"]["reason"]
    assert client.get_model_config("onnx_auto_kind")["instance_group"][0]["kind"] == "KIND_CPU"
