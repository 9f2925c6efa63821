"""The servers' event loop (daemon/event_loop.py), in-process: short timers stay short, messages wake
it whether it polls or sleeps, and the polling policy."""
from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time

from naiad.daemon import event_loop


def run_on_loop(coroutine_function, spin: float = 0.0):
    return event_loop.run(coroutine_function(), lambda: spin)


def test_a_timer_shorter_than_a_millisecond_is_not_rounded_up_to_one():
    # asyncio's own epoll loop sleeps whole milliseconds: a 200 µs sleep takes over 1 ms there
    async def sleeps() -> list[float]:
        taken = []
        for _ in range(15):
            start = time.perf_counter()
            await asyncio.sleep(200e-6)
            taken.append(time.perf_counter() - start)
        return taken

    taken = run_on_loop(sleeps)
    assert min(taken) >= 200e-6
    assert statistics.median(taken) < 900e-6, taken


def test_a_message_is_read_whether_the_loop_polls_or_sleeps():
    async def round_trips() -> int:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        got = 0
        for pause in (0, 50e-6, 2e-3, 20e-3):  # inside and beyond the polling window
            loop.call_later(pause, theirs.send, b"x")
            assert await asyncio.wait_for(loop.sock_recv(ours, 1), 5) == b"x"
            got += 1
        ours.close()
        theirs.close()
        return got

    assert run_on_loop(round_trips) == 4
    assert run_on_loop(round_trips, spin=event_loop.SPIN_SECONDS) == 4


def test_only_servers_with_a_core_for_each_process_poll():
    cores = event_loop.usable_cores()
    assert event_loop.spin_seconds(1) == 0  # one process: nothing to wait for from another
    assert event_loop.spin_seconds(cores) == 0  # more processes than cores
    if cores >= 4:
        assert event_loop.spin_seconds(cores - 2) == event_loop.SPIN_SECONDS


def test_a_containers_cpu_limit_counts_as_its_cores(tmp_path):
    cores = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert event_loop.usable_cores(str(cpu_max)) == cores
    cpu_max.write_text("150000 100000\n")  # one and a half CPUs: two cores, in part
    assert event_loop.usable_cores(str(cpu_max)) == min(2, cores)
    cpu_max.write_text("1000 100000\n")
    assert event_loop.usable_cores(str(cpu_max)) == 1
    assert event_loop.usable_cores(str(tmp_path / "absent")) == cores


def test_busy_poll_us_overrides_the_core_count():
    cores = event_loop.usable_cores()
    assert event_loop.spin_seconds(cores, busy_poll_us=250) == 250e-6
    assert event_loop.spin_seconds(2, busy_poll_us=0) == 0
    assert event_loop.spin_seconds(1, busy_poll_us=250) == 0  # one process still never polls


def test_the_time_spent_waiting_for_events_is_counted():
    async def sleeps_then_works() -> tuple[float, float]:
        before = event_loop.waited_seconds()
        await asyncio.sleep(0.05)
        waited = event_loop.waited_seconds() - before
        before = event_loop.waited_seconds()
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:   # busy, without yielding to the loop
            pass
        await asyncio.sleep(0)
        while_busy = event_loop.waited_seconds() - before
        before = event_loop.waited_seconds()
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:   # busy, yielding: each turn of the loop has work ready
            await asyncio.sleep(0)
        return waited, while_busy, event_loop.waited_seconds() - before

    for spin in (0.0, event_loop.SPIN_SECONDS):
        waited, while_busy, while_yielding = run_on_loop(sleeps_then_works, spin)
        assert 0.04 <= waited < 0.2, waited
        assert while_busy < 0.01, while_busy
        assert while_yielding < 0.001, while_yielding
