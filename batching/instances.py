"""Model instances at work: which instances a model's instance_group asks for, and the workers that
run each instance's batches: a thread per instance, the event loop itself (inline), or a process per
instance (processes.py).

Every worker offers the scheduler the same small surface, used from the event loop: `attach(on_done,
on_change)` once, then `run(batch)`, with `on_done(worker, batch, responses, timings)` called back
exactly once per batch and `on_change()` whenever `available` changes; `in_hand` (batches given and
not done), `depth` (how many it may hold); `trouble` (why it is not available) and `expected_back`
(whether it is on its way back by itself, such as a worker process being started again); and
`await stop(timeout, error)`, which ends it within `timeout` seconds, answering with `error` the
batches it still holds then.

Model code that runs in the server's process (set-up, batches, finalize) is BaseException-safe: a
model that raises SystemExit, KeyboardInterrupt or CancelledError fails what it was doing, nothing more.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from naiad import backends
from naiad.backends.base import InstanceSpec, ModelFiles, ModelInstance, failed
from naiad.daemon.errors import ConfigError, Internal, NaiadError, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse, place_outputs, plain_parameters
from naiad.daemon.model_config import ModelConfig, timeout_seconds

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

# Without load_timeout_seconds: how long finalize may take at unload, and how long requests wait for
# an instance that is being started again, before the model is given up on.
DEFAULT_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Limits:
    """A model's time bounds, from its configuration's parameters (None: no bound)."""
    execution: float | None = None   # one batch
    load: float | None = None        # one instance's set-up

    @classmethod
    def of(cls, config: ModelConfig) -> "Limits":
        return cls(timeout_seconds(config, "execution_timeout_seconds"),
                   timeout_seconds(config, "load_timeout_seconds"))

    @property
    def wait(self) -> float:
        """How long finalize may take, and requests may wait for an instance to come back."""
        return self.load or DEFAULT_WAIT_SECONDS


def now_timings() -> Timings:
    """The timings of a batch answered without running."""
    return Timings(time.perf_counter_ns(), 0, 0, 0)


class Execution:
    """One batch through an instance in its three steps (prepare, run, finish), each timed. The steps
    may be taken apart: a worker prepares the next batch while this one runs (`overlaps`). A failure in
    any step fails the batch, never raises."""

    def __init__(self, model_name: str, instance: ModelInstance, requests: list[InferRequest]):
        self.model_name, self.instance, self.requests = model_name, instance, requests
        self.value = None            # what the last step gave the next
        self.responses: list[InferResponse] | None = None   # set early by a failure
        self.start_ns = 0           # set when it runs (see run)
        self.spent_ns = [0, 0, 0]   # each step's time

    def prepare(self) -> None:
        self._step(0, self.instance.prepare, self.requests)

    def run(self) -> None:
        # a batch prepared ahead waited for the one before it: that wait counts as queueing
        self.start_ns = time.perf_counter_ns() - self.spent_ns[0]
        self._step(1, self.instance.run, self.value)

    def finish(self) -> tuple[list[InferResponse], Timings]:
        self._step(2, self._responses)
        if self.responses is None:
            self.responses = self.value
        return self.responses, Timings(self.start_ns, *self.spent_ns)

    def _responses(self) -> list[InferResponse]:
        finished = self.instance.finish(self.requests, self.value)
        responses = [plain_parameters(self.model_name, r) for r in finished]
        place_outputs(self.requests, responses)
        return responses

    def _step(self, index: int, step: Callable, *args) -> None:
        if self.responses is None:  # else a step before failed
            began = time.perf_counter_ns()
            try:
                self.value = step(*args)
            except NaiadError as e:
                self.responses = failed(self.requests, e)
            except BaseException as e:  # the model's own failure, even SystemExit: fail this batch only
                log.exception("model '%s' failed a batch of %d request(s)", self.model_name,
                              len(self.requests))
                self.responses = failed(self.requests, Internal(
                    f"model '{self.model_name}' failed: {type(e).__name__}: {e}"))
            self.spent_ns[index] = time.perf_counter_ns() - began


def execute(model_name: str, instance: ModelInstance, requests: list[InferRequest]
            ) -> tuple[list[InferResponse], Timings]:
    """Run one batch through an instance: one response per request, never an exception."""
    execution = Execution(model_name, instance, requests)
    execution.prepare()
    execution.run()
    return execution.finish()


def create_instance(files: ModelFiles, spec: InstanceSpec) -> ModelInstance:
    """The backend's instance (blocking: runs the model's set-up code). Any failure, even SystemExit
    from the model, becomes a ConfigError that says why."""
    try:
        return backends.get(files.config.backend).create_instance(files, spec)
    except ConfigError:
        raise
    except BaseException as e:
        log.exception("model '%s': instance '%s' failed to set up", files.name, spec.name)
        why = e.message if isinstance(e, NaiadError) else f"{type(e).__name__}: {e}"
        raise ConfigError([f"instance '{spec.name}': the model's set-up failed: {why}"]) from None


def close_instance(model_name: str, instance: ModelInstance) -> None:
    try:
        instance.close()
    except BaseException:  # even SystemExit from finalize: the instance is gone either way
        log.exception("model '%s': closing an instance failed", model_name)


def in_thread(loop: asyncio.AbstractEventLoop, function: Callable, *args, name: str) -> asyncio.Future:
    """Run blocking model code on a daemon thread of its own; a future of its result. Unlike the event
    loop's executor, a call that never returns holds up nothing else, not even the server's exit."""
    future = loop.create_future()

    def work() -> None:
        try:
            result, error = function(*args), None
        except BaseException as e:  # never SystemExit into the event loop: it would stop the server
            result, error = None, e if isinstance(e, Exception) else RuntimeError(f"{type(e).__name__}: {e}")

        def settle() -> None:
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)
        call_soon_threadsafe(loop, settle)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable, *args) -> None:
    """Tell the event loop from another thread; nothing when it has closed (the server has ended)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


