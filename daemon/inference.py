"""The request and response that travel from a frontend through the scheduler to a backend and back,
and the places in client shared memory that tensors are read from and written to."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Union

import numpy as np

from naiad.daemon import cuda, datatypes
from naiad.daemon.errors import Internal, InvalidArgument, NaiadError, Unimplemented

# a tensor: host memory, or device memory (inputs read in place from a CUDA shared-memory region, and
# outputs a GPU backend leaves on its device for one)
Tensor = Union[np.ndarray, cuda.DeviceArray]
# tensor parameters of extensions naiad does not serve yet
_UNSUPPORTED_TENSOR_PARAMETERS = {
    "classification": "the classification extension is not supported yet",
}
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"


@dataclass(frozen=True, slots=True)
class RegionSlice:
    """Bytes of a registered shared-memory region, as a request names them."""
    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True, slots=True)
class SharedInput:
    """An input whose data lies in a shared-memory region; the data plane reads it in place. Internal:
    in a frontend process's tensor arena (daemon/arena.py), never a region a client names."""
    datatype: datatypes.DataType
    shape: tuple[int, ...]
    where: RegionSlice
    internal: bool = False


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None          # HTTP: as binary data (None: the request's default)
    where: RegionSlice | None = None    # written into shared memory, and not sent back


class OutputPlace(Protocol):
    """Where an output goes: resolved from a RequestedOutput's RegionSlice by the data plane."""
    device_id: int | None   # the GPU whose memory it is, or None for host memory

    def write(self, name: str, tensor: Tensor) -> "Placed": ...


@dataclass(frozen=True, slots=True)
class Placed:
    """An output written into shared memory: the response describes it and carries no data."""
    datatype: datatypes.DataType
    shape: tuple[int, ...]
    where: RegionSlice          # byte_size: the bytes written


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str                  # as asked; "" lets the version policy choose
    inputs: dict[str, Any]              # Tensor; SharedInput until the data plane resolves it
    requested_outputs: list[RequestedOutput] | None = None   # None: every output of the model
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0                   # 0: the model's default; 1 is the highest
    timeout_us: int = 0                 # 0: the model's queue policy decides
    batch_size: int = 1                 # set by validation: the first dimension when the model batches
    output_places: dict[str, OutputPlace] = field(default_factory=dict)
    # a decoupled model's responses go here, one by one (set by ServedModel.stream); None otherwise
    sink: "ResponseSink | None" = None

    @property
    def output_names(self) -> list[str] | None:
        wanted = self.requested_outputs
        return None if wanted is None else [output.name for output in wanted]


@dataclass(slots=True)
class InferResponse:
    outputs: dict[str, Any] = field(default_factory=dict)     # Tensor, or Placed
    error: NaiadError | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# --- requests and responses as plain tuples between processes: pickled many times faster --------------

def pack_tensors(tensors: dict) -> list[tuple]:
    """Numbers as (name, dtype, shape, bytes); anything else (BYTES, BF16, shared-memory and arena
    references) as (name, object)."""
    return [(name, t.dtype.str, t.shape, t.tobytes())
            if isinstance(t, np.ndarray) and t.dtype.kind in "biuf" else (name, t)
            for name, t in tensors.items()]


def unpack_tensors(packed: list[tuple]) -> dict:
    return {item[0]: np.frombuffer(item[3], item[1]).reshape(item[2]) if len(item) == 4 else item[1]
            for item in packed}


def pack_request(r: InferRequest) -> tuple:
    outputs = r.requested_outputs
    if outputs is not None:
        outputs = [(o.name, o.binary, o.where) for o in outputs]
    return (r.model_name, r.model_version, pack_tensors(r.inputs), outputs, r.id, r.parameters, r.priority,
            r.timeout_us)


def unpack_request(packed: tuple) -> InferRequest:
    name, version, inputs, outputs, request_id, parameters, priority, timeout_us = packed
    if outputs is not None:
        outputs = [RequestedOutput(*o) for o in outputs]
    return InferRequest(name, version, unpack_tensors(inputs), outputs, request_id, parameters, priority,
                        timeout_us)


