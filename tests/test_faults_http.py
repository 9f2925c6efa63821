"""The HTTP frontend under hostile or broken clients: bodies over the size limits (as sent, as they
inflate, in JSON values), bodies in a coding they don't have, stalled and vanishing clients, the
open-files limit, and numbers JSON cannot carry. Raw sockets where clients would not send such things."""
from __future__ import annotations

import gzip
import json
import os
import resource
import select
import socket
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import FRONTENDS, session_server, wait_until

MAX_INPUT = 16 << 20          # the test server's --http-max-input-size
TIMEOUT_SECS = 2              # its idle and body timeouts
DEADLINE = 30                 # generous: the machine may be busy


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("http_faults_models")
    for datatype in ("FP16", "FP32"):
        models.write_model(repository, f"identity_{datatype.lower()}", models.batched(datatype),
                           models.IDENTITY)
    yield from session_server(repository, tmp_path_factory, "http_faults",
                              "--http-max-input-size", str(MAX_INPUT),
                              "--http-idle-timeout-secs", str(TIMEOUT_SECS),
                              "--http-body-timeout-secs", str(TIMEOUT_SECS),
                              "--log-verbose", "1")


# --- raw HTTP ------------------------------------------------------------------------------------

def head(path: str, **headers) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: naiad",
             *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response from sock: status, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response; got {data!r}"
        data += chunk
    top, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    status = int(status_line.split()[1])
    assert status != 100, "the server asked for a body it should refuse"
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of a response"
        body += chunk
    return status, headers, body


def exchange(server, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=DEADLINE) as sock:
        sock.sendall(request)
        return read_response(sock)


def strict_json(raw: bytes):
    """json.loads that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(raw, parse_constant=refuse)


def error_of(status_headers_body: tuple[int, dict, bytes]) -> tuple[int, str]:
    status, headers, body = status_headers_body
    assert headers["content-type"].startswith("application/json"), headers
    return status, strict_json(body)["error"]


def json_request(model: str, datatype: str, shape: list, data) -> bytes:
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": shape, "data": data}]})
    return head(f"/v2/models/{model}/infer", Content_Length=len(body)) + body.encode()


# --- the processes that serve HTTP, and their memory ------------------------------------------------

def http_processes(server) -> list[int]:
    """The server's process, or with --frontends N its frontend processes: those that serve HTTP."""
    if FRONTENDS[0] == "1":
        return [server.process.pid]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.process.pid and b"naiad.daemon.frontends" in command:
            found.append(int(entry))
    assert len(found) == int(FRONTENDS[0]), found
    return found


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak_memory(pid: int) -> None:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")   # VmHWM starts again from VmRSS
    except OSError as e:
        pytest.skip(f"cannot reset a process's peak memory here: {e}")


def ready(server) -> bool:
    try:
        return server.get("/v2/health/ready") == 200
    except OSError:
        return False


# --- size limits ---------------------------------------------------------------------------------

def test_content_length_over_the_limit_gets_413_before_the_body(server):
    # no body follows: a server that waited for it would not answer at all
    for extra in ({}, {"Expect": "100-continue"}):
        status, message = error_of(exchange(server, head("/v2/models/identity_fp32/infer",
                                                         Content_Length=10_000_000_000, **extra)))
        assert status == 413, message
        assert f"larger than {MAX_INPUT} bytes" in message and "--http-max-input-size" in message
    # without a Content-Length, the size is counted as the chunks arrive
    chunk = b"x" * (1 << 20)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_INPUT // len(chunk) + 1))
    status, message = error_of(exchange(server, head("/v2/models/identity_fp32/infer",
                                                     Transfer_Encoding="chunked") + chunked + b"0\r\n\r\n"))
    assert status == 413 and "--http-max-input-size" in message, message
    assert ready(server)


def test_a_gzip_bomb_is_refused_with_bounded_memory(server):
    inflated = 200 << 20
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(inflated >> 20)) + compressor.flush()
    assert len(bomb) < inflated // 500
    pids = http_processes(server)
    before = {pid: memory_kib(pid, "VmRSS") for pid in pids}
    for pid in pids:
        reset_peak_memory(pid)
    request = head("/v2/models/identity_fp32/infer", Content_Encoding="gzip", Content_Length=len(bomb))
    status, message = error_of(exchange(server, request + bomb))
    assert status == 413, message
    assert f"inflates to more than {MAX_INPUT} bytes" in message, message
    growth_mib = max(memory_kib(pid, "VmHWM") - before[pid] for pid in pids) / 1024
    assert growth_mib < 4 * MAX_INPUT / (1 << 20), f"peak memory grew by {growth_mib:.0f} MiB"
    assert ready(server)


