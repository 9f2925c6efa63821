"""The schedulers in-process: real DirectScheduler and DynamicScheduler objects, driven by fake workers
(the worker surface of batching/instances.py) that finish a batch when the test says so, on an event
loop whose time is a fake clock that only the test advances. Nothing here waits for real time."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from naiad.batching.dynamic import DynamicScheduler
from naiad.batching.instances import Pending, Timings, Worker
from naiad.batching.scheduler import DirectScheduler
from naiad.daemon.errors import Rejected, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.model_config import DynamicBatching, ModelConfig, QueuePolicy
from naiad.daemon.statistics import ModelStatistics

MS = 1_000_000  # ns


class FakeClock:
    """Nanoseconds that move only when the test advances them."""

    def __init__(self) -> None:
        self.now = 1_000_000 * MS

    def __call__(self) -> int:
        return self.now


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is the fake clock's: its timers fire when the test advances it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock.now / 1e9


class FakeWorker:
    """A model instance that holds every batch it is given until the test finishes it."""

    def __init__(self, clock: FakeClock, depth: int = 1) -> None:
        self.clock = clock
        self.depth = depth
        self.in_hand = 0
        self.available = True
        self.expected_back = True  # when not available: on its way back (a worker process restarting)
        self.trouble = ""
        self.running: list[list[Pending]] = []
        self.started: list[int] = []  # when each batch in hand started, by the clock
        self.stopped = False

    def attach(self, on_done, on_available) -> None:
        self.on_done = on_done

    def run(self, batch: list[Pending]) -> None:
        self.running.append(batch)
        self.started.append(self.clock())

    def finish(self) -> list[float]:
        """End the oldest batch in hand, each request answered with its own input; its values."""
        batch, start = self.running.pop(0), self.started.pop(0)
        responses = [InferResponse({"OUTPUT0": p.request.inputs["INPUT0"]}) for p in batch]
        self.on_done(self, batch, responses, Timings(start, 0, 0, 0))
        return values(batch)

    async def stop(self, timeout=None, error=None) -> None:
        self.stopped = True


def values(batch: list[Pending]) -> list[float]:
    return [float(p.request.inputs["INPUT0"][0, 0]) for p in batch]


def request(value: float, batch: int = 1, width: int = 2, priority: int = 0,
            timeout_us: int = 0) -> InferRequest:
    infer = InferRequest("m", "1", {"INPUT0": np.full((batch, width), value, np.float32)},
                         priority=priority, timeout_us=timeout_us)
    infer.batch_size = batch  # what ServedModel.check sets
    return infer


def run(body) -> None:
    """Run `await body(clock)` on an event loop that follows a fake clock."""
    clock = FakeClock()
    loop = ClockLoop(clock)
    try:
        loop.run_until_complete(body(clock))
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())  # close() stops workers in threads
        loop.close()


async def settle() -> None:
    """Let every callback that is due now run (the clock does not move)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def advance(clock: FakeClock, ns: int) -> None:
    clock.now += ns
    await settle()


def dynamic(clock: FakeClock, max_batch_size: int = 8, workers: int = 1,
            **batching) -> tuple[DynamicScheduler, list[FakeWorker]]:
    made = [FakeWorker(clock) for _ in range(workers)]
    config = ModelConfig(max_batch_size=max_batch_size, dynamic_batching=DynamicBatching(**batching))
    return DynamicScheduler("m", made, ModelStatistics(), config, clock=clock), made


def result(future: asyncio.Future) -> float:
    response = future.result()
    assert response.error is None, response.error
    return float(response.outputs["OUTPUT0"][0, 0])


# --- forming batches --------------------------------------------------------------------------------

def test_batches_fill_up_to_max_batch_size():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=4)
        futures = [scheduler.submit(request(i)) for i in range(10)]  # all in one turn of the loop
        await settle()
        assert [values(b) for b in worker.running] == [[0, 1, 2, 3]]  # a worker holds one batch
        assert worker.finish() == [0, 1, 2, 3]
        await settle()
        assert worker.finish() == [4, 5, 6, 7]
        await settle()
        assert worker.finish() == [8, 9]
        await settle()
        assert [result(f) for f in futures] == list(range(10))
        assert scheduler.stats.execution_count == 3 and scheduler.stats.inference_count == 10
    run(body)