async def create_in_thread(files: ModelFiles, spec: InstanceSpec, loop: asyncio.AbstractEventLoop,
                           limits: Limits) -> ModelInstance:
    """create_instance on a thread of its own, within the load timeout. A thread cannot be stopped:
    one that is still setting up at the timeout is left to finish, and its instance closed then."""
    future = in_thread(loop, create_instance, files, spec, name=f"naiad-load-{spec.name}")
    try:
        return await asyncio.wait_for(asyncio.shield(future), limits.load)
    except BaseException as e:
        future.add_done_callback(lambda done: _close_late(files.name, done, loop))
        if isinstance(e, TimeoutError):
            raise ConfigError([f"instance '{spec.name}': the model's set-up (initialize) did not finish "
                               f"within load_timeout_seconds ({limits.load:g} s)"]) from None
        raise


def _close_late(model_name: str, done: asyncio.Future, loop: asyncio.AbstractEventLoop) -> None:
    if not done.cancelled() and done.exception() is None:
        log.warning("model '%s': an instance finished its set-up after its load was given up; closing it",
                    model_name)
        in_thread(loop, close_instance, model_name, done.result(), name="naiad-close")


class InProcessWorker:
    """What the thread and inline workers share: an instance object in the server's process."""

    def __init__(self, model_name: str, name: str, instance: ModelInstance,
                 loop: asyncio.AbstractEventLoop, limits: Limits = Limits()):
        self.model_name = model_name
        self.name = name
        self.instance = instance
        self.loop = loop
        self.limits = limits
        self.on_done: Done | None = None
        self.on_change: Callable[[], None] | None = None
        self.in_hand = 0  # read and written on the event loop only
        self.available = True
        self.trouble = ""
        self.expected_back = False  # nothing brings an in-process instance back but itself

    def attach(self, on_done: Done, on_change: Callable[[], None]) -> None:
        self.on_done, self.on_change = on_done, on_change

    async def _close(self, timeout: float | None) -> bool:
        """Close the instance on a thread of its own within the timeout; False when it did not end."""
        closing = in_thread(self.loop, close_instance, self.model_name, self.instance,
                            name=f"naiad-close-{self.name}")
        try:
            await asyncio.wait_for(closing, self.limits.wait if timeout is None else timeout)
            return True
        except TimeoutError:
            return False


@dataclass(eq=False)
class _Job:
    """A batch handed to a thread worker; answered once, by its result or by a timeout."""
    batch: list[Pending]
    answered: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    execution: Execution | None = field(default=None, repr=False)   # once its inputs are prepared


