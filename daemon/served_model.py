"""One version of a model that is loaded and serving: its configuration, the per-request checks
precomputed from it, its scheduler and its statistics."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from naiad.batching.scheduler import Scheduler
from naiad.daemon import datatypes
from naiad.daemon.datatypes import DataType
from naiad.daemon.errors import Internal, InvalidArgument, NaiadError, Rejected, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse, ResponseStream
from naiad.daemon.model_config import ModelConfig, shape_matches, shape_text
from naiad.daemon.statistics import ModelStatistics


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: DataType
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    shape_text: str     # as clients see it, for messages: [-1,16]

    def describe(self) -> str:
        return f"'{self.name}' ({self.datatype} {self.shape_text})"


class ServedModel:
    def __init__(self, name: str, version: int, config: ModelConfig, scheduler: Scheduler,
                 stats: ModelStatistics):
        self.name = name
        self.version = version
        self.version_text = str(version)
        self.config = config
        self.scheduler = scheduler
        self.stats = stats
        self.max_batch_size = config.max_batch_size
        self.inputs = {
            i.name: InputSpec(i.name, i.data_type, tuple(i.dims),
                              tuple(i.reshape.shape) if i.reshape is not None else None,
                              shape_text(i.dims, config.max_batch_size))
            for i in config.input}
        optional = {i.name for i in config.input if i.optional}
        self.required = [spec for spec in self.inputs.values() if spec.name not in optional]
        self.output_names = [o.name for o in config.output]
        self.decoupled = config.decoupled

    # --- the request path -------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the request, run it, and return its response; raises NaiadError on failure."""
        return checked(await self.submit(request))

    def submit(self, request: InferRequest) -> asyncio.Future:
        """Check the request and queue it: a future of its response, read with `checked`.
        Raises NaiadError at once when the request is refused. Cancelling the future drops the
        request. A decoupled model must answer such a request with exactly one response.

        This is the request path without a coroutine: the frontends' channel answers from the
        future's callback, at a fraction of a task's cost."""
        if self.decoupled and request.sink is None:
            return asyncio.ensure_future(self._one_response(request))
        start = time.perf_counter_ns()
        try:
            self.check(request)
            queued = self.scheduler.submit(request)
        except NaiadError as e:
            self.stats.record_request(time.perf_counter_ns() - start,
                                      "REJECTED" if isinstance(e, Rejected) else "OTHER")
            raise
        queued.add_done_callback(lambda done: self._count(start, done))
        return queued

    def _count(self, start: int, done: asyncio.Future) -> None:
        """A request in the statistics, once its future is done."""
        failure = None
        if done.cancelled():  # the client went away
            failure = "CANCELED"
        else:
            error = done.exception() or done.result().error
            if error is not None:
                failure = "REJECTED" if isinstance(error, Rejected) else "BACKEND"
        self.stats.record_request(time.perf_counter_ns() - start, failure)

    async def stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | None, bool]]:
        """The responses to a request as the model sends them, each with whether it is the last (the
        last may be None: the model said it is done). A model that is not decoupled sends one. A
        consumer that stops early cancels the request: the model sees it in is_cancelled()."""
        if not self.decoupled:
            yield await self.infer(request), True
            return
        stream = ResponseStream(asyncio.get_running_loop())
        request.sink = stream
        running = asyncio.ensure_future(self.infer(request))
        running.add_done_callback(lambda task: _after_execute(task, stream))
        try:
            while True:
                response, final = await stream.queue.get()
                yield response, final
                if final:
                    return
        finally:
            if not stream.ended:  # the consumer went away first
                stream.cancel()
                running.cancel()  # still queued: it never runs

    async def _one_response(self, request: InferRequest) -> InferResponse:
        responses = [r async for r, _ in self.stream(request) if r is not None]
        for response in responses:
            if response.error is not None:
                raise response.error
        if len(responses) != 1:
            raise InvalidArgument(f"model '{self.name}' is decoupled and sent {len(responses)} responses "
                                  f"to this request; ask for its responses as a stream (gRPC "
                                  f"ModelStreamInfer, or HTTP generate_stream)")
        return responses[0]

    def check(self, request: InferRequest) -> None:
        """Every input known and of its type and shape, none missing, batch sizes agree, requested
        outputs exist. Sets request.batch_size and applies configured reshapes."""
        inputs = request.inputs
        batch = None
        for name, array in inputs.items():
            spec = self.inputs.get(name)
            if spec is None:
                raise InvalidArgument(
                    f"unexpected input '{name}' for model '{self.name}'; its inputs are "
                    f"{', '.join(s.describe() for s in self.inputs.values())}")
            if array.dtype != spec.datatype.numpy:
                raise InvalidArgument(f"input '{name}': expected datatype {spec.datatype}, got "
                                      f"{_datatype_name(array)}")
            shape = array.shape
            if self.max_batch_size:
                if not shape or not shape_matches(spec.dims, shape[1:]):
                    raise InvalidArgument(f"input '{name}': expected shape {spec.shape_text}, got "
                                          f"{_text(shape)}")
                if batch is None:
                    batch = shape[0]
                    if not 1 <= batch <= self.max_batch_size:
                        raise InvalidArgument(
                            f"input '{name}': batch size {batch} is outside 1 to max_batch_size "
                            f"{self.max_batch_size} of model '{self.name}'")
                elif shape[0] != batch:
                    raise InvalidArgument(f"input '{name}': batch size {shape[0]} differs from the "
                                          f"other inputs' {batch}")
            elif not shape_matches(spec.dims, shape):
                raise InvalidArgument(f"input '{name}': expected shape {spec.shape_text}, got "
                                      f"{_text(shape)}")
            if spec.reshape is not None:
                lead = shape[:1] if self.max_batch_size else ()
                inputs[name] = array.reshape(lead + _resolve(spec.reshape, spec.dims, shape[len(lead):]))
        if len(inputs) != len(self.inputs):
            missing = [s for s in self.required if s.name not in inputs]
            if missing:
                raise InvalidArgument(f"missing input {missing[0].describe()} for model '{self.name}'")
        request.batch_size = batch or 1
        wanted = request.output_names
        if wanted is not None:
            for name in wanted:
                if name not in self.output_names:
                    raise InvalidArgument(f"unknown output '{name}' requested from model "
                                          f"'{self.name}'; its outputs are {', '.join(self.output_names)}")

    # --- metadata ---------------------------------------------------------------------------------

    def metadata(self) -> dict:
        """KServe's model metadata: name, versions, platform, and each tensor's datatype and shape."""
        batch = [-1] if self.max_batch_size else []
        return {
            "name": self.name,
            "versions": [self.version_text],
            "platform": self.config.platform or self.config.backend,
            "inputs": [{"name": i.name, "datatype": i.data_type.name, "shape": batch + list(i.dims)}
                       for i in self.config.input],
            "outputs": [{"name": o.name, "datatype": o.data_type.name, "shape": batch + list(o.dims)}
                        for o in self.config.output],
        }


def _after_execute(running: asyncio.Future, stream: ResponseStream) -> None:
    """The model's execute has returned (or the request failed before it ran): a failure ends the
    stream; otherwise the model goes on sending, from wherever it keeps the senders."""
    if running.cancelled():
        error = Unavailable("the request was cancelled")
    else:
        error = running.exception()
        if error is None:
            return
        if not isinstance(error, NaiadError):
            error = Internal(f"{type(error).__name__}: {error}")
    stream.send(InferResponse(error=error), True)


def _resolve(reshape: tuple[int, ...], dims: tuple[int, ...], shape: tuple[int, ...]) -> tuple:
    """The reshape target with its -1 sizes taken, in order, from the request's variable sizes."""
    variable = iter(s for d, s in zip(dims, shape) if d == -1)
    return tuple(next(variable) if r == -1 else r for r in reshape)


def _text(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _datatype_name(array: np.ndarray) -> str:
    found = datatypes.of_array(array)
    return found.name if found else str(array.dtype)


def checked(response: InferResponse) -> InferResponse:
    """A response from ServedModel.submit's future; raises its error when it has one."""
    if response.error is not None:
        raise response.error
    return response
