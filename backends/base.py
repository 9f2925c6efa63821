"""The one interface every backend implements, and the output checks they all share.

A backend turns a model version's files into instances. The scheduler hands an instance a batch of
requests on the instance's own worker thread and calls, in order, `prepare` (compute_input: gather
inputs into what the framework takes), `run` (compute_infer: the model itself) and `finish`
(compute_output: one InferResponse per request). The three are timed apart for the statistics.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from naiad.daemon import datatypes
from naiad.daemon.errors import ConfigError, Internal, NaiadError
from naiad.daemon.cuda import DeviceArray
from naiad.daemon.inference import InferRequest, InferResponse, Tensor
from naiad.daemon.model_config import ModelConfig, shape_matches


@dataclass(frozen=True)
class InstanceSpec:
    """Where one instance runs: its name, KIND_CPU or KIND_GPU, and the GPU's id."""
    name: str
    kind: str
    device_id: int = 0


@dataclass(frozen=True)
class ModelFiles:
    """One version of a model on disk, with its completed configuration."""
    name: str
    version: int
    model_dir: Path     # <repository>/<model>
    version_dir: Path   # <repository>/<model>/<version>
    config: ModelConfig


class ModelInstance:
    """One loaded copy of a model. Its methods run on the instance's worker thread, one batch at a
    time; they may block and need not be thread-safe. An instance that `overlaps` has the next
    batch's `prepare` called between this batch's `run` and `finish`, when a next batch is in hand (a
    GPU instance uploads it while this one computes): that prepare must return at once, or nearly,
    since this batch's answer waits for it."""

    overlaps = False

    def prepare(self, requests: list[InferRequest]) -> Any:
        return requests

    def run(self, prepared: Any) -> Any:
        raise NotImplementedError

    def finish(self, requests: list[InferRequest], result: Any) -> list[InferResponse]:
        return result

    def close(self) -> None:
        """Release what the instance holds; called once, after its last batch."""


class Backend:
    """A framework's loader: one object per backend name, shared by every model that uses it."""

    name = ""
    default_execution = "thread"  # where instances run unless parameters.execution says otherwise

    def uses_gpus(self) -> bool:
        """Whether KIND_AUTO instances go to this machine's GPUs (when it has some)."""
        return False

    def complete_config(self, config: ModelConfig, model_file: Path) -> None:
        """Fill what the model file (the newest version's) tells and the configuration left out:
        inputs, outputs, their data types and dims, max_batch_size. Raises ConfigError where the
        file and the configuration disagree, or where the configuration must say more."""

    def create_instance(self, files: ModelFiles, spec: InstanceSpec) -> ModelInstance:
        raise NotImplementedError


class OutputChecker:
    """Checks a backend's outputs against the model's configuration, once per response: every
    configured output present, of its data type and shape; then keeps those the request asked for."""

    def __init__(self, config: ModelConfig):
        self.batching = config.max_batch_size > 0
        self.outputs = {o.name: o for o in config.output}
        # the shape the model produces: reshape.shape when given, else dims
        self.produced = {o.name: tuple(o.reshape.shape if o.reshape is not None else o.dims)
                         for o in config.output}
        self.reshapes = {o.name: list(o.dims) for o in config.output if o.reshape is not None}

    def response(self, request: InferRequest, outputs: dict[str, np.ndarray]) -> InferResponse:
        wanted = request.output_names
        kept = {}
        for name in (wanted if wanted is not None else self.outputs):
            array = outputs.get(name)
            if array is None:
                raise Internal(f"the model returned no output '{name}'; it returned "
                               f"{', '.join(outputs) or 'none'}")
            kept[name] = self._check(name, request.batch_size, array)
        return InferResponse(kept)

    def _check(self, name: str, batch_size: int, array: Any) -> Tensor:
        if not isinstance(array, (np.ndarray, DeviceArray)):
            raise Internal(f"output '{name}': the model returned {type(array).__name__}, "
                           f"expected a numpy array")
        expected = self.outputs[name].data_type
        got = datatypes.of_array(array)
        if got is not expected:
            raise Internal(f"output '{name}': the model returned {got or array.dtype}, the "
                           f"configuration says {expected}")
        shape, dims = array.shape, self.produced[name]
        if self.batching:
            fits = len(shape) > 0 and shape[0] == batch_size and shape_matches(dims, shape[1:])
        else:
            fits = shape_matches(dims, shape)
        if not fits:
            full = ([batch_size] if self.batching else []) + list(dims)
            raise Internal(f"output '{name}': the model returned shape {list(shape)}, "
                           f"expected {full} (-1: any size)")
        if name in self.reshapes:
            array = array.reshape(shape[:1] + tuple(self.reshapes[name]) if self.batching
                                  else self.reshapes[name])
        return array


class TensorInstance(ModelInstance):
    """An instance of a framework model. A batch's requests are joined along the first dimension and
    run at once; each request then gets its own slice of every output (a view, not a copy).
    Subclasses implement `to_framework` (the joined inputs, as the framework takes them; a lone
    request's inputs may still be in device memory) and `run` (returning every output as a numpy
    array)."""

    def __init__(self, config: ModelConfig):
        self.checker = OutputChecker(config)

    def to_framework(self, inputs: dict[str, np.ndarray]) -> Any:
        return inputs

    def prepare(self, requests: list[InferRequest]) -> Any:
        if len(requests) == 1:
            return self.to_framework(requests[0].inputs)
        names = requests[0].inputs  # the batcher joins only requests with the same inputs and shapes
        return self.to_framework({name: joined([r.inputs[name] for r in requests]) for name in names})

    def finish(self, requests: list[InferRequest], outputs: dict[str, np.ndarray]) -> list[InferResponse]:
        responses, start = [], 0
        for request in requests:
            end = start + request.batch_size
            own = outputs if len(requests) == 1 else {name: array[start:end] for name, array in outputs.items()}
            try:
                responses.append(self.checker.response(request, own))
            except NaiadError as e:
                responses.append(InferResponse(error=e))
            start = end
        return responses


def to_host(tensor: Tensor) -> np.ndarray:
    """A tensor in host memory (copied down if it is in device memory)."""
    return tensor.to_host() if isinstance(tensor, DeviceArray) else tensor


def joined(parts: list[Tensor]) -> np.ndarray:
    """The requests' parts of one input, one after another along the first dimension, in host memory."""
    host = [to_host(p) for p in parts]
    return host[0] if len(host) == 1 else np.concatenate(host)


def outputs_on_device(requests: list[InferRequest], gpu: int | None) -> set[str]:
    """The outputs that some request of the batch places in CUDA shared memory on this instance's GPU:
    they stay in device memory and are copied device to device."""
    if gpu is None:
        return set()
    return {name for r in requests for name, place in r.output_places.items() if place.device_id == gpu}


def model_file(files: ModelFiles, defaults: tuple[str, ...]) -> Path:
    """The version's model file: default_model_filename, else the first of the backend's names there."""
    return find_model_file(files.version_dir, files.config.default_model_filename, defaults)


def find_model_file(version_dir: Path, configured: str, defaults: tuple[str, ...]) -> Path:
    if configured:
        return version_dir / configured
    return next((version_dir / n for n in defaults if (version_dir / n).exists()), version_dir / defaults[0])


def import_framework(module: str, backend: str, extra: str):
    """Import a framework package, or fail the model with the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError([f"the {backend} backend needs the Python package '{module}', which this "
                           f"server cannot import ({e}); install it with: pip install 'naiad[{extra}]'"])


def failed(requests: list[InferRequest], error: NaiadError) -> list[InferResponse]:
    return [InferResponse(error=error) for _ in requests]
