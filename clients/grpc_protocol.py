"""gRPC: each call as an inference.GRPCInferenceService message, and the channels that carry them
(naiad's own generated message modules; the method stubs are built here from the service descriptor)."""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from naiad.clients import calls, tensors
from naiad.clients.calls import Call
from naiad.clients.errors import ClientError
from naiad.proto import grpc_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# no client-side size limit: the server has its own
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# ask a decoupled model's stream to mark the last response of each request (Triton's parameters)
ENABLE_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"
EOF = grpc.aio.EOF
_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


# --- messages to plain data ----------------------------------------------------------------------

def to_dict(message) -> dict:
    """A message as the v2 protocol's JSON has it: every field, 64-bit integers as numbers (protobuf's
    JSON mapping writes them as strings)."""
    data = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    _numbers(message.DESCRIPTOR, data)
    return data


def _numbers(descriptor, data: dict) -> None:
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key in value:
                value[key] = _number_value(value_field, value[key])
        elif field.is_repeated:
            data[field.name] = [_number_value(field, item) for item in value]
        else:
            data[field.name] = _number_value(field, value)


def _number_value(field, value):
    if field.message_type is not None:
        _numbers(field.message_type, value)
        return value
    return int(value) if field.type in _INT64_TYPES else value


def _parameter_value(parameter: pb.InferParameter):
    choice = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, choice) if choice else None


def _set_parameter(target: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        raise TypeError(f"a request parameter must be a bool, int, float or str, got {type(value).__name__}")


# --- the calls -----------------------------------------------------------------------------------

def infer_request(model: str, inputs: Mapping[str, Any], outputs, version, priority, parameters,
                  request_id: str) -> tuple[pb.ModelInferRequest, dict]:
    """The request message, and the regions outputs are to be placed in."""
    message = pb.ModelInferRequest(model_name=model, model_version=calls.version_text(version),
                                   id=request_id)
    raw = message.raw_input_contents
    for tensor in calls.inputs_of(inputs):
        added = message.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.region is not None:
            for key, value in calls.region_parameters(tensor.region, tensor.region.nbytes).items():
                _set_parameter(added.parameters[key], value)
        else:
            raw.append(tensor.raw)
    wanted = calls.outputs_of(outputs)
    for name, region in wanted or ():
        added = message.outputs.add(name=name)
        if region is not None:
            for key, value in calls.region_parameters(region, region.byte_size).items():
                _set_parameter(added.parameters[key], value)
    for key, value in (parameters or {}).items():
        _set_parameter(message.parameters[key], value)
    if priority is not None:
        message.parameters["priority"].uint64_param = priority
    return message, calls.output_regions(wanted)


def outputs(response: pb.ModelInferResponse, regions: dict) -> dict:
    """The response's outputs as arrays (views of its raw bytes, or of the regions they were put in)."""
    found = {}
    raw = response.raw_output_contents
    aligned = len(raw) == len(response.outputs)   # one raw entry per output, empty where placed
    next_raw = 0
    for i, output in enumerate(response.outputs):
        shape = list(output.shape)
        if output.name in regions:
            parameters = {k: _parameter_value(v) for k, v in output.parameters.items()}
            found[output.name] = calls.placed(regions, output.name, output.datatype, shape, parameters)
        elif raw:
            found[output.name] = tensors.from_raw(output.datatype, shape, raw[i if aligned else next_raw])
            next_raw += 1
        else:
            contents = output.contents
            field = contents.ListFields()
            values = field[0][1] if field else []
            found[output.name] = tensors.from_list(output.datatype, shape, list(values))
    return found


def response_parameters(response: pb.ModelInferResponse) -> dict:
    return {key: _parameter_value(value) for key, value in response.parameters.items()}


class Codec:
    """The calls over gRPC."""
    protocol = "grpc"

    def live(self) -> Call:
        return Call("ServerLive", pb.ServerLiveRequest(), lambda r: r.live)

    def ready(self) -> Call:
        return Call("ServerReady", pb.ServerReadyRequest(), lambda r: r.ready)

    def model_ready(self, model: str, version) -> Call:
        request = pb.ModelReadyRequest(name=model, version=calls.version_text(version))
        return Call("ModelReady", request, lambda r: r.ready)

    def server_metadata(self) -> Call:
        return Call("ServerMetadata", pb.ServerMetadataRequest(), to_dict)

    def model_metadata(self, model: str, version) -> Call:
        request = pb.ModelMetadataRequest(name=model, version=calls.version_text(version))
        return Call("ModelMetadata", request, to_dict)

    def model_config(self, model: str, version) -> Call:
        request = pb.ModelConfigRequest(name=model, version=calls.version_text(version))
        return Call("ModelConfig", request, lambda r: to_dict(r.config))

    def statistics(self, model: str, version) -> Call:
        request = pb.ModelStatisticsRequest(name=model, version=calls.version_text(version))
        return Call("ModelStatistics", request, lambda r: to_dict(r)["model_stats"])

    def repository_index(self, ready: bool) -> Call:
        return Call("RepositoryIndex", pb.RepositoryIndexRequest(ready=ready),
                    lambda r: [to_dict(m) for m in r.models])

    def load_model(self, model: str, config: str | None, files: Mapping[str, bytes] | None) -> Call:
        request = pb.RepositoryModelLoadRequest(model_name=model)
        if config is not None:
            request.parameters["config"].string_param = config
        for path, content in (files or {}).items():
            request.parameters[f"file:{path}"].bytes_param = content
        return Call("RepositoryModelLoad", request, lambda r: None)

    def unload_model(self, model: str, unload_dependents: bool) -> Call:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        if unload_dependents:
            request.parameters["unload_dependents"].bool_param = True
        return Call("RepositoryModelUnload", request, lambda r: None)

    def register_system_shm(self, name: str, key: str, byte_size: int, offset: int) -> Call:
        request = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)
        return Call("SystemSharedMemoryRegister", request, lambda r: None)

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> Call:
        request = pb.CudaSharedMemoryRegisterRequest(name=name, raw_handle=raw_handle, device_id=device_id,
                                                     byte_size=byte_size)
        return Call("CudaSharedMemoryRegister", request, lambda r: None)

    def unregister_shm(self, kind: str, name: str) -> Call:
        if kind == "cuda":
            return Call("CudaSharedMemoryUnregister", pb.CudaSharedMemoryUnregisterRequest(name=name),
                        lambda r: None)
        return Call("SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name),
                    lambda r: None)

    def shm_status(self, kind: str, name: str) -> Call:
        if kind == "cuda":
            request, method = pb.CudaSharedMemoryStatusRequest(name=name), "CudaSharedMemoryStatus"
        else:
            request, method = pb.SystemSharedMemoryStatusRequest(name=name), "SystemSharedMemoryStatus"
        return Call(method, request, lambda r: list(to_dict(r)["regions"].values()))

    def infer(self, model, inputs, outputs_wanted, version, priority, parameters, request_id) -> Call:
        request, regions = infer_request(model, inputs, outputs_wanted, version, priority, parameters,
                                         request_id)
        return Call("ModelInfer", request, lambda r: outputs(r, regions))


