"""What a Python model (`<version>/model.py`) works with: the names and behaviour of Triton's
`triton_python_backend_utils` (pb_utils) that models use most, so Triton Python models run unchanged.
A model may import this module as `naiad.backends.python_api` or as `triton_python_backend_utils`.

    class TritonPythonModel:
        def initialize(self, args): ...                 # optional; args as Triton passes them
        def execute(self, requests):                     # a list in, a list of the same length out
            out = []
            for request in requests:
                x = get_input_tensor_by_name(request, "INPUT0").as_numpy()
                out.append(InferenceResponse([Tensor("OUTPUT0", x * 2)]))
            return out
        def finalize(self): ...                          # optional

A decoupled model (`model_transaction_policy: {decoupled: true}`) answers through each request's
`get_response_sender()`, from any thread, and returns None from execute. A model calls another model
(BLS) with `InferenceRequest(model_name=..., inputs=[...], requested_output_names=[...]).exec()`, or
`await ....async_exec()`, or `.exec(decoupled=True)` for a stream of responses.
"""
from __future__ import annotations

import json
import threading
from typing import Any, AsyncIterator, Iterator, Protocol

import numpy as np

from naiad.daemon import datatypes, errors
from naiad.daemon.inference import InferRequest, InferResponse, RequestedOutput, ResponseSink

# the flag of a decoupled model's last response for a request
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonError:
    """An error for one request, returned in its InferenceResponse."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = INTERNAL):
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r})"


class TritonModelException(Exception):
    """Raised by helpers here; a model may raise it (or anything) to fail the whole batch."""


_TO_NAIAD = {
    TritonError.INVALID_ARG: errors.InvalidArgument,
    TritonError.NOT_FOUND: errors.NotFound,
    TritonError.UNAVAILABLE: errors.Unavailable,
    TritonError.UNSUPPORTED: errors.Unimplemented,
}
_FROM_NAIAD = {errors.InvalidArgument: TritonError.INVALID_ARG, errors.NotFound: TritonError.NOT_FOUND,
               errors.Unavailable: TritonError.UNAVAILABLE, errors.Unimplemented: TritonError.UNSUPPORTED}


def naiad_error(error: TritonError) -> errors.NaiadError:
    """The server's error for a model's TritonError."""
    return _TO_NAIAD.get(error.code(), errors.Internal)(error.message())


def triton_error(error: errors.NaiadError) -> TritonError:
    """A TritonError a model can inspect, for the server's error."""
    code = next((c for kind, c in _FROM_NAIAD.items() if isinstance(error, kind)), TritonError.INTERNAL)
    return TritonError(error.message, code)


class Tensor:
    def __init__(self, name: str, array: Any):
        if not isinstance(array, np.ndarray):
            array = np.asarray(array)
        self._name = name
        self._array = array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        return self._array.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule_owner) -> "Tensor":
        """A tensor from an object that supports DLPack (a torch or cupy tensor on the CPU)."""
        return Tensor(name, np.from_dlpack(capsule_owner))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={list(self._array.shape)}, dtype={self._array.dtype})"


class InferenceRequest:
    """One request: as `execute` receives it, or one a model makes to call another model (BLS)."""

    def __init__(self, model_name: str = "", inputs: list[Tensor] = (), requested_output_names=(),
                 request_id: str = "", model_version: int = -1, timeout: int = 0,
                 parameters: dict | str | None = None, **_ignored):
        """Triton's BLS signature (correlation_id, flags, preferred_memory, trace are accepted and
        ignored); `timeout` in microseconds bounds the call (0: no bound)."""
        self._model_name = model_name
        self._model_version = model_version
        self._inputs = {t.name(): t.as_numpy() for t in inputs}
        self._requested = list(requested_output_names)
        self._id = request_id
        self._timeout_us = timeout
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else (parameters or {})
        self._sink: ResponseSink | None = None

    @classmethod
    def received(cls, inputs: dict[str, np.ndarray], requested_output_names: list[str],
                 request_id: str, parameters: dict, sink: ResponseSink | None) -> "InferenceRequest":
        """A request as `execute` receives it (`sink`: a decoupled model's responses go there)."""
        request = cls(request_id=request_id, parameters=parameters)
        request._inputs, request._requested, request._sink = inputs, requested_output_names, sink
        return request

    def inputs(self) -> list[Tensor]:
        return [Tensor(name, array) for name, array in self._inputs.items()]

    def input(self, name: str) -> np.ndarray | None:
        return self._inputs.get(name)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._id

    def model_name(self) -> str:
        return self._model_name

    def parameters(self) -> str:
        """The request's parameters as a JSON object, as Triton gives them."""
        return json.dumps(self._parameters)

    def timeout(self) -> int:
        return self._timeout_us

    def is_cancelled(self) -> bool:
        """Whether the client has gone away (decoupled models: stop sending)."""
        return self._sink is not None and self._sink.cancelled

    def get_response_sender(self) -> "InferenceResponseSender":
        if self._sink is None:
            raise TritonModelException("get_response_sender() is for decoupled models; set "
                                       "model_transaction_policy: {decoupled: true} in the configuration")
        return InferenceResponseSender(self, self._sink)

    # --- BLS --------------------------------------------------------------------------------------

    def exec(self, decoupled: bool = False):
        """Run this request on its model and wait: its InferenceResponse (errors inside it), or with
        decoupled=True an iterator of the responses the model sends."""
        server = _server()
        if decoupled:
            return (_from_core(r) for r in server.stream(self._core(), self._seconds()))
        return _from_core(server.infer(self._core(), self._seconds()))

    async def async_exec(self, decoupled: bool = False):
        """exec() for `async def execute`: other requests run while this one waits."""
        server = _server()
        if decoupled:
            return _map_async(server.async_stream(self._core(), self._seconds()))
        return _from_core(await server.async_infer(self._core(), self._seconds()))

    def _seconds(self) -> float | None:
        return self._timeout_us / 1e6 if self._timeout_us > 0 else None

    def _core(self) -> InferRequest:
        if not self._model_name:
            raise TritonModelException("InferenceRequest(model_name=...) names no model to call")
        version = "" if self._model_version in (-1, None) else str(self._model_version)
        wanted = [RequestedOutput(name) for name in self._requested] or None
        return InferRequest(self._model_name, version, dict(self._inputs), wanted, self._id,
                            dict(self._parameters), timeout_us=max(self._timeout_us, 0))


