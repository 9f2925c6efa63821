"""Model instances at work: which instances a model's instance_group asks for, and the workers that
run each instance's batches: a thread per instance, the event loop itself (inline), or a process per
instance (processes.py).

Every worker offers the scheduler the same small surface, used from the event loop: `attach(on_done,
on_available)` once, then `run(batch)`, with `on_done(worker, batch, responses, timings)` called back
when a batch is done and `on_available()` when a worker that was not `available` is again; `in_hand`
(batches given and not done), `depth` (how many it may hold); and a blocking `stop()`.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from naiad.backends.base import InstanceSpec, ModelInstance, failed
from naiad.daemon.errors import Internal, NaiadError, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse, place_outputs
from naiad.daemon.model_config import ModelConfig

log = logging.getLogger(__name__)


def instance_specs(config: ModelConfig, gpu_count: int) -> list[InstanceSpec]:
    """One spec per instance: `count` per CPU group, `count` per listed GPU (or every GPU) per GPU
    group. Raises Unavailable when a group asks for a GPU this machine does not have."""
    specs = []
    for group in config.instance_group:
        if group.kind == "KIND_GPU":
            gpus = group.gpus or list(range(gpu_count))
            if not gpu_count:
                raise Unavailable(f"instance_group '{group.name}' is KIND_GPU but this machine has no "
                                  f"usable NVIDIA GPU; use KIND_CPU (or KIND_AUTO, which falls back "
                                  f"to the CPU)")
            missing = [g for g in gpus if g >= gpu_count]
            if missing:
                raise Unavailable(f"instance_group '{group.name}' asks for GPU {missing[0]}, but this "
                                  f"machine has {gpu_count} GPU(s) (ids 0 to {gpu_count - 1})")
            specs += [InstanceSpec(f"{group.name}_{i}_{gpu}", "KIND_GPU", gpu)
                      for gpu in gpus for i in range(group.count)]
        else:
            specs += [InstanceSpec(f"{group.name}_{i}", "KIND_CPU", 0) for i in range(group.count)]
    return specs


@dataclass(slots=True)
class Pending:
    """A request waiting for its response."""
    request: InferRequest
    future: asyncio.Future | None
    queued_ns: int
    deadline_ns: int = 0      # when it times out in the queue; 0: never
    order: int = 0            # its place in arrival order (preserve_ordering)
    shapes: Any = None        # what requests must share to be batched together


@dataclass(slots=True)
class Timings:
    start_ns: int
    input_ns: int
    infer_ns: int
    output_ns: int


Done = Callable[[Any, list[Pending], list[InferResponse], Timings], None]


def execute(model_name: str, instance: ModelInstance, requests: list[InferRequest]
            ) -> tuple[list[InferResponse], Timings]:
    """Run one batch through an instance: one response per request, never an exception."""
    start = time.perf_counter_ns()
    t1 = t2 = start
    try:
        prepared = instance.prepare(requests)
        t1 = time.perf_counter_ns()
        result = instance.run(prepared)
        t2 = time.perf_counter_ns()
        responses = instance.finish(requests, result)
        place_outputs(requests, responses)
    except NaiadError as e:
        responses = failed(requests, e)
    except Exception as e:  # the model's own failure: fail this batch, keep serving
        log.exception("model '%s' failed a batch of %d request(s)", model_name, len(requests))
        responses = failed(requests, Internal(f"model '{model_name}' failed: {type(e).__name__}: {e}"))
    end = time.perf_counter_ns()
    return responses, Timings(start, t1 - start, t2 - t1, end - t2)


def close_instance(model_name: str, instance: ModelInstance) -> None:
    try:
        instance.close()
    except Exception:
        log.exception("model '%s': closing an instance failed", model_name)


class InProcessWorker:
    """What the thread and inline workers share: an instance object in the server's process."""

    available = True

    def __init__(self, model_name: str, name: str, instance: ModelInstance,
                 loop: asyncio.AbstractEventLoop):
        self.model_name = model_name
        self.name = name
        self.instance = instance
        self.loop = loop
        self.on_done: Done | None = None
        self.in_hand = 0  # read and written on the event loop only

    def attach(self, on_done: Done, on_available) -> None:
        self.on_done = on_done


class Worker(InProcessWorker):
    """An instance with a thread of its own: batches run off the event loop. It may hold two batches,
    so that it starts the next one without waiting for the event loop."""

    depth = 2

    def __init__(self, model_name: str, name: str, instance: ModelInstance,
                 loop: asyncio.AbstractEventLoop):
        super().__init__(model_name, name, instance, loop)
        self.batches: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name=f"naiad-{name}", daemon=True)
        self.thread.start()

    def run(self, batch: list[Pending]) -> None:
        self.batches.put(batch)

    def stop(self) -> None:
        """Finish the batches in hand, then close the instance and end the thread (blocks)."""
        self.batches.put(None)
        self.thread.join()

    def _work(self) -> None:
        while (batch := self.batches.get()) is not None:
            responses, timings = execute(self.model_name, self.instance, [p.request for p in batch])
            self.loop.call_soon_threadsafe(self.on_done, self, batch, responses, timings)
        close_instance(self.model_name, self.instance)


class InlineWorker(InProcessWorker):
    """An instance that runs its batches on the event loop itself, for models that take microseconds:
    a hand-off to a thread costs more than they do (see docs/benchmarks.md). A slow model here stalls
    every request of the server, so it is only used when a model's configuration asks for it."""

    depth = 1

    def run(self, batch: list[Pending]) -> None:
        responses, timings = execute(self.model_name, self.instance, [p.request for p in batch])
        # called back on the next turn of the loop, so that dispatching never recurses
        self.loop.call_soon(self.on_done, self, batch, responses, timings)

    def stop(self) -> None:
        close_instance(self.model_name, self.instance)
