"""The Python backend: `<version>/model.py` defines `TritonPythonModel` (see python_api.py).

Each instance is its own object of the model's class, made from its own import of model.py. Where it
runs (a worker process by default, a thread, or the event loop) is the scheduler's business.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import sys
import threading
from pathlib import Path

from naiad.backends import python_api as pb
from naiad.backends.base import (Backend, InstanceSpec, ModelFiles, ModelInstance, OutputChecker,
                                 to_host)
from naiad.daemon import errors
from naiad.daemon.inference import InferRequest, InferResponse, plain_parameters
from naiad.daemon.model_config import to_dict

# Triton's Python models import their helpers under this name.
sys.modules.setdefault("triton_python_backend_utils", pb)

_module_ids = itertools.count()


def _import(path: Path):
    """Import model.py under a name of its own (two models' model.py never collide), with its folder
    on sys.path while it imports, so that it can import the modules beside it."""
    name = f"naiad_model_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    _replace_path(lambda entries: entries.insert(0, folder))
    try:
        spec.loader.exec_module(module)
    finally:
        _replace_path(lambda entries: entries.remove(folder))
    return module


_path_lock = threading.Lock()


def _replace_path(change) -> None:
    """Change a copy of sys.path and put it in place: models load on threads, and an import on
    another thread that is going through sys.path at that moment must not see it shift under it
    (it would skip an entry, and fail to find a package that is installed)."""
    with _path_lock:
        entries = list(sys.path)
        change(entries)
        sys.path = entries


class PythonBackend(Backend):
    name = "python"
    default_execution = "process"  # the GIL: a thread per instance would not run two at once

    def create_instance(self, files: ModelFiles, spec: InstanceSpec) -> ModelInstance:
        filename = files.config.default_model_filename or "model.py"
        path = files.version_dir / filename
        module = _import(path)
        model_class = getattr(module, "TritonPythonModel", None)
        if not isinstance(model_class, type):
            raise errors.ConfigError([f"{path}: defines no class TritonPythonModel; define one with "
                                      f"execute(self, requests) returning one response per request"])
        model = model_class()
        if not callable(getattr(model, "execute", None)):
            raise errors.ConfigError([f"{path}: TritonPythonModel has no execute(self, requests) method"])
        initialize = getattr(model, "initialize", None)
        if initialize is not None:
            initialize({
                "model_config": json.dumps(to_dict(files.config)),
                "model_instance_kind": spec.kind.removeprefix("KIND_"),
                "model_instance_name": spec.name,
                "model_instance_device_id": str(spec.device_id),
                "model_repository": str(files.model_dir),
                "model_version": str(files.version),
                "model_name": files.name,
            })
        return PythonInstance(model, files)


class PythonInstance(ModelInstance):
    def __init__(self, model, files: ModelFiles):
        self.model = model
        self.model_name = files.name
        self.checker = OutputChecker(files.config)
        self.all_outputs = [o.name for o in files.config.output]
        self.decoupled = files.config.decoupled
        self.loop = asyncio.new_event_loop() if inspect.iscoroutinefunction(model.execute) else None

    def prepare(self, requests: list[InferRequest]) -> list[pb.InferenceRequest]:
        return [pb.InferenceRequest.received({name: to_host(t) for name, t in r.inputs.items()},
                                             r.output_names or self.all_outputs, r.id, r.parameters,
                                             _CheckedSink(self, r) if self.decoupled else None)
                for r in requests]

    def run(self, prepared: list[pb.InferenceRequest]):
        result = self.model.execute(prepared)
        if self.loop is not None:
            result = self.loop.run_until_complete(result)
        return result

    def finish(self, requests: list[InferRequest], result) -> list[InferResponse]:
        if self.decoupled:  # its responses go through the senders; this only says execute returned
            if result is not None and any(r is not None for r in result):
                raise errors.Internal("execute() of a decoupled model returned responses; it must send "
                                      "them with request.get_response_sender() and return None")
            return [InferResponse() for _ in requests]
        if not isinstance(result, (list, tuple)) or len(result) != len(requests):
            count = len(result) if isinstance(result, (list, tuple)) else type(result).__name__
            raise errors.Internal(f"execute() returned {count} responses for {len(requests)} requests; "
                                  f"it must return a list with one InferenceResponse per request")
        return [self._response(request, response) for request, response in zip(requests, result)]

    def _response(self, request: InferRequest, response) -> InferResponse:
        if not isinstance(response, pb.InferenceResponse):
            return InferResponse(error=errors.Internal(
                f"execute() returned {type(response).__name__} where an InferenceResponse belongs"))
        error = response.error()
        if error is not None:
            return InferResponse(error=pb.naiad_error(error))
        try:
            checked = self.checker.response(
                request, {t.name(): t.as_numpy() for t in response.output_tensors()})
        except errors.NaiadError as e:
            return InferResponse(error=e)
        checked.parameters = response._parameters
        return checked

    def close(self) -> None:
        try:
            finalize = getattr(self.model, "finalize", None)
            if finalize is not None:
                finalize()
        finally:
            if self.loop is not None:
                self.loop.close()


class _CheckedSink:
    """A decoupled model's responses to one request, checked as execute's are, on to its sink."""

    def __init__(self, instance: PythonInstance, request: InferRequest):
        self.instance = instance
        self.request = request

    @property
    def cancelled(self) -> bool:
        return self.request.sink.cancelled

    def send(self, response: pb.InferenceResponse | None, final: bool) -> None:
        if response is not None:
            response = plain_parameters(self.instance.model_name, self.instance._response(self.request, response))
        self.request.sink.send(response, final)
