"""Property-based tests (Hypothesis) of what turns a client's bytes or a user's configuration into
naiad's types: the HTTP request decoder, the gRPC request decoder and the model configuration loader.
Whatever they are given, they either succeed or raise an error that blames the client (a NaiadError
other than Internal; problems listed for a configuration), never another exception; and a request
they accept holds arrays of exactly the shape and datatype it declares. And the other way: a gRPC
answer serialized by hand parses as protobuf's own.

The profile is small enough for every test run; NAIAD_FUZZ_PROFILE=thorough searches much longer."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from naiad.daemon import datatypes, grpc_frontend, http_frontend, model_config
from naiad.daemon.errors import Code, ConfigError, NaiadError
from naiad.daemon.inference import InferRequest, InferResponse, SharedInput
from naiad.daemon.settings import Settings
from naiad.proto import grpc_service_pb2 as pb

settings.register_profile("fast", max_examples=200, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=20_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
fuzz = settings(settings.get_profile(os.environ.get("NAIAD_FUZZ_PROFILE", "fast")))

DATATYPE_NAMES = list(datatypes.BY_NAME)
SHM_KEYS = ["shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"]
PARAMETER_KEYS = SHM_KEYS + ["binary_data_size", "binary_data", "binary_data_output", "classification",
                             "priority", "timeout", "sequence_id"]
BIG_NUMBERS = [2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -1, -(2**63)]

# text as JSON carries it, lone surrogates included
any_text = st.text(max_size=8)
utf8_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
numbers = (st.integers(-300, 300) | st.sampled_from(BIG_NUMBERS)
           | st.floats(allow_nan=True, allow_infinity=True))
json_scalars = st.none() | st.booleans() | numbers | any_text
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=3), max_leaves=12)
# sizes: mostly small, at times negative, huge or not an integer at all
sizes = st.integers(0, 3) | st.sampled_from(BIG_NUMBERS + [-2, 65])
shapes = st.lists(sizes, max_size=4) | st.lists(st.integers(0, 1), min_size=60, max_size=70)


def assert_client_fault(error: Exception) -> None:
    assert isinstance(error, NaiadError) and error.code is not Code.INTERNAL, repr(error)
    assert error.message
    event(f"refused: {type(error).__name__}")  # --hypothesis-show-statistics tells the mix


def assert_matches_declared(request: InferRequest, declared: dict[str, tuple[str, list]]) -> None:
    """Every input decoded to the shape and datatype the request declared for it."""
    event(f"accepted with {len(declared)} input(s)")
    assert set(request.inputs) == set(declared)
    for name, tensor in request.inputs.items():
        datatype_name, shape = declared[name]
        datatype = datatypes.BY_NAME[datatype_name]
        if isinstance(tensor, SharedInput):
            assert tensor.datatype is datatype and tensor.shape == tuple(shape)
            continue
        assert isinstance(tensor, np.ndarray) and tensor.shape == tuple(shape), (name, tensor.shape, shape)
        assert tensor.dtype == (np.dtype(object) if datatype is datatypes.BYTES else datatype.numpy)
        if datatype is datatypes.BYTES:
            assert all(isinstance(v, bytes) for v in tensor.reshape(-1))


# --- HTTP ------------------------------------------------------------------------------------------

def mostly(fitting, wrong):
    """`fitting` nine times in ten, else `wrong`: requests right enough to reach the deeper checks."""
    return st.integers(0, 9).flatmap(lambda n: wrong if n == 0 else fitting)


parameter_values = mostly(st.integers(0, 64) | st.booleans() | utf8_text, json_values)


def element_count(shape: list) -> int:
    """The elements a generated shape holds, or 1 when the shape is wrong or too large to fill."""
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 100 for s in shape):
        return 1
    count = int(np.prod(shape))
    return count if count <= 64 else 1


def nested(values: list, shape: list[int]):
    """values laid out row-major in nested lists of `shape`."""
    if len(shape) <= 1:
        return values
    step = len(values) // shape[0] if shape[0] else 0
    return [nested(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def json_elements(datatype_name):
    """Values of the datatype's kind, as JSON writes them."""
    datatype = datatypes.BY_NAME.get(datatype_name) if isinstance(datatype_name, str) else None
    if datatype is None:
        return json_scalars
    if datatype is datatypes.BYTES:
        return any_text
    if datatype is datatypes.BY_NAME["BOOL"]:
        return st.booleans()
    if datatype.numpy.kind in "iu":
        info = np.iinfo(datatype.numpy)
        return st.integers(int(info.min), int(info.max))
    return st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-100, 100)


