"""Readiness (`--strict-readiness`), liveness and graceful shutdown, as a Kubernetes probe and a
rolling update see them: over HTTP, gRPC ServerReady and grpc.health.v1, which agree whatever
frontend process answers."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from naiad.proto import health_pb2
from tritonclient.utils import InferenceServerException

from tests.conftest import NaiadServer, wait_until
from tests.models import IDENTITY, batched, tensor, write_model
from tests.test_docs import block

STARTED = "started: "   # the server's line once the models of the start have been tried

# initialize waits for the file `load_gate` in its model folder; execute writes `running` there and
# waits for `run_gate`: the test opens each gate when it has seen what it wants to see
GATED = """
    import os
    import time
    from naiad.backends.python_api import InferenceResponse, Tensor

    FOLDER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def wait_for(name):
        while not os.path.exists(os.path.join(FOLDER, name)):
            time.sleep(0.01)

    class TritonPythonModel:
        def initialize(self, args):
            wait_for("load_gate")

        def execute(self, requests):
            open(os.path.join(FOLDER, "running"), "w").close()
            wait_for("run_gate")
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
"""


def write_good(repository: Path, name: str = "good") -> None:
    write_model(repository, name, batched("FP32"), IDENTITY)


def write_broken(repository: Path, name: str = "broken") -> None:
    write_model(repository, name, {"backend": "python", "max_batch_size": 8,
                                   "input": [{"name": "INPUT0", "data_type": "FP32", "dimz": [4]}],
                                   "output": [tensor("OUTPUT0", "FP32", [4])]}, IDENTITY)


def health(server: NaiadServer) -> int:
    """grpc.health.v1's status for the whole server (1: SERVING, 2: NOT_SERVING)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        return check(health_pb2.HealthCheckRequest(), timeout=5).status


def readiness(server: NaiadServer) -> bool:
    """The server's readiness, asked 8 times over HTTP (a connection each, so that with several
    frontend processes different ones answer), over gRPC ServerReady and over grpc.health.v1: the
    answers must agree."""
    answers = {server.get("/v2/health/ready") == 200 for _ in range(8)}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        answers.add(client.is_server_ready())
    answers.add(health(server) == health_pb2.HealthCheckResponse.SERVING)
    assert len(answers) == 1, "HTTP, gRPC and grpc.health.v1 disagree on readiness"
    return answers.pop()


def status(server: NaiadServer, path: str) -> int:
    """The HTTP status of GET path; 0 when nothing listens (as a probe sees it: a failure)."""
    try:
        return server.get(path)
    except OSError:
        return 0


def wait_started(server: NaiadServer) -> NaiadServer:
    wait_until(lambda: STARTED in server.log() or server.process.poll() is not None,
               "the server to try the models of its start", timeout=60)
    assert server.process.poll() is None, server.log()
    return server


def test_strict_and_relaxed_readiness_with_a_broken_model(start_server, repository):
    write_good(repository)
    write_broken(repository)
    strict = start_server(repository, "--strict-readiness", "true", ready=False)
    relaxed = start_server(repository, "--strict-readiness", "false", ready=False)
    for server in (wait_started(strict), wait_started(relaxed).wait_ready()):
        assert server.get("/v2/health/live") == 200
        assert server.get("/v2/models/good/ready") == 200
        assert server.get("/v2/models/broken/ready") == 400
    assert not readiness(strict), "strict: a model that should serve does not, so not ready"
    assert readiness(relaxed), "relaxed: ready once the start's loads are done, broken or not"


def test_missing_repository_is_live_but_not_ready(start_server, tmp_path):
    folder = tmp_path / "not-there-yet"
    server = wait_started(start_server(folder, ready=False))   # relaxed readiness, even so
    assert server.get("/v2/health/live") == 200
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_live()
    assert not readiness(server)
    assert server.log().count(f"model repository {folder} is not a folder") == 1
    folder.mkdir()   # the repository appears (a volume mounted late): the server is ready
    wait_until(lambda: server.get("/v2/health/ready") == 200, "ready once the repository exists")
    assert readiness(server)


