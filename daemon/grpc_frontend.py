"""The gRPC frontend: inference.GRPCInferenceService and grpc.health.v1.Health on grpc.aio.
Translates protobuf messages to naiad's core types and back; nothing else happens here."""
from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from naiad.daemon import datatypes
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.errors import InvalidArgument, NaiadError
from naiad.daemon.inference import (SHM_BYTE_SIZE, SHM_OFFSET, SHM_REGION, InferRequest, InferResponse,
                                    Placed, RequestedOutput, SharedInput, check_tensor_parameters,
                                    region_slice, scheduling_parameters)
from naiad.proto import grpc_service_pb2 as pb
from naiad.proto import health_pb2, model_config_pb2

log = logging.getLogger(__name__)

# typed contents field for each datatype (FP16 and BF16 have none: they travel raw)
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


# requests of one ModelStreamInfer stream in flight at once, their responses waiting to be written
# included; a client that sends more without reading is held back by HTTP/2 flow control
STREAM_IN_FLIGHT = 64
# a stream request's parameter asking each response to carry the second one (Triton's names)
FINAL_FLAG_REQUEST = "triton_enable_empty_final_response"
FINAL_FLAG_RESPONSE = "triton_final_response"


# --- wire to core --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Undecodable:
    """A message protobuf cannot parse (a string field that is not UTF-8, such as an encoded lone
    surrogate, or bytes that are not the message): answered INVALID_ARGUMENT by the method it came to,
    not UNKNOWN by gRPC."""
    type_name: str
    error: str

    def refuse(self) -> InvalidArgument:
        return InvalidArgument(f"the {self.type_name} message cannot be parsed ({self.error}); every "
                               f"string field must be valid UTF-8")


