"""naiad.clients against running servers: every call over gRPC and HTTP, blocking and asyncio. The same
tests run against naiad and against Triton (started by bench/peers/peers.sh; skipped, saying why, where
it cannot be started): the client is a general v2 client. The models are Triton-style folders
(config.pbtxt, triton_python_backend_utils) that both servers serve."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from naiad.clients import AsyncClient, Client, ClientError
from naiad.clients.client import Endpoint, parse_url

from tests.conftest import REPO_ROOT, free_port, session_server, wait_until

PEERS = Path(os.environ.get("NAIAD_PEERS", Path.home() / ".cache" / "naiad-peers"))
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)

SIMPLE = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
            return responses
"""
SIMPLE_CONFIG = """
    backend: "python"
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
            { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
             { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
"""
# every input IN_<TYPE> comes back as OUT_<TYPE>
IDENTITY = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(t.name().replace("IN_", "OUT_"), t.as_numpy())
                                                for t in request.inputs()]) for request in requests]
"""
# sleeps DELAY seconds, then answers it
SLOW = """
    import time
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                delay = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
                time.sleep(float(delay[0]))
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", delay)]))
            return responses
"""
SLOW_CONFIG = """
    backend: "python"
    input [ { name: "DELAY" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
# decoupled: COUNT responses (OUT = 0, 1, ...), DELAY seconds apart, then the final flag
REPEAT = """
    import time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
                delay = float(pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()[0])
                sender = request.get_response_sender()
                for i in range(count):
                    if request.is_cancelled():
                        break
                    time.sleep(delay)
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""
REPEAT_CONFIG = """
    backend: "python"
    model_transaction_policy { decoupled: true }
    input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
            { name: "DELAY" data_type: TYPE_FP32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""
# Triton's Python backend gives no numpy view of BF16 tensors: its identity model leaves BF16 out
TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
         "FP64", "BYTES", "BF16"]
TRITON_TYPES = TYPES[:-1]


def write_model(repository: Path, name: str, config: str, code: str) -> None:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(f'name: "{name}"\n' + textwrap.dedent(config))
    (folder / "1" / "model.py").write_text(textwrap.dedent(code))


def types_config(types: list[str]) -> str:
    """Every input is optional: a request sends those it wants back."""
    def tensors(prefix, extra=""):
        return ", ".join(f'{{ name: "{prefix}{t}" data_type: TYPE_{"STRING" if t == "BYTES" else t} '
                         f'dims: [ -1 ]{extra} }}' for t in types)
    return f'backend: "python"\ninput [ {tensors("IN_", " optional: true")} ]\noutput [ {tensors("OUT_")} ]\n'


def write_repository(repository: Path, types: list[str]) -> Path:
    write_model(repository, "simple", SIMPLE_CONFIG, SIMPLE)
    write_model(repository, "loadable", SIMPLE_CONFIG, SIMPLE)
    write_model(repository, "types", types_config(types), IDENTITY)
    write_model(repository, "slow", SLOW_CONFIG, SLOW)
    write_model(repository, "repeat", REPEAT_CONFIG, REPEAT)
    return repository


@dataclass
class Server:
    kind: str           # "naiad" or "triton"
    http_url: str
    grpc_url: str
    types: list[str]    # the datatypes its `types` model takes

    def url(self, protocol: str) -> str:
        return f"http://{self.http_url}" if protocol == "http" else self.grpc_url


def start_triton(repository: Path, log_path: Path):
    """Triton on free ports (bench/peers/peers.sh), ready; None, and why, where it cannot start."""
    if not (PEERS / "triton" / "bin" / "python").exists():
        return None, f"Triton is not installed under {PEERS} (run bench/peers/peers.sh setup, or set NAIAD_PEERS)"
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", str(REPO_ROOT / "bench" / "peers" / "peers.sh"), "triton", str(http_port), str(grpc_port),
             str(metrics_port), str(repository), "--model-control-mode=explicit", "--load-model=*"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "NAIAD_PEERS": str(PEERS)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2):
                return (process, http_port, grpc_port), ""
        except OSError:
            time.sleep(0.2)
    stop_group(process)
    return None, f"Triton did not become ready (log: {log_path}):\n{log_path.read_text()[-2000:]}"


def stop_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module", params=["naiad", "triton"])
def server(request, tmp_path_factory):
    if request.param == "naiad":
        repository = write_repository(tmp_path_factory.mktemp("client_models"), TYPES)
        for found in session_server(repository, tmp_path_factory, "clients", "--model-control-mode", "explicit",
                                    "--load-model", "*", "--allow-client-shm", "true"):
            yield Server("naiad", found.http_url, found.grpc_url, TYPES)
        return
    repository = write_repository(tmp_path_factory.mktemp("triton_models"), TRITON_TYPES)
    started, why = start_triton(repository, tmp_path_factory.mktemp("triton") / "triton.log")
    if started is None:
        pytest.skip(why)
    process, http_port, grpc_port = started
    try:
        yield Server("triton", f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", TRITON_TYPES)
    finally:
        stop_group(process)


@pytest.fixture(params=["grpc", "http"])
def protocol(request) -> str:
    return request.param


@pytest.fixture
def client(server, protocol):
    with Client(server.url(protocol), timeout=30) as c:
        yield c


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([b"one", "two \u00e9".encode(), b"\x00\xff"], dtype=object)
    if datatype == "BOOL":
        return np.array([True, False, True])
    dtype = ml_dtypes.bfloat16 if datatype == "BF16" else np.dtype(datatype.lower().replace("fp", "float"))
    return np.array([1, 2, 100], dtype=dtype)


# --- health, metadata, configuration, statistics ---------------------------------------------------

def test_health(client):
    assert client.live() and client.ready()
    assert client.model_ready("simple") and client.model_ready("simple", 1)
    assert not client.model_ready("simple", "7")
    assert not client.model_ready("no_such_model")


def test_metadata_and_config(client, server):
    metadata = client.server_metadata()
    assert metadata["name"] == ("naiad" if server.kind == "naiad" else "triton")
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata["extensions"])
    model = client.model_metadata("simple")
    assert model["name"] == "simple" and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
                               {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]}]
    assert [o["name"] for o in model["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    config = client.model_config("simple")
    assert config["max_batch_size"] == 8 and config["backend"] == "python"
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    assert client.model_config("repeat")["model_transaction_policy"]["decoupled"] is True


def test_statistics(client, server):
    before = client.statistics("simple")[0]["inference_stats"]["success"]["count"]
    client.infer("simple", {"INPUT0": A, "INPUT1": B})
    if server.kind == "triton":   # Triton counts a request once its response has gone out: a moment later
        wait_until(lambda: client.statistics("simple")[0]["inference_stats"]["success"]["count"] > before,
                   "Triton to count the request")
    stats = client.statistics("simple", 1)
    assert [(s["name"], s["version"]) for s in stats] == [("simple", "1")]
    success = stats[0]["inference_stats"]["success"]
    assert success["count"] == before + 1 and isinstance(success["ns"], int) and success["ns"] > 0
    assert stats[0]["inference_stats"]["queue"]["count"] == before + 1
    assert {"simple", "types"} <= {s["name"] for s in client.statistics()}


# --- inference -----------------------------------------------------------------------------------

def test_infer(client):
    outputs = client.infer("simple", {"INPUT0": A, "INPUT1": B})
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
    np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)
    assert outputs["OUTPUT0"].dtype == np.int32 and outputs["OUTPUT0"].shape == (1, 16)
    only = client.infer("simple", {"INPUT0": A, "INPUT1": B}, outputs=["OUTPUT1"], version="1",
                        parameters={"note": "any", "flag": True, "ratio": 0.5}, request_id="r1")
    assert list(only) == ["OUTPUT1"]
    batch = np.repeat(A, 8, axis=0)
    np.testing.assert_array_equal(client.infer("simple", {"INPUT0": batch, "INPUT1": batch})["OUTPUT0"],
                                  batch * 2)


def test_every_datatype(client, server):
    inputs = {f"IN_{t}": sample(t) for t in server.types}
    outputs = client.infer("types", inputs)
    for datatype in server.types:
        got, sent = outputs[f"OUT_{datatype}"], inputs[f"IN_{datatype}"]
        assert got.dtype == sent.dtype, datatype
        np.testing.assert_array_equal(got, sent)
    text = client.infer("types", {**inputs, "IN_BYTES": np.array(["a", "\u00e9t\u00e9"])})["OUT_BYTES"]
    assert text.tolist() == [b"a", "\u00e9t\u00e9".encode()]


def test_json_tensors_over_http(server):
    """binary_data=False: tensors as JSON values, for servers without the binary data extension."""
    # Triton takes FP16 and BF16 as binary data only
    types = [t for t in server.types if server.kind == "naiad" or t not in ("FP16", "BF16")]
    with Client(server.url("http"), binary_data=False) as client:
        np.testing.assert_array_equal(client.infer("simple", {"INPUT0": A, "INPUT1": B})["OUTPUT1"], A - B)
        inputs = {f"IN_{t}": sample(t) for t in types}
        inputs["IN_BYTES"] = np.array(["caf\u00e9", "x"], dtype=object)
        outputs = client.infer("types", inputs, outputs=[f"OUT_{t}" for t in types])
        for datatype in types:
            expected = inputs[f"IN_{datatype}"]
            if datatype == "BYTES":
                expected = np.array([v.encode() for v in expected], dtype=object)
            np.testing.assert_array_equal(outputs[f"OUT_{datatype}"], expected)
            assert outputs[f"OUT_{datatype}"].dtype == expected.dtype, datatype


def test_errors_carry_code_and_text(client, server):
    with pytest.raises(ClientError) as found:
        client.infer("no_such_model", {"INPUT0": A})
    assert "no_such_model" in found.value.message
    assert found.value.code in ("NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE")
    with pytest.raises(ClientError) as found:
        client.infer("simple", {"INPUT0": A[:, :15], "INPUT1": B})
    assert found.value.code == "INVALID_ARGUMENT" and "INPUT0" in found.value.message
    if client.protocol == "http":
        assert found.value.http_status == 400
    with pytest.raises(ClientError) as found:
        client.model_metadata("no_such_model")
    assert "no_such_model" in found.value.message


def test_deadline(client):
    with pytest.raises(ClientError) as found:
        client.infer("slow", {"DELAY": np.array([2.0], np.float32)}, timeout=0.3)
    assert found.value.code == "DEADLINE_EXCEEDED"


def test_urls():
    assert parse_url("localhost") == Endpoint("grpc", "localhost:8001", False)
    assert parse_url("grpc://10.0.0.1:9001") == Endpoint("grpc", "10.0.0.1:9001", False)
    assert parse_url("http://example.com/") == Endpoint("http", "example.com:8000", False)
    assert parse_url("https://example.com:8443") == Endpoint("http", "example.com:8443", True)
    assert parse_url("grpcs://example.com") == Endpoint("grpc", "example.com:443", True)
    for bad in ("ftp://host:1", "http://host:8000/v2", "http://"):
        with pytest.raises(ValueError, match="URL"):
            parse_url(bad)


def test_unavailable_is_retried_with_backoff(protocol):
    """Nothing listens on the port: each attempt is refused, and the client tries again after waiting
    at least half of 0.05, 0.1, 0.2 s."""
    url = f"http://127.0.0.1:{free_port()}" if protocol == "http" else f"127.0.0.1:{free_port()}"
    for retries, least in ((0, 0.0), (3, 0.175)):
        with Client(url, retries=retries) as client:
            start = time.monotonic()
            with pytest.raises(ClientError) as found:
                client.live()
            assert found.value.code == "UNAVAILABLE"
            assert time.monotonic() - start >= least
    with Client(url, retries=100, timeout=0.3) as client:   # the deadline bounds the retries
        start = time.monotonic()
        with pytest.raises(ClientError):
            client.live()
        assert time.monotonic() - start < 2


# --- the repository --------------------------------------------------------------------------------

def test_repository_index_load_unload(client):
    rows = {row["name"]: row for row in client.repository_index()}
    assert {"simple", "loadable", "types", "slow"} <= set(rows)
    assert rows["simple"]["state"] == "READY" and rows["simple"]["version"] == "1"
    client.unload_model("loadable")
    assert not client.model_ready("loadable")
    wait_until(lambda: {row["name"]: row for row in client.repository_index()}["loadable"]["state"]
               == "UNAVAILABLE", "loadable to be unloaded")    # Triton says UNLOADING until then
    assert "loadable" not in {row["name"] for row in client.repository_index(ready=True)}
    with pytest.raises(ClientError):
        client.infer("loadable", {"INPUT0": A, "INPUT1": B}, timeout=5)
    client.load_model("loadable")
    assert client.model_ready("loadable")
    np.testing.assert_array_equal(client.infer("loadable", {"INPUT0": A, "INPUT1": B})["OUTPUT0"], A + B)


# --- shared memory -------------------------------------------------------------------------------

def test_system_shared_memory(client):
    with client.shared_memory(A) as x, client.shared_memory(B) as y, client.shared_memory(byte_size=64) as out:
        assert {x.name, y.name, out.name} <= {r["name"] for r in client.shm_status()}
        outputs = client.infer("simple", {"INPUT0": x, "INPUT1": y}, outputs={"OUTPUT0": out, "OUTPUT1": None})
        np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
        np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)
        assert np.shares_memory(outputs["OUTPUT0"], out.view("INT32", [1, 16]))
        y.write(A)   # a region is written again for the next request
        np.testing.assert_array_equal(client.infer("simple", {"INPUT0": x, "INPUT1": y},
                                                   outputs={"OUTPUT0": out})["OUTPUT0"], A * 2)
        names = [x.name, y.name, out.name]
        paths = [Path("/dev/shm", name) for name in names]
        assert all(p.exists() for p in paths)
    assert not set(names) & {r["name"] for r in client.shm_status()}
    assert not any(p.exists() for p in paths)