def test_json_with_more_values_than_the_limit_is_refused_before_parsing(server):
    count = (1 << 22) + 10    # the default --http-max-json-elements, and some
    status, message = error_of(exchange(server, json_request("identity_fp32", "FP32", [1, count],
                                                             [0] * count)))
    assert status == 413, message
    assert "--http-max-json-elements" in message and "binary data" in message, message


# --- codings -------------------------------------------------------------------------------------

BODY = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3],
                               "data": [1.5, 2.5, 3.5]}]}).encode()


@pytest.mark.parametrize("encoding,body", [
    ("gzip", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),
    ("deflate", zlib.compress(BODY)[2:-4]),   # raw deflate, as some clients send it
    ("identity", BODY),
])
def test_compressed_bodies_are_read(server, encoding, body):
    status, _, raw = exchange(server, head("/v2/models/identity_fp32/infer", Content_Encoding=encoding,
                                           Content_Length=len(body)) + body)
    assert status == 200, raw
    assert strict_json(raw)["outputs"][0]["data"] == [1.5, 2.5, 3.5]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(server, algorithm):
    values = np.arange(6, dtype=np.float32).reshape(1, 6)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values)
        result = client.infer("identity_fp32", [tensor], request_compression_algorithm=algorithm)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), values)


@pytest.mark.parametrize("encoding,body,status,words", [
    ("gzip", BODY, 400, ["not gzip data"]),
    ("deflate", b"\x78\x9c not deflate at all", 400, ["not deflate data"]),
    ("gzip", gzip.compress(BODY)[:-10], 400, ["cut short"]),
    ("br", BODY, 415, ["Content-Encoding 'br' is not supported", "gzip, deflate or identity"]),
])
def test_a_body_not_in_its_coding_is_a_client_error(server, encoding, body, status, words):
    got, message = error_of(exchange(server, head("/v2/models/identity_fp32/infer", Content_Encoding=encoding,
                                                  Content_Length=len(body)) + body))
    assert got == status, message
    for word in words:
        assert word in message, message


# --- the event loop stays free -------------------------------------------------------------------

def test_health_checks_are_answered_while_a_large_json_body_decodes(server):
    """The big request's JSON is parsed in a worker thread, and fails only at its end (16 elements
    wanted): health checks sent after it are answered before it is."""
    count = 3_500_000     # under the default --http-max-json-elements
    body = b'{"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [' + \
        b"1," * count + b"1]}]}"
    answered = 0
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=DEADLINE) as big:
        big.sendall(head("/v2/models/identity_fp32/infer", Content_Length=len(body)) + body)
        while not select.select([big], [], [], 0)[0]:
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=DEADLINE) as r:
                assert r.status == 200
            answered += 1
        status, message = error_of(read_response(big))
    assert status == 400 and f"data holds {count + 1}" in message, message
    assert answered >= 3, f"only {answered} health check(s) answered while the large body decoded"


# --- stalled and vanishing clients ---------------------------------------------------------------