def _deserializer(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError as e:
            return Undecodable(message_class.DESCRIPTOR.name, str(e))
    return parse


_parse_infer_request = _deserializer(pb.ModelInferRequest)


def parse_request(wire: bytes) -> pb.ModelInferRequest:
    """A ModelInferRequest as it came off the wire; InvalidArgument when it cannot be parsed."""
    message = _parse_infer_request(wire)
    if isinstance(message, Undecodable):
        raise message.refuse()
    return message


_RAW_CONTENTS_FIELD = pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number
_LENGTH_DELIMITED = 2   # protobuf's wire type of strings, bytes and messages: every field of a request


def _varint(wire: bytes, at: int) -> tuple[int, int]:
    """The varint at `at`, and where the next field starts; IndexError or ValueError if malformed."""
    value = shift = 0
    while shift < 64:
        byte = wire[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise ValueError("varint longer than 64 bits")


def split_raw_contents(wire: bytes) -> tuple[bytes, list[memoryview]] | None:
    """A serialized ModelInferRequest without its raw_input_contents, and those as views of `wire`, in
    order: protobuf would copy each of them twice (as it parses, and when it is read). None where the
    message's top level is not length-delimited fields only (protobuf then parses it, and says what
    is wrong)."""
    view = memoryview(wire)
    rest, raw = [], []
    at = 0
    try:
        while at < len(wire):
            start = at
            tag, at = _varint(wire, at)
            length, at = _varint(wire, at)
            if tag & 7 != _LENGTH_DELIMITED or at + length > len(wire):
                return None
            if tag >> 3 == _RAW_CONTENTS_FIELD:
                raw.append(view[at:at + length])
            else:
                rest.append(view[start:at + length])
            at += length
    except (IndexError, ValueError):
        return None
    return b"".join(rest), raw


def _parameter(value: pb.InferParameter):
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(params) -> dict:
    return {key: _parameter(value) for key, value in params.items()}


def _from_contents(tensor, datatype: datatypes.DataType, shape: list[int]) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype.name)
    if field is None:
        raise InvalidArgument(f"input '{tensor.name}': {datatype} data must be sent in "
                              f"raw_input_contents")
    values = getattr(tensor.contents, field)
    count = datatypes.element_count(shape)
    if len(values) != count:
        raise InvalidArgument(f"input '{tensor.name}': shape {shape} needs {count} elements, "
                              f"{field} holds {len(values)}")
    if datatype is datatypes.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError:
        raise InvalidArgument(f"input '{tensor.name}': a value in {field} does not fit {datatype}")


@dataclass(frozen=True, slots=True)
class RawInput:
    """An input whose data is the next entry of raw_input_contents."""
    datatype: datatypes.DataType
    shape: list[int]


@dataclass(frozen=True, slots=True)
class RequestDescription:
    """A ModelInferRequest decoded but for its id and raw_input_contents. Clients send the same
    description over and over with new data; `reusable` when the data is all in raw_input_contents or
    shared memory (an input given in `contents` is decoded into it)."""
    model_name: str
    model_version: str
    inputs: dict[str, RawInput | SharedInput | np.ndarray]
    requested_outputs: list[RequestedOutput] | None
    parameters: dict
    priority: int
    timeout_us: int
    raw_count: int
    reusable: bool

    def request(self, raw, request_id: str) -> InferRequest:
        """The request these raw_input_contents and id complete."""
        if len(raw) != self.raw_count:
            count = (", fewer than the inputs" if len(raw) < self.raw_count
                     else f" for {self.raw_count} inputs")
            raise InvalidArgument(f"raw_input_contents holds {len(raw)} entries{count} not in shared memory; "
                                  f"send one per input, in the order of `inputs`")
        inputs = {}
        used = 0
        for name, value in self.inputs.items():
            if isinstance(value, RawInput):
                value = datatypes.from_raw(name, value.datatype, value.shape, raw[used])
                used += 1
            inputs[name] = value
        outputs = self.requested_outputs
        return InferRequest(self.model_name, self.model_version, inputs,
                            None if outputs is None else list(outputs), request_id, dict(self.parameters),
                            self.priority, self.timeout_us)


def describe_request(message: pb.ModelInferRequest, has_raw: bool) -> RequestDescription:
    """Everything in a request but its id and raw_input_contents (`has_raw`: whether it has any),
    checked; InvalidArgument naming what is wrong."""
    inputs = {}
    raw_count = 0
    for tensor in message.inputs:
        name = tensor.name
        datatype = datatypes.BY_NAME.get(tensor.datatype)
        if datatype is None:
            raise InvalidArgument(f"input '{name}': unknown datatype '{tensor.datatype}'; expected one "
                                  f"of {', '.join(datatypes.BY_NAME)}")
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears twice in the request")
        shape = tensor.shape[:]   # a list
        datatypes.check_shape("input", name, shape)
        where = None
        if tensor.parameters:
            parameters = _parameters(tensor.parameters)
            check_tensor_parameters("input", name, parameters)
            where = region_slice("input", name, parameters)
        if (where is not None or has_raw) and tensor.HasField("contents") and tensor.contents.ListFields():
            # Triton's rule: an input's data comes from one place only
            raise InvalidArgument(f"input '{name}': has data in contents while its data is in "
                                  f"{'shared memory' if where is not None else 'raw_input_contents'}; "
                                  f"send it in one place only")
        if where is not None:
            inputs[name] = SharedInput(datatype, tuple(shape), where)
        elif has_raw:
            inputs[name] = RawInput(datatype, shape)
            raw_count += 1
        else:
            inputs[name] = _from_contents(tensor, datatype, shape)
    requested = None
    if message.outputs:
        requested = []
        for output in message.outputs:
            where = None
            if output.parameters:
                parameters = _parameters(output.parameters)
                check_tensor_parameters("output", output.name, parameters)
                where = region_slice("output", output.name, parameters)
            requested.append(RequestedOutput(output.name, where=where))
    parameters, priority, timeout_us = {}, 0, 0
    if message.parameters:
        parameters = _parameters(message.parameters)
        priority, timeout_us = scheduling_parameters(parameters)
    reusable = all(isinstance(value, (RawInput, SharedInput)) for value in inputs.values())
    return RequestDescription(message.model_name, message.model_version, inputs, requested, parameters,
                              priority, timeout_us, raw_count, reusable)


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    return describe_request(message, bool(raw)).request(raw, message.id)


class RequestDecoder:
    """Decodes serialized ModelInferRequests, reusing the description (RequestDescription) of a request
    seen lately: looking it up costs a fraction of decoding it again. What is looked up is the request
    itself without its id and raw_input_contents, so a request is decoded from exactly what its own
    description would decode to."""
    KEEP = 64          # descriptions remembered, the oldest forgotten first
    LONGEST = 1024     # bytes of a description worth remembering (a client's are a few hundred)
    # from this size a request's tensors stay in the bytes it came in: finding them there costs a few
    # µs, less than protobuf's two copies of them
    IN_PLACE_FROM = 16 * 1024

    def __init__(self):
        self.known: dict[tuple[bytes, bool], RequestDescription] = {}

    def decode(self, wire: bytes) -> InferRequest:
        """InvalidArgument when the request cannot be parsed or is not valid."""
        split = split_raw_contents(wire) if len(wire) >= self.IN_PLACE_FROM else None
        if split is None:
            message = parse_request(wire)
            raw = message.raw_input_contents[:]
            message.ClearField("raw_input_contents")
        else:
            rest, raw = split
            message = parse_request(rest)
        request_id = message.id
        message.ClearField("id")
        key = (message.SerializeToString(deterministic=True), bool(raw))   # maps in one order
        description = self.known.get(key)
        if description is None:
            description = describe_request(message, bool(raw))
            if description.reusable and len(key[0]) <= self.LONGEST:
                if len(self.known) >= self.KEEP:
                    del self.known[next(iter(self.known))]
                self.known[key] = description
        return description.request(raw, request_id)


# --- core to wire --------------------------------------------------------------------------------

def _set_parameter(target: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id))