class InferenceResponseSender:
    """A decoupled model's way to answer one request: any number of responses, from any thread,
    then the final flag (with the last response or alone)."""

    def __init__(self, request: InferenceRequest, sink: ResponseSink):
        self._sink = sink  # takes this module's InferenceResponse (the backend converts it)
        self._closed = False
        self._lock = threading.Lock()

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is None and not final:
            raise TritonModelException("send() needs a response, or flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL")
        with self._lock:
            if self._closed:
                raise TritonModelException("this request's response sender is closed: the final flag "
                                           "was sent already")
            self._closed = final
        self._sink.send(response, final)

    def is_cancelled(self) -> bool:
        return self._sink.cancelled


class ServerCalls(Protocol):
    """How BLS reaches the server from where a model runs (set by that place with `connect`). Each
    call raises nothing: a failure is the response's error."""

    def infer(self, request: InferRequest, timeout: float | None) -> InferResponse: ...
    async def async_infer(self, request: InferRequest, timeout: float | None) -> InferResponse: ...
    def stream(self, request: InferRequest, timeout: float | None) -> Iterator[InferResponse]: ...
    def async_stream(self, request: InferRequest, timeout: float | None) -> AsyncIterator[InferResponse]: ...


_calls: list[ServerCalls] = []


def connect(server: ServerCalls) -> None:
    """Where this process's models send their BLS requests."""
    _calls[:] = [server]


def _server() -> ServerCalls:
    if not _calls:
        raise TritonModelException("calling another model (BLS) is not possible here")
    return _calls[0]


def _from_core(response: InferResponse) -> "InferenceResponse":
    if response.error is not None:
        return InferenceResponse(error=triton_error(response.error))
    return InferenceResponse([Tensor(name, array) for name, array in response.outputs.items()],
                             parameters=response.parameters)


async def _map_async(responses: AsyncIterator[InferResponse]):
    async for response in responses:
        yield _from_core(response)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None,
                 parameters: dict | str | None = None):
        self._outputs = list(output_tensors or [])
        self._error = error
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else (parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    array = request.input(name)
    return None if array is None else Tensor(name, array)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def _config_entry(model_config: dict | str, section: str, name: str) -> dict:
    if isinstance(model_config, str):
        model_config = json.loads(model_config)
    return next((t for t in model_config.get(section, []) if t.get("name") == name), {})


def get_input_config_by_name(model_config: dict | str, name: str) -> dict:
    """The configuration of input `name` ({} when there is none), from `args["model_config"]`."""
    return _config_entry(model_config, "input", name)


def get_output_config_by_name(model_config: dict | str, name: str) -> dict:
    """The configuration of output `name` ({} when there is none), from `args["model_config"]`."""
    return _config_entry(model_config, "output", name)


def triton_string_to_numpy(type_name: str) -> type:
    """The numpy type of a config data type such as "TYPE_FP32" (object for TYPE_STRING)."""
    datatype = datatypes.parse(type_name)
    if datatype is None:
        raise TritonModelException(f"unknown data type {type_name!r}")
    return datatype.numpy.type
