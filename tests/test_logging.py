"""The server's log: text or JSON lines, Triton's logging extension (/v2/logging and the LogSettings
RPC) reaching every process, and one line per model load, unload and failure."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import FRONTENDS, NaiadServer, session_server, wait_until
from tests.models import IDENTITY, batched, tensor, write_model
from tests.test_docs import block

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 0, "log_format": "text"}

# logs a line from its worker process as it sets up
CHATTY = """
    import logging
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def initialize(self, args):
            logging.getLogger("chatty").info("chatty sets up")

        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
"""


def write_models(repository) -> None:
    write_model(repository, "good", batched("FP32"), IDENTITY)
    write_model(repository, "broken", {"backend": "python", "max_batch_size": 8,
                                       "input": [{"name": "INPUT0", "data_type": "FP32", "dimz": [4]}],
                                       "output": [tensor("OUTPUT0", "FP32", [4])]}, IDENTITY)
    write_model(repository, "broken_code", batched("FP32"), "import no_such_module_anywhere\n")
    write_model(repository, "chatty", batched("FP32"), CHATTY)


@pytest.fixture(scope="module")
def json_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("logging-repository")
    write_models(repository)
    yield from session_server(repository, tmp_path_factory, "json-log", "--log-format", "json")


def json_lines(server: NaiadServer) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines()]


def post(server: NaiadServer, path: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_json_lines_parse_and_carry_fields(json_server):
    lines = json_lines(json_server)   # every line of every process is one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= line.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line
    [failed] = [line for line in lines if line.get("model") == "broken" and line["level"] == "ERROR"]
    assert failed["logger"] == "naiad.daemon.registry" and "dimz" in failed["message"]
    assert {"level": "INFO", "model": "good", "message": "model 'good' version 1 is ready"}.items() \
        <= next(line for line in lines if line.get("model") == "good").items()
    # a worker process's lines name the model and the process, the model's own loggers' too
    chatty = next(line for line in lines if line["message"] == "chatty sets up")
    assert chatty["model"] == "chatty" and chatty["process"].startswith("chatty/") and chatty["logger"] == "chatty"
    if int(FRONTENDS[0]) > 1:
        assert any(line.get("process") == "frontend" for line in lines)
    assert not [line for line in lines if "/v2/" in line["message"]], "no line per request by default"


def test_a_load_failure_is_logged_once(json_server):
    lines = json_lines(json_server)
    assert sum("dimz" in line["message"] for line in lines) == 1
    failures = [line for line in lines if line["logger"] == "naiad.daemon.registry"
                and line.get("model") == "broken_code" and line["level"] == "ERROR"]
    assert len(failures) == 1 and "No module named 'no_such_module_anywhere'" in failures[0]["message"]


@pytest.mark.parametrize("body,key", [
    (b'{"log_verbose_level": -1}', "log_verbose_level"),
    (b'{"log_info": "yes"}', "log_info"),
    (b'{"log_format": "xml"}', "log_format"),
    (b'{"log_file": "/var/log/naiad.log"}', "log_file"),
    (b'{"log_colour": true}', "log_colour"),
    (b'{"log_error": false, "log_warning": 1}', "log_warning"),   # nothing changes, not even log_error
])
def test_bad_settings_are_refused_naming_the_key(json_server, body, key):
    status, text = post(json_server, "/v2/logging", body)
    assert status == 400 and f"log setting '{key}'" in json.loads(text)["error"], text
    with httpclient.InferenceServerClient(json_server.http_url) as client:
        assert client.get_log_settings() == {**DEFAULTS, "log_format": "json"}


def test_bad_settings_over_grpc(json_server):
    with grpcclient.InferenceServerClient(json_server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="log setting 'log_format'") as raised:
            client.update_log_settings({"log_format": "xml"})
        assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    status, text = post(json_server, "/v2/logging", b"[1]")
    assert status == 400 and "JSON object" in text


def test_log_settings_over_http_and_grpc(start_server, repository):
    write_models(repository)
    server = start_server(repository, "--model-control-mode", "explicit", "--load-model", "good")
    with httpclient.InferenceServerClient(server.http_url) as http, \
            grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
        assert "logging" in http.get_server_metadata()["extensions"]
        assert http.get_log_settings() == DEFAULTS
        changed = http.update_log_settings({"log_format": "json", "log_warning": False})
        assert changed == {**DEFAULTS, "log_format": "json", "log_warning": False}
        # one setting for the whole server: gRPC reads what HTTP wrote, whichever process answers
        assert grpc_client.get_log_settings(as_json=True)["settings"]["log_format"] == {"string_param": "json"}
        # a worker process started from now on logs as the settings say
        http.load_model("chatty")
        wait_until(lambda: "chatty sets up" in server.log(), "the worker's line")
        [line] = [line for line in server.log().splitlines() if "chatty sets up" in line]
        assert json.loads(line)["model"] == "chatty"
        # Triton's format names are taken: naiad's text lines begin with an ISO 8601 time
        back = grpc_client.update_log_settings({"log_format": "ISO8601", "log_warning": True}, as_json=True)
        assert back["settings"]["log_format"] == {"string_param": "text"}
        assert http.get_log_settings() == DEFAULTS
        http.unload_model("chatty")
        wait_until(lambda: "model 'chatty' unloaded" in server.log(), "the unload's line")
    log = server.log()
    assert log.count("model 'good' version 1 is ready") == 1
    assert log.count("model 'chatty' version 1 is ready") == 1
    assert log.count("model 'chatty' unloaded") == 1


def test_operations_logging_example(start_server, repository):
    write_models(repository)
    server = start_server(repository)
    answers = []
    for line in block("operations-logging").text.splitlines():
        assert "localhost:8000" in line
        command = line.replace("localhost:8000", server.http_url) + " -w '\\n%{http_code}'"
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False)
        body, _, status = run.stdout.rpartition("\n")
        assert run.returncode == 0 and status == "200", f"{line}: {run.stdout} {run.stderr}"
        answers.append(json.loads(body))
    assert answers == [DEFAULTS, {**DEFAULTS, "log_verbose_level": 1, "log_format": "json"}]

    def logged() -> bool:
        server.get("/v2/health/ready")   # a request: each makes a debug line now, as JSON
        return '"message": "HTTP GET /v2/health/ready"' in server.log()
    wait_until(logged, "a JSON debug line for a request")


def test_verbose_adds_a_line_per_request_in_every_frontend(start_server, repository):
    write_models(repository)
    server = start_server(repository)
    pattern = re.compile(r" D (?:frontend\[(\d+)\] )?naiad\.daemon\.http_frontend: HTTP GET /v2/models/good/ready")
    assert server.get("/v2/models/good/ready") == 200
    assert not pattern.search(server.log()), "no line per request at the default level"
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.update_log_settings({"log_verbose_level": 1})

    def answered_in_every_frontend() -> bool:
        for _ in range(8):   # a connection each: the frontend processes share the port
            server.get("/v2/models/good/ready")
        return len({match.group(1) for match in pattern.finditer(server.log())}) == int(FRONTENDS[0])
    wait_until(answered_in_every_frontend, "a debug line from every frontend process", timeout=30)
