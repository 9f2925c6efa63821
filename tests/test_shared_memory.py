"""System shared memory (Triton's extension) through tritonclient: inputs read in place, outputs written
into the client's region, mixed with ordinary tensors, with dynamic batching; and every error case."""
from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests import models
from tests.conftest import SHIPPED_REPOSITORY, copy_model, perf_analyzer, session_server

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)
NBYTES = A.nbytes


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("shm_repository")
    for name in ("simple", "torch_mlp"):
        copy_model(SHIPPED_REPOSITORY, name, repository)
    models.write_model(repository, "identity_fp32", models.batched("FP32"), models.IDENTITY)
    models.write_model(repository, "identity_bytes", models.batched("BYTES"), models.IDENTITY)
    models.write_model(repository, "slow", models.batched("FP32", (1,)), models.SLOW)
    models.write_model(repository, "batched_identity",
                       {**models.batched("FP32", (4,)), "parameters": {"execution": "thread"},
                        "dynamic_batching": {"max_queue_delay_microseconds": 200_000,
                                             "preferred_batch_size": [8]}},
                       models.IDENTITY)
    yield from session_server(repository, tmp_path_factory, "shm", "--allow-client-shm", "true")


@pytest.fixture
def region():
    """A fresh system shared-memory region of 4 KiB: (name, key, handle); destroyed afterwards."""
    name = f"r{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, f"/naiadtest_{name}", 4096)
    yield name, f"/naiadtest_{name}", handle
    shm.destroy_shared_memory_region(handle)


@pytest.fixture
def grpc_client(shm_server):
    with grpcclient.InferenceServerClient(shm_server.grpc_url) as client:
        yield client
        client.unregister_system_shared_memory()


@pytest.fixture
def http_client(shm_server):
    with httpclient.InferenceServerClient(shm_server.http_url) as client:
        yield client
        client.unregister_system_shared_memory()


def simple_request(module, region_name: str, in_region=("INPUT0", "INPUT1"),
                   out_region=("OUTPUT0", "OUTPUT1")):
    """simple's inputs and outputs, those named in shared memory: INPUT0 (A) at 0, INPUT1 (B) at 64,
    OUTPUT0 at 128, OUTPUT1 at 192."""
    inputs = []
    for i, (name, array) in enumerate((("INPUT0", A), ("INPUT1", B))):
        tensor = module.InferInput(name, [1, 16], "INT32")
        if name in in_region:
            tensor.set_shared_memory(region_name, NBYTES, offset=i * NBYTES)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = []
    for i, name in enumerate(("OUTPUT0", "OUTPUT1")):
        output = module.InferRequestedOutput(name)
        if name in out_region:
            output.set_shared_memory(region_name, NBYTES, offset=(2 + i) * NBYTES)
        outputs.append(output)
    return inputs, outputs