def pack_response(r: InferResponse) -> tuple:
    return pack_tensors(r.outputs), r.error, r.parameters


def unpack_response(packed: tuple) -> InferResponse:
    outputs, error, parameters = packed
    return InferResponse(unpack_tensors(outputs), error, parameters)


class ResponseSink(Protocol):
    """Where a decoupled model sends a request's responses, from any thread: zero or more, then one
    with `final` (the response may then be None: nothing more to say)."""
    cancelled: bool     # the client went away; the model may stop early (is_cancelled())

    def send(self, response: InferResponse | None, final: bool) -> None: ...


class ResponseStream:
    """A ResponseSink read on the event loop: responses in the order the model sent them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[tuple[InferResponse | None, bool]] = asyncio.Queue()
        self.cancelled = False
        self.ended = False
        self.on_cancel: list[Callable[[], None]] = []   # told when the client goes away

    def send(self, response: InferResponse | None, final: bool) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads any more
            self.loop.call_soon_threadsafe(self._put, response, final)

    def _put(self, response: InferResponse | None, final: bool) -> None:
        if self.ended:  # after the final one (or a failure that ended the stream): dropped
            return
        self.ended = final
        self.queue.put_nowait((response, final))

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled, self.ended = True, True
            for tell in self.on_cancel:
                tell()


def place_outputs(requests: list[InferRequest], responses: list[InferResponse]) -> None:
    """Write the outputs that each request placed in shared memory there; its response then describes
    them. Outputs left in device memory for another request of the batch come down to the host. A
    write that fails fails that response."""
    for request, response in zip(requests, responses):
        if response.error is not None:
            continue
        try:
            for name, tensor in response.outputs.items():
                place = request.output_places.get(name)
                if place is not None and not isinstance(tensor, Placed):
                    response.outputs[name] = place.write(name, tensor)
                elif isinstance(tensor, cuda.DeviceArray):
                    response.outputs[name] = tensor.to_host()
        except NaiadError as e:
            response.outputs, response.error = {}, e


def plain_parameters(model_name: str, response: InferResponse) -> InferResponse:
    """Response parameters as the wire carries them: numpy scalars become Python values; anything but
    bool, int, float and str fails the response, naming the parameter."""
    if response.error is not None or not response.parameters:
        return response
    plain = {}
    for key, value in response.parameters.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)):
            return InferResponse(error=Internal(
                f"model '{model_name}' returned response parameter {key!r} of type "
                f"{type(value).__name__}; a response parameter must be a bool, int, float or str"))
        plain[key] = value
    response.parameters = plain
    return response


def check_tensor_parameters(kind: str, name: str, parameters) -> None:
    """Refuse, by name, tensor parameters that ask for an extension naiad does not serve."""
    for key, why in _UNSUPPORTED_TENSOR_PARAMETERS.items():
        if key in parameters:
            raise Unimplemented(f"{kind} '{name}': {why}")


def region_slice(kind: str, name: str, parameters: dict) -> RegionSlice | None:
    """The shared-memory place a tensor's parameters name, or None when they name none."""
    region = parameters.get(SHM_REGION)
    if region is None:
        return None
    size, offset = parameters.get(SHM_BYTE_SIZE), parameters.get(SHM_OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{kind} '{name}': {SHM_REGION} must be a region's name")
    for key, value in ((SHM_BYTE_SIZE, size), (SHM_OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{kind} '{name}': {key} must be an integer >= 0, got {value!r}"
                                  + (" (it is required with shared_memory_region)" if value is None else ""))
    return RegionSlice(region, offset, size)


def scheduling_parameters(parameters: dict) -> tuple[int, int]:
    """The request's `priority` and `timeout` (microseconds) parameters; 0 where absent."""
    found = []
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"request parameter '{key}': expected an integer >= 0, got {value!r}")
        found.append(value)
    return found[0], found[1]
