"""Backends: one module per framework behind the interface in base.py.

A backend's module is imported only when a model asks for it, so a missing framework package fails
only the models that need it, with the pip extra to install.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from naiad.backends.base import Backend

# backend name -> (module, class, the model file it reads by default)
AVAILABLE = {
    "python": ("naiad.backends.python", "PythonBackend", "model.py"),
}
# Triton's `platform` names for the backends naiad has
PLATFORMS = {}
_loaded: dict[str, Backend] = {}


def get(name: str) -> Backend:
    """The backend called `name` (one of AVAILABLE)."""
    if name not in _loaded:
        module, cls, _ = AVAILABLE[name]
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]


def from_platform(platform: str) -> str:
    return PLATFORMS.get(platform, "")


def detect(version_dirs: list[Path]) -> str:
    """The backend whose default model file the newest version folder holds ("" if none does)."""
    for version_dir in reversed(version_dirs):
        for name, (_, _, filename) in AVAILABLE.items():
            if (version_dir / filename).exists():
                return name
    return ""
