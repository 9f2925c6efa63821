"""Schedulers: a model version's queue of requests in front of its workers.

The scheduler lives on the event loop: `submit` queues a request and returns a future; whenever a
worker has room and a batch can be formed, the batch goes to it. The DirectScheduler's batches are
single requests (Triton's default scheduler); the DynamicScheduler (dynamic.py) forms real batches.
"""
from __future__ import annotations

import asyncio
import collections
import time

from naiad.batching.instances import Pending, Timings, execute
from naiad.daemon.errors import Unavailable
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.statistics import ModelStatistics


class Scheduler:
    # The most batches a worker may hold at once (its own depth may be lower).
    depth = 1

    def __init__(self, model_name: str, workers: list, stats: ModelStatistics):
        self.model_name = model_name
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.workers = workers
        for worker in workers:
            worker.attach(self._done, self._dispatch)
        self.closing = False
        self.drained = asyncio.Event()

    # --- what subclasses decide -------------------------------------------------------------------

    def _enqueue(self, pending: Pending) -> None:
        raise NotImplementedError

    def _next_batch(self) -> list[Pending] | None:
        """The next batch to run, or None to wait for more requests."""
        raise NotImplementedError

    def queued(self) -> int:
        """Requests waiting, not yet running."""
        raise NotImplementedError

    # --- the common part --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every instance can take work (a worker process being restarted cannot)."""
        return all(worker.available for worker in self.workers)

    async def infer(self, request: InferRequest) -> InferResponse:
        return await self.submit(request)

    def submit(self, request: InferRequest) -> asyncio.Future:
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        future = self.loop.create_future()
        self._enqueue(Pending(request, future, time.perf_counter_ns()))
        self._on_arrival()
        return future

    def _on_arrival(self) -> None:
        self._dispatch()

    def _free_worker(self):
        """An idle worker if there is one, else one with room behind its running batch."""
        found = None
        for worker in self.workers:
            if not worker.available:
                continue
            if worker.in_hand == 0:
                return worker
            if found is None and worker.in_hand < min(self.depth, worker.depth):
                found = worker
        return found

    def _dispatch(self) -> None:
        while (worker := self._free_worker()) is not None:
            batch = self._next_batch()
            if not batch:
                return
            worker.in_hand += 1
            worker.run(batch)

    def _done(self, worker, batch: list[Pending], responses: list[InferResponse],
              timings: Timings) -> None:
        worker.in_hand -= 1
        self._record(batch, timings)
        self._deliver(batch, responses)
        self._dispatch()
        if self.closing and self._idle_and_empty():
            self.drained.set()

    def _deliver(self, batch: list[Pending], responses: list[InferResponse]) -> None:
        for pending, response in zip(batch, responses):
            if not pending.future.done():
                pending.future.set_result(response)

    def _record(self, batch: list[Pending], timings: Timings) -> None:
        self.stats.record_execution(len(batch), sum(p.request.batch_size for p in batch),
                                    [timings.start_ns - p.queued_ns for p in batch],
                                    timings.input_ns, timings.infer_ns, timings.output_ns)

    def _idle_and_empty(self) -> bool:
        return not self.queued() and all(w.in_hand == 0 for w in self.workers)

    async def close(self) -> None:
        """Let queued and running requests finish, then stop the workers. Requests that no worker
        can take (every worker process is being restarted) fail at once instead of holding it up."""
        self.closing = True
        if not any(worker.available for worker in self.workers):
            error = Unavailable(f"model '{self.model_name}' is unloading and has no instance to run "
                                f"the request")
            while batch := self._next_batch():
                self._deliver(batch, [InferResponse(error=error) for _ in batch])
        if not self._idle_and_empty():
            await self.drained.wait()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))


class DirectScheduler(Scheduler):
    """Each request runs alone on the next free instance, in arrival order."""

    depth = 2

    def __init__(self, model_name: str, workers: list, stats: ModelStatistics, inline: bool = False):
        super().__init__(model_name, workers, stats)
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

    def queued(self) -> int:
        return len(self.waiting)