def test_a_batch_never_exceeds_max_batch_size_in_rows():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=4)
        for i, rows in enumerate((3, 3, 1, 2)):
            scheduler.submit(request(i, batch=rows))
        await settle()
        assert worker.finish() == [0]       # 3 + 3 > 4: the second does not fit
        await settle()
        assert worker.finish() == [1, 2]    # 3 + 1 = 4: full
        await settle()
        assert worker.finish() == [3]
    run(body)


def test_preferred_size_is_cut_at_once_and_the_rest_waits_for_the_delay():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, preferred_batch_size=[2, 4],
                                       max_queue_delay_microseconds=1000)
        futures = [scheduler.submit(request(i)) for i in range(5)]
        await settle()
        assert [values(b) for b in worker.running] == [[0, 1, 2, 3]]  # the largest preferred size
        worker.finish()
        await settle()
        assert not worker.running and not futures[4].done()  # one alone: waits for company
        await advance(clock, 1000 * 1000)
        assert worker.finish() == [4]
        await settle()
        assert [result(f) for f in futures] == [0, 1, 2, 3, 4]
    run(body)


def test_max_queue_delay_is_honoured_at_the_clocks_time():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_queue_delay_microseconds=1000)  # 1 ms
        scheduler.submit(request(0))
        await advance(clock, MS // 2)
        scheduler.submit(request(1))  # joins; the oldest request's wait decides
        await advance(clock, MS // 2 - 1)
        assert not worker.running      # 1 ns short of the delay
        await advance(clock, 1)
        assert worker.finish() == [0, 1]
        assert scheduler.stats.queue.ns == MS + MS // 2  # both queue times, by the injected clock
    run(body)


def test_a_full_batch_does_not_wait_for_the_delay():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=2, max_queue_delay_microseconds=10**9)
        scheduler.submit(request(0))
        scheduler.submit(request(1))
        await settle()
        assert [values(b) for b in worker.running] == [[0, 1]]
    run(body)


def test_different_shapes_are_not_batched_together():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock)
        scheduler.submit(request(0))
        await settle()
        for i, width in enumerate((2, 3, 2, 3), start=1):
            scheduler.submit(request(i, width=width))
        await settle()
        assert worker.finish() == [0]
        await settle()
        assert worker.finish() == [1, 3]  # the oldest's shape, in arrival order
        await settle()
        assert worker.finish() == [2, 4]
    run(body)


# --- priorities and queue policies --------------------------------------------------------------------

def test_a_higher_priority_goes_first_and_out_of_range_means_the_default():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=1, priority_levels=2,
                                       default_priority_level=2)
        scheduler.submit(request(0))
        await settle()
        scheduler.submit(request(1))                 # 0: the default level, 2
        scheduler.submit(request(2, priority=7))     # beyond the levels: the default too
        scheduler.submit(request(3, priority=1))
        scheduler.submit(request(4, priority=2))
        await settle()
        order = []
        while worker.running:
            order += worker.finish()
            await settle()
        assert order == [0, 3, 1, 2, 4]
    run(body)


def test_a_full_queue_rejects_at_once():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=1, priority_levels=2,
                                       default_queue_policy=QueuePolicy(max_queue_size=2),
                                       priority_queue_policy={1: QueuePolicy(max_queue_size=0)})
        scheduler.submit(request(0, priority=2))
        await settle()  # running: not in the queue
        queued = [scheduler.submit(request(i, priority=2)) for i in (1, 2)]
        with pytest.raises(Rejected, match=r"model 'm': the queue of priority level 2 is full "
                                           r"\(max_queue_size 2\)"):
            scheduler.submit(request(3, priority=2))
        unbounded = [scheduler.submit(request(i, priority=1)) for i in range(4, 8)]  # 0: no bound
        while worker.running:
            worker.finish()
            await settle()
        assert [result(f) for f in unbounded + queued] == [4, 5, 6, 7, 1, 2]
    run(body)


def test_a_timeout_rejects_at_its_time():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=1, default_queue_policy=QueuePolicy(
            default_timeout_microseconds=100))
        scheduler.submit(request(0))
        await settle()
        waiting = scheduler.submit(request(1))
        await advance(clock, 100_000 - 1)
        assert not waiting.done()
        await advance(clock, 1)
        error = waiting.result().error
        assert isinstance(error, Rejected)
        assert str(error) == ("model 'm': the request timed out after 100 µs in the queue (priority "
                              "level 1) before an instance was free")
        worker.finish()
        await settle()
        assert not worker.running and scheduler.queued() == 0  # the timed-out request never runs
    run(body)


