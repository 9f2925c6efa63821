"""The ONNX Runtime backend (`backend: onnxruntime`, `<version>/model.onnx`): one InferenceSession per
instance, on the CUDA execution provider for KIND_GPU instances (onnxruntime-gpu), else the CPU.

On a GPU, tensors are bound to the session (I/O binding): inputs in device memory (CUDA shared memory)
are read in place, or joined on the device when a batch has several; host inputs go up once. Outputs
that a request places in CUDA shared memory stay on the device; the others come down once.

Session options come from the configuration's parameters: `intra_op_thread_count`,
`inter_op_thread_count`, `execution_mode` (sequential or parallel; Triton's 0 or 1) and
`graph_optimization_level` (disable, basic, extended or all)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, TensorInstance, import_framework,
                                 joined, model_file, outputs_on_device, to_host)
from naiad.backends.signature import TensorSignature, complete
from naiad.daemon import cuda, datatypes
from naiad.daemon.cuda import DeviceArray
from naiad.daemon.errors import ConfigError, Internal
from naiad.daemon.inference import InferRequest
from naiad.daemon.model_config import ModelConfig

FILES = ("model.onnx",)
# ONNX Runtime's type strings
TYPES = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
         "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
         "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
         "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
         "tensor(bfloat16)": "BF16", "tensor(string)": "BYTES"}
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL", "-1": "ORT_ENABLE_BASIC", "1": "ORT_ENABLE_ALL"}
MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL", "0": "ORT_SEQUENTIAL",
         "1": "ORT_PARALLEL"}


def _ort():
    return import_framework("onnxruntime", "onnxruntime", "onnxruntime")


def _session(path: Path, options=None, providers=("CPUExecutionProvider",)):
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ConfigError([f"{path}: ONNX Runtime cannot load it: {' '.join(str(e).split())}"])


def _signature(items) -> list[TensorSignature]:
    return [TensorSignature(i.name, datatypes.BY_NAME.get(TYPES.get(i.type, "")),
                            [d if isinstance(d, int) and d >= 0 else -1 for d in i.shape])
            for i in items]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def uses_gpus(self) -> bool:
        return "CUDAExecutionProvider" in _ort().get_available_providers()

    def complete_config(self, config: ModelConfig, model_path: Path) -> None:
        session = _session(model_path)
        complete(config, model_path.name, _signature(session.get_inputs()), _signature(session.get_outputs()))

    def create_instance(self, files: ModelFiles, spec: InstanceSpec) -> TensorInstance:
        return OnnxRuntimeInstance(files, spec)


class OnnxRuntimeInstance(TensorInstance):
    def __init__(self, files: ModelFiles, spec: InstanceSpec):
        super().__init__(files.config)
        ort = _ort()
        options = ort.SessionOptions()
        parameters = files.config.parameters
        for key, attribute in (("intra_op_thread_count", "intra_op_num_threads"),
                               ("inter_op_thread_count", "inter_op_num_threads")):
            if key in parameters:
                setattr(options, attribute, _integer(parameters, key))
        for key, names, enum in (("execution_mode", MODES, ort.ExecutionMode),
                                 ("graph_optimization_level", LEVELS, ort.GraphOptimizationLevel)):
            if key in parameters:
                if parameters[key] not in names:
                    raise ConfigError([f"parameters.{key}: expected one of {', '.join(names)}, got "
                                       f"'{parameters[key]}'"])
                value = getattr(enum, names[parameters[key]])
                setattr(options, key, value)
        if spec.kind == "KIND_GPU":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(["a KIND_GPU instance of an ONNX model needs ONNX Runtime's CUDA "
                                   "provider: pip install 'naiad[onnxruntime-gpu]' (in place of "
                                   "onnxruntime), or use KIND_CPU"])
            if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from their pip packages, where installed so
                ort.preload_dlls()
            providers = [("CUDAExecutionProvider", {"device_id": spec.device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        self.ort = ort
        self.gpu = spec.device_id if spec.kind == "KIND_GPU" else None
        self.session = _session(model_file(files, FILES), options, providers)
        if self.gpu is not None and "CUDAExecutionProvider" not in self.session.get_providers():
            # ONNX Runtime falls back to the CPU when its CUDA provider cannot start: say so instead
            raise ConfigError(["ONNX Runtime could not start its CUDA provider (its log above says why; "
                               "usually CUDA or cuDNN libraries it cannot find): install "
                               "'naiad[onnxruntime-gpu]' with the CUDA and cuDNN it needs, or use KIND_CPU"])
        self.outputs = [o.name for o in files.config.output]
        self.strings = {o.name for o in files.config.output if o.data_type is datatypes.BYTES}

    def to_framework(self, inputs: dict) -> dict[str, np.ndarray]:
        return {name: to_host(tensor) for name, tensor in inputs.items()}

    def prepare(self, requests: list[InferRequest]):
        if self.gpu is None:
            return super().prepare(requests)
        binding = self.session.io_binding()
        held = []   # device memory the binding points into, kept until the batch has run
        for name in requests[0].inputs:  # the batcher joins only requests with the same inputs
            parts = [r.inputs[name] for r in requests]
            if all(isinstance(p, DeviceArray) and p.device_id == self.gpu for p in parts):
                tensor = parts[0] if len(parts) == 1 else self._join_on_device(parts)
                held.append(tensor)
                binding.bind_input(name, "cuda", self.gpu, tensor.dtype, tensor.shape, tensor.pointer)
            else:
                binding.bind_cpu_input(name, joined(parts))
        # strings cannot go to CUDA shared memory: the request that asks for it gets that error
        on_device = outputs_on_device(requests, self.gpu) - self.strings
        for name in self.outputs:
            if name in on_device:
                binding.bind_output(name, "cuda", self.gpu)
            else:
                binding.bind_output(name, "cpu")
        return binding, held

    def _join_on_device(self, parts: list[DeviceArray]) -> DeviceArray:
        """The parts one after another in a device buffer of ONNX Runtime's, copied device to device."""
        shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
        value = self.ort.OrtValue.ortvalue_from_shape_and_type(shape, parts[0].dtype, "cuda", self.gpu)
        offset = value.data_ptr()
        for part in parts:
            cuda.copy(offset, part.pointer, part.nbytes, self.gpu)
            offset += part.nbytes
        return DeviceArray(value.data_ptr(), shape, parts[0].dtype, self.gpu, value)

    def run(self, prepared) -> dict:
        if self.gpu is None:
            return dict(zip(self.outputs, self.session.run(self.outputs, prepared)))
        binding, _held = prepared
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return {name: self._tensor(value) for name, value in zip(self.outputs, binding.get_outputs())}

    def _tensor(self, value):
        """An output as ONNX Runtime left it: a numpy array, or a view of its device memory."""
        if value.device_name().lower() != "cuda":
            return value.numpy()
        datatype = datatypes.BY_NAME.get(TYPES.get(value.data_type(), ""))
        if datatype is None:
            raise Internal(f"ONNX Runtime returned {value.data_type()} on the GPU, which has no protocol "
                           f"data type")
        return DeviceArray(value.data_ptr(), tuple(value.shape()), datatype.numpy, self.gpu, value)


def _integer(parameters: dict, key: str) -> int:
    try:
        return int(parameters[key])
    except ValueError:
        raise ConfigError([f"parameters.{key}: expected a whole number, got '{parameters[key]}'"])
