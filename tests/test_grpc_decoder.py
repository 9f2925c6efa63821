"""grpc_frontend.RequestDecoder, in process: a request whose description (all but its id and
raw_input_contents) came lately is decoded from the remembered description, with its own id and
data; descriptions that hold tensor data or are long are not remembered, and at most KEEP are. A large
request's tensors are views of the bytes it came in. That reuse decodes exactly as decoding afresh,
and that the bytes split from the wire are those protobuf parses, are property tests in test_fuzz.py."""
from __future__ import annotations

import numpy as np
import pytest
from naiad.daemon import grpc_frontend
from naiad.daemon.errors import InvalidArgument
from naiad.proto import grpc_service_pb2 as pb

RequestDecoder = grpc_frontend.RequestDecoder


def simple_request(model: str, request_id: str, values: list[int], from_contents: bool = False) -> bytes:
    message = pb.ModelInferRequest(model_name=model, id=request_id)
    message.parameters["priority"].int64_param = 2
    message.outputs.add(name="OUTPUT0")
    tensor = message.inputs.add(name="INPUT0", datatype="INT32", shape=[1, len(values)])
    if from_contents:
        tensor.contents.int_contents.extend(values)
    else:
        message.raw_input_contents.append(np.array(values, np.int32).tobytes())
    return message.SerializeToString()


def test_a_request_like_an_earlier_one_keeps_its_own_id_and_data():
    decoder = RequestDecoder()
    first = decoder.decode(simple_request("m", "a", [1, 2, 3]))
    second = decoder.decode(simple_request("m", "b", [4, 5, 6]))
    assert len(decoder.known) == 1   # one description, used twice
    assert (first.id, second.id) == ("a", "b")
    assert first.inputs["INPUT0"].tolist() == [[1, 2, 3]] and second.inputs["INPUT0"].tolist() == [[4, 5, 6]]
    assert second.priority == 2 and second.output_names == ["OUTPUT0"]
    # what one request holds is its own: changing it leaves the next request alone
    first.parameters["priority"] = 7
    first.requested_outputs.clear()
    third = decoder.decode(simple_request("m", "c", [7, 8, 9]))
    assert third.parameters == {"priority": 2} and third.output_names == ["OUTPUT0"]


def test_a_remembered_description_still_checks_the_data_against_it():
    decoder = RequestDecoder()
    decoder.decode(simple_request("m", "a", [1, 2, 3]))
    message = pb.ModelInferRequest.FromString(simple_request("m", "b", [1, 2, 3]))
    message.raw_input_contents[0] = b"\0" * 8
    needs = r"input 'INPUT0': shape \[1, 3\] of INT32 needs 12 bytes, got 8"
    with pytest.raises(InvalidArgument, match=needs):
        decoder.decode(message.SerializeToString())
    message.raw_input_contents.append(b"\0" * 12)
    with pytest.raises(InvalidArgument, match="raw_input_contents holds 2 entries for 1 inputs"):
        decoder.decode(message.SerializeToString())


def test_inputs_given_in_contents_are_decoded_afresh_each_time():
    decoder = RequestDecoder()
    first = decoder.decode(simple_request("m", "a", [1, 2, 3], from_contents=True))
    second = decoder.decode(simple_request("m", "a", [1, 2, 3], from_contents=True))
    assert decoder.known == {}
    first.inputs["INPUT0"][0, 0] = 100   # writable, and no other request's
    assert second.inputs["INPUT0"].tolist() == [[1, 2, 3]]


def test_the_oldest_description_is_forgotten_first():
    decoder = RequestDecoder()
    for index in range(RequestDecoder.KEEP + 3):
        decoder.decode(simple_request(f"model{index}", "", [1]))
    names = [description.model_name for description in decoder.known.values()]
    assert names == [f"model{index}" for index in range(3, RequestDecoder.KEEP + 3)]


def test_a_long_description_is_not_remembered_but_a_large_request_is():
    decoder = RequestDecoder()
    message = pb.ModelInferRequest.FromString(simple_request("m", "a", [1]))
    message.parameters["note"].string_param = "x" * RequestDecoder.LONGEST
    assert decoder.decode(message.SerializeToString()).parameters["note"] == "x" * RequestDecoder.LONGEST
    assert decoder.known == {}
    values = list(range(1 << 18))   # a megabyte of data
    request = decoder.decode(simple_request("m", "a", values))
    assert len(decoder.known) == 1 and request.inputs["INPUT0"].tolist() == [values]


def viewed_bytes(array: np.ndarray):
    """The object whose memory an array views: its base's base, and so on."""
    while isinstance(array, np.ndarray):
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_a_large_requests_tensors_are_views_of_the_bytes_it_came_in():
    values = list(range(RequestDecoder.IN_PLACE_FROM))   # four times the size, in INT32
    wire = simple_request("m", "a", values)
    request = RequestDecoder().decode(wire)
    assert request.inputs["INPUT0"].tolist() == [values] and request.id == "a"
    assert viewed_bytes(request.inputs["INPUT0"]) is wire
    small_wire = simple_request("m", "a", [1, 2])
    small = RequestDecoder().decode(small_wire)
    assert viewed_bytes(small.inputs["INPUT0"]) is not small_wire   # copied, as protobuf reads it


def test_a_large_request_with_a_field_of_another_wire_type_is_parsed_whole():
    """A field unknown to naiad as a varint (a newer client's) is not length-delimited: the split
    gives way to protobuf, which skips the field."""
    values = list(range(RequestDecoder.IN_PLACE_FROM))
    wire = simple_request("m", "a", values)
    unknown_varint = bytes([(99 << 3) & 0x7F | 0x80, 99 >> 4, 5])   # field 99, wire type 0, value 5
    assert grpc_frontend.split_raw_contents(wire + unknown_varint) is None
    request = RequestDecoder().decode(wire + unknown_varint)
    assert request.inputs["INPUT0"].tolist() == [values]


def test_a_truncated_large_request_is_refused_as_protobuf_refuses_it():
    wire = simple_request("m", "a", list(range(RequestDecoder.IN_PLACE_FROM)))[:-1]
    assert grpc_frontend.split_raw_contents(wire) is None
    with pytest.raises(InvalidArgument, match="ModelInferRequest"):
        RequestDecoder().decode(wire)
