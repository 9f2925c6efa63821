"""Bad input gets a clear error with the right code, on both protocols, and hurts no one else."""
from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.test_http import post

ONES = np.ones((1, 16), dtype=np.int32)


def grpc_request(model="simple", version="", inputs=None, outputs=(), raw=True):
    """A ModelInferRequest for `simple` built by hand; inputs are (name, datatype, shape, bytes)."""
    if inputs is None:
        inputs = [("INPUT0", "INT32", [1, 16], ONES.tobytes()), ("INPUT1", "INT32", [1, 16], ONES.tobytes())]
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, data in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(data)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def http_body(inputs=None, outputs=None) -> dict:
    if inputs is None:
        inputs = [("INPUT0", "INT32", [1, 16], [1] * 16), ("INPUT1", "INT32", [1, 16], [1] * 16)]
    body = {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


TWO = np.ones((2, 16), dtype=np.int32).tobytes()
NINE = np.ones((9, 16), dtype=np.int32).tobytes()

# (case, gRPC request, HTTP path, HTTP body, gRPC code, HTTP status, words the message must hold)
CASES = [
    ("unknown model", grpc_request(model="nope"), "/v2/models/nope/infer", http_body(),
     "NOT_FOUND", 404, ["Request for unknown model: 'nope' is not found"]),
    ("unknown version", grpc_request(version="9"), "/v2/models/simple/versions/9/infer", http_body(),
     "NOT_FOUND", 404, ["Request for unknown model: 'simple' version 9 is not found", "ready versions: 1"]),
    ("missing input", grpc_request(inputs=[("INPUT0", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["missing input 'INPUT1'", "INT32 [-1,16]"]),
    ("extra input", grpc_request(inputs=[("INPUT0", "INT32", [1, 16], ONES.tobytes()),
                                         ("INPUT1", "INT32", [1, 16], ONES.tobytes()),
                                         ("INPUT2", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 16], [1] * 16),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16),
                                                  ("INPUT2", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["unexpected input 'INPUT2'", "'INPUT0' (INT32 [-1,16])"]),
    ("misnamed input", grpc_request(inputs=[("input0", "INT32", [1, 16], ONES.tobytes()),
                                            ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("input0", "INT32", [1, 16], [1] * 16),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["unexpected input 'input0'"]),
    ("wrong datatype", grpc_request(inputs=[("INPUT0", "FP32", [1, 16], ONES.astype(np.float32).tobytes()),
                                            ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "FP32", [1, 16], [1.0] * 16),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0'", "expected datatype INT32, got FP32"]),
    ("unknown datatype", grpc_request(inputs=[("INPUT0", "INT33", [1, 16], ONES.tobytes()),
                                              ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT33", [1, 16], [1] * 16),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0'", "unknown datatype 'INT33'"]),
    ("wrong shape", grpc_request(inputs=[("INPUT0", "INT32", [1, 15], ONES[:, :15].tobytes()),
                                         ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 15], [1] * 15),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0'", "expected shape [-1,16], got [1,15]"]),
    ("batch over max_batch_size", grpc_request(inputs=[("INPUT0", "INT32", [9, 16], NINE),
                                                       ("INPUT1", "INT32", [9, 16], NINE)]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [9, 16], [1] * 144),
                                                  ("INPUT1", "INT32", [9, 16], [1] * 144)]),
     "INVALID_ARGUMENT", 400, ["batch size 9", "max_batch_size 8"]),
    ("batch sizes differ", grpc_request(inputs=[("INPUT0", "INT32", [1, 16], ONES.tobytes()),
                                                ("INPUT1", "INT32", [2, 16], TWO)]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 16], [1] * 16),
                                                  ("INPUT1", "INT32", [2, 16], [1] * 32)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT1'", "batch size 2 differs"]),
    ("byte size does not match shape", grpc_request(inputs=[("INPUT0", "INT32", [1, 16], ONES.tobytes()[:-4]),
                                                            ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 16], [1] * 15),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0'", "shape [1, 16]"]),
    ("negative dimension", grpc_request(inputs=[("INPUT0", "INT32", [-1, 16], b""),
                                                ("INPUT1", "INT32", [1, 16], ONES.tobytes())]),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [-1, 16], []),
                                                  ("INPUT1", "INT32", [1, 16], [1] * 16)]),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0'", "sizes >= 0"]),
    ("unknown requested output", grpc_request(outputs=["OUTPUT0", "OUTPUT9"]),
     "/v2/models/simple/infer", http_body(outputs=["OUTPUT0", "OUTPUT9"]),
     "INVALID_ARGUMENT", 400, ["unknown output 'OUTPUT9'", "OUTPUT0, OUTPUT1"]),
    ("input twice", grpc_request(inputs=[("INPUT0", "INT32", [1, 16], ONES.tobytes())] * 2),
     "/v2/models/simple/infer", http_body(inputs=[("INPUT0", "INT32", [1, 16], [1] * 16)] * 2),
     "INVALID_ARGUMENT", 400, ["input 'INPUT0' appears twice"]),
]


@pytest.mark.parametrize("case,request_,path,body,code,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_request(shipped_server, case, request_, path, body, code, status, words):
    with grpc.insecure_channel(shipped_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request_, timeout=5)
    assert raised.value.code() == grpc.StatusCode[code]
    for word in words:
        assert word in raised.value.details(), raised.value.details()
    got, _, raw = post(shipped_server, path, json.dumps(body).encode())
    message = json.loads(raw)["error"]
    assert got == status, message
    for word in words[:1]:
        assert word in message, message


def binary_case(header: bytes, binary: bytes, words: list[str]) -> list:
    return [(header + binary, {"Inference-Header-Content-Length": str(len(header))}, words)]


@pytest.mark.parametrize("body,headers,words", [
    (b"{not json", {}, ["not valid JSON"]),
    (b"[1, 2]", {}, ["JSON object with 'inputs'"]),
    (b'{"inputs": {}}', {}, ["'inputs' must be a JSON list"]),
    (b'{"inputs": [{"name": "INPUT0"}]}', {}, ["input 'INPUT0'", "missing 'datatype'"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16]}]}', {},
     ["input 'INPUT0'", "'data'"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [[1, 2], [3]]}]}', {},
     ["input 'INPUT0'", "row-major"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 2], "data": ["a", "b"]}]}', {},
     ["input 'INPUT0'", "INT32 data must be integers"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT8", "shape": [1, 1], "data": [300]}]}', {},
     ["input 'INPUT0'", "outside the range of INT8"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 1], "data": [1.5]}]}', {},
     ["input 'INPUT0'", "INT32 data must be integers"]),
    (b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1]}]}', {},
     ["input 'INPUT0'", "needs 16 elements, data holds 1"]),
    (b"{}" + b"x" * 10, {"Inference-Header-Content-Length": "99"}, ["Inference-Header-Content-Length"]),
    (b"{}", {"Inference-Header-Content-Length": "abc"}, ["Inference-Header-Content-Length"]),
    *binary_case(b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], '
                 b'"parameters": {"binary_data_size": 64}}]}', b"\0" * 10,
                 ["input 'INPUT0'", "binary_data_size 64 does not fit the 10 bytes"]),
    *binary_case(b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], '
                 b'"parameters": {"binary_data_size": 64}}, {"name": "INPUT1", "datatype": "INT32", '
                 b'"shape": [1, 16], "data": [' + b"1," * 15 + b'1]}]}', b"\0" * 70,
                 ["6 bytes of binary data follow"]),
    (b"[" * 100000, {}, ["not valid JSON"]),
])
def test_malformed_http(shipped_server, body, headers, words):
    status, _, raw = post(shipped_server, "/v2/models/simple/infer", body,
                          {"Content-Type": "application/json", **headers})
    message = json.loads(raw)["error"]
    assert status == 400, message
    for word in words:
        assert word in message, message


