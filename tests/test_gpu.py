"""The GPU data path: CUDA shared-memory regions for inputs and outputs, host inputs staged to the GPU,
results equal to the framework's own. Runs where an NVIDIA GPU and a CUDA build of torch are present."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from naiad.daemon import gpus
from tests import models
from tests.conftest import session_server

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpus.count() == 0 or not torch.cuda.is_available(),
                       reason="needs an NVIDIA GPU and a CUDA build of torch"),
]
SHAPE = [3, 16, 16]


def conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("gpu_repository")
    folder = models.write_model(repository, "convnet", {
        "backend": "pytorch", "max_batch_size": 8,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": SHAPE}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [4]}],
        "instance_group": [{"kind": "KIND_GPU", "count": 1}],
        "dynamic_batching": {"max_queue_delay_microseconds": 50_000},
        "parameters": {"ENABLE_CUDNN_BENCHMARK": "true"}})
    torch.jit.trace(conv_net(), torch.zeros(1, *SHAPE)).save(str(folder / "1" / "model.pt"))
    yield from session_server(repository, tmp_path_factory, "gpu", "--allow-client-shm", "true")


def expected(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return conv_net().cuda()(torch.from_numpy(x).cuda()).cpu().numpy()


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_cuda_regions_for_input_and_output(gpu_server, protocol):
    import tritonclient.utils.cuda_shared_memory as cudashm

    module = grpcclient if protocol == "grpc" else httpclient
    client = module.InferenceServerClient(gpu_server.grpc_url if protocol == "grpc" else gpu_server.http_url)
    x = images(4)
    region = cudashm.create_shared_memory_region(f"gpu_{protocol}", x.nbytes + 4 * 4 * 4, 0)
    try:
        cudashm.set_shared_memory_region(region, [x])
        client.register_cuda_shared_memory(f"gpu_{protocol}", cudashm.get_raw_handle(region), 0,
                                           x.nbytes + 64)
        status = client.get_cuda_shared_memory_status(f"gpu_{protocol}")
        assert "gpu_" in str(status)
        tensor = module.InferInput("INPUT__0", list(x.shape), "FP32")
        tensor.set_shared_memory(f"gpu_{protocol}", x.nbytes)
        output = module.InferRequestedOutput("OUTPUT__0")
        output.set_shared_memory(f"gpu_{protocol}", 64, offset=x.nbytes)
        client.infer("convnet", [tensor], outputs=[output])
        got = cudashm.get_contents_as_numpy(region, np.float32, [x.size + 16])[x.size:].reshape(4, 4)
        np.testing.assert_allclose(got, expected(x), rtol=1e-4, atol=1e-5)
        client.unregister_cuda_shared_memory(f"gpu_{protocol}")
    finally:
        cudashm.destroy_shared_memory_region(region)
        client.close()


def test_host_inputs_batched_on_the_gpu(gpu_server):
    """Twenty clients send ordinary tensors at once: batches go up through pinned memory, each one
    while the batch before it computes (one instance, batches of at most 8)."""
    results = {}

    def one(i):
        with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
            tensor = grpcclient.InferInput("INPUT__0", [1, *SHAPE], "FP32")
            tensor.set_data_from_numpy(images(1, seed=i))
            results[i] = client.infer("convnet", [tensor]).as_numpy("OUTPUT__0")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(20):
        np.testing.assert_allclose(results[i], expected(images(1, seed=i)), rtol=1e-4, atol=1e-5)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        stats = client.get_inference_statistics("convnet").model_stats[0]
        assert stats.execution_count < stats.inference_count, "the requests were not batched"


def test_system_input_with_cuda_output(gpu_server):
    import tritonclient.utils.cuda_shared_memory as cudashm

    x = images(2)
    host = shm.create_shared_memory_region("host_in", "/naiadtest_host_in", x.nbytes)
    device = cudashm.create_shared_memory_region("gpu_out", 32, 0)
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        try:
            shm.set_shared_memory_region(host, [x])
            client.register_system_shared_memory("host_in", "/naiadtest_host_in", x.nbytes)
            client.register_cuda_shared_memory("gpu_out", cudashm.get_raw_handle(device), 0, 32)
            tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
            tensor.set_shared_memory("host_in", x.nbytes)
            output = grpcclient.InferRequestedOutput("OUTPUT__0")
            output.set_shared_memory("gpu_out", 32)
            client.infer("convnet", [tensor], outputs=[output])
            got = cudashm.get_contents_as_numpy(device, np.float32, [2, 4])
            np.testing.assert_allclose(got, expected(x), rtol=1e-4, atol=1e-5)
        finally:
            client.unregister_system_shared_memory()
            client.unregister_cuda_shared_memory()
            shm.destroy_shared_memory_region(host)
            cudashm.destroy_shared_memory_region(device)


def test_cuda_errors(gpu_server):
    with grpcclient.InferenceServerClient(gpu_server.grpc_url) as client:
        import base64
        with pytest.raises(Exception, match="64 bytes"):
            client.register_cuda_shared_memory("bad", base64.b64encode(b"short"), 0, 16)
        with pytest.raises(Exception, match="cannot open the CUDA IPC handle"):
            client.register_cuda_shared_memory("bad", base64.b64encode(bytes(64)), 0, 16)
        assert "cuda_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]