def test_a_timeout_with_delay_puts_the_request_behind_the_others():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=1, default_queue_policy=QueuePolicy(
            timeout_action="DELAY", allow_timeout_override=True))
        scheduler.submit(request(0))
        await settle()
        early = scheduler.submit(request(1, timeout_us=50))
        await advance(clock, 50_000)
        late = scheduler.submit(request(2))
        await settle()
        assert worker.finish() == [0]
        await settle()
        assert worker.finish() == [2]
        await settle()
        assert worker.finish() == [1]
        await settle()
        assert result(early) == 1 and result(late) == 2  # delayed, not rejected
    run(body)


@pytest.mark.parametrize("override, own_timeout_us, rejected_after_us", [
    (False, 10, 1000),    # not allowed: the request's own timeout is ignored
    (True, 10, 10),       # allowed and shorter: it decides
    (True, 5000, 1000),   # allowed but longer than the model's: the model's decides
])
def test_allow_timeout_override(override, own_timeout_us, rejected_after_us):
    async def body(clock):
        scheduler, _ = dynamic(clock, max_batch_size=1, default_queue_policy=QueuePolicy(
            default_timeout_microseconds=1000, allow_timeout_override=override))
        scheduler.submit(request(0))
        await settle()
        waiting = scheduler.submit(request(1, timeout_us=own_timeout_us))
        await advance(clock, rejected_after_us * 1000 - 1)
        assert not waiting.done()
        await advance(clock, 1)
        assert isinstance(waiting.result().error, Rejected)
    run(body)


# --- cancelled requests and preserve_ordering ------------------------------------------------------

def test_cancelled_requests_are_dropped_from_the_queue():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock)
        scheduler.submit(request(0))
        await settle()
        waiting = [scheduler.submit(request(i)) for i in (1, 2, 3)]
        waiting[1].cancel()
        await settle()
        assert worker.finish() == [0]
        await settle()
        assert worker.finish() == [1, 3]
        await settle()
        waiting[0].cancel()  # cancelled after its batch ran: no effect on the others
        assert result(waiting[2]) == 3 and scheduler.queued() == 0
    run(body)


def test_direct_scheduler_skips_cancelled_requests():
    async def body(clock):
        worker = FakeWorker(clock)
        scheduler = DirectScheduler("m", [worker], ModelStatistics(), clock=clock)
        futures = [scheduler.submit(request(i)) for i in range(3)]
        futures[1].cancel()
        assert worker.finish() == [0]
        assert worker.finish() == [2]
        assert not worker.running and scheduler.queued() == 0
    run(body)


def test_preserve_ordering_holds_a_quick_response_until_the_earlier_one():
    async def body(clock):
        scheduler, workers = dynamic(clock, max_batch_size=1, workers=2, preserve_ordering=True)
        first, second = scheduler.submit(request(0)), scheduler.submit(request(1))
        answered: list[float] = []
        for future in (first, second):
            future.add_done_callback(lambda f: answered.append(result(f)))
        await settle()
        assert [values(w.running[0]) for w in workers] == [[0], [1]]
        workers[1].finish()
        await settle()
        assert not second.done() and list(scheduler.held) == [1]
        workers[0].finish()
        await settle()
        assert answered == [0, 1] and not scheduler.held
    run(body)


def assert_buffer_bounded(scheduler: DynamicScheduler) -> None:
    """The reorder buffer holds only requests in flight, and no response of one that has ended."""
    assert all(scheduler.next_release <= order < scheduler.arrivals for order in scheduler.held)
    assert all(item is None or not item[0].future.done() for item in scheduler.held.values())


def test_preserve_ordering_keeps_no_response_of_a_request_cancelled_while_it_ran():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=4, preserve_ordering=True)
        for round_ in range(50):
            futures = [scheduler.submit(request(i)) for i in range(4)]
            await settle()
            futures[0].cancel()           # the client goes away while its batch runs
            futures[2].cancel()
            await settle()
            assert_buffer_bounded(scheduler)
            worker.finish()
            await settle()
            assert [result(futures[i]) for i in (1, 3)] == [1, 3]
            assert not scheduler.held, round_  # nothing left behind: it used to keep 2 a round
    run(body)


