"""The PyTorch backend (`backend: pytorch`): TorchScript (`<version>/model.pt`) and, beyond Triton,
torch.export programs (`<version>/model.pt2`), on the instance's device (`cuda:N` for KIND_GPU).

Inputs are passed to forward() in the order of its arguments when the configured names are its argument
names, by index when they follow Triton's `NAME__<index>` convention, and else in configuration order.
Outputs (a tensor, a tuple or list of tensors, or a dict) map to the configured outputs the same way.
`parameters: {torch_compile: "true"}` runs an exported program through torch.compile (the first batch
of each shape pays the compilation).

Triton's PyTorch-backend parameters that matter for speed are read too: `INFERENCE_MODE` (default
true; false runs under no_grad), `DISABLE_OPTIMIZED_EXECUTION` (TorchScript), `ENABLE_JIT_PROFILING`
(default false here, so that a new batch size never re-specialises the graph), `DISABLE_CUDNN`, and
beyond Triton `ENABLE_CUDNN_BENCHMARK` (cuDNN picks the fastest kernels per input shape)."""
from __future__ import annotations

import contextlib
import re
import threading
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np

from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, TensorInstance, import_framework,
                                 joined, model_file, outputs_on_device, to_host)
from naiad.backends.signature import TensorSignature, complete
from naiad.daemon import datatypes
from naiad.daemon.cuda import DeviceArray
from naiad.daemon.errors import ConfigError, Internal
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.model_config import ModelConfig

FILES = ("model.pt", "model.pt2")
_INDEXED = re.compile(r"^.*__(\d+)$")
# torch.export.load keeps global state while it reads: models that load at once take turns
_LOADING = threading.Lock()
# Request tensors are read-only views of the request's bytes, which models only read: torch may use
# them as they are, without the copy it would otherwise ask for.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


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


def _flag(parameters: dict, key: str, default: bool) -> bool:
    value = parameters.get(key)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise ConfigError([f"parameters.{key}: expected \"true\" or \"false\", got '{value}'"])
    return value.lower() == "true"


def _set_process_options(torch, parameters: dict) -> None:
    """Options that PyTorch keeps for the whole process, so the last model loaded sets them."""
    if _flag(parameters, "ENABLE_CUDNN_BENCHMARK", False):
        torch.backends.cudnn.benchmark = True   # autotunes each new input shape once
    if _flag(parameters, "DISABLE_CUDNN", False):
        torch.backends.cudnn.enabled = False
    # TorchScript's profiling executor re-specialises the graph for each new shape it sees, so a batch
    # size not seen before takes a slow path: off unless a model asks for it
    profiling = _flag(parameters, "ENABLE_JIT_PROFILING", False)
    torch._C._jit_set_profiling_executor(profiling)
    torch._C._jit_set_profiling_mode(profiling)