def test_bytes_through_system_shared_memory(client, server):
    words = np.array([b"alpha", b"", b"\xce\xb2"], dtype=object)
    inputs = {f"IN_{t}": sample(t) for t in server.types}
    with client.shared_memory(words) as region, client.shared_memory(byte_size=64) as out:
        outputs = client.infer("types", {**inputs, "IN_BYTES": region},
                               outputs={"OUT_BYTES": out, "OUT_INT32": None})
        assert outputs["OUT_BYTES"].tolist() == words.tolist()
        np.testing.assert_array_equal(outputs["OUT_INT32"], inputs["IN_INT32"])


def test_region_errors(client):
    with pytest.raises(ValueError, match="do not fit"), client.shared_memory(A, byte_size=8):
        pass
    with client.shared_memory(byte_size=64) as empty, pytest.raises(ValueError, match="holds no tensor"):
        client.infer("simple", {"INPUT0": empty, "INPUT1": B})


def cuda_missing() -> str:
    """Why CUDA regions cannot be made here ("" where they can)."""
    from naiad.clients import shm
    try:
        shm._driver()
        shm._framework()
    except RuntimeError as e:
        return str(e)
    return ""


@pytest.mark.gpu
@pytest.mark.skipif(bool(cuda_missing()), reason=cuda_missing() or "")
def test_cuda_shared_memory(client):
    with client.shared_memory(A, device="cuda") as x, client.shared_memory(byte_size=64, device="cuda:0") as out:
        assert x.name in {r["name"] for r in client.shm_status("cuda")}
        outputs = client.infer("simple", {"INPUT0": x, "INPUT1": B}, outputs={"OUTPUT0": out, "OUTPUT1": None})
        placed = outputs["OUTPUT0"]
        assert "cuda" in str(getattr(placed, "device", "cuda")) and tuple(placed.shape) == (1, 16)
        np.testing.assert_array_equal(placed.cpu().numpy() if hasattr(placed, "cpu") else placed.get(), A + B)
        np.testing.assert_array_equal(outputs["OUTPUT1"], A - B)
        x.write(placed * 2)    # a tensor already on the GPU goes in device to device
        again = client.infer("simple", {"INPUT0": x, "INPUT1": B}, outputs={"OUTPUT0": out})["OUTPUT0"]
        np.testing.assert_array_equal(again.cpu().numpy() if hasattr(again, "cpu") else again.get(),
                                      (A + B) * 2 + B)
    assert x.name not in {r["name"] for r in client.shm_status("cuda")}


