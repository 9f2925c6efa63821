"""The server's processes over its life: SIGTERM lets requests in flight finish, a port in use is a clear
error, and a frontend process that dies under load comes back while the server stays ready."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request

import numpy as np
import pytest

from tests import models
from tests.conftest import SHIPPED_REPOSITORY, NaiadServer, copy_model

SIMPLE_BODY = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}).encode()


def post(server: NaiadServer, path: str, body: bytes, timeout: float = 30) -> dict:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def test_sigterm_lets_requests_in_flight_finish(repository, start_server):
    models.write_model(repository, "slow", models.batched("FP32", (1,)), models.SLOW)
    server = start_server(repository)
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1],
                                   "data": [800.0]}]}).encode()   # the model sleeps 800 ms
    answers, errors = [], []

    def one():
        try:
            answers.append(post(server, "/v2/models/slow/infer", body))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(answers) == 3
    assert all(a["outputs"][0]["data"] == [800.0] for a in answers)
    assert server.process.wait(timeout=30) == 0


def test_port_in_use_is_a_clear_error(repository, start_server, tmp_path):
    first = start_server(repository)
    second = NaiadServer(repository, tmp_path / "second.log", "--grpc-port", str(first.grpc_port))
    assert second.process.wait(timeout=60) == 1
    assert f"cannot listen on 127.0.0.1:{first.grpc_port}; is the port in use?" in second.log()
    assert "Traceback" not in second.log()


def frontend_pids(server: NaiadServer) -> dict[int, int]:
    """Frontend index -> pid of its newest process, from the server's log."""
    return {int(i): int(pid) for i, pid in re.findall(r"frontend process (\d+) listening \(pid (\d+)\)",
                                                      server.log())}


def test_a_killed_frontend_fails_only_its_requests_and_comes_back(tmp_path, start_server):
    """Requests fail only while the killed process goes away (those it held, and connections the kernel
    handed its closing socket); once it is back, the load runs with no failure."""
    repository = tmp_path / "models"
    copy_model(SHIPPED_REPOSITORY, "simple", repository)
    server = start_server(repository, "--frontends", "2")
    before = frontend_pids(server)
    assert sorted(before) == [0, 1]
    stop, done, failed = threading.Event(), [], []

    def load():
        while not stop.is_set():
            sent = time.monotonic()
            try:   # a new connection for each request: the kernel spreads them over the frontends
                result = post(server, "/v2/models/simple/infer", SIMPLE_BODY, timeout=60)
                assert result["outputs"][0]["data"] == list(range(1, 17))
                done.append(1)
            except OSError as e:
                failed.append((sent, e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while frontend_pids(server).get(0) == before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    served_before_check = len(done)
    while len(done) == served_before_check and time.monotonic() < deadline:
        time.sleep(0.1)
    back = time.monotonic()
    time.sleep(1.0)   # the load goes on, and must not fail now
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert frontend_pids(server)[0] != before[0], "the killed frontend was not started again"
    late = [e for sent, e in failed if sent >= back]
    assert not late, f"requests sent after the frontend was back failed: {late}"
    assert len(failed) <= 4 * len(threads), f"{len(failed)} requests failed: {failed[:3]}"
    assert len(done) > served_before_check, "no request was served after the frontend came back"
    assert server.get("/v2/health/ready") == 200
    for _ in range(20):
        answer = post(server, "/v2/models/simple/infer", SIMPLE_BODY)
        assert answer["outputs"][0]["data"] == list(range(1, 17))
    assert server.process.poll() is None


def test_large_tensors_cross_the_frontends_intact(repository, start_server):
    """Tensors of 64 KiB and more go from a frontend process to the models through its shared-memory
    arena; many at once, of several sizes, each comes back as it was sent. The processes poll for
    their messages here (--busy-poll-us), which a machine of few cores does not do by default."""
    import tritonclient.grpc as grpcclient
    from concurrent.futures import ThreadPoolExecutor

    models.write_model(repository, "identity", models.batched("FP32"), models.IDENTITY)
    server = start_server(repository, "--frontends", "2", "--busy-poll-us", "200")
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, n)).astype(np.float32) for n in (10, 20_000, 300_000, 1_000_000)] * 4

    def one(array):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput("INPUT0", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            return client.infer("identity", [tensor]).as_numpy("OUTPUT0")

    with ThreadPoolExecutor(8) as pool:
        for sent, received in zip(arrays, pool.map(one, arrays)):
            np.testing.assert_array_equal(received, sent)
    assert "no tensor arena" not in server.log()


ARANGE = """
    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", arange(r))]) for r in requests]

    def arange(request):
        return np.arange(request.input("INPUT0")[0, 0], dtype=np.float32)[None]
"""


def test_large_answers_to_small_requests_cross_the_frontends_intact(repository, start_server):
    """A small gRPC request goes to the model process undecoded, and its answer comes back serialized,
    through the model process's arena when it is 64 KiB or more."""
    import tritonclient.grpc as grpcclient
    from concurrent.futures import ThreadPoolExecutor

    config = {"backend": "python", "max_batch_size": 8, "input": [models.tensor("INPUT0", "INT64", [1])],
              "output": [models.tensor("OUTPUT0", "FP32", [-1])]}
    models.write_model(repository, "arange", config, ARANGE)
    server = start_server(repository, "--frontends", "2", "--busy-poll-us", "200")
    sizes = [10, 20_000, 300_000, 1_000_000] * 4

    def one(size):
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT64")
            tensor.set_data_from_numpy(np.array([[size]], dtype=np.int64))
            return client.infer("arange", [tensor]).as_numpy("OUTPUT0")

    with ThreadPoolExecutor(8) as pool:
        for size, received in zip(sizes, pool.map(one, sizes)):
            np.testing.assert_array_equal(received, np.arange(size, dtype=np.float32)[None])


def test_clients_cannot_name_a_frontends_arena(tmp_path, start_server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    repository = tmp_path / "models"
    copy_model(SHIPPED_REPOSITORY, "simple", repository)
    server = start_server(repository, "--frontends", "2", "--allow-client-shm", "true")
    arenas = [f"naiad-{pid}-0" for pid in frontend_pids(server).values()]
    assert all(os.path.exists(f"/dev/shm/{name}") for name in arenas)
    with httpclient.InferenceServerClient(server.http_url) as client:
        for name in arenas:
            inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for tensor in inputs:
                tensor.set_shared_memory(name, 64)
            with pytest.raises(InferenceServerException, match=f"no shared-memory region '{name}'"):
                client.infer("simple", inputs)