def test_slow_model_load_not_ready_until_loaded(start_server, repository):
    """What the probes of docs/operations.md see: live at once, not ready while a model loads, ready
    after."""
    probes = yaml.safe_load(block("operations-probes").text)
    assert {name: probe["httpGet"]["port"] for name, probe in probes.items()} == dict.fromkeys(probes, 8000)
    paths = {name: probe["httpGet"]["path"] for name, probe in probes.items()}
    assert paths == {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                     "livenessProbe": "/v2/health/live"}
    folder = write_model(repository, "gated", batched("FP32"), GATED)
    write_good(repository)
    server = start_server(repository, "--strict-readiness", "true", ready=False)
    try:
        with httpclient.InferenceServerClient(server.http_url) as client:
            wait_until(lambda: status(server, paths["livenessProbe"]) == 200, "the server to be live",
                       timeout=60)
            wait_until(lambda: any(row["name"] == "gated" and row.get("state") == "LOADING"
                                   for row in client.get_model_repository_index()),
                       "the gated model to be loading")
            assert status(server, paths["startupProbe"]) == 400 and not readiness(server)
            assert STARTED not in server.log()
            (folder / "load_gate").touch()
            wait_until(lambda: status(server, paths["startupProbe"]) == 200, "the startup probe to pass")
            assert readiness(server) and client.is_model_ready("gated")
            assert status(server, paths["livenessProbe"]) == 200
    finally:
        (folder / "load_gate").touch()   # so that the server can stop


def test_explicit_unload_no_longer_counts(start_server, repository):
    """Strict readiness in explicit mode: a model loaded and failing makes the server not ready; once
    it is unloaded it no longer counts (as in Triton), nor does a serving model that is unloaded."""
    write_good(repository)
    write_broken(repository)
    server = start_server(repository, "--strict-readiness", "true", "--model-control-mode", "explicit",
                          "--load-model", "good")
    assert readiness(server)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="dimz"):
            client.load_model("broken")
        assert not readiness(server)
        client.unload_model("broken")
        assert readiness(server)
        client.unload_model("good")
        assert readiness(server), "nothing that should be loaded is missing"
        client.load_model("good")
        assert readiness(server) and client.is_model_ready("good")


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def test_sigterm_turns_readiness_off_and_lets_the_request_in_flight_finish(start_server, repository):
    folder = write_model(repository, "gated", batched("FP32"), GATED)
    (folder / "load_gate").touch()
    server = start_server(repository, "--strict-readiness", "true")
    helpers = children(server.process.pid)
    assert helpers, "the model's worker process"
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    answer = {}

    def infer():
        with httpclient.InferenceServerClient(server.http_url, network_timeout=60) as client:
            inputs = [httpclient.InferInput("INPUT0", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(x)
            answer["result"] = client.infer("gated", inputs).as_numpy("OUTPUT0")

    in_flight = threading.Thread(target=infer)
    in_flight.start()
    try:
        wait_until(lambda: (folder / "running").exists(), "the request to run")
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: status(server, "/v2/health/ready") != 200, "readiness to turn false at SIGTERM",
                   timeout=5)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            inputs = [grpcclient.InferInput("INPUT0", [1, 4], "FP32")]
            inputs[0].set_data_from_numpy(x)
            with pytest.raises(InferenceServerException) as refused:
                client.infer("gated", inputs, client_timeout=10)
        assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
    finally:
        (folder / "run_gate").touch()
    in_flight.join(timeout=30)
    np.testing.assert_array_equal(answer["result"], x)
    assert server.process.wait(timeout=30) == 0, server.log()
    assert not [pid for pid in helpers if os.path.exists(f"/proc/{pid}")], "worker processes left"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"naiad-{server.process.pid}-")]
