"""Tree models (`backend: xgboost`): XGBoost models saved as JSON (`<version>/model.json`) or UBJSON
(`model.ubj`), predicted through the Booster, on `cuda:N` for KIND_GPU instances (in-place prediction
on device arrays; outputs placed in CUDA shared memory never leave the device), else the CPU. LightGBM
models are not read (yet): convert them, or serve them from a Python model.

What to return is set as in Triton's FIL backend, with its parameter names:
- `output_class: "true"`: a classifier; with `predict_proba: "true"` the probability of every class
  (binary models give two columns: 1 - p and p), else the class index, the binary one decided by
  `threshold` (default 0.5);
- `output_class: "false"` (the default): the model's prediction as XGBoost gives it (a regression's
  value, a binary classifier's probability);
- beyond FIL, `output_margin: "true"`: the raw margin (the sum of tree leaves, before the link).
The input is one FP32 tensor of the model's feature count; the output is FP32 (INT32 for classes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, TensorInstance, import_framework,
                                 model_file, outputs_on_device, to_host)
from naiad.backends.signature import TensorSignature, complete
from naiad.daemon import datatypes
from naiad.daemon.cuda import DeviceArray
from naiad.daemon.errors import ConfigError
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.model_config import ModelConfig

FILES = ("model.json", "model.ubj")
FP32, INT32 = datatypes.BY_NAME["FP32"], datatypes.BY_NAME["INT32"]


def _xgb():
    return import_framework("xgboost", "xgboost", "xgboost")


def load(path: Path):
    xgb = _xgb()
    try:
        return xgb.Booster(model_file=str(path))
    except Exception as e:  # xgboost raises XGBoostError for unreadable files
        raise ConfigError([f"{path}: XGBoost cannot load it ({' '.join(str(e).split())[:300]})"])


def _flag(parameters: dict, key: str) -> bool:
    value = parameters.get(key, "false").lower()
    if value not in ("true", "false"):
        raise ConfigError([f"parameters.{key}: expected \"true\" or \"false\", got '{parameters[key]}'"])
    return value == "true"


class Prediction:
    """What the configuration asks the model to return, and how many columns that makes."""

    def __init__(self, parameters: dict, booster):
        self.output_class = _flag(parameters, "output_class")
        self.predict_proba = _flag(parameters, "predict_proba")
        self.margin = _flag(parameters, "output_margin")
        try:
            self.threshold = float(parameters.get("threshold", 0.5))
        except ValueError:
            raise ConfigError([f"parameters.threshold: expected a number, got '{parameters['threshold']}'"])
        if self.margin and self.output_class:
            raise ConfigError(["parameters: output_margin and output_class exclude each other"])
        learner = json.loads(booster.save_config())["learner"]
        self.classes = int(learner["learner_model_param"].get("num_class", "0")) or 1
        objective = learner["objective"]["name"]
        self.binary = objective.startswith("binary:")
        if self.output_class and not (self.binary or objective.startswith("multi:")):
            raise ConfigError([f"parameters.output_class: the model's objective is {objective}, not a "
                               f"classifier's"])

    @property
    def columns(self) -> int:
        if self.output_class and self.predict_proba:
            return 2 if self.binary else self.classes
        return 1 if self.output_class or self.binary else self.classes

    @property
    def datatype(self) -> datatypes.DataType:
        return INT32 if self.output_class and not self.predict_proba else FP32

    def finish(self, predicted, xp=np):
        """From XGBoost's prediction (margins or probabilities, [n] or [n, classes]) to the output, with
        the array module the prediction is in (numpy, or CuPy on a GPU)."""
        if predicted.ndim == 1:
            predicted = predicted[:, None]
        if self.margin or not self.output_class:
            return predicted.astype(xp.float32, copy=False)
        if self.binary:
            if self.predict_proba:
                return xp.hstack([1 - predicted, predicted]).astype(xp.float32)
            return (predicted >= self.threshold).astype(xp.int32)
        if self.predict_proba:
            return predicted.astype(xp.float32, copy=False)
        return predicted.argmax(axis=1).astype(xp.int32)[:, None]


class XGBoostBackend(Backend):
    name = "xgboost"

    def uses_gpus(self) -> bool:
        from naiad.daemon import gpus
        return gpus.count() > 0 and _xgb().build_info().get("USE_CUDA", False)

    def complete_config(self, config: ModelConfig, model_path: Path) -> None:
        booster = load(model_path)
        prediction = Prediction(config.parameters, booster)
        features = booster.num_features()
        complete(config, model_path.name,
                 [TensorSignature(config.input[0].name if config.input else "input__0", FP32, [-1, features])],
                 [TensorSignature(config.output[0].name if config.output else "output__0", prediction.datatype,
                                  [-1, prediction.columns])])
        if len(config.input) != 1 or len(config.output) != 1:
            raise ConfigError(["a tree model takes one input (its features) and gives one output"])

    def create_instance(self, files: ModelFiles, spec: InstanceSpec) -> TensorInstance:
        return XGBoostInstance(files, spec)


class XGBoostInstance(TensorInstance):
    def __init__(self, files: ModelFiles, spec: InstanceSpec):
        super().__init__(files.config)
        self.booster = load(model_file(files, FILES))
        self.prediction = Prediction(files.config.parameters, self.booster)
        self.input = files.config.input[0].name
        self.output = files.config.output[0].name
        self.cupy = None
        if spec.kind == "KIND_GPU":
            self.booster.set_param({"device": f"cuda:{spec.device_id}"})
            self.cupy = import_framework("cupy", "xgboost", "xgboost-gpu")
            self.gpu = spec.device_id
        else:
            self.booster.set_param({"device": "cpu"})

    def to_framework(self, inputs: dict):
        features = inputs[self.input]
        if self.cupy is not None:  # device memory (a CUDA shared-memory input) is read in place
            with self.cupy.cuda.Device(self.gpu):
                return self.cupy.asarray(features)
        return to_host(features)

    def run(self, features) -> dict:
        predicted = self.booster.inplace_predict(features, predict_type="margin" if self.prediction.margin
                                                 else "value")
        if self.cupy is None:
            return {self.output: self.prediction.finish(np.asarray(predicted))}
        with self.cupy.cuda.Device(self.gpu):
            return {self.output: self.prediction.finish(self.cupy.asarray(predicted), self.cupy)}

    def finish(self, requests: list[InferRequest], outputs: dict) -> list[InferResponse]:
        """On a GPU, the output stays in device memory for requests that place it in CUDA shared
        memory, and comes down once otherwise."""
        if self.cupy is not None:
            on_device = outputs_on_device(requests, self.gpu)
            outputs = {name: DeviceArray.of(self.cupy.ascontiguousarray(array), self.gpu)
                       if name in on_device else self.cupy.asnumpy(array) for name, array in outputs.items()}
        return super().finish(requests, outputs)