def test_preserve_ordering_drops_a_held_response_whose_request_ends():
    async def body(clock):
        scheduler, workers = dynamic(clock, max_batch_size=1, workers=2, preserve_ordering=True)
        first, second, third = (scheduler.submit(request(i)) for i in range(3))
        await settle()
        workers[1].finish()              # the second is done, and held behind the first
        await settle()
        assert list(scheduler.held) == [1]
        second.cancel()                  # its client goes away meanwhile
        await settle()
        assert scheduler.held == {1: None}
        assert_buffer_bounded(scheduler)
        first.cancel()                   # the first's too, while it runs: nothing holds back
        await settle()
        assert not scheduler.held and scheduler.next_release == 2
        assert [values(w.running[0]) for w in workers] == [[0], [2]]
        workers[1].finish()
        await settle()
        assert result(third) == 2
        workers[0].finish()              # the late response of the cancelled first one
        await settle()
        assert not scheduler.held and scheduler.next_release == 3
    run(body)


def test_preserve_ordering_skips_requests_rejected_in_the_queue():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=1, preserve_ordering=True,
                                       default_queue_policy=QueuePolicy(default_timeout_microseconds=10))
        first = scheduler.submit(request(0))
        await settle()
        timed_out, later = scheduler.submit(request(1)), scheduler.submit(request(2))
        await advance(clock, 10_000)  # the first is running; the two in the queue time out
        assert isinstance(timed_out.result().error, Rejected) and isinstance(later.result().error, Rejected)
        worker.finish()
        await settle()
        assert result(first) == 0 and not scheduler.held and scheduler.next_release == 3
    run(body)


# --- closing ---------------------------------------------------------------------------------------

def test_close_lets_queued_and_running_requests_finish_then_stops_the_workers():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock, max_batch_size=2, max_queue_delay_microseconds=10**9)
        running = [scheduler.submit(request(i)) for i in (0, 1)]  # a full batch: runs at once
        await settle()
        queued = scheduler.submit(request(2))  # would wait for company, 1000 s
        cancelled = scheduler.submit(request(3))
        cancelled.cancel()
        closing = asyncio.ensure_future(scheduler.close())
        await settle()
        with pytest.raises(Unavailable, match="model 'm' is unloading"):
            scheduler.submit(request(4))
        assert worker.finish() == [0, 1]
        await settle()
        assert not closing.done() and not worker.stopped
        assert worker.finish() == [2]  # at close, a batch waits for no more company
        await closing
        assert worker.stopped and [result(f) for f in running] == [0, 1] and result(queued) == 2
    run(body)


def test_close_fails_queued_requests_when_no_worker_can_take_them():
    async def body(clock):
        scheduler, (worker,) = dynamic(clock)
        worker.available = False  # its process is being started again
        queued = scheduler.submit(request(0))
        await settle()
        await scheduler.close()
        error = queued.result().error
        assert isinstance(error, Unavailable) and "is unloading and has no instance" in str(error)
        assert worker.stopped and not worker.running
    run(body)


class StepRecorder:
    """An instance that overlaps batches and records its steps; the first batch's run waits until the
    test lets it go, so the batches behind it are in the worker's hands by then."""

    overlaps = True

    def __init__(self):
        self.steps: list[str] = []
        self.release = threading.Event()

    def prepare(self, requests):
        self.steps.append(f"prepare {requests[0].id}")
        return requests

    def run(self, requests):
        if requests[0].id == "1":
            assert self.release.wait(10)
        self.steps.append(f"run {requests[0].id}")
        return requests

    def finish(self, requests, result):
        self.steps.append(f"finish {requests[0].id}")
        return [InferResponse({"OUT": np.zeros(1)}) for _ in requests]

    def close(self):
        pass


def test_an_overlapping_instance_prepares_the_next_batch_before_this_one_finishes():
    async def body():
        instance = StepRecorder()
        worker = Worker("m", "m_0", instance, asyncio.get_running_loop())
        finished = []
        worker.attach(lambda w, batch, responses, timings: finished.append(batch[0].request.id), lambda: None)
        loop = asyncio.get_running_loop()
        for i in ("1", "2", "3"):
            worker.run([Pending(InferRequest("m", "", {}, id=i), loop.create_future(), 0)])
        instance.release.set()
        await worker.stop(10)
        assert finished == ["1", "2", "3"]
        assert instance.steps == ["prepare 1", "run 1", "prepare 2", "finish 1",
                                  "run 2", "prepare 3", "finish 2", "run 3", "finish 3"]
    asyncio.run(body())
