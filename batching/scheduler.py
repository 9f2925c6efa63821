"""Schedulers: a model version's queue of requests and its pool of instances.

The scheduler lives on the event loop: `submit` queues a request and returns a future; whenever an
instance is idle and a batch can be formed, the batch goes to that instance's worker thread. The
DirectScheduler's batches are single requests (Triton's default scheduler).
"""
from __future__ import annotations

import asyncio
import collections
import time

from naiad.backends.base import ModelInstance
from naiad.batching.instances import InlineWorker, Pending, Timings, Worker, execute
from naiad.daemon.errors import Unavailable
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.statistics import ModelStatistics


class Scheduler:
    # How many batches one instance may hold: the one it runs and those waiting behind it. More than
    # one lets an instance start its next batch without a round trip through the event loop.
    depth = 1

    def __init__(self, model_name: str, instances: list[tuple[str, ModelInstance]],
                 stats: ModelStatistics, inline: bool = False):
        self.model_name = model_name
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        worker_class = InlineWorker if inline else Worker
        self.workers = [worker_class(model_name, instance, self._done, self.loop, name)
                        for name, instance in instances]
        self.closing = False
        self.drained = asyncio.Event()

    # --- what subclasses decide -------------------------------------------------------------------

    def _enqueue(self, pending: Pending) -> None:
        raise NotImplementedError

    def _next_batch(self) -> list[Pending] | None:
        """The next batch to run, or None to wait for more requests."""
        raise NotImplementedError

    def _queued(self) -> int:
        raise NotImplementedError

    # --- the common part --------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.submit(request)

    def submit(self, request: InferRequest) -> asyncio.Future:
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        future = self.loop.create_future()
        self._enqueue(Pending(request, future, time.perf_counter_ns()))
        self._dispatch()
        return future

    def _free_worker(self) -> Worker | None:
        """An idle instance if there is one, else one with room behind its running batch."""
        found = None
        for worker in self.workers:
            if worker.in_hand == 0:
                return worker
            if found is None and worker.in_hand < self.depth:
                found = worker
        return found

    def _dispatch(self) -> None:
        while (worker := self._free_worker()) is not None:
            batch = self._next_batch()
            if not batch:
                return
            worker.in_hand += 1
            worker.run(batch)

    def _done(self, worker: Worker, batch: list[Pending], responses: list[InferResponse],
              timings: Timings) -> None:
        worker.in_hand -= 1
        self._record(batch, timings)
        for pending, response in zip(batch, responses):
            if not pending.future.done():
                pending.future.set_result(response)
        self._dispatch()
        if self.closing and self._idle_and_empty():
            self.drained.set()

    def _record(self, batch: list[Pending], timings: Timings) -> None:
        stats = self.stats
        stats.record_execution(len(batch), sum(p.request.batch_size for p in batch),
                               timings.input_ns, timings.infer_ns, timings.output_ns)
        for pending in batch:
            stats.queue.add(timings.start_ns - pending.queued_ns)

    def _idle_and_empty(self) -> bool:
        return not self._queued() and all(w.in_hand == 0 for w in self.workers)

    async def close(self) -> None:
        """Let queued and running requests finish, then stop the instances."""
        self.closing = True
        if not self._idle_and_empty():
            await self.drained.wait()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))


class DirectScheduler(Scheduler):
    """Each request runs alone on the next idle instance, in arrival order."""

    depth = 2

    def __init__(self, model_name: str, instances: list[tuple[str, ModelInstance]],
                 stats: ModelStatistics, inline: bool = False):
        super().__init__(model_name, instances, stats, inline)
        self.inline = inline
        self.waiting: collections.deque[Pending] = collections.deque()

    async def infer(self, request: InferRequest) -> InferResponse:
        if not self.inline:
            return await self.submit(request)
        # On the event loop nothing runs beside this request: run it now, with no queue or future.
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        pending = Pending(request, None, time.perf_counter_ns())
        responses, timings = execute(self.model_name, self.workers[0].instance, [request])
        self._record([pending], timings)
        return responses[0]

    def _enqueue(self, pending: Pending) -> None:
        self.waiting.append(pending)

    def _next_batch(self) -> list[Pending] | None:
        while self.waiting:
            pending = self.waiting.popleft()
            if not pending.future.cancelled():  # the client gave up while it waited
                return [pending]
        return None

    def _queued(self) -> int:
        return len(self.waiting)