def region_contents(handle, slot: int) -> np.ndarray:
    """The [1, 16] INT32 tensor in the region's slot (0 to 3, 64 bytes each)."""
    return shm.get_contents_as_numpy(handle, np.int32, [1, 16], offset=slot * NBYTES)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_inputs_and_outputs_in_shared_memory(shm_server, region, protocol, grpc_client, http_client):
    client, module = (grpc_client, grpcclient) if protocol == "grpc" else (http_client, httpclient)
    name, key, handle = region
    shm.set_shared_memory_region(handle, [A, B])
    client.register_system_shared_memory(name, key, 4096)
    inputs, outputs = simple_request(module, name)
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(region_contents(handle, 2), A + B)
    np.testing.assert_array_equal(region_contents(handle, 3), A - B)
    output = result.get_output("OUTPUT0")
    if protocol == "grpc":
        assert output.parameters["shared_memory_region"].string_param == name
        assert result.get_response().raw_output_contents == [b"", b""]  # no data came back
    else:
        assert output == {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_mixed_with_ordinary_tensors(shm_server, region, protocol, grpc_client, http_client):
    client, module = (grpc_client, grpcclient) if protocol == "grpc" else (http_client, httpclient)
    name, key, handle = region
    shm.set_shared_memory_region(handle, [A])
    client.register_system_shared_memory(name, key, 4096)
    inputs, outputs = simple_request(module, name, in_region=("INPUT0",), out_region=("OUTPUT0",))
    result = client.infer("simple", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    np.testing.assert_array_equal(region_contents(handle, 2), A + B)


def test_asyncio_clients(shm_server, region):
    name, key, handle = region
    shm.set_shared_memory_region(handle, [A, B])

    async def scenario():
        clients = [aiogrpc.InferenceServerClient(shm_server.grpc_url),
                   aiohttpclient.InferenceServerClient(shm_server.http_url)]
        for module, client in zip((aiogrpc, aiohttpclient), clients):
            await client.register_system_shared_memory(name, key, 4096)
            inputs, outputs = simple_request(module, name)
            await client.infer("simple", inputs, outputs=outputs)
            await client.unregister_system_shared_memory(name)
            np.testing.assert_array_equal(region_contents(handle, 2), A + B)
            shm.set_shared_memory_region(handle, [np.zeros_like(A)], offset=2 * NBYTES)
        for client in clients:
            await client.close()
    asyncio.run(scenario())


def test_batches_form_from_shared_memory_requests(shm_server, grpc_client):
    """Eight clients, each with its own slice of one region, reach the dynamic batcher together."""
    name = f"b{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, f"/naiadtest_{name}", 8 * 32)
    try:
        data = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]
        shm.set_shared_memory_region(handle, data)
        grpc_client.register_system_shared_memory(name, f"/naiadtest_{name}", 8 * 32)
        before = grpc_client.get_inference_statistics("batched_identity").model_stats[0].execution_count

        def one(i):
            with grpcclient.InferenceServerClient(shm_server.grpc_url) as client:
                tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
                tensor.set_shared_memory(name, 16, offset=i * 16)
                output = grpcclient.InferRequestedOutput("OUTPUT0")
                output.set_shared_memory(name, 16, offset=128 + i * 16)
                client.infer("batched_identity", [tensor], outputs=[output])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i in range(8):
            np.testing.assert_array_equal(
                shm.get_contents_as_numpy(handle, np.float32, [1, 4], offset=128 + i * 16), data[i])
        stats = grpc_client.get_inference_statistics("batched_identity").model_stats[0]
        assert stats.execution_count - before < 8, "the requests were not batched together"
    finally:
        grpc_client.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("model,array", [
    ("identity_fp32", np.linspace(0, 1, 12, dtype=np.float32).reshape(2, 6)),
    ("identity_bytes", np.array([[b"one", b"two"], [b"three", b""]], dtype=np.object_)),
])
def test_python_worker_process_reads_and_writes_shared_memory(grpc_client, region, model, array):
    name, key, handle = region
    is_bytes = array.dtype == object
    stored = serialize_byte_tensor(array) if is_bytes else array  # BYTES: length-prefixed elements
    shm.set_shared_memory_region(handle, [stored])
    raw_size = len(stored.item()) if is_bytes else array.nbytes
    grpc_client.register_system_shared_memory(name, key, 4096)
    datatype = "BYTES" if is_bytes else "FP32"
    tensor = grpcclient.InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_shared_memory(name, raw_size)
    output = grpcclient.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory(name, 2048, offset=2048)
    result = grpc_client.infer(model, [tensor], outputs=[output])
    written = result.get_output("OUTPUT0").parameters["shared_memory_byte_size"].int64_param
    assert written == raw_size
    back = shm.get_contents_as_numpy(handle, np.object_ if is_bytes else np.float32,
                                     list(array.shape), offset=2048)
    np.testing.assert_array_equal(back, array)


def test_framework_model_reads_shared_memory(grpc_client, region):
    name, key, handle = region
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    shm.set_shared_memory_region(handle, [x])
    grpc_client.register_system_shared_memory(name, key, 4096)
    tensor = grpcclient.InferInput("input", [3, 8], "FP32")
    tensor.set_shared_memory(name, x.nbytes)
    result = grpc_client.infer("torch_mlp", [tensor])
    module = torch.jit.load(str(SHIPPED_REPOSITORY / "torch_mlp" / "1" / "model.pt"))
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), expected, rtol=1e-5, atol=1e-6)


def test_status_and_unregister(grpc_client, http_client, region, shm_server):
    name, key, handle = region
    grpc_client.register_system_shared_memory(name, key, 1024, offset=512)
    grpc_client.register_system_shared_memory(name + "_b", key, 512)
    status = grpc_client.get_system_shared_memory_status(name, as_json=True)["regions"][name]
    assert status == {"name": name, "key": key, "offset": "512", "byte_size": "1024"}
    assert {r["name"] for r in http_client.get_system_shared_memory_status()} >= {name, name + "_b"}
    assert http_client.get_system_shared_memory_status(name)[0]["key"] == key
    http_client.unregister_system_shared_memory(name)
    with pytest.raises(InferenceServerException, match="no system shared-memory region"):
        grpc_client.get_system_shared_memory_status(name)
    grpc_client.unregister_system_shared_memory()
    assert http_client.get_system_shared_memory_status() == []
    metadata = grpc_client.get_server_metadata(as_json=True)
    assert "system_shared_memory" in metadata["extensions"]


