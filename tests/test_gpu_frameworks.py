"""ONNX Runtime (CUDA provider) and XGBoost on KIND_GPU instances, with CUDA shared memory for inputs and
outputs: results equal to the framework's own, single requests and batches joined on the device, and a
batch where only some requests place their output in device memory. Runs where an NVIDIA GPU, a CUDA
build of each framework and CuPy (for XGBoost) are present."""
from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from naiad.daemon import gpus
from tests.conftest import session_server
from tests.models import make_models, write_framework_model as write


def _ort_cuda() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _xgboost_cuda() -> bool:
    if importlib.util.find_spec("xgboost") is None or importlib.util.find_spec("cupy") is None:
        return False
    import xgboost
    return bool(xgboost.build_info().get("USE_CUDA"))


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpus.count() == 0, reason="needs an NVIDIA GPU")]
needs_ort = pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu (its CUDA provider)")
needs_xgboost = pytest.mark.skipif(not _xgboost_cuda(), reason="needs an XGBoost built with CUDA, and CuPy")
MODELS = {"onnx_gpu": ("x", "probabilities", 3), "xgb_gpu": ("input__0", "output__0", 3)}
FEATURES = {"onnx_gpu": 8, "xgb_gpu": 4}
ON_GPU = {"instance_group": [{"kind": "KIND_GPU", "count": 1}], "max_batch_size": 8,
          "dynamic_batching": {"max_queue_delay_microseconds": 100_000}}


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory):
    repository = tmp_path_factory.mktemp("gpu_frameworks")
    if _ort_cuda():
        write(repository, "onnx_gpu", ON_GPU, make_models.onnx_mlp, "model.onnx")
    if _xgboost_cuda():
        write(repository, "xgb_gpu", {**ON_GPU, "parameters": {"output_class": "true", "predict_proba": "true"}},
              make_models.xgboost_classifier, "model.json")
    return repository


@pytest.fixture(scope="module")
def gpu_server(gpu_repository, tmp_path_factory):
    yield from session_server(gpu_repository, tmp_path_factory, "gpu_frameworks", "--allow-client-shm", "true")


def expected(repository, model: str, x: np.ndarray) -> np.ndarray:
    """What the framework itself gives, on the GPU."""
    if model == "onnx_gpu":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(repository / model / "1" / "model.onnx"),
                                               providers=["CUDAExecutionProvider"])
        return session.run(None, {"x": x})[0]
    import xgboost
    booster = xgboost.Booster(model_file=str(repository / model / "1" / "model.json"))
    booster.set_param({"device": "cuda:0"})
    return booster.inplace_predict(x)


def features(model: str, rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES[model])).astype(np.float32)


def infer(url: str, model: str, x: np.ndarray, name: str, on_device: bool) -> np.ndarray:
    """One request with its input in a CUDA region; its output there too when `on_device`, else in the
    response."""
    import tritonclient.utils.cuda_shared_memory as cudashm

    input_name, output_name, columns = MODELS[model]
    output_bytes = x.shape[0] * columns * 4
    region = cudashm.create_shared_memory_region(name, x.nbytes + output_bytes, 0)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            cudashm.set_shared_memory_region(region, [x])
            client.register_cuda_shared_memory(name, cudashm.get_raw_handle(region), 0, x.nbytes + output_bytes)
            tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
            tensor.set_shared_memory(name, x.nbytes)
            output = grpcclient.InferRequestedOutput(output_name)
            if on_device:
                output.set_shared_memory(name, output_bytes, offset=x.nbytes)
            result = client.infer(model, [tensor], outputs=[output])
            if not on_device:
                return result.as_numpy(output_name)
            flat = cudashm.get_contents_as_numpy(region, np.float32, [x.size + x.shape[0] * columns])
            return flat[x.size:].reshape(x.shape[0], columns)
        finally:
            client.unregister_cuda_shared_memory(name)
            cudashm.destroy_shared_memory_region(region)


@pytest.mark.parametrize("model", [pytest.param("onnx_gpu", marks=needs_ort),
                                   pytest.param("xgb_gpu", marks=needs_xgboost)])
def test_cuda_regions_in_and_out(gpu_server, gpu_repository, model):
    x = features(model, 5, seed=0)
    got = infer(gpu_server.grpc_url, model, x, f"{model}_one", on_device=True)
    np.testing.assert_allclose(got, expected(gpu_repository, model, x), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", [pytest.param("onnx_gpu", marks=needs_ort),
                                   pytest.param("xgb_gpu", marks=needs_xgboost)])
def test_host_tensors(gpu_server, gpu_repository, model):
    input_name, output_name, _ = MODELS[model]
    x = features(model, 3, seed=1)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        tensor = grpcclient.InferInput(input_name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer(model, [tensor]).as_numpy(output_name)
    np.testing.assert_allclose(got, expected(gpu_repository, model, x), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("model", [pytest.param("onnx_gpu", marks=needs_ort),
                                   pytest.param("xgb_gpu", marks=needs_xgboost)])
def test_batch_joined_on_the_device(gpu_server, gpu_repository, model):
    """Six clients at once, inputs in CUDA regions: one batch on the device; half of them take their
    output in their region, the others in the response."""
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        before = client.get_inference_statistics(model).model_stats[0].execution_count
    results, errors = {}, []

    def one(i):
        try:
            results[i] = infer(gpu_server.grpc_url, model, features(model, 1, seed=10 + i), f"{model}_{i}",
                               on_device=i % 2 == 0)
        except Exception as e:  # reported below, with the others' results
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for i in range(6):
        x = features(model, 1, seed=10 + i)
        np.testing.assert_allclose(results[i], expected(gpu_repository, model, x), rtol=1e-3, atol=1e-6)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        stats = client.get_inference_statistics(model).model_stats[0]
    assert stats.execution_count - before < 6, "the requests were not batched"
