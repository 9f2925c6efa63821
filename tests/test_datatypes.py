"""Every datatype in both directions, on both protocols: an identity model per type."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from naiad.daemon import datatypes
from naiad.daemon.errors import InvalidArgument
from tests.models import DATATYPES


def sample(datatype: str, batch: int = 3) -> np.ndarray:
    """Values that use each type's range: extremes, negatives, fractions, non-ASCII text."""
    if datatype == "BYTES":
        words = [b"", b"naiad", "\u00e9t\u00e9".encode(), b"\x00\xffbinary", b"x" * 1000]
        return np.array([[words[(i + j) % 5] for j in range(5)] for i in range(batch)], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True, True, False]] * batch)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        values = np.array([[0.5, -1.25, 3.0, 1024.0, -0.0]] * batch)
        return values.astype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
                              "BF16": ml_dtypes.bfloat16}[datatype])
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0, 1, info.max // 3]] * batch, dtype=dtype)


def as_bytes(array: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: v if isinstance(v, bytes) else v.encode(), otypes=[object])(array)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_grpc_round_trip(server, datatype):
    data = sample(datatype)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        result = client.infer(f"identity_{datatype.lower()}", [tensor])
        assert result.get_output("OUTPUT0").datatype == datatype
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_http_round_trip(server, datatype, binary):
    data = sample(datatype)
    if not binary and datatype == "BYTES":  # JSON carries text
        data = np.array([[b"", "\u00e9t\u00e9".encode()], [b"naiad", b"x" * 100]], dtype=object)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", list(data.shape), datatype)
        # tritonclient sends FP16 and BF16 only as binary data
        tensor.set_data_from_numpy(data, binary_data=binary or datatype in ("FP16", "BF16"))
        output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        result = client.infer(f"identity_{datatype.lower()}", [tensor], outputs=[output])
        got = result.as_numpy("OUTPUT0")
        assert result.get_output("OUTPUT0")["datatype"] == datatype
        if datatype == "BYTES":
            got = as_bytes(got)
        np.testing.assert_array_equal(got.astype(data.dtype), data)
    finally:
        client.close()


def test_grpc_typed_contents_for_every_type(server):
    """Inputs in InferTensorContents (not raw bytes): every type that has a contents field."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc
    fields = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
              "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
              "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
              "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for datatype, field in fields.items():
            data = sample(datatype, batch=2)
            request = service_pb2.ModelInferRequest(model_name=f"identity_{datatype.lower()}")
            tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=list(data.shape))
            getattr(tensor.contents, field).extend(data.reshape(-1).tolist())
            response = stub.ModelInfer(request, timeout=5)
            result = grpcclient.InferResult(response)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data, err_msg=datatype)


def test_no_batch_model_and_variable_dims(server):
    data = np.arange(10, dtype=np.float32).reshape(2, 5)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        tensor = grpcclient.InferInput("INPUT0", [2, 5], "FP32")
        tensor.set_data_from_numpy(data)
        np.testing.assert_array_equal(client.infer("identity_nobatch", [tensor]).as_numpy("OUTPUT0"), data)
        metadata = client.get_model_metadata("identity_nobatch", as_json=True)
        assert metadata["inputs"][0]["shape"] == ["2", "-1"]


def test_shapes_from_requests_are_checked_in_one_place():
    assert datatypes.check_shape("input", "X", [2, 3]) == 6
    assert datatypes.check_shape("input", "X", [0, 5]) == 0 and datatypes.check_shape("input", "X", []) == 1
    assert datatypes.check_shape("input", "X", [1] * 64) == 1
    for shape, words in [
        ([1] * 65, "input 'X': shape has 65 dimensions; at most 64 are allowed"),
        ([0, 2 ** 62, 2 ** 62], "input 'X': shape [0, 4611686018427387904, 4611686018427387904] is too large"),
        ([2 ** 21, 2 ** 20], "is too large; a tensor holds at most 1099511627776 elements"),
        ([3, -1], "input 'X': shape [3, -1] must list sizes >= 0"),
        ([True, 2], "must list sizes >= 0"),
        ([1.5], "must list sizes >= 0"),
    ]:
        with pytest.raises(InvalidArgument) as raised:
            datatypes.check_shape("input", "X", shape)
        assert words in raised.value.message


def test_text_elements_must_be_unicode():
    assert datatypes.text_element("X", 0, "\u00e9t\u00e9") == "\u00e9t\u00e9".encode()
    with pytest.raises(InvalidArgument, match=r"input 'X': BYTES element 2 is not valid Unicode text"):
        datatypes.text_element("X", 2, "a\ud800")
