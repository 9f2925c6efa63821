"""The event loop of the server's processes: asyncio's, with a selector that keeps short timers short
and, where cores allow, polls for a moment before it sleeps.

- epoll sleeps in whole milliseconds, so asyncio's own loop fires a 100 µs timer (a dynamic batcher's
  max_queue_delay) after a millisecond. Waits shorter than that sleep in select() instead, whose
  timeout has microseconds.
- With frontend processes, requests cross between processes as messages on sockets, and waking a
  process that sleeps in the kernel costs more than the message, and runs it on cold caches after.
  So each process keeps polling for a while before it sleeps: what arrives meanwhile costs neither
  side a wake-up. SPIN_SECONDS is a millisecond because a client that waits for each answer sends its
  next request about a network round trip later: polling that long spares the frontend and the model
  process both of a lone client's wake-ups, which were most of what the hop added to its latency.
  Polling takes a core, so by default it is only done where every such process can have one
  (`spin_seconds`). It also holds the GIL, so the model process does not poll while it has instances
  running on threads of their own: they would wait for the GIL meanwhile.
"""
from __future__ import annotations

import asyncio
import math
import select
import selectors
import os
import time
from collections.abc import Callable, Coroutine

SPIN_SECONDS = 1e-3
_EPOLL_GRANULARITY = 1e-3
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cores(cpu_max: str = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: those it may run on, within its cgroup's CPU limit (a
    container's, which the cores it may run on do not show)."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open(cpu_max) as limit:
            quota, period = limit.read().split()
        return max(1, min(cores, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 limit file, or "max": no limit
        return cores


def spin_seconds(frontends: int, busy_poll_us: int | None = None) -> float:
    """How long the processes of a server with `frontends` frontend processes poll before they
    sleep: `busy_poll_us` when given (--busy-poll-us); else SPIN_SECONDS where each of them (and the
    model process) has a core, with one to spare for everything else, and 0 where not. One process
    alone (`--frontends 1`) never polls: it has no other process to wait for."""
    if frontends <= 1:
        return 0.0
    if busy_poll_us is not None:
        return busy_poll_us * 1e-6
    return SPIN_SECONDS if usable_cores() > frontends + 1 else 0.0


class PreciseSelector(selectors.DefaultSelector):
    """`spin()` says, before each sleep, how long to poll first (seconds; 0: not at all). `waited`: the
    seconds spent waiting for events so far, polling included, which is the loop's spare time. The
    loop's look for new events while it has work ready (a timeout of 0) is work, not a wait: a loop
    that never runs out of work has no spare time, however often it looks."""

    def __init__(self, spin: Callable[[], float] = lambda: 0.0):
        super().__init__()
        self.spin = spin
        self.waited = 0.0

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout <= 0:
            return super().select(0)
        started = time.monotonic()
        try:
            return self._select(timeout)
        finally:
            self.waited += time.monotonic() - started

    def _select(self, timeout: float | None):
        spin = self.spin()
        if spin:
            deadline = time.monotonic() + (spin if timeout is None else min(spin, timeout))
            while not (ready := super().select(0)):
                now = time.monotonic()
                if now >= deadline:
                    break
            if ready:
                return ready
            if timeout is not None:
                timeout = max(timeout - spin, 0)
        if timeout is not None and timeout < _EPOLL_GRANULARITY:
            select.select([self.fileno()], [], [], timeout)  # the epoll's own file: readable on events
            return super().select(0)
        return super().select(timeout)


def waited_seconds() -> float:
    """The running event loop's PreciseSelector.waited; 0 for a loop of another kind."""
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    return selector.waited if isinstance(selector, PreciseSelector) else 0.0


def run(main: Coroutine, spin: Callable[[], float] = lambda: 0.0):
    """asyncio.run(main) on an event loop with a PreciseSelector."""
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(PreciseSelector(spin))) as runner:
        return runner.run(main)