def test_grpc_raw_contents_count(shipped_server):
    request = grpc_request()
    request.raw_input_contents.append(b"extra")
    with grpc.insecure_channel(shipped_server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents holds 3 entries for 2 inputs" in raised.value.details()


@pytest.mark.parametrize("data,words", [
    (b"\x05\x00\x00\x00abcd", ["element 0 claims 5 bytes, only 4 remain"]),
    (b"\x04\x00\x00\x00abcd", ["holds 1 elements", "needs 2"]),
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00bEXTRA", ["5 bytes left over"]),
    (b"\x01\x00", ["cannot hold the 2 BYTES elements"]),
])
def test_malformed_bytes_tensor(server, data, words):
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(data)
    with grpc.insecure_channel(server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in ["input 'INPUT0'", *words]:
        assert word in raised.value.details(), raised.value.details()


def test_huge_claimed_shape_is_refused_without_allocating(server):
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1 << 40])
    request.raw_input_contents.append(b"\x00" * 8)
    other = service_pb2.ModelInferRequest(model_name="identity_fp32")
    other.inputs.add(name="INPUT0", datatype="FP32", shape=[1 << 31, 1 << 31])
    other.raw_input_contents.append(b"\x00" * 8)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for bad in (request, other):
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelInfer(bad, timeout=5)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.get("/v2/health/ready") == 200


def faulty_input(code: int) -> np.ndarray:
    return np.array([[code, 0, 0, 0]], dtype=np.int32)


@pytest.mark.parametrize("code,status,words", [
    (-1, "StatusCode.INTERNAL", ["model 'faulty' failed", "RuntimeError", "broke on purpose"]),
    (-2, "StatusCode.INVALID_ARGUMENT", ["bad value -2"]),
    (-3, "StatusCode.INTERNAL", ["output 'OUTPUT0'", "returned FP64", "configuration says INT32"]),
    (-4, "StatusCode.INTERNAL", ["no output 'OUTPUT0'"]),
    (-5, "StatusCode.INTERNAL", ["returned 0 responses for 1 requests"]),
    (-6, "StatusCode.INTERNAL", ["output 'OUTPUT0'", "shape [1, 1]", "expected [1, 4]"]),
])
def test_model_failures_fail_only_that_request(server, code, status, words):
    """A model that raises or answers wrongly fails its own request; the others keep succeeding."""
    failures, successes = [], []

    def good_requests():
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            for i in range(20):
                tensor = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
                tensor.set_data_from_numpy(faulty_input(i))
                successes.append(client.infer("faulty", [tensor]).as_numpy("OUTPUT0")[0, 0] == i)

    runner = threading.Thread(target=good_requests)
    runner.start()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _ in range(3):
            tensor = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
            tensor.set_data_from_numpy(faulty_input(code))
            with pytest.raises(InferenceServerException) as raised:
                client.infer("faulty", [tensor])
            failures.append(raised.value)
    runner.join()
    assert successes == [True] * 20
    for failure in failures:
        assert failure.status() == status
        for word in words:
            assert word in failure.message(), failure.message()
    http = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "INT32")
    tensor.set_data_from_numpy(faulty_input(code))
    with pytest.raises(InferenceServerException) as raised:
        http.infer("faulty", [tensor])
    assert raised.value.status() == {"StatusCode.INTERNAL": "500", "StatusCode.INVALID_ARGUMENT": "400"}[status]
    assert words[0] in raised.value.message()