@st.composite
def raw_data(draw, known: datatypes.DataType | None, count: int) -> bytes:
    """Mostly the raw bytes `count` elements of `known` take (BYTES: length-prefixed items), else any."""
    if known is datatypes.BYTES:
        items = draw(st.lists(st.binary(max_size=4), min_size=count, max_size=count))
        fitting = st.just(b"".join(struct.pack("<I", len(b)) + b for b in items))
    else:
        size = count * (known.itemsize if known is not None else 1)
        fitting = st.binary(min_size=size, max_size=size)
    return draw(mostly(fitting, st.binary(max_size=12)))


@st.composite
def http_tensor(draw, binary: list[bytes], index: int):
    """An input tensor as JSON: mostly well-formed, with one part or another wrong at times."""
    datatype = draw(mostly(st.sampled_from(DATATYPE_NAMES), any_text | json_values))
    shape = draw(mostly(st.lists(st.integers(0, 3), max_size=3), shapes | json_values))
    name = mostly(st.just(f"INPUT{index}"), st.just("INPUT0") | any_text | json_values)
    tensor: dict = {"name": draw(name),
                    "datatype": datatype, "shape": shape}
    count = element_count(shape) if isinstance(shape, list) else 1
    how = draw(st.sampled_from(["data"] * 4 + ["binary"] * 3 + ["shared", "none"]))
    if how == "data":
        values = draw(mostly(st.lists(mostly(json_elements(datatype), json_values), min_size=count,
                                      max_size=count), st.lists(json_values, max_size=5)))
        layout = draw(st.sampled_from(["flat", "nested"]))
        tensor["data"] = nested(values, shape) if layout == "nested" and count > 1 else values
    elif how == "binary":
        known = datatypes.BY_NAME.get(datatype) if isinstance(datatype, str) else None
        blob = draw(raw_data(known, count))
        binary.append(blob)
        tensor["parameters"] = {"binary_data_size": draw(mostly(st.just(len(blob)), json_values))}
    elif how == "shared":
        tensor["parameters"] = {key: draw(mostly(st.integers(0, 64) | utf8_text, json_values))
                                for key in draw(st.lists(st.sampled_from(SHM_KEYS), unique=True))}
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(PARAMETER_KEYS))
        tensor.setdefault("parameters", {})[key] = draw(parameter_values)
    if draw(st.integers(0, 9)) == 0:
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    return tensor


@st.composite
def http_body(draw) -> tuple[bytes, str | None]:
    """A request body and its Inference-Header-Content-Length header (None: no header)."""
    binary: list[bytes] = []
    header: dict = {"inputs": [draw(http_tensor(binary, i)) for i in range(draw(st.integers(0, 3)))]}
    if draw(st.booleans()):
        output = st.fixed_dictionaries({"name": mostly(st.just("OUTPUT0"), any_text | json_values)}, optional={
            "parameters": st.dictionaries(st.sampled_from(PARAMETER_KEYS), parameter_values, max_size=2)})
        header["outputs"] = draw(st.lists(mostly(output, json_values), max_size=3))
    if draw(st.booleans()):
        header["parameters"] = draw(st.dictionaries(mostly(st.sampled_from(PARAMETER_KEYS), any_text),
                                                    parameter_values, max_size=3))
    if draw(st.booleans()):
        header["id"] = draw(mostly(utf8_text, json_values))
    if draw(st.integers(0, 9)) == 0:
        header[draw(st.sampled_from(["inputs", "outputs", "parameters"]))] = draw(json_values)
    text = json.dumps(header).encode()
    if not binary and draw(st.booleans()):
        return text, None
    body = text + b"".join(binary)
    wrong = st.sampled_from(["", "-1", "0", "x", str(len(body) + 1)]) | st.integers(-5, len(body) + 5).map(str)
    return body, draw(mostly(st.just(str(len(text))), wrong))


