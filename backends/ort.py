"""The ONNX Runtime backend (`backend: onnxruntime`, `<version>/model.onnx`): one InferenceSession per
instance, on the CUDA execution provider for KIND_GPU instances (onnxruntime-gpu), else the CPU.

Session options come from the configuration's parameters: `intra_op_thread_count`,
`inter_op_thread_count`, `execution_mode` (sequential or parallel; Triton's 0 or 1) and
`graph_optimization_level` (disable, basic, extended or all)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, TensorInstance, import_framework,
                                 model_file, to_host)
from naiad.backends.signature import TensorSignature, complete
from naiad.daemon import datatypes
from naiad.daemon.errors import ConfigError
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
            providers = [("CUDAExecutionProvider", {"device_id": spec.device_id})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = _session(model_file(files, FILES), options, providers)
        self.outputs = [o.name for o in files.config.output]

    def to_framework(self, inputs: dict) -> dict[str, np.ndarray]:
        return {name: to_host(tensor) for name, tensor in inputs.items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, inputs)))


def _integer(parameters: dict, key: str) -> int:
    try:
        return int(parameters[key])
    except ValueError:
        raise ConfigError([f"parameters.{key}: expected a whole number, got '{parameters[key]}'"])
