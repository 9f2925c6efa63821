"""Schedulers: a model version's queue of requests in front of its workers.

The scheduler lives on the event loop: `submit` queues a request and returns a future; whenever a
worker has room and a batch can be formed, the batch goes to it. The DirectScheduler's batches are
single requests (Triton's default scheduler); the DynamicScheduler (dynamic.py) forms real batches.

Every request gets one answer in bounded time: when no instance can take work (worker processes
being started again, threads stuck past their execution timeout), queued requests wait at most
`instance_wait_seconds` for one to come back, and fail at once when none is on its way back.
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from naiad.batching.instances import DEFAULT_WAIT_SECONDS, Pending, Timings, execute
from naiad.daemon.errors import NaiadError, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.statistics import ModelStatistics


class Scheduler:
    # The most batches a worker may hold at once (its own depth may be lower).
    depth = 1
    # How long queued requests wait for an instance while none is available but one is coming back.
    instance_wait_seconds = DEFAULT_WAIT_SECONDS

    def __init__(self, model_name: str, workers: list, stats: ModelStatistics,
                 clock: Callable[[], int] = time.perf_counter_ns):
        self.model_name = model_name
        self.stats = stats
        self.clock = clock  # every time reading, in ns; tests give a clock they advance themselves
        self.loop = asyncio.get_running_loop()
        self.workers = workers
        for worker in workers:
            worker.attach(self._done, self._on_change)
        self.closing = False
        self.drained = asyncio.Event()
        self.no_instance_timer: asyncio.TimerHandle | None = None

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

    @property
    def trouble(self) -> str:
        """Why the model is not ready: each instance that cannot take work, and why."""
        return "; ".join(f"instance '{w.name}': {w.trouble}" for w in self.workers if not w.available)

    def submit(self, request: InferRequest) -> asyncio.Future:
        """Queue the request: a future of its response (a failure is a response with an error).
        Raises Unavailable when the model cannot take it. Cancelling the future drops the request."""
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        if self._none_coming():
            raise self._no_instance_error()
        future = self.loop.create_future()
        self._enqueue(Pending(request, future, self.clock()))
        self._on_arrival()
        self._check_instances()
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
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.closing and self._idle_and_empty():
            self.drained.set()

    # --- when no instance can take work -----------------------------------------------------------

    def _on_change(self) -> None:
        """A worker became available, or stopped being so."""
        self._dispatch()
        self._check_instances()

    def _none_coming(self) -> bool:
        """No instance can take work, and none is on its way back by itself."""
        return not any(w.available or w.expected_back for w in self.workers)

    def _no_instance_error(self, waited: float = 0) -> Unavailable:
        after = f" after waiting {waited:g} s for one" if waited else ""
        return Unavailable(f"model '{self.model_name}' has no instance able to run the request{after}: "
                           f"{self.trouble}")

    def _check_instances(self) -> None:
        """With no instance available: fail what is queued at once when none is coming back (or the
        model is unloading), else after instance_wait_seconds."""
        if any(w.available for w in self.workers) or not self.queued():
            if self.no_instance_timer is not None:
                self.no_instance_timer.cancel()
                self.no_instance_timer = None
            return
        if self.closing or self._none_coming():
            self._fail_queued(self._no_instance_error())
        elif self.no_instance_timer is None:
            self.no_instance_timer = self.loop.call_later(self.instance_wait_seconds, self._waited_too_long)

    def _waited_too_long(self) -> None:
        self.no_instance_timer = None
        if not any(w.available for w in self.workers):
            self._fail_queued(self._no_instance_error(self.instance_wait_seconds))

    def _fail_queued(self, error: NaiadError) -> None:
        """Answer every queued request with `error`."""
        closing, self.closing = self.closing, True  # closing: batches form without waiting to fill
        try:
            while batch := self._next_batch():
                self._deliver(batch, [InferResponse(error=error) for _ in batch])
        finally:
            self.closing = closing
        self._maybe_drained()

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

    async def close(self, timeout: float | None = None) -> None:
        """Let queued and running requests finish, then stop the workers, all within `timeout`
        seconds (None: as long as the requests take, bounded by the model's execution timeout when it
        has one). Requests that no worker can take (every worker process is being restarted) fail at
        once instead of holding it up; those still there at the timeout fail then."""
        self.closing = True
        self._dispatch()  # what waits for company goes now; cancelled requests leave the queue
        if not any(worker.available for worker in self.workers):
            self._fail_queued(Unavailable(f"model '{self.model_name}' is unloading and has no instance "
                                          f"to run the request"))
        deadline = None if timeout is None else self.loop.time() + timeout
        error = Unavailable(f"model '{self.model_name}' is unloading (or the server is stopping) and the "
                            f"request did not finish within {timeout or 0:.3g} s")
        if not self._idle_and_empty():
            try:
                await asyncio.wait_for(self.drained.wait(), timeout)
            except TimeoutError:
                self._fail_queued(error)
        if self.no_instance_timer is not None:
            self.no_instance_timer.cancel()
        left = None if deadline is None else max(deadline - self.loop.time(), 0)
        await asyncio.gather(*(worker.stop(left, error) for worker in self.workers))


class DirectScheduler(Scheduler):
    """Each request runs alone on the next free instance, in arrival order."""

    depth = 2

    def __init__(self, model_name: str, workers: list, stats: ModelStatistics, inline: bool = False,
                 clock: Callable[[], int] = time.perf_counter_ns):
        super().__init__(model_name, workers, stats, clock)
        self.inline = inline
        self.waiting: collections.deque[Pending] = collections.deque()

    def submit(self, request: InferRequest) -> asyncio.Future:
        if not self.inline:
            return super().submit(request)
        # On the event loop nothing runs beside this request: run it now, with no queue.
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        pending = Pending(request, self.loop.create_future(), self.clock())
        responses, timings = execute(self.model_name, self.workers[0].instance, [request])
        self._record([pending], timings)
        pending.future.set_result(responses[0])
        return pending.future

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