def decode_http(body: bytes, header_length: str | None) -> None:
    try:
        request, _ = http_frontend.decode_request("m", "1", body, header_length,
                                                  max_json_elements=Settings().http_max_json_elements)
    except Exception as e:  # noqa: BLE001 - the property: which exception it is
        assert_client_fault(e)
        return
    if header_length is not None:
        body = body[:int(header_length)]
    header = json.loads(body or b"{}")
    assert_matches_declared(request, {t["name"]: (t["datatype"], t["shape"]) for t in header["inputs"]})


@fuzz
@given(st.binary(max_size=200), st.none() | st.integers(-2, 210).map(str) | any_text)
def test_http_decoder_on_arbitrary_bytes(body, header_length):
    decode_http(body, header_length)


@fuzz
@given(json_values)
def test_http_decoder_on_arbitrary_json(value):
    decode_http(json.dumps(value).encode("utf-8", "surrogatepass"), None)


@fuzz
@given(http_body())
def test_http_decoder_on_structured_but_wrong_requests(body_and_length):
    decode_http(*body_and_length)


# --- gRPC ------------------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
CONTENTS = {
    "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": INT64, "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=4),
}
grpc_parameter = st.one_of(
    st.builds(pb.InferParameter, bool_param=st.booleans()),
    st.builds(pb.InferParameter, int64_param=INT64 | st.integers(-2, 64)),
    st.builds(pb.InferParameter, string_param=utf8_text),
    st.builds(pb.InferParameter, double_param=st.floats()),
    st.builds(pb.InferParameter, uint64_param=st.integers(0, 2**64 - 1) | st.integers(0, 64)),
    st.just(pb.InferParameter()))
grpc_parameters = st.dictionaries(st.sampled_from(PARAMETER_KEYS) | utf8_text, grpc_parameter, max_size=3)


@st.composite
def grpc_tensor(draw, raw: list[bytes], index: int) -> pb.ModelInferRequest.InferInputTensor:
    """An input tensor: mostly well-formed, with one part or another wrong at times."""
    datatype = draw(mostly(st.sampled_from(DATATYPE_NAMES), utf8_text))
    shape = draw(mostly(st.lists(st.integers(0, 3), max_size=3),
                        st.lists(INT64, max_size=3) | st.lists(st.integers(0, 1), min_size=60, max_size=70)))
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(mostly(st.just(f"INPUT{index}"), st.just("INPUT0") | utf8_text)), datatype=datatype,
        shape=shape)
    count = element_count(shape)
    known = datatypes.BY_NAME.get(datatype)
    if draw(st.booleans()):  # typed contents, in the datatype's field or another
        fitting = grpc_frontend.CONTENTS_FIELD.get(datatype)
        fields = st.sampled_from(sorted(CONTENTS))
        field = draw(mostly(st.just(fitting), fields) if fitting else fields)
        values = draw(mostly(st.lists(CONTENTS[field], min_size=count, max_size=count),
                             st.lists(CONTENTS[field], max_size=5)))
        getattr(tensor.contents, field).extend(values)
    else:  # raw contents
        raw.append(draw(raw_data(known, count)))
    if draw(st.integers(0, 3)) == 0:
        for key, value in draw(grpc_parameters).items():
            tensor.parameters[key].CopyFrom(value)
    return tensor


