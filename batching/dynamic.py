"""The dynamic batcher, with the meaning of Triton's `dynamic_batching` section.

Requests wait in one queue per priority level (1 is the highest). When a worker is free, a batch is
formed from the oldest request of the highest level and every later request whose non-batch shapes
match, in priority then arrival order, up to max_batch_size. If a preferred batch size is reached the
batch is cut at the largest one; otherwise an under-full batch waits until its oldest request has
waited max_queue_delay_microseconds. Queue policies bound a level's queue (max_queue_size: rejected at
once) and the time a request may wait (default_timeout_microseconds, or the request's own `timeout`
where allow_timeout_override): then it is rejected, or with timeout_action DELAY it goes behind every
request of its level that has not timed out.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable

from naiad.batching.instances import Pending
from naiad.batching.scheduler import Scheduler
from naiad.daemon.errors import Rejected
from naiad.daemon.inference import InferResponse
from naiad.daemon.model_config import ModelConfig, QueuePolicy
from naiad.daemon.statistics import ModelStatistics


class LevelQueue:
    def __init__(self, level: int, policy: QueuePolicy):
        self.level = level
        self.policy = policy
        self.waiting: collections.deque[Pending] = collections.deque()
        self.delayed: collections.deque[Pending] = collections.deque()  # timed out, action DELAY

    def __len__(self) -> int:
        return len(self.waiting) + len(self.delayed)


class DynamicScheduler(Scheduler):
    depth = 1  # a batch is formed only when a worker is free to run it: batches grow meanwhile

    def __init__(self, model_name: str, workers: list, stats: ModelStatistics, config: ModelConfig,
                 clock: Callable[[], int] = time.perf_counter_ns):
        super().__init__(model_name, workers, stats, clock)
        batching = config.dynamic_batching
        self.max_batch_size = config.max_batch_size
        self.preferred = set(batching.preferred_batch_size)
        self.delay_ns = batching.max_queue_delay_microseconds * 1000
        self.levels = max(batching.priority_levels, 1)
        self.default_level = batching.default_priority_level or 1
        default_policy = batching.default_queue_policy or QueuePolicy()
        self.queues = [LevelQueue(level, batching.priority_queue_policy.get(level, default_policy))
                       for level in range(1, self.levels + 1)]
        self.timeouts = any(q.policy.default_timeout_microseconds or q.policy.allow_timeout_override
                            for q in self.queues)
        self.preserve_ordering = batching.preserve_ordering
        self.arrivals = 0          # requests numbered in arrival order
        self.next_release = 0      # with preserve_ordering: the number whose response goes out next
        # With preserve_ordering, the reorder buffer: for numbers from next_release on, the response
        # of a request still waiting for it, or None for a request that has ended (answered by the
        # queue, or cancelled). It never holds more than the requests in flight.
        self.held: dict[int, tuple[Pending, InferResponse] | None] = {}
        self.timer = None
        self.timer_ns = 0
        self.dispatch_due = False

    # --- queueing ---------------------------------------------------------------------------------

    def _enqueue(self, pending: Pending) -> None:
        request = pending.request
        # Triton's rule: priority 0, or one beyond the model's levels, means the default level
        level = request.priority if 1 <= request.priority <= self.levels else self.default_level
        queue = self.queues[level - 1]
        policy = queue.policy
        if policy.max_queue_size and len(queue) >= policy.max_queue_size:
            raise Rejected(f"model '{self.model_name}': the queue of priority level {level} is full "
                           f"(max_queue_size {policy.max_queue_size}); try again later")
        timeout_us = policy.default_timeout_microseconds
        if request.timeout_us and policy.allow_timeout_override:
            timeout_us = min(timeout_us, request.timeout_us) if timeout_us else request.timeout_us
        if timeout_us:
            pending.deadline_ns = pending.queued_ns + timeout_us * 1000
            self._wake_at(pending.deadline_ns)
        pending.shapes = tuple((name, array.shape[1:]) for name, array in request.inputs.items())
        pending.order = self.arrivals
        self.arrivals += 1
        if self.preserve_ordering:
            pending.future.add_done_callback(lambda future, order=pending.order: self._forget(future, order))
        queue.waiting.append(pending)

    def _on_arrival(self) -> None:
        # Form the batch at the end of this turn of the event loop, not at once: the requests that
        # arrive in the same turn (many, when the server is busy) then go in the same batch.
        if not self.dispatch_due:
            self.dispatch_due = True
            self.loop.call_soon(self._due)

    def _due(self) -> None:
        self.dispatch_due = False
        self._dispatch()

    def queued(self) -> int:
        return sum(len(q) for q in self.queues)

    def _in_order(self):
        for queue in self.queues:
            yield from queue.waiting
            yield from queue.delayed

    # --- forming batches --------------------------------------------------------------------------

    def _next_batch(self) -> list[Pending] | None:
        now = self.clock()
        if self.timeouts:
            self._expire(now)
        batch: list[Pending] = []
        total, cut, full = 0, None, False
        for pending in self._in_order():
            if pending.future.cancelled() or (batch and pending.shapes != batch[0].shapes):
                continue
            size = pending.request.batch_size
            if total + size > self.max_batch_size:
                full = True
                break
            batch.append(pending)
            total += size
            if total in self.preferred:
                cut = len(batch)
            if total == self.max_batch_size:
                full = True
                break
        if not batch:
            self._take([])  # drop cancelled requests
            return None
        if cut is not None:
            batch = batch[:cut]
        elif not full and self.delay_ns and not self.closing:
            oldest = min(p.queued_ns for p in batch)
            if now - oldest < self.delay_ns:
                self._wake_at(oldest + self.delay_ns)
                return None
        self._take(batch)
        return batch

    def _take(self, batch: list[Pending]) -> None:
        """Remove the batch's requests, and cancelled ones, from the queues."""
        chosen = {id(p) for p in batch}
        for queue in self.queues:
            for waiting in (queue.waiting, queue.delayed):
                if any(id(p) in chosen or p.future.cancelled() for p in waiting):
                    kept = [p for p in waiting if id(p) not in chosen and not p.future.cancelled()]
                    waiting.clear()
                    waiting.extend(kept)

    def _expire(self, now: int) -> None:
        """Reject, or delay, the requests that have waited past their timeout; look again at the
        next deadline."""
        upcoming = []
        for queue in self.queues:
            if not any(p.deadline_ns for p in queue.waiting):
                continue
            kept = collections.deque()
            for pending in queue.waiting:
                if not pending.deadline_ns or pending.deadline_ns > now:
                    kept.append(pending)
                    if pending.deadline_ns:
                        upcoming.append(pending.deadline_ns)
                elif queue.policy.timeout_action == "DELAY":
                    pending.deadline_ns = 0
                    queue.delayed.append(pending)
                elif not pending.future.done():
                    waited_us = (now - pending.queued_ns) // 1000
                    pending.future.set_result(InferResponse(error=Rejected(
                        f"model '{self.model_name}': the request timed out after {waited_us} µs in "
                        f"the queue (priority level {queue.level}) before an instance was free")))
            queue.waiting = kept
        if upcoming:
            self._wake_at(min(upcoming))

    def _wake_at(self, when_ns: int) -> None:
        """Look at the queue again at `when_ns` (the scheduler's clock), unless already due sooner.
        The timer is the event loop's: it may fire early (the loop's clock is not ours), so whatever
        it wakes checks the time again."""
        if self.timer is not None and self.timer_ns <= when_ns:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_ns = when_ns
        self.timer = self.loop.call_later(max(when_ns - self.clock(), 0) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.timeouts:
            self._expire(self.clock())
        self._dispatch()

    # --- responses --------------------------------------------------------------------------------

    def _deliver(self, batch: list[Pending], responses: list[InferResponse]) -> None:
        if not self.preserve_ordering:
            return super()._deliver(batch, responses)
        for pending, response in zip(batch, responses):
            # A request that ended while it ran (its client went away) has no one to answer: its
            # place is released by _forget, and its response must not wait in the buffer for it.
            if not pending.future.done():
                self.held[pending.order] = (pending, response)
        self._release()

    def _forget(self, future, order: int) -> None:
        """With preserve_ordering: a request that ends without a response of ours (cancelled, or
        rejected in the queue) must not hold back the ones after it, nor leave its response held."""
        if order >= self.next_release:
            self.held[order] = None
            self._release()

    def _release(self) -> None:
        while self.next_release in self.held:
            item = self.held.pop(self.next_release)
            self.next_release += 1
            if item is not None and not item[0].future.done():
                item[0].future.set_result(item[1])