def _placed_parameters(placed: Placed) -> dict:
    found = {SHM_REGION: placed.where.region, SHM_BYTE_SIZE: placed.where.byte_size}
    if placed.where.offset:
        found[SHM_OFFSET] = placed.where.offset
    return found


def _response_parts(request: InferRequest, model_version: str, response: InferResponse
                    ) -> tuple[pb.ModelInferResponse, list]:
    """The ModelInferResponse without its raw_output_contents, and those (bytes-like), in order."""
    message = pb.ModelInferResponse(model_name=request.model_name, model_version=model_version,
                                    id=request.id)
    outputs = message.outputs
    raw = []
    for name, array in response.outputs.items():
        if isinstance(array, Placed):
            # clients read raw_output_contents[i] as outputs[i]: an output placed in shared memory
            # keeps its (empty) entry
            output = outputs.add(name=name, datatype=array.datatype.name, shape=array.shape)
            for key, value in _placed_parameters(array).items():
                _set_parameter(output.parameters[key], value)
            raw.append(b"")
            continue
        outputs.add(name=name, datatype=datatypes.of_array(array).name, shape=array.shape)
        raw.append(datatypes.raw_view(array))
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    return message, raw


def encode_response(request: InferRequest, model_version: str, response: InferResponse
                    ) -> pb.ModelInferResponse:
    message, raw = _response_parts(request, model_version, response)
    message.raw_output_contents.extend(bytes(data) for data in raw)
    return message


_RAW_OUTPUT_TAG = bytes([pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number << 3
                         | _LENGTH_DELIMITED])


def _varint_bytes(value: int) -> bytes:
    found = bytearray()
    while value >= 0x80:
        found.append(value & 0x7F | 0x80)
        value >>= 7
    found.append(value)
    return bytes(found)


def serialize_response(request: InferRequest, model_version: str, response: InferResponse) -> bytes:
    """encode_response(...).SerializeToString(), with each output's bytes copied once: protobuf
    copies them into the message, and again each time its buffer grows while it serializes. The
    raw_output_contents field is the message's last, where protobuf puts it too."""
    message, raw = _response_parts(request, model_version, response)
    parts = [message.SerializeToString()]
    for data in raw:
        parts += (_RAW_OUTPUT_TAG, _varint_bytes(len(data)), data)
    return b"".join(parts)


# --- the service ---------------------------------------------------------------------------------