# --- streaming -----------------------------------------------------------------------------------

@pytest.fixture
def grpc_client(server):
    with Client(server.grpc_url, timeout=30) as c:
        yield c


def test_stream_one_response_per_request(grpc_client):
    responses = list(grpc_client.stream("simple", {"INPUT0": A, "INPUT1": B}))
    assert len(responses) == 1
    np.testing.assert_array_equal(responses[0]["OUTPUT0"], A + B)
    with pytest.raises(ClientError, match="INPUT0"):
        list(grpc_client.stream("simple", {"INPUT0": A[:, :3], "INPUT1": B}))


def test_stream_needs_grpc(server):
    with Client(server.url("http")) as client:
        with pytest.raises(ClientError, match="streaming needs gRPC") as found:
            client.stream("simple", {"INPUT0": A, "INPUT1": B})
        assert found.value.code == "UNIMPLEMENTED"


def test_stream_cancel(grpc_client):
    stream = grpc_client.stream("slow", {"DELAY": np.array([2.0], np.float32)})
    got = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    stream.cancel()
    reader.join(timeout=10)
    assert not reader.is_alive() and got == []    # the answer, 2 s later, never came


def test_decoupled_stream(grpc_client):
    inputs = {"COUNT": np.array([4], np.int32), "DELAY": np.array([0.0], np.float32)}
    assert [r["OUT"].tolist() for r in grpc_client.stream("repeat", inputs)] == [[0], [1], [2], [3]]
    assert list(grpc_client.stream("repeat", {**inputs, "COUNT": np.array([0], np.int32)})) == []
    # leaving the loop cancels the rest: 100 responses 0.1 s apart would take 10 s
    start = time.monotonic()
    for response in grpc_client.stream("repeat", {"COUNT": np.array([100], np.int32),
                                                  "DELAY": np.array([0.1], np.float32)}):
        assert response["OUT"].tolist() == [0]
        break
    assert time.monotonic() - start < 5
    # the model stops sending once it sees the cancellation: the next request is not held up
    assert [r["OUT"].tolist() for r in grpc_client.stream("repeat", inputs, timeout=5)] == [[0], [1], [2], [3]]