# --- errors ----------------------------------------------------------------------------------------

def register_error(client, *args) -> str:
    with pytest.raises(InferenceServerException) as raised:
        client.register_system_shared_memory(*args)
    return str(raised.value)


def test_registration_errors(grpc_client, http_client, region):
    name, key, handle = region
    grpc_client.register_system_shared_memory(name, key, 4096)
    for client in (grpc_client, http_client):
        assert "already registered" in register_error(client, name, key, 64)
        assert "cannot open key" in register_error(client, "other", "/naiad_no_such_key", 64)
        assert "reach past the end" in register_error(client, "other", key, 4096, 64)
        assert "a client may register" in register_error(client, "other", "/../etc/passwd", 64)
        assert "a client may register" in register_error(client, "other", "/naiad-1-2", 64)
        assert "byte_size must be > 0" in register_error(client, "other", key, 0)
    with pytest.raises(InferenceServerException, match="no system shared-memory region 'nope'"):
        http_client.unregister_system_shared_memory("nope")


def infer_error(client, model: str, inputs, outputs=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, inputs, outputs=outputs)
    return raised.value


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_request_errors_name_the_tensor(grpc_client, http_client, region, protocol):
    client, module = (grpc_client, grpcclient) if protocol == "grpc" else (http_client, httpclient)
    name, key, handle = region
    client.register_system_shared_memory(name, key, 256)

    def simple_inputs(size=NBYTES, offset=0, region_name=name):
        first = module.InferInput("INPUT0", [1, 16], "INT32")
        first.set_shared_memory(region_name, size, offset=offset)
        second = module.InferInput("INPUT1", [1, 16], "INT32")
        second.set_data_from_numpy(B)
        return [first, second]

    cases = [
        (simple_inputs(offset=224), None, "input 'INPUT0': offset 224 and byte size 64 reach past the end"),
        (simple_inputs(size=32), None, "input 'INPUT0': shape [1, 16] of INT32 needs 64 bytes"),
        (simple_inputs(region_name="nope"), None, "input 'INPUT0': no shared-memory region 'nope'"),
    ]
    small = module.InferRequestedOutput("OUTPUT1")
    small.set_shared_memory(name, 16, offset=128)
    cases.append((simple_inputs(), [small], "output 'OUTPUT1' takes 64 bytes"))
    outside = module.InferRequestedOutput("OUTPUT0")
    outside.set_shared_memory(name, 64, offset=250)
    cases.append((simple_inputs(), [outside], "output 'OUTPUT0': offset 250 and byte size 64 reach past"))
    for inputs, outputs, message in cases:
        error = infer_error(client, "simple", inputs, outputs)
        assert message in str(error), str(error)
        assert error.status() in ("StatusCode.INVALID_ARGUMENT", "400"), error.status()


def test_unregister_while_a_request_uses_the_region(shm_server, grpc_client, region):
    """The slow model holds the region's input for 0.5 s while the region is unregistered: the request
    still gets its right answer, and the server goes on serving."""
    name, key, handle = region
    x = np.array([[500.0]], dtype=np.float32)  # the slow model sleeps this many milliseconds
    shm.set_shared_memory_region(handle, [x])
    grpc_client.register_system_shared_memory(name, key, 4096)
    answers = []

    def request():
        with grpcclient.InferenceServerClient(shm_server.grpc_url) as client:
            tensor = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
            tensor.set_shared_memory(name, 4)
            output = grpcclient.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory(name, 4, offset=64)
            answers.append(client.infer("slow", [tensor], outputs=[output]))

    thread = threading.Thread(target=request)
    thread.start()
    threading.Event().wait(0.2)
    grpc_client.unregister_system_shared_memory(name)
    thread.join(timeout=30)
    assert len(answers) == 1
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [1, 1], offset=64), x)
    inputs, _ = simple_request(grpcclient, name, in_region=(), out_region=())
    np.testing.assert_array_equal(grpc_client.infer("simple", inputs).as_numpy("OUTPUT0"), A + B)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_with_system_shared_memory(shm_server, protocol):
    url = shm_server.grpc_url if protocol == "grpc" else shm_server.http_url
    result = subprocess.run(
        [perf_analyzer(), "-m", "simple", "-i", protocol, "-u", url, "--shared-memory", "system",
         "--output-shared-memory-size", "64", "--concurrency-range", "2", "--measurement-interval", "500",
         "--stability-percentage", "100", "--max-trials", "10"],
        capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Throughput:" in output and "error" not in output.lower(), output