def _rpc(method):
    """Map naiad's errors to gRPC status codes; an unexpected error becomes INTERNAL, logged."""
    @functools.wraps(method)
    async def wrapper(self, request, context):
        if log.isEnabledFor(logging.DEBUG):  # --log-verbose: a line per call
            log.debug("gRPC %s", method.__name__)
        try:
            if isinstance(request, Undecodable):
                raise request.refuse()
            return await method(self, request, context)
        except NaiadError as e:
            await context.abort(grpc.StatusCode[e.code.grpc_name], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
    return wrapper


def _unimplemented(what: str):
    async def method(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported yet")
    return method


class Forwarding(Protocol):
    """A frontend process's way to the model process for ModelInfer requests it does not decode."""

    def takes(self, size: int) -> bool:
        """Whether a request of `size` bytes goes on undecoded."""

    async def infer_grpc(self, wire: bytes) -> bytes:
        """The request as it came off the wire -> its ModelInferResponse, serialized."""


class InferenceService:
    BYTES_METHODS = ("ModelInfer",)   # take and return their messages serialized

    def __init__(self, plane: DataPlane, forwarding: Forwarding | None = None):
        self.plane = plane
        self.forwarding = forwarding
        self.decoder = RequestDecoder()

    async def _decode(self, message: pb.ModelInferRequest) -> InferRequest:
        if isinstance(message, Undecodable):
            raise message.refuse()
        try:
            return decode_request(message)
        except InvalidArgument:
            # an unknown model is the first thing to report
            await self.plane.model_metadata(message.model_name, message.model_version)
            raise

    @_rpc
    async def ModelInfer(self, wire: bytes, context) -> bytes:
        # a frontend process may pass the request on undecoded (daemon/channel.py says when)
        if self.forwarding is not None and self.forwarding.takes(len(wire)):
            return await self.forwarding.infer_grpc(wire)
        try:
            request = self.decoder.decode(wire)
        except InvalidArgument:
            request = await self._decode(parse_request(wire))   # raises the same, an unknown model first
        version, response = await self.plane.infer(request)
        return serialize_response(request, version, response)

    async def ModelStreamInfer(self, messages, context):
        """Each request runs as it arrives; its responses (one, or a decoupled model's many, in the
        order the model sent them) are written as they come. At most STREAM_IN_FLIGHT requests of
        the stream are in flight, unwritten responses included: at that bound the stream is not read
        until a request's last response has been written, so HTTP/2 flow control holds back a client
        that sends faster than it reads."""
        done: asyncio.Queue = asyncio.Queue(STREAM_IN_FLIGHT)   # (response message, request's last)
        running: set[asyncio.Task] = set()
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def one(message):
            echo = pb.ModelInferRequest() if isinstance(message, Undecodable) else message
            try:
                request = await self._decode(message)
                # Triton's flag: every response says whether it is the last; a model's bare "done"
                # becomes an empty last response (else it is not sent)
                flagged = request.parameters.get(FINAL_FLAG_REQUEST) is True
                async for version, response, final in self.plane.stream(request):
                    if response is None and not (final and flagged):
                        continue
                    if response is not None and response.error is not None:
                        await done.put((_stream_error(echo, response.error.message), final))
                        continue
                    encoded = encode_response(request, version, response or InferResponse())
                    if flagged:
                        _set_parameter(encoded.parameters[FINAL_FLAG_RESPONSE], final)
                    await done.put((pb.ModelStreamInferResponse(infer_response=encoded), final))
            except Exception as e:
                if not isinstance(e, NaiadError):
                    log.exception("gRPC ModelStreamInfer failed")
                await done.put((_stream_error(echo, e.message if isinstance(e, NaiadError)
                                              else f"{type(e).__name__}: {e}"), True))

        async def read():
            try:
                await slots.acquire()  # a slot for the next request, taken before it is read
                async for message in messages:
                    task = asyncio.create_task(one(message))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    await slots.acquire()
            finally:
                await asyncio.gather(*running, return_exceptions=True)
                await done.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await done.get()) is not None:
                response, last = item
                yield response  # returns once the response is written
                if last:
                    slots.release()
        finally:
            reader.cancel()
            for task in running:  # the client went away: its requests' streams end
                task.cancel()

    @_rpc
    async def ServerLive(self, message, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, message, context):
        return pb.ServerReadyResponse(ready=await self.plane.ready())

    @_rpc
    async def ModelReady(self, message, context):
        return pb.ModelReadyResponse(ready=await self.plane.model_ready(message.name, message.version))

    @_rpc
    async def ServerMetadata(self, message, context):
        return json_format.ParseDict(await self.plane.server_metadata(), pb.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, message, context):
        metadata = await self.plane.model_metadata(message.name, message.version)
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, message, context):
        config = await self.plane.model_config(message.name, message.version)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    @_rpc
    async def ModelStatistics(self, message, context):
        stats = await self.plane.statistics(message.name, message.version)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, message, context):
        rows = await self.plane.index(message.ready)
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())

    @_rpc
    async def RepositoryModelLoad(self, message, context):
        parameters = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                      for key, value in message.parameters.items()}
        await self.plane.load(message.model_name, parameters)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, message, context):
        await self.plane.unload(message.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def SystemSharedMemoryRegister(self, message, context):
        await self.plane.register_system(message.name, message.key, message.offset, message.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, message, context):
        await self.plane.unregister("system", message.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def SystemSharedMemoryStatus(self, message, context):
        regions = {r["name"]: r for r in await self.plane.region_status("system", message.name)}
        return json_format.ParseDict({"regions": regions}, pb.SystemSharedMemoryStatusResponse())

    @_rpc
    async def CudaSharedMemoryRegister(self, message, context):
        await self.plane.register_cuda(message.name, message.raw_handle, message.device_id, message.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc
    async def CudaSharedMemoryUnregister(self, message, context):
        await self.plane.unregister("cuda", message.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(self, message, context):
        regions = {r["name"]: r for r in await self.plane.region_status("cuda", message.name)}
        return json_format.ParseDict({"regions": regions}, pb.CudaSharedMemoryStatusResponse())

    TraceSetting = _unimplemented("tracing")

    @_rpc
    async def LogSettings(self, message, context):
        """Triton's logging extension: no settings asks for them, some change them."""
        changes = {key: _parameter(value) for key, value in message.settings.items()}
        settings = await (self.plane.update_log_settings(changes) if changes else self.plane.log_settings())
        response = pb.LogSettingsResponse()
        for key, value in settings.items():
            kind = ("bool_param" if isinstance(value, bool) else "uint32_param" if isinstance(value, int)
                    else "string_param")
            setattr(response.settings[key], kind, value)
        return response


class HealthService:
    """grpc.health.v1: SERVING once the server is ready (the overall service "" and the inference
    service by name)."""
    SERVICES = ("", "inference.GRPCInferenceService")

    def __init__(self, plane: DataPlane):
        self.plane = plane

    @_rpc
    async def Check(self, message, context):
        if message.service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service '{message.service}'")
        status = (health_pb2.HealthCheckResponse.SERVING if await self.plane.ready()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        return health_pb2.HealthCheckResponse(status=status)


def _handler(service, module, descriptor) -> grpc.GenericRpcHandler:
    """Register every method of a service descriptor with its message classes, except those the
    service takes and answers serialized."""
    handlers = {}
    for method in descriptor.methods:
        kind = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        if method.name in getattr(service, "BYTES_METHODS", ()):
            handlers[method.name] = kind(getattr(service, method.name))
            continue
        request_class = getattr(module, method.input_type.name)
        response_class = getattr(module, method.output_type.name)
        handlers[method.name] = kind(getattr(service, method.name),
                                     request_deserializer=_deserializer(request_class),
                                     response_serializer=response_class.SerializeToString)
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


async def start(plane: DataPlane, address: str, port: int, max_message_bytes: int,
                shared_port: bool = False, forwarding: Forwarding | None = None) -> grpc.aio.Server:
    """The gRPC server, listening. With shared_port, naiad's frontend processes share the port (the
    server checked first that no one else holds it); otherwise a port in use is an error."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(shared_port)),
    ])
    server.add_generic_rpc_handlers((
        _handler(InferenceService(plane, forwarding), pb,
                 pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]),
        _handler(HealthService(plane), health_pb2, health_pb2.DESCRIPTOR.services_by_name["Health"]),
    ))
    try:
        bound = server.add_insecure_port(f"{address}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"gRPC frontend cannot listen on {address}:{port}; is the port in use?")
    await server.start()
    log.info("gRPC frontend listening on %s:%d", address, port)
    return server