# --- asyncio -------------------------------------------------------------------------------------

def test_async_client(server, protocol):
    async def main():
        async with AsyncClient(server.url(protocol), timeout=30) as client:
            assert await client.live() and await client.ready() and await client.model_ready("simple")
            assert (await client.model_metadata("simple"))["name"] == "simple"
            assert (await client.model_config("simple"))["max_batch_size"] == 8
            assert "simple" in {row["name"] for row in await client.repository_index()}
            assert (await client.statistics("simple"))[0]["name"] == "simple"
            results = await asyncio.gather(*(client.infer("simple", {"INPUT0": A + i, "INPUT1": B})
                                             for i in range(8)))
            for i, outputs in enumerate(results):
                np.testing.assert_array_equal(outputs["OUTPUT0"], A + i + B)
            with pytest.raises(ClientError) as found:
                await client.infer("simple", {"INPUT0": A[:, :2], "INPUT1": B[:, :2]})
            assert found.value.code == "INVALID_ARGUMENT"
            with pytest.raises(ClientError) as found:
                await client.infer("slow", {"DELAY": np.array([2.0], np.float32)}, timeout=0.3)
            assert found.value.code == "DEADLINE_EXCEEDED"
            async with client.shared_memory(A) as x, client.shared_memory(byte_size=64) as out:
                outputs = await client.infer("simple", {"INPUT0": x, "INPUT1": B}, outputs={"OUTPUT0": out})
                np.testing.assert_array_equal(outputs["OUTPUT0"], A + B)
                assert x.name in {r["name"] for r in await client.shm_status()}
            assert x.name not in {r["name"] for r in await client.shm_status()}
            with pytest.raises(TypeError, match="async with"), client.shared_memory(A):
                pass
            if protocol == "http":
                return
            responses = [r async for r in client.stream("simple", {"INPUT0": A, "INPUT1": B})]
            assert len(responses) == 1 and responses[0]["OUTPUT1"].tolist() == (A - B).tolist()
            stream = client.stream("slow", {"DELAY": np.array([2.0], np.float32)})
            reader = asyncio.ensure_future(anext(stream, None))
            await asyncio.sleep(0)
            stream.cancel()
            assert await asyncio.wait_for(reader, 10) is None    # no answer: the call ended
            inputs = {"COUNT": np.array([3], np.int32), "DELAY": np.array([0.0], np.float32)}
            assert [r["OUT"].tolist() async for r in client.stream("repeat", inputs)] == [[0], [1], [2]]
            long = {"COUNT": np.array([100], np.int32), "DELAY": np.array([0.1], np.float32)}
            async with client.stream("repeat", long) as stream:    # leaving the block cancels it
                async for response in stream:
                    assert response["OUT"].tolist() == [0]
                    break
            # the model stopped: the next request is not held up behind 10 s of responses
            assert [r["OUT"].tolist() async for r in client.stream("repeat", inputs, timeout=5)] == [[0], [1], [2]]
    asyncio.run(main())


# --- the load generator --------------------------------------------------------------------------

def test_perf_command(server, protocol):
    """`naiad perf` measures any v2 server, with the server's breakdown from its statistics."""
    result = subprocess.run(
        [sys.executable, "-m", "naiad.daemon", "perf", "simple", "--url", server.url(protocol), "--concurrency", "2",
         "--measurement-seconds", "0.3", "--warmup-seconds", "0.1", "--max-trials", "3",
         "--stability-percentage", "100", "--json", "--quiet"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    measurement = json.loads(result.stdout)
    assert measurement["throughput"] > 0 and measurement["errors"] == 0
    assert measurement["server_requests"] > 0 and measurement["server_us"]["compute_infer"] > 0
