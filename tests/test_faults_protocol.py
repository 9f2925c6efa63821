"""Faults at the protocol and configuration edge: a stream client that never reads is held back,
configurations beyond naiad's bounds are refused at load, model names follow one rule on every path and
cannot forge metrics, a load cannot reach outside its model's folder, and malformed tensors get
INVALID_ARGUMENT / 400 with Triton's wording where clients match on it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from naiad.daemon.metrics import _labels, escape_label
from tests import models
from tests.conftest import descendants, session_server
from tests.test_http import post

IDENTITY_CODE = models.IDENTITY.replace("\n    ", "\n").encode()
# a model whose code, if it ever ran, leaves a mark beside it
MARKING_CODE = b"import pathlib\npathlib.Path(__file__).with_name('ran').write_text('ran')\n" + IDENTITY_CODE


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("faults_protocol_repository")
    models.write_model(repository, "echo", models.batched("INT32"), models.IDENTITY)
    models.write_model(repository, "echo_bytes", models.batched("BYTES"), models.IDENTITY)
    models.write_model(repository, "_private", models.batched("INT32"), models.IDENTITY)
    models.write_model(repository, "broken", models.batched("INT32"), "raise RuntimeError('no')\n")
    outside = repository / "_elsewhere" / "1"
    outside.mkdir(parents=True)
    (outside / "model.py").write_bytes(MARKING_CODE)
    yield from session_server(repository, tmp_path_factory, "faults_protocol", "--model-control-mode",
                              "explicit", "--load-model", "echo", "--load-model", "echo_bytes")


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def echo_request(model: str = "echo", elements: int = 4) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, elements])
    request.raw_input_contents.append(np.arange(elements, dtype=np.int32).tobytes())
    return request


def grpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, timeout=10)
    return raised.value


def http_error(server, path: str, body: bytes) -> tuple[int, str]:
    status, _, raw = post(server, path, body)
    return status, json.loads(raw)["error"]


def load_over_grpc(stub, name: str, config: dict, files: dict[str, bytes] | None = None, timeout: float = 60):
    request = pb.RepositoryModelLoadRequest(model_name=name)
    request.parameters["config"].string_param = json.dumps(config)
    for key, content in (files or {}).items():
        request.parameters[key].bytes_param = content
    return stub.RepositoryModelLoad(request, timeout=timeout)


# --- backpressure on ModelStreamInfer ------------------------------------------------------------

def _process_tree_rss_mb(pid: int) -> float:
    """The resident memory of a process and all its descendants (frontend and worker processes)."""
    tree = {pid} | descendants(pid)
    total_kb = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


def test_a_stream_client_that_never_reads_is_held_back(server, stub):
    message = echo_request(elements=16384)  # 64 KiB in, 64 KiB back
    sending_for = 2.0
    sent = 0
    sender_done = threading.Event()
    deadline = time.monotonic() + sending_for

    def requests():
        nonlocal sent
        while time.monotonic() < deadline:
            sent += 1
            yield message
        sender_done.set()

    rss_before = _process_tree_rss_mb(server.process.pid)
    with grpc.insecure_channel(server.grpc_url) as channel:
        # the responses are never read
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
        try:
            # without a bound, the sender runs to its deadline (thousands of requests); with one, the
            # server stops reading and flow control blocks the sender long before
            assert not sender_done.wait(timeout=sending_for + 2), f"the sender was never held back ({sent} sent)"
            assert sent < 1000, sent
            growth = _process_tree_rss_mb(server.process.pid) - rss_before
            assert growth < 100, f"the server grew by {growth:.0f} MB for {sent} requests"
            # other clients are answered meanwhile
            reply = stub.ModelInfer(echo_request(), timeout=10)
            assert np.frombuffer(reply.raw_output_contents[0], np.int32).tolist() == [0, 1, 2, 3]
        finally:
            call.cancel()
    assert server.get("/v2/health/ready") == 200 and server.get("/v2/models/echo/ready") == 200


def test_an_undecodable_message_in_a_stream_is_answered_and_the_stream_goes_on(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                       request_serializer=lambda data: data,
                                       response_deserializer=pb.ModelStreamInferResponse.FromString)
        bad = b"\x0a\x03\xed\xa0\x80"  # model_name: the UTF-8 form of a lone surrogate
        replies = list(stream(iter([bad, echo_request().SerializeToString()]), timeout=10))
    assert "ModelInferRequest message cannot be parsed" in replies[0].error_message
    assert replies[1].error_message == "" and replies[1].infer_response.model_name == "echo"


# --- configuration limits ------------------------------------------------------------------------

def test_priority_levels_beyond_the_bound_are_refused_at_load_and_by_validate(server, stub, tmp_path):
    config = models.batched("INT32") | {"dynamic_batching": {"priority_levels": 2000000}}
    expected = "dynamic_batching.priority_levels: expected 0 (no priorities) to 128, got 2000000"
    error = grpc_error(load_over_grpc, stub, "many_levels", config, {"file:1/model.py": IDENTITY_CODE})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in error.details()

    models.write_model(tmp_path, "many_levels", config, models.IDENTITY)
    checked = subprocess.run([sys.executable, "-m", "naiad.daemon", "validate", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1 and expected in checked.stdout, checked.stdout
    assert server.get("/v2/models/echo/ready") == 200


# --- model names: one rule, and metrics that cannot be forged ------------------------------------

def test_label_values_are_escaped():
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert _labels(model='x"} 1\nforged{a="', version=1) == '{model="x\\"} 1\\nforged{a=\\"",version="1"}'


@pytest.mark.parametrize("name,why", [('evil"}\nnv_forged 1', "printable characters only"),
                                      ("_private", "starting with '.' or '_' are not models")])
def test_a_name_that_is_not_a_model_name_is_refused_on_both_protocols(server, stub, name, why):
    error = grpc_error(load_over_grpc, stub, name, models.batched("INT32"), {"file:1/model.py": IDENTITY_CODE})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a model name" in error.details() and why in error.details()
    status, message = http_error(server, f"/v2/repository/models/{urllib.parse.quote(name, safe='')}/load",
                                 b"{}")
    assert status == 400 and "is not a model name" in message and why in message
    assert server.get("/v2/models/_private/ready") != 200


def test_a_model_name_cannot_forge_metrics(server, stub):
    name = 'q"} 7 x{model="y'
    load_over_grpc(stub, name, models.batched("INT32"), {"file:1/model.py": IDENTITY_CODE})
    stub.ModelInfer(echo_request(name), timeout=10)
    assert server.get(f"/v2/models/{urllib.parse.quote(name, safe='')}/ready") == 200  # HTTP reaches it too
    text = server.metrics()
    value = r'"(?:[^"\\\n]|\\.)*"'
    sample = re.compile(rf"^[a-zA-Z_:][a-zA-Z0-9_:]*\{{[a-z_]+={value}(?:,[a-z_]+={value})*\}} \S+$")
    bad = [line for line in text.splitlines() if line and not line.startswith("#") and not sample.match(line)]
    assert bad == []
    assert 'nv_inference_count{model="q\\"} 7 x{model=\\"y",version="1"} 1' in text
    assert 'model="y"' not in text


# --- the load API stays inside the model's folder ------------------------------------------------

@pytest.mark.parametrize("filename", ["../../_elsewhere/1/model.py", "sub/model.py"])
def test_default_model_filename_must_name_a_file_of_the_version_folder(server, stub, filename):
    config = models.batched("INT32") | {"default_model_filename": filename}
    error = grpc_error(load_over_grpc, stub, "echo", config)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "default_model_filename: expected a plain file name inside the version folder" in error.details()
    assert filename in error.details()
    status, message = http_error(server, "/v2/repository/models/echo/load",
                                 json.dumps({"parameters": {"config": json.dumps(config)}}).encode())
    assert status == 400 and "default_model_filename" in message
    assert not (server.repository / "_elsewhere" / "1" / "ran").exists()  # its code never ran
    # the refused reload left the model serving
    reply = stub.ModelInfer(echo_request(), timeout=10)
    assert np.frombuffer(reply.raw_output_contents[0], np.int32).tolist() == [0, 1, 2, 3]


# --- malformed tensors: INVALID_ARGUMENT / 400 ---------------------------------------------------

def _grpc_input(datatype: str, shape: list[int], raw: bytes | None = None, **contents) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo_bytes" if datatype == "BYTES" else "echo")
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def _http_input(datatype: str, shape: list[int], data: list) -> tuple[str, bytes]:
    model = "echo_bytes" if datatype == "BYTES" else "echo"
    body = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}]}
    return f"/v2/models/{model}/infer", json.dumps(body).encode()


OVERFLOW = [0, 2 ** 62, 2 ** 62]
MALFORMED = [
    ("element count overflows", _grpc_input("INT32", OVERFLOW, b""), _http_input("INT32", OVERFLOW, []),
     "input 'INPUT0': shape [0, 4611686018427387904, 4611686018427387904] is too large"),
    ("65 dimensions", _grpc_input("INT32", [1] * 65, b"\0" * 4), _http_input("INT32", [1] * 65, [1]),
     "input 'INPUT0': shape has 65 dimensions; at most 64 are allowed"),
    ("raw and typed contents", _grpc_input("INT32", [1, 1], b"\0" * 4, int_contents=[1]), None,
     "input 'INPUT0': has data in contents while its data is in raw_input_contents"),
    # json.dumps writes a lone surrogate as the escape \ud800, as any JSON client may
    ("lone surrogate in JSON text", None, _http_input("BYTES", [1, 1], ["\ud800"]),
     "input 'INPUT0': BYTES element 0 is not valid Unicode text"),
    ("string field not UTF-8", b"\x0a\x03\xed\xa0\x80", None,
     "the ModelInferRequest message cannot be parsed"),
]


@pytest.mark.parametrize("case,grpc_request,http_request,words", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_tensors_are_invalid_arguments(server, case, grpc_request, http_request, words):
    if grpc_request is not None:
        raw = grpc_request if isinstance(grpc_request, bytes) else grpc_request.SerializeToString()
        with grpc.insecure_channel(server.grpc_url) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                        request_serializer=lambda data: data,
                                        response_deserializer=pb.ModelInferResponse.FromString)
            error = grpc_error(infer, raw)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    if http_request is not None:
        status, message = http_error(server, *http_request)
        assert status == 400 and words in message, message
    assert server.get("/v2/health/ready") == 200


def test_bytes_elements_are_bytes_over_grpc(stub):
    # BYTES is binary over gRPC: the UTF-8 form of a surrogate is data like any other
    reply = stub.ModelInfer(_grpc_input("BYTES", [1, 1], bytes_contents=[b"\xed\xa0\x80"]), timeout=10)
    assert reply.raw_output_contents[0] == b"\x03\x00\x00\x00\xed\xa0\x80"


# --- Triton's wording for a model that cannot serve ----------------------------------------------

def test_lookup_errors_start_like_tritons(server, stub):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="failed to load model 'broken'"):
            client.load_model("broken")
    cases = [("nope", "", grpc.StatusCode.NOT_FOUND, 404, "Request for unknown model: 'nope' is not found"),
             ("echo", "7", grpc.StatusCode.NOT_FOUND, 404,
              "Request for unknown model: 'echo' version 7 is not found"),
             ("broken", "", grpc.StatusCode.UNAVAILABLE, 503,
              "Request for unknown model: 'broken' has no available versions")]
    for model, version, code, status, prefix in cases:
        request = echo_request(model)
        request.model_version = version
        error = grpc_error(stub.ModelInfer, request)
        assert error.code() == code and error.details().startswith(prefix), error.details()
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        got, message = http_error(server, path, _http_input("INT32", [1, 1], [1])[1])
        assert got == status and message.startswith(prefix), message