class PyTorchInstance(TensorInstance):
    """On a GPU, each instance has its own CUDA streams: one computes, one uploads. Inputs that are
    already in device memory (CUDA shared memory) are used in place; host inputs are gathered into one
    pinned staging buffer per input and go up in one copy, on the upload stream, so that the next
    batch goes up while this one computes (`overlaps`; two sets of staging buffers take turns). Outputs
    stay on the device for requests that place them in CUDA shared memory, and otherwise come down
    once per batch into pinned memory."""

    def __init__(self, files: ModelFiles, spec: InstanceSpec):
        super().__init__(files.config)
        torch = _torch()
        self.torch = torch
        self.device = torch.device(f"cuda:{spec.device_id}" if spec.kind == "KIND_GPU" else "cpu")
        self.gpu = spec.device_id if self.device.type == "cuda" else None
        if self.gpu is not None and not torch.cuda.is_available():
            raise ConfigError(["a KIND_GPU instance needs a PyTorch built with CUDA and a GPU it can use"])
        parameters = files.config.parameters
        self.inference_mode = _flag(parameters, "INFERENCE_MODE", True)
        self.optimized_execution = not _flag(parameters, "DISABLE_OPTIMIZED_EXECUTION", False)
        _set_process_options(torch, parameters)
        path = model_file(files, FILES)
        self.module = load(path, str(self.device))
        self.scripted = path.suffix != ".pt2"
        if _flag(parameters, "torch_compile", False):
            if self.scripted:
                raise ConfigError([f"parameters.torch_compile: torch.compile takes a torch.export program "
                                   f"(model.pt2), not TorchScript ({path.name}); export the model, or "
                                   f"remove the parameter"])
            self.module = torch.compile(self.module)  # compiles at the first batch of each new shape
        self.inputs = _order([i.name for i in files.config.input], argument_names(self.module))
        self.outputs = _order([o.name for o in files.config.output], [])
        self.overlaps = self.gpu is not None
        self.stream = torch.cuda.Stream(self.device) if self.gpu is not None else None
        self.uploads = torch.cuda.Stream(self.device) if self.gpu is not None else None
        # two sets of staging buffers, taking turns: input name -> pinned host buffer (bytes), grown
        # as needed; and each set's last upload, which must end before the set is written again
        self.staging: list[dict[str, object]] = [{}, {}]
        self.uploaded: list[object] = [None, None]
        self.turn = 0

    # --- inputs -----------------------------------------------------------------------------------

    def prepare(self, requests: list[InferRequest]):
        if self.gpu is None:
            return [None if parts[0] is None else _from_numpy(self.torch, joined(parts))
                    for parts in self._parts(requests)]
        torch = self.torch
        self.turn ^= 1
        if self.uploaded[self.turn] is not None:  # this set's last upload must be done to write it again
            self.uploaded[self.turn].synchronize()
        tensors = []
        with torch.cuda.stream(self.uploads):
            for name, parts in zip(self.inputs, self._parts(requests)):
                tensors.append(None if parts[0] is None else self._upload(name, parts))
            done = self.uploaded[self.turn] = torch.cuda.Event()
            done.record(self.uploads)
        return tensors, done

    def _parts(self, requests: list[InferRequest]) -> list[list]:
        # an optional input left out is None (the batcher joins only requests with the same inputs)
        return [[r.inputs.get(name) for r in requests] for name in self.inputs]

    def _upload(self, name: str, parts: list):
        """The batch's input, joined along the first dimension, on the instance's device."""
        torch = self.torch
        if all(isinstance(p, DeviceArray) and p.device_id == self.gpu for p in parts):
            views = [_from_device(torch, p, self.device) for p in parts]
            if len(views) == 1:
                return views[0]   # the client's memory, read in place
            tensor = self._ours(torch.cat(views))
            # the join reads the clients' regions: done before the batch can end (a batch prepared
            # ahead may be failed by a timeout), and a region be unmapped
            self.uploads.synchronize()
            return tensor
        host = [to_host(p) for p in parts]
        shape = host[0].shape if len(host) == 1 else (sum(h.shape[0] for h in host), *host[0].shape[1:])
        staged = self._staging_buffer(name, shape, host[0].dtype)
        if len(host) == 1:
            staged[...] = host[0]
        else:
            np.concatenate(host, out=staged)
        return self._ours(_from_numpy(torch, staged).to(self.device, non_blocking=True))

    def _ours(self, tensor):
        """A tensor this instance made on the upload stream, for the compute stream: the caching
        allocator must not reuse its memory before the compute stream is done with it."""
        tensor.record_stream(self.stream)
        return tensor

    def _staging_buffer(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """A pinned host array of this shape and type in this turn's set, reusing the input's buffer
        when it is big enough."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffers = self.staging[self.turn]
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = buffers[name] = self.torch.empty(max(nbytes, 1 << 16), dtype=self.torch.uint8,
                                                      pin_memory=True)
        return buffer[:nbytes].numpy().view(dtype).reshape(shape)

    # --- the model --------------------------------------------------------------------------------

    def run(self, prepared) -> dict:
        torch = self.torch
        tensors = prepared
        if self.gpu is not None:
            tensors, uploaded = prepared
            self.stream.wait_event(uploaded)
        with contextlib.ExitStack() as context:
            context.enter_context(torch.inference_mode() if self.inference_mode else torch.no_grad())
            if self.scripted:
                context.enter_context(torch.jit.optimized_execution(self.optimized_execution))
            if self.stream is not None:
                context.enter_context(torch.cuda.stream(self.stream))
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
        return dict(zip(self.outputs, values))

    # --- outputs ----------------------------------------------------------------------------------

    def finish(self, requests: list[InferRequest], outputs: dict) -> list[InferResponse]:
        on_device = outputs_on_device(requests, self.gpu)
        batch = {}
        with contextlib.ExitStack() as context:
            if self.stream is not None:
                context.enter_context(self.torch.cuda.stream(self.stream))
            for name, tensor in outputs.items():
                tensor = tensor.detach()
                if name in on_device:
                    batch[name] = tensor.contiguous()
                else:
                    batch[name] = self._download(tensor)
        if self.stream is not None:
            self.stream.synchronize()
        return super().finish(requests, {
            name: _to_numpy(self.torch, t) if t.device.type == "cpu"
            else DeviceArray.of(t, self.gpu, _numpy_dtype(t.dtype))
            for name, t in batch.items()})

    def _download(self, tensor):
        if tensor.device.type == "cpu":
            return tensor
        host = self.torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)


def _from_numpy(torch, array: np.ndarray):
    if array.dtype == datatypes.BF16.numpy:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _from_device(torch, array: DeviceArray, device):
    tensor = torch.as_tensor(array, device=device)
    return tensor.view(torch.bfloat16) if array.dtype == datatypes.BF16.numpy else tensor


def _to_numpy(torch, tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _numpy_dtype(dtype) -> np.dtype:
    found = _datatype(dtype)
    if found is None:
        raise Internal(f"the model returned a tensor of {dtype}, which has no protocol data type")
    return found.numpy
