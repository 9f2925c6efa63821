"""Every gRPC RPC through tritonclient.grpc (sync) and tritonclient.grpc.aio."""
from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException


def simple_inputs(module, a: np.ndarray, b: np.ndarray):
    inputs = [module.InferInput("INPUT0", list(a.shape), "INT32"),
              module.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


@pytest.fixture
def client(shipped_server):
    with grpcclient.InferenceServerClient(shipped_server.grpc_url) as c:
        yield c


def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "naiad"
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata["extensions"])


def test_model_ready_and_metadata(client):
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("no_such_model")
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["name"] == "simple" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]},
                                  {"name": "INPUT1", "datatype": "INT32", "shape": ["-1", "16"]}]
    assert [o["name"] for o in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_config(client):
    config = client.get_model_config("simple").config
    assert config.name == "simple" and config.backend == "python" and config.max_batch_size == 8
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("INPUT0", grpcclient.model_config_pb2.TYPE_INT32, [16]),
        ("INPUT1", grpcclient.model_config_pb2.TYPE_INT32, [16])]
    assert config.instance_group[0].kind == grpcclient.model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_infer(client):
    result = client.infer("simple", simple_inputs(grpcclient, A, B), request_id="abc")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    response = result.get_response()
    assert response.id == "abc" and response.model_name == "simple" and response.model_version == "1"


def test_infer_requested_output_and_max_batch(client):
    a = np.arange(8 * 16, dtype=np.int32).reshape(8, 16)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", simple_inputs(grpcclient, a, a), outputs=outputs, model_version="1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros_like(a))
    assert result.as_numpy("OUTPUT0") is None


def test_stream_infer(client):
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        for i in range(5):
            client.async_stream_infer("simple", simple_inputs(grpcclient, A + i, B), request_id=str(i))
        client.async_stream_infer("no_such_model", simple_inputs(grpcclient, A, B), request_id="bad")
        got = [responses.get(timeout=10) for _ in range(6)]
    finally:
        client.stop_stream()
    results = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert sorted(results) == ["0", "1", "2", "3", "4"]
    for i, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + int(i) + B)
    assert len(errors) == 1 and "Request for unknown model: 'no_such_model' is not found" in str(errors[0])


def test_statistics(client):
    before = client.get_inference_statistics("simple", as_json=True)["model_stats"][0]
    client.infer("simple", simple_inputs(grpcclient, A, B))
    after = client.get_inference_statistics("simple", "1", as_json=True)["model_stats"][0]
    assert after["name"] == "simple" and after["version"] == "1"
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))
    assert success(after) == success(before) + 1
    assert int(after["execution_count"]) >= 1 and int(after["last_inference"]) > 0
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {"simple", "simple_string", "tokenizer"} <= {s["name"] for s in everything}


def test_repository_index(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "simple", "version": "1", "state": "READY"} in index


def test_load_and_unload_refused_outside_explicit_mode(client):
    with pytest.raises(InferenceServerException, match="explicit"):
        client.load_model("simple")
    with pytest.raises(InferenceServerException, match="explicit"):
        client.unload_model("simple")


@pytest.mark.parametrize("call,why", [
    (lambda c: c.get_system_shared_memory_status(), "--allow-client-shm"),
    (lambda c: c.register_system_shared_memory("r", "/key", 16), "--allow-client-shm"),
    (lambda c: c.get_cuda_shared_memory_status(), "--allow-client-shm"),
    (lambda c: c.get_trace_settings(), "not supported yet"),
])
def test_unimplemented_extensions_say_so(client, call, why):
    with pytest.raises(InferenceServerException, match=why) as raised:
        call(client)
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"


def test_health_service(shipped_server):
    # grpc.health.v1 as Kubernetes' gRPC probe calls it, with a hand-encoded HealthCheckRequest
    with grpc.insecure_channel(shipped_server.grpc_url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        reply = check(b"", timeout=5)                      # service "" (the whole server)
        assert reply == b"\x08\x01"                         # status: SERVING
        named = check(b"\x0a\x1einference.GRPCInferenceService", timeout=5)
        assert named == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as raised:
            check(b"\x0a\x07unknown", timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_raw_stub_typed_contents(shipped_server):
    """Inputs as typed `contents` instead of raw bytes, through Triton's own generated stub."""
    with grpc.insecure_channel(shipped_server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name, values in (("INPUT0", A), ("INPUT1", B)):
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents.extend(values.reshape(-1).tolist())
        response = stub.ModelInfer(request, timeout=5)
        out = np.frombuffer(response.raw_output_contents[0], dtype=np.int32).reshape(1, 16)
        np.testing.assert_array_equal(out, A + B)


def test_aio_client(shipped_server):
    async def scenario():
        async with aiogrpc.InferenceServerClient(shipped_server.grpc_url) as client:
            assert await client.is_server_live()
            assert await client.is_server_ready()
            assert await client.is_model_ready("simple")
            assert (await client.get_server_metadata()).name == "naiad"
            assert (await client.get_model_metadata("simple")).platform == "python"
            assert (await client.get_model_config("simple")).config.max_batch_size == 8
            results = await asyncio.gather(*(
                client.infer("simple", simple_inputs(aiogrpc, A + i, B)) for i in range(20)))
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + i + B)
            stats = await client.get_inference_statistics("simple")
            assert stats.model_stats[0].inference_stats.success.count >= 20
            index = await client.get_model_repository_index()
            assert "simple" in {m.name for m in index.models}

            async def requests():
                for i in range(3):
                    yield {"model_name": "simple", "inputs": simple_inputs(aiogrpc, A, B + i),
                           "request_id": str(i)}

            streamed = [r async for r in client.stream_infer(requests())]
            assert sorted(r.get_response().id for r, e in streamed if e is None) == ["0", "1", "2"]
    asyncio.run(scenario())
