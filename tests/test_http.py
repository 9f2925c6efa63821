"""Every HTTP/REST endpoint through tritonclient.http and tritonclient.http.aio, plus plain HTTP
requests for what clients don't send on their own (JSON bodies written by hand, as curl users do)."""
from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, dtype=np.int32)


def simple_inputs(module, a, b, binary=True):
    inputs = [module.InferInput("INPUT0", list(a.shape), "INT32"),
              module.InferInput("INPUT1", list(b.shape), "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=body, method="POST",
                                     headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def client(shipped_server):
    c = httpclient.InferenceServerClient(shipped_server.http_url)
    yield c
    c.close()


def test_health_metadata_config(client, shipped_server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "naiad"
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "7") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata("simple")
    assert metadata["versions"] == ["1"] and metadata["platform"] == "python"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    assert client.get_model_metadata("simple", "1") == metadata
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_INT32" and config["input"][0]["dims"] == [16]
    assert shipped_server.get("/v2/health/live") == 200
    assert shipped_server.get("/v2/models/simple/versions/1/ready") == 200
    assert shipped_server.get("/v2/models/simple/versions/2/ready") == 400


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_infer(client, binary, binary_output):
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_output) for n in ("OUTPUT0", "OUTPUT1")]
    result = client.infer("simple", simple_inputs(httpclient, A, B, binary), outputs=outputs,
                          request_id="42")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)
    response = result.get_response()
    assert response["id"] == "42" and response["model_name"] == "simple" and response["model_version"] == "1"


def test_infer_hand_written_json(shipped_server):
    """What a curl user sends: nested data, no outputs listed (all come back as JSON)."""
    body = {"inputs": [{"name": "INPUT0", "shape": [2, 16], "datatype": "INT32",
                        "data": [list(range(16)), list(range(16, 32))]},
                       {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": [1] * 32}]}
    status, headers, raw = post(shipped_server, "/v2/models/simple/infer", json.dumps(body).encode())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    reply = json.loads(raw)
    assert reply["model_name"] == "simple" and reply["model_version"] == "1"
    out = {o["name"]: o for o in reply["outputs"]}
    assert out["OUTPUT0"]["shape"] == [2, 16] and out["OUTPUT0"]["datatype"] == "INT32"
    assert out["OUTPUT0"]["data"] == [v + 1 for v in range(32)]


def test_infer_binary_by_hand(shipped_server):
    """The binary extension written out: JSON header, then raw tensors, outputs asked in binary."""
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32",
                    "parameters": {"binary_data_size": 64}},
                   {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32",
                    "parameters": {"binary_data_size": 64}}],
        "parameters": {"binary_data_output": True}}).encode()
    body = header + A.tobytes() + B.tobytes()
    status, headers, raw = post(shipped_server, "/v2/models/simple/versions/1/infer", body,
                                {"Inference-Header-Content-Length": str(len(header)),
                                 "Content-Type": "application/octet-stream"})
    assert status == 200
    length = int(headers["Inference-Header-Content-Length"])
    reply = json.loads(raw[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in reply["outputs"]]
    assert sizes == [64, 64] and len(raw) == length + 128
    np.testing.assert_array_equal(np.frombuffer(raw[length:length + 64], np.int32), (A + B).reshape(-1))


def test_bytes_model_json_and_binary(client):
    words = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    for binary in (True, False):
        inputs = [httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
                  httpclient.InferInput("INPUT1", [1, 16], "BYTES")]
        inputs[0].set_data_from_numpy(words, binary_data=binary)
        inputs[1].set_data_from_numpy(words, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
        result = client.infer("simple_string", inputs, outputs=outputs)
        # tritonclient gives BYTES that came as JSON text back as str
        got = [v if isinstance(v, bytes) else v.encode() for v in result.as_numpy("OUTPUT0").reshape(-1)]
        assert got == [str(2 * i).encode() for i in range(16)]


def test_tokenizer(client):
    texts = np.array([["Hello, world!"], ["serving models is fast"]], dtype=object)
    text = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(texts)
    result = client.infer("tokenizer", [text])
    ids, mask = result.as_numpy("INPUT_IDS"), result.as_numpy("ATTENTION_MASK")
    vocab = (__import__("tests.conftest", fromlist=["x"]).SHIPPED_REPOSITORY / "tokenizer/1/vocab.txt"
             ).read_text().splitlines()
    words = [[vocab[i] for i in row if i] for row in ids]
    assert words[0] == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    assert words[1] == ["[CLS]", "serving", "models", "is", "fast", "[SEP]"]
    assert mask.tolist() == [[1] * 6, [1] * 6] and ids.dtype == np.int64


def test_statistics_and_index(client, shipped_server):
    client.infer("simple", simple_inputs(httpclient, A, B))
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert stats["name"] == "simple" and stats["inference_stats"]["success"]["count"] >= 1
    assert stats["batch_stats"][0]["batch_size"] >= 1
    assert client.get_inference_statistics("simple", "1")["model_stats"][0]["version"] == "1"
    assert len(client.get_inference_statistics()["model_stats"]) >= 3
    index = client.get_model_repository_index()
    assert {"name": "simple", "version": "1", "state": "READY", "reason": ""} in index
    status, _, raw = post(shipped_server, "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(row["state"] == "READY" for row in json.loads(raw))


def test_errors_are_json(shipped_server):
    status, _, raw = post(shipped_server, "/v2/models/nope/infer", b"{}")
    assert status == 404 and json.loads(raw)["error"].startswith("Request for unknown model: 'nope' is not found")
    status, _, raw = post(shipped_server, "/v2/nowhere", b"{}")
    assert status == 404 and "error" in json.loads(raw)
    status, _, raw = post(shipped_server, "/v2/health/live", b"")
    assert status == 405 and "error" in json.loads(raw)
    status, _, raw = post(shipped_server, "/v2/systemsharedmemory/region/r/register", b"{}")
    assert status == 501 and "--allow-client-shm" in json.loads(raw)["error"]


def test_load_unload_refused_outside_explicit_mode(client):
    with pytest.raises(InferenceServerException, match="explicit"):
        client.load_model("simple")


def test_aio_client(shipped_server):
    async def scenario():
        client = aiohttpclient.InferenceServerClient(shipped_server.http_url)
        try:
            assert await client.is_server_live() and await client.is_server_ready()
            assert await client.is_model_ready("simple")
            assert (await client.get_server_metadata())["name"] == "naiad"
            assert (await client.get_model_metadata("simple"))["name"] == "simple"
            assert (await client.get_model_config("simple"))["max_batch_size"] == 8
            results = await asyncio.gather(*(
                client.infer("simple", simple_inputs(aiohttpclient, A + i, B)) for i in range(20)))
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + i + B)
            assert (await client.get_inference_statistics("simple"))["model_stats"][0]["name"] == "simple"
            assert any(m["name"] == "simple" for m in await client.get_model_repository_index())
        finally:
            await client.close()
    asyncio.run(scenario())
