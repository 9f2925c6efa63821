"""The event loop of the server's processes: asyncio's, with a selector that keeps short timers short
and, where cores allow, polls for a moment before it sleeps.

- epoll sleeps in whole milliseconds, so asyncio's own loop fires a 100 µs timer (a dynamic batcher's
  max_queue_delay) after a millisecond. Waits shorter than that sleep in select() instead, whose
  timeout has microseconds.
- With frontend processes, requests cross between processes as messages on sockets, and waking a
  process that sleeps in the kernel costs more than the message. The next message usually comes
  within microseconds, so each process keeps polling for SPIN_SECONDS before it sleeps: what arrives
  meanwhile costs neither side a wake-up. Polling takes a core, so it is only done where every such
  process can have one (`spin_seconds`). It also holds the GIL, so the model process does not poll
  while it has instances running on threads of their own: they would wait for the GIL meanwhile.
"""
from __future__ import annotations

import asyncio
import select
import selectors
import os
import time
from collections.abc import Callable, Coroutine

SPIN_SECONDS = 100e-6
_EPOLL_GRANULARITY = 1e-3


def spin_seconds(frontends: int) -> float:
    """How long the processes of a server with `frontends` frontend processes poll before they
    sleep: SPIN_SECONDS where each of them (and the model process) has a core, with one to spare for
    everything else; else 0. One process alone (`--frontends 1`) never polls."""
    if frontends <= 1:
        return 0.0
    return SPIN_SECONDS if len(os.sched_getaffinity(0)) > frontends + 1 else 0.0


class PreciseSelector(selectors.DefaultSelector):
    """`spin()` says, before each sleep, how long to poll first (seconds; 0: not at all)."""

    def __init__(self, spin: Callable[[], float] = lambda: 0.0):
        super().__init__()
        self.spin = spin

    def select(self, timeout: float | None = None):
        if timeout is not None and timeout <= 0:
            return super().select(0)
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


def run(main: Coroutine, spin: Callable[[], float] = lambda: 0.0):
    """asyncio.run(main) on an event loop with a PreciseSelector."""
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(PreciseSelector(spin))) as runner:
        return runner.run(main)