@st.composite
def grpc_request(draw) -> pb.ModelInferRequest:
    raw: list[bytes] = []
    message = pb.ModelInferRequest(model_name="m", id=draw(utf8_text),
                                   inputs=[draw(grpc_tensor(raw, i)) for i in range(draw(st.integers(0, 3)))])
    if draw(st.integers(0, 9)) == 0:  # one raw entry too many
        raw.append(draw(st.binary(max_size=8)))
    if raw and len(raw) < len(message.inputs) and draw(st.integers(0, 9)):
        raw = []  # raw for some inputs and typed contents for others is wrong: mostly avoid it
    message.raw_input_contents.extend(raw)
    for _ in range(draw(st.integers(0, 2))):
        output = message.outputs.add(name=draw(st.sampled_from(["OUTPUT0"]) | utf8_text))
        for key, value in draw(grpc_parameters).items():
            output.parameters[key].CopyFrom(value)
    for key, value in draw(grpc_parameters).items():
        message.parameters[key].CopyFrom(value)
    return message


def decode_grpc(message: pb.ModelInferRequest) -> None:
    try:
        request = grpc_frontend.decode_request(message)
    except Exception as e:  # noqa: BLE001 - the property: which exception it is
        assert_client_fault(e)
        return
    assert_matches_declared(request, {t.name: (t.datatype, list(t.shape)) for t in message.inputs})


@fuzz
@given(grpc_request())
def test_grpc_decoder_on_structured_but_wrong_messages(message):
    decode_grpc(message)


@st.composite
def same_description(draw) -> tuple[pb.ModelInferRequest, pb.ModelInferRequest]:
    """A request, then one that differs from it only in its id and raw_input_contents: mostly data of
    the same sizes, at times of other sizes or one entry more."""
    first = draw(grpc_request())
    second = pb.ModelInferRequest()
    second.CopyFrom(first)
    second.id = draw(utf8_text)
    second.ClearField("raw_input_contents")
    for entry in first.raw_input_contents:
        size = len(entry)
        second.raw_input_contents.append(draw(mostly(st.binary(min_size=size, max_size=size),
                                                     st.binary(max_size=8))))
    if draw(st.integers(0, 9)) == 0:
        second.raw_input_contents.append(draw(st.binary(max_size=8)))
    return first, second


def decoded(decode, wire: bytes) -> tuple:
    """What a decoder makes of a request, in values that compare: its error, or every field."""
    try:
        request = decode(wire)
    except NaiadError as e:
        return type(e), e.message
    tensors = {name: tensor if isinstance(tensor, SharedInput) else
               (tensor.dtype, tensor.shape, tensor.tolist() if tensor.dtype == object else tensor.tobytes())
               for name, tensor in request.inputs.items()}
    return (request.model_name, request.model_version, request.id, tensors, request.requested_outputs,
            repr(sorted(request.parameters.items())), request.priority, request.timeout_us)   # NaN too


@fuzz
@given(same_description())
def test_grpc_decoder_that_reuses_descriptions_decodes_as_without(pair):
    decoder = grpc_frontend.RequestDecoder()
    in_place = grpc_frontend.RequestDecoder()
    in_place.IN_PLACE_FROM = 0   # every request's tensors as views of its bytes
    for message in pair:
        wire = message.SerializeToString()
        alone = decoded(lambda data: grpc_frontend.decode_request(grpc_frontend.parse_request(data)), wire)
        assert decoded(decoder.decode, wire) == alone
        assert decoded(in_place.decode, wire) == alone
    assert len(decoder.known) <= len({bool(message.raw_input_contents) for message in pair})


