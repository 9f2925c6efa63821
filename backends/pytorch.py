"""The PyTorch backend (`backend: pytorch`): TorchScript (`<version>/model.pt`) and, beyond Triton,
torch.export programs (`<version>/model.pt2`). Runs under torch.inference_mode on the instance's device
(`cuda:N` for KIND_GPU): inputs move there once per batch and outputs back once.

Inputs are passed to forward() in the order of its arguments when the configured names are its argument
names, by index when they follow Triton's `NAME__<index>` convention, and else in configuration order.
Outputs (a tensor, a tuple or list of tensors, or a dict) map to the configured outputs the same way.
`parameters: {torch_compile: "true"}` runs an exported program through torch.compile (the first batch
of each shape pays the compilation)."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import ml_dtypes
import numpy as np

from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, TensorInstance, import_framework,
                                 model_file)
from naiad.backends.signature import TensorSignature, complete
from naiad.daemon import datatypes
from naiad.daemon.errors import ConfigError, Internal
from naiad.daemon.model_config import ModelConfig

FILES = ("model.pt", "model.pt2")
_INDEXED = re.compile(r"^.*__(\d+)$")
# torch.export.load keeps global state while it reads: models that load at once take turns
_LOADING = threading.Lock()


def _torch():
    return import_framework("torch", "pytorch", "torch")


def _datatype(dtype) -> datatypes.DataType | None:
    """The data type of a torch dtype (None for those naiad has no name for, such as complex)."""
    name = str(dtype).removeprefix("torch.")
    return datatypes.parse({"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32",
                            "uint64": "UINT64", "int8": "INT8", "int16": "INT16", "int32": "INT32",
                            "int64": "INT64", "float16": "FP16", "float32": "FP32", "float64": "FP64",
                            "bfloat16": "BF16"}.get(name, ""))


def load(path: Path, device: str = "cpu"):
    """A TorchScript module or an exported program's module, on `device`, in eval mode."""
    torch = _torch()
    try:
        with _LOADING:
            if path.suffix == ".pt2":
                return torch.export.load(str(path)).module().to(device)
            return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:
        raise ConfigError([f"{path}: PyTorch cannot load it ({type(e).__name__}: {' '.join(str(e).split())[:300]})"])


def argument_names(module) -> list[str]:
    """forward()'s argument names, where the module keeps them."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript
        return [a.name for a in schema.arguments[1:]]
    import inspect
    try:
        return [p for p in inspect.signature(module.forward).parameters if p != "self"]
    except (TypeError, ValueError):
        return []


def _exported_signature(path: Path) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """Names, data types and shapes from a torch.export program (dynamic sizes become -1)."""
    torch = _torch()
    with _LOADING:
        program = torch.export.load(str(path))
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    shape = lambda value: [d if isinstance(d, int) else -1 for d in value.shape]
    inputs = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta["val"]
        inputs.append(TensorSignature(name, _datatype(value.dtype), shape(value)))
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    values = [a.meta["val"] for a in output_node.args[0]][-len(program.graph_signature.user_outputs):]
    outputs = [TensorSignature(f"OUTPUT__{i}", _datatype(v.dtype), shape(v)) for i, v in enumerate(values)]
    return inputs, outputs


class PyTorchBackend(Backend):
    name = "pytorch"

    def uses_gpus(self) -> bool:
        return _torch().cuda.is_available()

    def complete_config(self, config: ModelConfig, model_path: Path) -> None:
        if model_path.suffix == ".pt2":
            inputs, outputs = _exported_signature(model_path)
            complete(config, model_path.name, inputs, outputs)
            return
        names = argument_names(load(model_path))
        missing = [kind for kind, tensors in (("input", config.input), ("output", config.output))
                   if not tensors or any(t.data_type is None or t.dims is None for t in tensors)]
        if missing:
            example = ", ".join(f"{{name: {n}, data_type: TYPE_FP32, dims: [...]}}" for n in names) or "..."
            raise ConfigError([f"{kind}: a TorchScript file keeps no data types or shapes, so the "
                               f"configuration must give each {kind}'s name, data_type and dims"
                               + (f"; forward() takes {', '.join(names)}, e.g. input: [{example}]"
                                  if kind == "input" else "") for kind in missing])

    def create_instance(self, files: ModelFiles, spec: InstanceSpec) -> TensorInstance:
        return PyTorchInstance(files, spec)


def _order(configured: list[str], named: list[str]) -> list[str]:
    """Configured tensor names in the order the model takes or gives them."""
    if named and set(configured) == set(named):
        return [n for n in named if n in configured]
    indexed = {name: _INDEXED.match(name) for name in configured}
    if all(indexed.values()):
        return sorted(configured, key=lambda n: int(indexed[n].group(1)))
    return list(configured)


class PyTorchInstance(TensorInstance):
    def __init__(self, files: ModelFiles, spec: InstanceSpec):
        super().__init__(files.config)
        torch = _torch()
        self.torch = torch
        self.device = torch.device(f"cuda:{spec.device_id}" if spec.kind == "KIND_GPU" else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(["a KIND_GPU instance needs a PyTorch built with CUDA and a GPU it can use"])
        path = model_file(files, FILES)
        self.module = load(path, str(self.device))
        if files.config.parameters.get("torch_compile", "false").lower() == "true":
            if path.suffix != ".pt2":
                raise ConfigError([f"parameters.torch_compile: torch.compile takes a torch.export program "
                                   f"(model.pt2), not TorchScript ({path.name}); export the model, or "
                                   f"remove the parameter"])
            self.module = torch.compile(self.module)  # compiles at the first batch of each new shape
        self.inputs = _order([i.name for i in files.config.input], argument_names(self.module))
        self.outputs = _order([o.name for o in files.config.output], [])

    def to_framework(self, inputs: dict[str, np.ndarray]) -> list:
        torch = self.torch
        tensors = []
        for name in self.inputs:
            array = inputs.get(name)
            if array is None:
                tensors.append(None)  # an optional input left out
                continue
            if array.dtype == datatypes.BF16.numpy:
                tensor = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
            else:  # inputs are read-only views of the request: torch needs its own memory
                tensor = torch.from_numpy(array.copy() if not array.flags.writeable else array)
            tensors.append(tensor.to(self.device, non_blocking=True))
        return tensors

    def run(self, tensors: list) -> dict[str, np.ndarray]:
        with self.torch.inference_mode():
            result = self.module(*tensors)
        if isinstance(result, dict):
            values = [result.get(name) for name in self.outputs]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(self.outputs) or any(v is None for v in values):
            raise Internal(f"the model returned {len(values)} outputs where the configuration lists "
                           f"{len(self.outputs)} ({', '.join(self.outputs)})")
        return {name: self._numpy(value) for name, value in zip(self.outputs, values)}

    def _numpy(self, tensor) -> np.ndarray:
        tensor = tensor.detach().to("cpu")
        if tensor.dtype == self.torch.bfloat16:
            return tensor.view(self.torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
