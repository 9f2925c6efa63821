"""The request and response that travel from a frontend through the scheduler to a backend and back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from naiad.daemon.errors import InvalidArgument, NaiadError, Unimplemented

# tensor parameters of extensions naiad does not serve yet
_UNSUPPORTED_TENSOR_PARAMETERS = {
    "shared_memory_region": "shared-memory tensors are not supported yet; send the data in the request",
    "classification": "the classification extension is not supported yet",
}


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str                  # as asked; "" lets the version policy choose
    inputs: dict[str, np.ndarray]
    requested_outputs: list[str] | None = None   # None: every output of the model
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0                   # 0: the model's default; 1 is the highest
    timeout_us: int = 0                 # 0: the model's queue policy decides
    batch_size: int = 1                 # set by validation: the first dimension when the model batches


@dataclass(slots=True)
class InferResponse:
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: NaiadError | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def check_tensor_parameters(kind: str, name: str, parameters) -> None:
    """Refuse, by name, tensor parameters that ask for an extension naiad does not serve."""
    for key, why in _UNSUPPORTED_TENSOR_PARAMETERS.items():
        if key in parameters:
            raise Unimplemented(f"{kind} '{name}': {why}")


def scheduling_parameters(parameters: dict) -> tuple[int, int]:
    """The request's `priority` and `timeout` (microseconds) parameters; 0 where absent."""
    found = []
    for key in ("priority", "timeout"):
        value = parameters.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"request parameter '{key}': expected an integer >= 0, got {value!r}")
        found.append(value)
    return found[0], found[1]
