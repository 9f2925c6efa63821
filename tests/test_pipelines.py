"""Decoupled (streaming) models, BLS calls between models, and the generate endpoints."""
from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import NaiadServer, session_server, wait_until
from tests.models import write_model
from tests.pipeline_models import fp32_config, write_pipeline_models


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    repository = tmp_path_factory.mktemp("pipelines")
    write_pipeline_models(repository)
    yield from session_server(repository, tmp_path_factory, "pipelines")


def tensor(module, name: str, array: np.ndarray, datatype: str):
    t = module.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def repeat_inputs(module, count: int, delay: float = 0.0):
    return [tensor(module, "COUNT", np.array([count], np.int32), "INT32"),
            tensor(module, "DELAY", np.array([delay], np.float32), "FP32")]


def read_stream(answers: queue.Queue, finals: int, flagged: bool = True) -> dict[str, list]:
    """Each request id's (OUT value or None, final flag) in arrival order, until `finals` have ended."""
    got: dict[str, list] = {}
    ended = 0
    while ended < finals:
        result, error = answers.get(timeout=20)
        assert error is None, error
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param if flagged else None
        out = result.as_numpy("OUT")
        got.setdefault(response.id, []).append((None if out is None else int(out[0]), final))
        ended += bool(final)
    return got


@pytest.mark.parametrize("model", ["repeat", "repeat_thread"])
def test_decoupled_streams_deliver_in_order_then_final(pipelines, model):
    """Concurrent requests on two streams: each gets its N responses in order, then the final flag
    (an empty response, as the request asked); a request for none gets the final one only."""
    streams = []
    for s in range(2):
        answers: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(pipelines.grpc_url)
        client.start_stream(callback=lambda result, error, answers=answers: answers.put((result, error)))
        for count in (3, 0, 5):
            client.async_stream_infer(model, repeat_inputs(grpcclient, count, 0.005), request_id=f"{s}-{count}",
                                      enable_empty_final_response=True)
        streams.append((client, answers))
    for s, (client, answers) in enumerate(streams):
        got = read_stream(answers, 3)
        client.stop_stream()
        client.close()
        for count in (3, 0, 5):
            assert got[f"{s}-{count}"] == [(i, False) for i in range(count)] + [(None, True)]


def test_decoupled_without_the_final_flag_sends_only_responses(pipelines):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("repeat", repeat_inputs(grpcclient, 4), request_id="a")
        values = []
        for _ in range(4):
            result, error = answers.get(timeout=20)
            assert error is None
            assert "triton_final_response" not in result.get_response().parameters
            values.append(int(result.as_numpy("OUT")[0]))
        client.stop_stream()
    assert values == [0, 1, 2, 3]
    assert answers.empty()


@pytest.mark.parametrize("count, message", [
    (-1, "model 'repeat' failed: ValueError: a count of -1 fails the batch"),
    (-2, "a count of -2 is refused"),
])
def test_a_decoupled_models_errors_reach_the_stream(pipelines, count, message):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("repeat", repeat_inputs(grpcclient, count), request_id="e")
        client.async_stream_infer("repeat", repeat_inputs(grpcclient, 1), request_id="ok")
        got = [answers.get(timeout=20) for _ in range(2)]
        client.stop_stream()
    errors = [str(error) for result, error in got if error is not None]
    assert len(errors) == 1 and message in errors[0]
    assert [result.as_numpy("OUT").tolist() for result, error in got if error is None] == [[0]]


def test_asyncio_client_streams_a_decoupled_model(pipelines):
    async def run():
        async with grpcaio.InferenceServerClient(pipelines.grpc_url) as client:
            answered = asyncio.Event()

            async def requests():
                for count in (2, 3):
                    yield {"model_name": "repeat", "inputs": repeat_inputs(grpcaio, count), "request_id": str(count)}
                await answered.wait()  # the stream stays open until every answer is in

            got: dict[str, list] = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None
                got.setdefault(result.get_response().id, []).append(int(result.as_numpy("OUT")[0]))
                if sum(map(len, got.values())) == 5:
                    answered.set()
                    break
            return got

    assert asyncio.run(run()) == {"2": [0, 1], "3": [0, 1, 2]}