def closed_after(sock: socket.socket) -> bytes:
    """Everything sock receives until the server closes it (within DEADLINE)."""
    received = b""
    sock.settimeout(DEADLINE)
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_stalled_connections_are_closed(server):
    address = ("127.0.0.1", server.http_port)
    with socket.create_connection(address) as idle, socket.create_connection(address) as half_head, \
            socket.create_connection(address) as half_body:
        half_head.sendall(b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: naiad\r\n")
        half_body.sendall(head("/v2/models/identity_fp32/infer", Content_Length=len(BODY)) + BODY[:10])
        assert closed_after(idle) == b""
        assert closed_after(half_head) == b""
        answer = closed_after(half_body)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    message = strict_json(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert f"did not arrive within {TIMEOUT_SECS} s" in message and "--http-body-timeout-secs" in message
    assert ready(server)


def test_a_client_leaving_mid_body_costs_one_debug_line(server):
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(head("/v2/models/identity_fp32/infer", Content_Length=len(BODY)) + BODY[:10])
        sock.shutdown(socket.SHUT_RDWR)
    line = "closed its connection before sending its whole body"
    wait_until(lambda: line in server.log(), "the server noticed the client leave")
    assert "Traceback" not in server.log()
    assert ready(server)


def test_requests_that_are_not_http_get_400_and_no_log_line(server):
    malformed = [b"GET /v2 HTTP/1.1\r\nHost: naiad\r\nContent-Length: abc\r\n\r\n",
                 b"GET /v2 HTTP/1.1\r\nHost naiad\r\n\r\n",
                 b"GET /v2 HTTP/9.1\r\n\r\n"]
    for request in malformed:
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.sendall(request)
            answer = closed_after(sock)
        assert answer.split(b" ", 2)[1] == b"400", (request, answer)
    assert "Traceback" not in server.log() and "Error handling request" not in server.log()
    assert ready(server)


def test_accept_failures_at_the_open_files_limit_are_reported_once_per_period(server):
    """asyncio logs each failed accept() with a traceback, a hundred a second; naiad one line per
    period, and serves again once descriptors are free."""
    report = "cannot accept connections"
    pids = http_processes(server)
    limits = {pid: resource.prlimit(pid, resource.RLIMIT_NOFILE) for pid in pids}
    clients = []
    try:
        for pid, (soft, hard) in limits.items():
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 2, hard))
        for _ in range(30 * len(pids)):
            try:
                clients.append(socket.create_connection(("127.0.0.1", server.http_port), timeout=2))
            except OSError:
                break   # the listening backlog is full
        wait_until(lambda: report in server.log(), "a process reports that it cannot accept")
    finally:
        for client in clients:
            client.close()
        for pid, limit in limits.items():
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limit)
    wait_until(lambda: ready(server), "the server serves again")
    log = server.log()
    assert log.count(report) <= 2 * len(pids), log[-3000:]
    assert "Traceback" not in log and "socket.accept() out of system resource" not in log


# --- numbers ---------------------------------------------------------------------------------------

def test_fp16_overflow_is_refused_by_name(server):
    status, message = error_of(exchange(server, json_request("identity_fp16", "FP16", [1, 2],
                                                             [1.0, 70000.0])))
    assert status == 400, message
    assert "input 'INPUT0'" in message and "outside the range of FP16" in message and "65504" in message
    status, _, raw = exchange(server, json_request("identity_fp16", "FP16", [1, 2], [-65504.0, 65504.0]))
    assert status == 200 and strict_json(raw)["outputs"][0]["data"] == [-65504.0, 65504.0]


@pytest.mark.parametrize("body,words", [
    ({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}],
      "parameters": {"deep": {"er": [1]}}}, ["request: parameter 'deep'", "string, number or boolean"]),
    ({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [[[1.0]]]}]},
     ["input 'INPUT0'", "deeper than its shape"]),
    ({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0],
                  "parameters": {"x": [1]}}]}, ["input 'INPUT0': parameter 'x'"]),
])
def test_json_nesting_is_bounded(server, body, words):
    raw = json.dumps(body).encode()
    status, message = error_of(exchange(server, head("/v2/models/identity_fp32/infer",
                                                     Content_Length=len(raw)) + raw))
    assert status == 400, message
    for word in words:
        assert word in message, message


def test_nan_outputs_go_as_binary_data_and_never_as_bare_json(server):
    values = np.array([[np.nan, np.inf, -np.inf, 1.0]], dtype=np.float32)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", list(values.shape), "FP32")
        tensor.set_data_from_numpy(values)
        binary = client.infer("identity_fp32", [tensor],
                              outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])
        np.testing.assert_array_equal(binary.as_numpy("OUTPUT0"), values)
        with pytest.raises(InferenceServerException) as raised:
            client.infer("identity_fp32", [tensor],
                         outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)])
    finally:
        client.close()
    message = raised.value.message()
    assert "output 'OUTPUT0' holds NaN or infinity" in message and "binary_data: true" in message, message
    # the answer itself is JSON that any parser reads
    header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]}).encode()
    status, message = error_of(exchange(server, head("/v2/models/identity_fp32/infer",
                                                     Content_Length=len(header) + 16,
                                                     Inference_Header_Content_Length=len(header))
                                        + header + values.tobytes()))
    assert status == 400 and "NaN or infinity" in message
