"""The request and response that travel from a frontend through the scheduler to a backend and back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from naiad.daemon.errors import NaiadError


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