class Worker(InProcessWorker):
    """An instance with a thread of its own: batches run off the event loop. It may hold two batches,
    so that it starts the next one without waiting for the event loop.

    A thread cannot be stopped. A batch that runs past execution_timeout_seconds is answered with an
    error at the timeout, with the batch queued behind it, and the instance is not available (so the
    model is not ready) until the call returns, if it ever does."""

    depth = 2
    alive = 0   # how many such threads run in this process (daemon/event_loop.py asks)

    def __init__(self, model_name: str, name: str, instance: ModelInstance,
                 loop: asyncio.AbstractEventLoop, limits: Limits = Limits()):
        super().__init__(model_name, name, instance, loop, limits)
        Worker.alive += 1
        self.held: list[_Job] = []            # handed to the thread and not answered
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False                 # the thread took the stop sign (read on the thread only)
        self.ended = loop.create_future()     # the thread closed the instance and ended
        self.thread = threading.Thread(target=self._work, name=f"naiad-{name}", daemon=True)
        self.thread.start()

    def run(self, batch: list[Pending]) -> None:
        job = _Job(batch)
        self.held.append(job)
        self.jobs.put(job)

    def _work(self) -> None:
        ahead = None   # the next batch, prepared while the one before it ran
        while (job := ahead or self._next_job(wait=True)) is not None:
            ahead = None
            if job.answered:  # failed meanwhile, behind a batch that ran out of time
                continue
            if self.limits.execution:  # the clock starts when the batch does, not when it queued
                call_soon_threadsafe(self.loop, self._started, job)
            execution = job.execution or self._prepared(job)
            execution.run()
            # An instance that overlaps batches (a GPU's upload beside its compute) prepares the next
            # batch in hand before this one finishes.
            ahead = self._next_job(wait=False) if self.instance.overlaps else None
            if ahead is not None:
                ahead.execution = self._prepared(ahead)
            responses, timings = execution.finish()
            call_soon_threadsafe(self.loop, self._finished, job, responses, timings)
        close_instance(self.model_name, self.instance)
        call_soon_threadsafe(self.loop, self._ended)

    def _next_job(self, wait: bool) -> _Job | None:
        """The next batch to run; None once the worker is told to stop, or (not waiting) when none is
        in hand."""
        while not self.stopping:
            try:
                job = self.jobs.get(block=wait)
            except queue.Empty:
                return None
            if job is None:
                self.stopping = True
            elif not job.answered:  # else it failed already, behind a batch that ran out of time
                return job
        return None

    def _prepared(self, job: _Job) -> Execution:
        execution = Execution(self.model_name, self.instance, [p.request for p in job.batch])
        execution.prepare()
        return execution

    def _ended(self) -> None:
        Worker.alive -= 1
        if not self.ended.done():
            self.ended.set_result(None)

    def _started(self, job: _Job) -> None:
        if not job.answered:
            job.timer = self.loop.call_later(self.limits.execution, self._overdue, job)

    def _finished(self, job: _Job, responses: list[InferResponse], timings: Timings) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if job.answered:  # it came back after its timeout: the instance serves again
            if not self.available and not self.held:
                log.warning("model '%s': instance '%s' returned from a batch that ran out of time; "
                            "it serves again", self.model_name, self.name)
                self.available, self.trouble = True, ""
                self.on_change()
            return
        job.answered = True
        self.held.remove(job)
        self.on_done(self, job.batch, responses, timings)

    def _overdue(self, job: _Job) -> None:
        if job.answered:
            return
        seconds = self.limits.execution
        log.error("model '%s': instance '%s' exceeded execution_timeout_seconds (%g s); its batch fails, "
                  "and the instance is not ready until the call returns (a thread cannot be stopped)",
                  self.model_name, self.name, seconds)
        self.available = False
        self.trouble = (f"it is stuck: a batch has run longer than execution_timeout_seconds "
                        f"({seconds:g} s) and has not returned (a thread cannot be stopped)")
        self._fail_held(Unavailable(f"model '{self.model_name}' exceeded its execution timeout of "
                                    f"{seconds:g} s (parameters.execution_timeout_seconds) on instance "
                                    f"'{self.name}'; the instance is not ready until the call returns"))
        self.on_change()

    def _fail_held(self, error: NaiadError) -> None:
        held, self.held = self.held, []
        for job in held:
            job.answered = True
            if job.timer is not None:
                job.timer.cancel()
            self.on_done(self, job.batch, failed([p.request for p in job.batch], error), now_timings())

    async def stop(self, timeout: float | None = None, error: NaiadError | None = None) -> None:
        """Finish the batches in hand, then close the instance and end the thread, within `timeout`
        (None: the model's finalize bound); past it, answer what is left with `error` and leave the
        thread behind (it closes the instance if it ever returns)."""
        self.jobs.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self.ended), self.limits.wait if timeout is None else timeout)
        except TimeoutError:
            log.error("model '%s': instance '%s' did not finish in time at unload; its thread is left "
                      "behind (a thread cannot be stopped)", self.model_name, self.name)
            self._fail_held(error or Unavailable(f"model '{self.model_name}' is unloading"))


class InlineWorker(InProcessWorker):
    """An instance that runs its batches on the event loop itself, for models that take microseconds:
    a hand-off to a thread costs more than they do (see docs/benchmarks.md). A slow model here stalls
    every request of the server, so it is only used when a model's configuration asks for it; nothing
    can time out a batch that runs on the event loop."""

    depth = 1

    def run(self, batch: list[Pending]) -> None:
        responses, timings = execute(self.model_name, self.instance, [p.request for p in batch])
        # called back on the next turn of the loop, so that dispatching never recurses
        self.loop.call_soon(self.on_done, self, batch, responses, timings)

    async def stop(self, timeout: float | None = None, error: NaiadError | None = None) -> None:
        if not await self._close(timeout):
            log.error("model '%s': instance '%s': finalize did not return in time; left behind",
                      self.model_name, self.name)