# --- the channels --------------------------------------------------------------------------------

def error(e: grpc.RpcError) -> ClientError:
    """A failed call's ClientError."""
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    return ClientError(code.name if code is not None else "UNKNOWN", details or "")


def _stub(make, path: str, **serializers):
    """A method of the channel, registered with it up front as generated stubs do (a few percent less
    time per call); plain on a grpcio without that."""
    try:
        return make(path, _registered_method=True, **serializers)
    except TypeError:
        return make(path, **serializers)


def _stubs(channel) -> dict:
    """A callable for each RPC of the service, by name."""
    stubs = {}
    for method in SERVICE.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        kind = channel.stream_stream if method.client_streaming else channel.unary_unary
        stubs[method.name] = _stub(kind, f"/{SERVICE.full_name}/{method.name}",
                                   request_serializer=request_class.SerializeToString,
                                   response_deserializer=response_class.FromString)
    return stubs


def _credentials(tls: bool):
    return grpc.ssl_channel_credentials() if tls else None


class Transport:
    """One channel (its connection reused by every call), blocking calls; safe to share between threads."""

    def __init__(self, address: str, tls: bool = False):
        self.address = address
        credentials = _credentials(tls)
        self.channel = (grpc.secure_channel(address, credentials, CHANNEL_OPTIONS) if credentials
                        else grpc.insecure_channel(address, CHANNEL_OPTIONS))
        self.stubs = _stubs(self.channel)

    def call(self, call: Call, timeout: float | None):
        try:
            return self.stubs[call.method](call.request, timeout=timeout)
        except grpc.RpcError as e:
            raise error(e) from None

    def stream(self, requests, timeout: float | None):
        """The ModelStreamInfer call: iterate it for responses; cancel() ends it."""
        return self.stubs["ModelStreamInfer"](requests, timeout=timeout)

    def raw(self, method: str):
        """The RPC with bytes in and out: for sending one serialized request many times."""
        return _stub(self.channel.unary_unary, f"/{SERVICE.full_name}/{method}")

    def close(self) -> None:
        self.channel.close()


class AsyncTransport:
    """One grpc.aio channel, made on first use in the running event loop."""

    def __init__(self, address: str, tls: bool = False):
        self.address = address
        self.tls = tls
        self.channel = None
        self.stubs: dict = {}

    def _open(self) -> dict:
        credentials = _credentials(self.tls)
        self.channel = (grpc.aio.secure_channel(self.address, credentials, CHANNEL_OPTIONS) if credentials
                        else grpc.aio.insecure_channel(self.address, CHANNEL_OPTIONS))
        self.stubs = _stubs(self.channel)
        return self.stubs

    async def call(self, call: Call, timeout: float | None):
        stubs = self.stubs or self._open()
        try:
            return await stubs[call.method](call.request, timeout=timeout)
        except grpc.RpcError as e:
            raise error(e) from None

    def stream(self, requests, timeout: float | None):
        stubs = self.stubs or self._open()
        return stubs["ModelStreamInfer"](requests, timeout=timeout)

    def raw(self, method: str):
        """The RPC with bytes in and out: for sending one serialized request many times."""
        if self.channel is None:
            self._open()
        return _stub(self.channel.unary_unary, f"/{SERVICE.full_name}/{method}")

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None


def stream_error(e: grpc.RpcError | asyncio.CancelledError) -> ClientError:
    return error(e) if isinstance(e, grpc.RpcError) else ClientError("CANCELLED", "the stream was cancelled")
