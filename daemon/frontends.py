"""Frontend processes: with `--frontends N` (N > 1), N processes share the gRPC and HTTP ports and do
the wire work (parsing, validation of the message, serialising answers), so that it uses N cores; the
server's own process keeps the models, the schedulers, the shared-memory registry and the metrics,
and answers each frontend's DataPlane calls over a channel (channel.py). It also decodes small gRPC
requests itself while it has time to spare (channel.ForwardBalance).

A frontend that dies is started again; only the requests it held fail (their clients see the
connection close). A frontend whose channel closes (the server is gone) exits. At SIGTERM the server
asks each frontend to stop: it stops taking requests, lets those in flight finish, and exits.

Large tensors pass through shared-memory arenas both ways (arena.py), the rest in the messages.

    python -m naiad.daemon.frontends FD SETTINGS [ARENA SIZE]     # started by the server, not by hand
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys

from naiad.batching.processes import Segment, wait_for_exit
from naiad.daemon import event_loop, grpc_frontend, http_frontend, logs
from naiad.daemon.arena import Arena
from naiad.daemon.channel import (ForwardBalance, ForwardShare, LogSettingsChanged, PlaneServer,
                                  RemoteDataPlane, Started)
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.settings import Settings

log = logging.getLogger(__name__)
_FIRST_RESTART_WAIT = 0.5
# At --exit-timeout-secs the model process answers what is still running with an error; frontends get
# this much longer to send those answers before they stop outright.
ANSWER_GRACE_SECS = 1.0


def fewer_collections() -> None:
    """Every request allocates a few dozen short-lived objects; with the default threshold (700) the
    young-generation collector runs every few requests. Raising it costs memory, not time."""
    gc.set_threshold(50_000, 20, 20)


def default_count() -> int:
    """One frontend process on a machine of two cores or fewer (one process is then the fastest);
    else one for every two cores, at most 8."""
    cores = event_loop.usable_cores()
    return 1 if cores <= 2 else min(8, cores // 2)


def check_ports_free(settings: Settings) -> None:
    """Frontend processes share their ports: make sure no one else holds them first."""
    listeners = ((settings.allow_grpc, "gRPC", settings.grpc_address, settings.grpc_port),
                 (settings.allow_http, "HTTP", settings.http_address, settings.http_port))
    for allowed, what, address, port in listeners:
        if not allowed:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                raise OSError(f"{what} frontend cannot listen on {address}:{port}; is the port in use?")


class FrontendPool:
    """The frontend processes of a server, started, watched and stopped from its event loop."""

    def __init__(self, settings: Settings, plane: DataPlane):
        self.settings = settings
        self.plane = plane
        self.processes: dict[int, subprocess.Popen] = {}
        self.channels: dict[int, PlaneServer] = {}   # each frontend's, for the log settings
        self.stopping = False
        plane.log_listeners.append(self._send_log_settings)
        self.balance = ForwardBalance(self._send_forward_share)

    async def start(self) -> None:
        """Start every frontend and wait until each listens; raises OSError when one cannot."""
        check_ports_free(self.settings)
        await asyncio.gather(*(self._spawn(index) for index in range(self.settings.frontends)))

    async def _spawn(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        encoded = base64.b64encode(pickle.dumps(self.settings)).decode()
        replies = Arena.create()   # large outputs go back through it
        where = [replies.segment.path, str(replies.segment.size)] if replies is not None else []
        process = subprocess.Popen([sys.executable, "-m", "naiad.daemon.frontends", str(theirs.fileno()),
                                    encoded, *where], pass_fds=(theirs.fileno(),))
        theirs.close()
        self.processes[index] = process
        started = loop.create_future()
        arena = None
        server = PlaneServer(self.plane, started, lambda: self._lost(index, process, arena, replies), replies,
                             self.balance)
        await loop.create_connection(lambda: server.protocol, sock=ours)
        self.channels[index] = server
        server.protocol.send(ForwardShare(self.balance.share))   # a frontend started again joins the others
        message: Started = await started
        if message.error is not None:
            raise OSError(message.error)
        arena = message.arena
        if arena is not None:
            self.plane.shared_memory.add_internal(*arena)
        log.info("frontend process %d listening (pid %d)", index, process.pid)

    def _send_log_settings(self, settings: logs.LogSettings) -> None:
        for channel in self.channels.values():
            channel.protocol.send(LogSettingsChanged(settings))

    def _send_forward_share(self, share: float) -> None:
        for channel in self.channels.values():
            channel.protocol.send(ForwardShare(share))

    def _lost(self, index: int, process: subprocess.Popen, arena: tuple[str, int] | None,
              replies: Arena | None) -> None:
        """A frontend's channel closed: it exited, or is about to."""
        if replies is not None:
            replies.close()
        if arena is not None:
            self.plane.shared_memory.remove_internal(arena[0])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(arena[0])   # the frontend removes it at exit, unless it was killed
        if self.stopping or self.processes.get(index) is not process:
            return
        log.error("frontend process %d (pid %d) ended; starting it again", index, process.pid)
        asyncio.ensure_future(self._restart(index, process))

    async def _restart(self, index: int, process: subprocess.Popen) -> None:
        await asyncio.to_thread(process.wait)
        wait = _FIRST_RESTART_WAIT
        while not self.stopping:
            try:
                await self._spawn(index)
                return
            except Exception as e:
                log.error("frontend process %d failed to start again: %s; next try in %.1f s", index, e, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30)

    async def stop(self, timeout: float) -> None:
        """Ask every frontend to finish its requests and exit; kill those still there after timeout."""
        self.stopping = True
        processes = list(self.processes.values())
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        await wait_for_exit(processes, timeout + ANSWER_GRACE_SECS)
        for process in processes:
            if process.poll() is None:
                log.error("frontend process (pid %d) did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()


# --- the frontend process ------------------------------------------------------------------------

async def _serve(fd: int, settings: Settings, replies: Segment | None) -> None:
    loop = asyncio.get_running_loop()
    fewer_collections()
    arena = Arena.create()
    plane = RemoteDataPlane(arena, replies)
    await loop.create_connection(lambda: plane.protocol, sock=socket.socket(fileno=fd))
    grpc_server = http_runner = None
    try:
        if settings.allow_grpc:
            grpc_server = await grpc_frontend.start(plane, settings.grpc_address, settings.grpc_port,
                                                    settings.max_request_bytes, shared_port=True,
                                                    forwarding=plane)
        if settings.allow_http:
            http_runner = await http_frontend.start(plane, settings, shared_port=True,
                                                    shutdown_timeout=settings.exit_timeout_secs + ANSWER_GRACE_SECS)
    except OSError as e:
        plane.protocol.send(Started(str(e)))
        if arena is not None:
            arena.close()
        return
    plane.protocol.send(Started(arena=None if arena is None else (arena.segment.path, arena.segment.size)))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lost = asyncio.ensure_future(plane.lost.wait())
    await asyncio.wait([lost, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    grace = 0 if lost.done() else settings.exit_timeout_secs + ANSWER_GRACE_SECS
    if grpc_server is not None:
        await grpc_server.stop(grace)
    if http_runner is not None:
        await http_runner.cleanup()
    if arena is not None:
        arena.close()


def main(argv: list[str]) -> int:
    fd, settings = int(argv[0]), pickle.loads(base64.b64decode(argv[1]))
    replies = Segment(argv[2], int(argv[3]), create=False) if len(argv) > 2 else None
    # Ctrl-C reaches the whole process group: the server decides when its frontends stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(logs.inherited(), process="frontend")   # the server's settings, from the environment
    spin = event_loop.spin_seconds(settings.frontends, settings.busy_poll_us)
    event_loop.run(_serve(fd, settings, replies), lambda: spin)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
