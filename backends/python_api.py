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
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from naiad.daemon import datatypes


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
    """One request as `execute` receives it."""

    __slots__ = ("_inputs", "_requested", "_id", "_parameters")

    def __init__(self, inputs: dict[str, np.ndarray], requested_output_names: list[str],
                 request_id: str = "", parameters: dict | None = None):
        self._inputs = inputs
        self._requested = requested_output_names
        self._id = request_id
        self._parameters = parameters or {}

    def inputs(self) -> list[Tensor]:
        return [Tensor(name, array) for name, array in self._inputs.items()]

    def input(self, name: str) -> np.ndarray | None:
        return self._inputs.get(name)

    def requested_output_names(self) -> list[str]:
        return list(self._requested)

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        """The request's parameters as a JSON object, as Triton gives them."""
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        return False


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