def test_cancelling_a_stream_reaches_the_models_sender(pipelines, tmp_path):
    """The client cancels its stream: the model sees is_cancelled() and stops."""
    marker = tmp_path / "marker"
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(pipelines.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("until_cancelled", [tensor(grpcclient, "COUNT", np.array([1], np.int32), "INT32")],
                              parameters={"marker": str(marker)})
    for _ in range(3):
        result, error = answers.get(timeout=20)
        assert error is None
    client.stop_stream(cancel_requests=True)
    client.close()
    wait_until(marker.exists, "the model to notice the cancellation")
    assert wait_until(marker.read_text, "the marker's text") == "cancelled"


def test_a_decoupled_model_over_model_infer_must_send_one_response(pipelines):
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        assert client.infer("repeat", repeat_inputs(grpcclient, 1)).as_numpy("OUT").tolist() == [0]
        with pytest.raises(InferenceServerException, match="decoupled and sent 2 responses.*stream"):
            client.infer("repeat", repeat_inputs(grpcclient, 2))
    with httpclient.InferenceServerClient(pipelines.http_url) as client:
        assert client.infer("repeat", repeat_inputs(httpclient, 1)).as_numpy("OUT").tolist() == [0]


# --- BLS ------------------------------------------------------------------------------------------

X = np.array([[1, 2]], np.float32)


@pytest.mark.parametrize("model, expected", [
    ("bls_sync", (X + 1) * 2),          # a worker process calls add_one
    ("bls_sync_thread", (X + 1) * 2),   # the same from a thread in the server's process
    ("bls_fan_out", (X + 1) + X * 2),   # async_exec to two models at once, merged
    ("bls_threads", (X + 1) + 2 * X * 2),   # exec() from the model's own thread and two others at once
    ("bls_router", X + 1),              # routed by a rule to add_one
])
def test_bls_calls(pipelines, model, expected):
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        result = client.infer(model, [tensor(grpcclient, "INPUT0", X, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)


def test_large_bls_tensors_cross_through_shared_memory(pipelines):
    """Tensors over 64 KiB go between the worker process and the server in shared-memory files of
    their own, each unlinked by its reader: none is left behind."""
    x = np.arange(300_000, dtype=np.float32).reshape(1, -1)   # 1.2 MB each way
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        before = None
        for _ in range(4):
            result = client.infer("bls_sync", [tensor(grpcclient, "INPUT0", x, "FP32")])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (x + 1) * 2)
            # after the first call the instances' own segments have grown to fit: nothing more comes
            before = before or set(os.listdir("/dev/shm"))
    assert set(os.listdir("/dev/shm")) == before


def test_share_tensors_uses_a_file_of_their_own_above_64_kib():
    from naiad.batching.processes import SharedTensors, share_tensors, take_tensors

    small = {"x": np.ones(16, np.float32), "t": np.array([b"text"], dtype=object)}
    packed = share_tensors(small)
    assert not isinstance(packed, SharedTensors)  # inside the message
    np.testing.assert_array_equal(take_tensors(packed)["x"], small["x"])
    assert take_tensors(packed)["t"].tolist() == [b"text"]
    large = {"x": np.arange(100_000, dtype=np.float32), "t": np.array([b"text"], dtype=object)}
    shared = share_tensors(large)
    assert isinstance(shared, SharedTensors) and os.path.exists(shared.path)
    taken = take_tensors(shared)
    assert not os.path.exists(shared.path)  # unlinked by its reader, mapped while the arrays live
    np.testing.assert_array_equal(taken["x"], large["x"])
    assert taken["t"].tolist() == [b"text"]


def test_bls_is_refused_on_the_event_loop(pipelines):
    """A model with execution: inline runs on the server's event loop, which must never wait."""
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="execution: inline.*cannot wait for another model"):
            client.infer("bls_sync_inline", [tensor(grpcclient, "INPUT0", X, "FP32")])


def test_bls_router_takes_the_other_branch(pipelines):
    with httpclient.InferenceServerClient(pipelines.http_url) as client:
        result = client.infer("bls_router", [tensor(httpclient, "INPUT0", -X, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), -X * 2)


def test_bls_errors_come_back_to_the_model(pipelines):
    """An unknown callee: the model reads the error's code (NOT_FOUND is 2) and Triton's message."""
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        text = client.infer("bls_call_error", [tensor(grpcclient, "INPUT0", X, "FP32")]).as_numpy("TEXT")
    assert text[0, 0].decode() == ("2: Request for unknown model: 'no_such_model' is not found: no model of "
                                   "that name is loaded")


def test_a_model_that_calls_itself_is_ended_by_the_calls_timeout(pipelines):
    """Its one instance waits for itself: the call's timeout (300 ms) ends the wait, and the server
    goes on serving the model."""
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        started = time.monotonic()
        text = client.infer("bls_call_error", [tensor(grpcclient, "INPUT0", X, "FP32")],
                            parameters={"callee": "bls_call_error"}, client_timeout=20).as_numpy("TEXT")
        assert time.monotonic() - started < 10
        assert "did not finish within its timeout of 0.3 s" in text[0, 0].decode()
        again = client.infer("bls_call_error", [tensor(grpcclient, "INPUT0", X, "FP32")]).as_numpy("TEXT")
        assert "unknown model" in again[0, 0].decode()


def test_bls_streams_a_decoupled_callee(pipelines):
    with grpcclient.InferenceServerClient(pipelines.grpc_url) as client:
        assert client.infer("bls_stream", repeat_inputs(grpcclient, 4)).as_numpy("OUT").tolist() == [0, 1, 2, 3]


# --- generate --------------------------------------------------------------------------------------

def post(server, path: str, body: dict) -> tuple[int, bytes, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def test_generate_maps_fields_to_tensors(pipelines):
    status, body, _ = post(pipelines, "/v2/models/words/generate", {"text_input": "hello there", "max_tokens": 1})
    assert status == 200, body
    assert json.loads(body) == {"model_name": "words", "model_version": "1", "text_output": "hello"}


def test_generate_stream_sends_server_sent_events(pipelines):
    status, body, kind = post(pipelines, "/v2/models/words/versions/1/generate_stream",
                              {"text_input": "one two three", "id": "42"})
    assert status == 200 and kind.startswith("text/event-stream")
    events = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n\n") if line]
    assert [e["text_output"] for e in events] == ["one", "two", "three"]
    assert all(e["id"] == "42" and e["model_name"] == "words" for e in events)


def test_generate_errors(pipelines):
    status, body, _ = post(pipelines, "/v2/models/words/generate", {"text": "hello"})
    assert status == 400 and "field 'text' is not an input of model 'words'" in json.loads(body)["error"]
    status, body, _ = post(pipelines, "/v2/models/nowhere/generate_stream", {"text_input": "x"})
    assert status == 404 and "nowhere" in json.loads(body)["error"]
    status, body, _ = post(pipelines, "/v2/models/words/generate", {"text_input": "a b"})
    assert status == 400 and "sent 2 responses" in json.loads(body)["error"]


# --- a callee unloaded in the middle of a call ------------------------------------------------------

SLOW_CALLEE = """
    import time
    from pathlib import Path
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.marker = Path(args["model_repository"]).parent / "callee_started"

        def execute(self, requests):
            self.marker.write_text("started")
            time.sleep(1.0)
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1)]) for r in requests]
"""

CALLS_SLOW_CALLEE = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceRequest(model_name="slow_callee", requested_output_names=["OUTPUT0"],
                                              inputs=[pb_utils.get_input_tensor_by_name(r, "INPUT0")]).exec()
                    for r in requests]
"""


def test_a_callee_unloaded_mid_call_finishes_the_call(tmp_path):
    repository = tmp_path / "repository"
    write_model(repository, "slow_callee", fp32_config("thread"), SLOW_CALLEE)
    write_model(repository, "bls_caller", fp32_config(), CALLS_SLOW_CALLEE)
    server = NaiadServer(repository, tmp_path / "naiad.log", "--model-control-mode", "explicit",
                         "--load-model", "*").wait_ready()
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            answers = []
            call = threading.Thread(target=lambda: answers.append(
                client.infer("bls_caller", [tensor(grpcclient, "INPUT0", X, "FP32")]).as_numpy("OUTPUT0")))
            call.start()
            wait_until((repository / "callee_started").exists, "the callee to start")
            client.unload_model("slow_callee")   # waits for the call in flight to finish
            call.join(timeout=20)
            np.testing.assert_array_equal(answers[0], X + 1)
            with pytest.raises(InferenceServerException, match="Request for unknown model: 'slow_callee'"):
                client.infer("bls_caller", [tensor(grpcclient, "INPUT0", X, "FP32")])
            assert client.is_model_ready("bls_caller")
    finally:
        assert server.stop() == 0, server.log()


# --- the shipped examples ---------------------------------------------------------------------------

FEATURES = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)


def test_shipped_router_and_fan_out_answer_as_the_model_they_call(shipped_server):
    with grpcclient.InferenceServerClient(shipped_server.grpc_url) as client:
        expected = client.infer("onnx_mlp", [tensor(grpcclient, "x", FEATURES, "FP32")]).as_numpy("probabilities")
        for route in ("onnx", "torch"):
            result = client.infer("mlp_router", [tensor(grpcclient, "FEATURES", FEATURES, "FP32")],
                                  parameters={"route": route})
            np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), expected, rtol=1e-5)
            assert result.as_numpy("ROUTE").tolist() == [[route.encode()]] * 2
        with pytest.raises(InferenceServerException, match="parameter 'route' must be one of onnx, torch"):
            client.infer("mlp_router", [tensor(grpcclient, "FEATURES", FEATURES, "FP32")],
                         parameters={"route": "tea leaves"})
        average = client.infer("mlp_average", [tensor(grpcclient, "FEATURES", FEATURES, "FP32")])
        np.testing.assert_allclose(average.as_numpy("PROBABILITIES"), expected, rtol=1e-5)


def test_shipped_word_stream(shipped_server):
    status, body, _ = post(shipped_server, "/v2/models/word_stream/generate_stream",
                           {"text_input": "streams one word at a time", "max_tokens": 4})
    assert status == 200
    words = [json.loads(line[len(b"data: "):])["text_output"] for line in body.split(b"\n\n") if line]
    assert words == ["streams", "one", "word", "at"]


# --- a repository in Triton's own format ----------------------------------------------------------

def pbtxt(name: str, inputs: str, outputs: str, extra: str = "") -> str:
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
            f"input [{inputs}]\noutput [{outputs}]\n{extra}")


FP32_IO = ('{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }', '{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }')


def test_a_triton_repository_with_bls_and_decoupled_models_runs_unchanged(tmp_path):
    from tests.pipeline_models import ADD_ONE, BLS_SYNC, REPEAT

    repository = tmp_path / "repository"
    for name, code, config in [
        ("add_one", ADD_ONE, pbtxt("add_one", *FP32_IO)),
        ("bls_sync", BLS_SYNC, pbtxt("bls_sync", *FP32_IO, 'instance_group [{ kind: KIND_CPU count: 2 }]')),
        ("repeat", REPEAT, pbtxt("repeat", '{ name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },'
                                           '{ name: "DELAY" data_type: TYPE_FP32 dims: [ 1 ] }',
                                 '{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }',
                                 "model_transaction_policy { decoupled: True }").replace("max_batch_size: 8", "max_batch_size: 0")),
    ]:
        write_model(repository, name, None, code)
        (repository / name / "config.pbtxt").write_text(config)
    server = NaiadServer(repository, tmp_path / "naiad.log").wait_ready()
    try:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            result = client.infer("bls_sync", [tensor(grpcclient, "INPUT0", X, "FP32")])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (X + 1) * 2)
            answers: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            client.async_stream_infer("repeat", repeat_inputs(grpcclient, 2), request_id="t",
                                      enable_empty_final_response=True)
            assert read_stream(answers, 1) == {"t": [(0, False), (1, False), (None, True)]}
            client.stop_stream()
    finally:
        assert server.stop() == 0, server.log()