@st.composite
def mutated_wire_bytes(draw) -> bytes:
    """A message's bytes with a few bytes changed, inserted or deleted: fields of the wrong wire
    type, lengths that lie, unknown field numbers."""
    data = bytearray(draw(grpc_request()).SerializeToString())
    for _ in range(draw(st.integers(1, 2))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "insert" or not data[at:]:
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif action == "set":
            data[at] = draw(st.integers(0, 255))
        else:
            del data[at]
    return bytes(data)


@fuzz
@given(mutated_wire_bytes() | grpc_request().map(pb.ModelInferRequest.SerializeToString)
       | st.binary(max_size=64))
def test_raw_contents_split_from_the_wire_as_protobuf_parses_them(data):
    """Where split_raw_contents splits a message, the rest parses as the whole does (or fails as it
    does), and the raw entries are the whole's, in order."""
    split = grpc_frontend.split_raw_contents(data)
    if split is None:
        return
    rest, raw = split
    try:
        whole = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            pb.ModelInferRequest.FromString(rest)
        return
    parsed = pb.ModelInferRequest.FromString(rest)
    assert not parsed.raw_input_contents
    parsed.raw_input_contents.extend(bytes(entry) for entry in raw)
    assert parsed.SerializeToString(deterministic=True) == whole.SerializeToString(deterministic=True)


output_dtypes = st.sampled_from(["bool", "int8", "uint16", "<i4", "int64", "float16", "float64"])
numeric_outputs = hnp.arrays(output_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12))
bytes_outputs = st.lists(st.binary(max_size=8), max_size=5).map(lambda items: np.array(items, dtype=object))
any_output = numeric_outputs | numeric_outputs.map(np.transpose) | bytes_outputs
response_outputs = st.dictionaries(utf8_text, any_output, max_size=3)
response_parameters = st.dictionaries(utf8_text, st.booleans() | INT64 | st.floats() | utf8_text,
                                      max_size=2)


@fuzz
@given(response_outputs, response_parameters)
def test_a_response_serialized_by_hand_parses_as_protobuf_serializes_it(outputs, parameters):
    """serialize_response joins each output's bytes into the message itself: what it writes parses as
    the message encode_response builds, and each entry holds its output in the protocol's layout
    (transposed arrays, empty ones and BYTES included)."""
    request = InferRequest("model", "", {}, id="7")
    response = InferResponse(outputs, parameters=parameters)
    parsed = pb.ModelInferResponse.FromString(grpc_frontend.serialize_response(request, "1", response))
    built = grpc_frontend.encode_response(request, "1", response)
    assert parsed.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)
    assert list(parsed.raw_output_contents) == [datatypes.to_raw(array) for array in outputs.values()]


@fuzz
@given(mutated_wire_bytes() | st.binary(max_size=64))
def test_grpc_decoder_on_mutated_wire_bytes(data):
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:  # not a message: gRPC's own layer turns it away before naiad sees it
        return
    decode_grpc(message)


# --- model configuration ---------------------------------------------------------------------------

CONFIG_FIELDS = [f.name for f in model_config.dataclasses.fields(model_config.ModelConfig)]
NESTED_FIELDS = ["name", "data_type", "dims", "reshape", "shape", "optional", "kind", "count", "gpus",
                 "preferred_batch_size", "max_queue_delay_microseconds", "preserve_ordering",
                 "priority_levels", "default_priority_level", "default_queue_policy",
                 "priority_queue_policy", "timeout_action", "default_timeout_microseconds",
                 "allow_timeout_override", "max_queue_size", "latest", "all", "specific",
                 "num_versions", "versions", "string_value", "decoupled", "format", "is_shape_tensor"]
yaml_scalars = (st.none() | st.booleans() | numbers | any_text
                | st.sampled_from(["TYPE_FP32", "FP32", "KIND_CPU", "KIND_GPU", "DELAY", "REJECT", "-1"]))
yaml_keys = st.sampled_from(NESTED_FIELDS) | any_text | st.integers(-2, 5) | st.booleans()
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(yaml_keys, inner, max_size=4), max_leaves=20)
configs = st.dictionaries(st.sampled_from(CONFIG_FIELDS) | yaml_keys, yaml_values, max_size=8)


def load_config(raw) -> None:
    try:
        config, problems = model_config.load(raw, "m")
    except ConfigError as e:
        assert e.problems
        return
    assert isinstance(config, model_config.ModelConfig)
    assert all(isinstance(p, str) and p for p in problems)


@fuzz
@given(configs)
def test_config_loader_on_yaml_like_mappings(raw):
    load_config(raw)


@fuzz
@given(yaml_values)
def test_config_loader_on_any_yaml_value(raw):
    load_config(raw)
