"""Backends: one module per framework behind the interface in base.py.

A backend's module is imported only when a model asks for it, so a missing framework package fails
only the models that need it, with the pip extra to install.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from naiad.backends.base import Backend

# backend name -> (module, class, the model files it reads by default, in order of preference)
AVAILABLE = {
    "python": ("naiad.backends.python", "PythonBackend", ("model.py",)),
    "onnxruntime": ("naiad.backends.ort", "OnnxRuntimeBackend", ("model.onnx",)),
    "pytorch": ("naiad.backends.pytorch", "PyTorchBackend", ("model.pt", "model.pt2")),
    "xgboost": ("naiad.backends.trees", "XGBoostBackend", ("model.json", "model.ubj")),
}
# Triton's `platform` names, and Triton's FIL backend, for the backends naiad has
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch", "fil": "xgboost"}
_loaded: dict[str, Backend] = {}


def get(name: str) -> Backend:
    """The backend called `name` (one of AVAILABLE)."""
    if name not in _loaded:
        module, cls, _ = AVAILABLE[name]
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]


def from_platform(platform: str) -> str:
    return PLATFORMS.get(platform, "")


def model_files(name: str) -> tuple[str, ...]:
    return AVAILABLE[name][2]


def detect(version_dirs: list[Path]) -> str:
    """The backend whose default model file the newest version folder holds ("" if none does)."""
    for version_dir in reversed(version_dirs):
        for name, (_, _, filenames) in AVAILABLE.items():
            if any((version_dir / f).exists() for f in filenames):
                return name
    return ""
