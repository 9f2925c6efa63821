"""Model instances in processes of their own (the default for Python models): a CPU-bound model with
count 2 uses two cores, and a model that crashes the interpreter takes down only its process.

Parent and child talk over pipes with small messages of the types below (daemon/messages.py); a
batch's tensors travel through two shared memory files per instance, both owned by the parent: inputs
(parent writes, the model reads them in place) and outputs (the child writes, the parent copies them
out). Besides one batch at a time, the pipes carry a decoupled model's responses as it sends them
(tensors inside the message) and the model's BLS calls to other models, several in flight, matched by
id. A process that dies fails only the batch and the streams it held; it is started again, and the
model's readiness says so until it is back.

Three pipes, so that each message wakes the thread that waits for it and no other: the main pipe to
the child's main thread, which runs the batches (batches, and the answers to BLS calls the main thread
waits for); the side pipe to its reader thread (what must reach the model while a batch runs: other
answers, cancelled streams); the reply pipe back, which the parent's event loop watches.

Shared memory is reserved before it is used (posix_fallocate): where /dev/shm is too small, the batch
that needed the room fails with a message that says so, instead of the server dying of SIGBUS. A
segment grown past KEEP_SEGMENT_BYTES for one large batch is given back after it.

Each worker's life (start, restart with backoff, stop) runs on the event loop and is owned by its
ProcessWorker; a child process and the parent's ends of its pipes are owned by one _Child, which
closes each descriptor exactly once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import count
from typing import Callable, NamedTuple

import numpy as np

from naiad.backends.base import InstanceSpec, ModelFiles, failed, to_host
from naiad.backends.bls import Models, serve_call
from naiad.batching.instances import Done, Limits, Pending, Timings, now_timings
from naiad.daemon import datatypes
from naiad.daemon.errors import ConfigError, Internal, NaiadError, Unavailable
from naiad.daemon.inference import (InferResponse, ResponseStream, pack_response, pack_tensors, place_outputs,
                                    unpack_request, unpack_tensors)
from naiad.daemon.messages import Codec

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
FIRST_SEGMENT_BYTES = 1 << 20
KEEP_SEGMENT_BYTES = 16 << 20   # a segment grown past this for one batch is given back after it
START_SECONDS = 60.0            # how long a new worker process may take to start Python and naiad
_LENGTH = struct.Struct("<Q")
_READ_BYTES = 1 << 16
_names = count()


# --- the messages: server to worker process --------------------------------------------------------

class Setup(NamedTuple):
    files: ModelFiles
    spec: InstanceSpec


class Batch(NamedTuple):
    # per request: (model, version, id, parameters, requested outputs, batch size, stream key or None,
    # input descriptions); a stream key names the request's stream for a decoupled model's responses
    requests: list[tuple]
    segments: tuple | None = None   # (inputs path, size, outputs path, size) when they changed


class Segments(NamedTuple):
    """The segments changed after a batch: map these, let the old ones go."""
    segments: tuple


class StreamCancelled(NamedTuple):
    """The client of a decoupled model's request went away."""
    key: int


class CallAnswer(NamedTuple):
    """An answer to the model's BLS call `id` (the last one with final): a packed response
    (pack_response), its outputs in `outputs` (share_tensors), or None."""
    id: int
    response: tuple | None
    final: bool
    outputs: "list | SharedTensors" = ()


# --- the messages: worker process to server --------------------------------------------------------

class SettingUp(NamedTuple):
    """The process has started and begins the model's set-up (only that is timed)."""


class SetUp(NamedTuple):
    problems: list[str] | None = None   # None: the model is ready


class BatchDone(NamedTuple):
    responses: list[dict]
    timings: tuple
    inline: bytes | None = None     # the outputs, when they did not fit the output segment


class Streamed(NamedTuple):
    """A decoupled model's response on stream `key` (tensors inside)."""
    key: int
    response: InferResponse | None
    final: bool


class Call(NamedTuple):
    """The model calls another model (BLS): a packed request (pack_request), its inputs in `inputs`
    (share_tensors). `on_main`: the main thread waits for the answer; it goes on the main pipe."""
    id: int
    request: tuple
    inputs: "list | SharedTensors"
    stream: bool
    timeout: float | None
    on_main: bool


CODEC = Codec(Setup, Batch, Segments, StreamCancelled, CallAnswer, SettingUp, SetUp, BatchDone, Streamed,
              Call)


# --- pipes and shared memory, used on both sides ---------------------------------------------------

def send(fd: int, message: tuple) -> None:
    data = CODEC.dumps(message)
    payload = _LENGTH.pack(len(data)) + data
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


class Receiver:
    """Length-prefixed messages from a pipe: `read` takes what the pipe holds, `messages` takes out
    the complete ones."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def read(self) -> bool:
        """One read of what the pipe holds; False at its end (the other side is gone)."""
        chunk = os.read(self.fd, _READ_BYTES)
        self.buffer += chunk
        return bool(chunk)

    def messages(self):
        while len(self.buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer)
            end = _LENGTH.size + length
            if len(self.buffer) < end:
                return
            message = CODEC.loads(memoryview(self.buffer)[_LENGTH.size:end])
            del self.buffer[:end]
            yield message

    def receive(self):
        """The next message, waiting for it (blocking pipe); None at the end of the pipe."""
        while True:
            for message in self.messages():
                return message
            if not self.read():
                return None

    def poll(self, seconds: float) -> bool:
        """Whether the pipe has something to read within `seconds`, polled for without sleeping;
        between polls, the core goes to any other thread that wants it."""
        deadline = time.monotonic() + seconds
        while not self.buffer and not self.poller.poll(0):
            if time.monotonic() >= deadline:
                return False
            os.sched_yield()
        return True


class Segment:
    """A shared-memory file, mapped. One this process creates has its memory reserved at once: a full
    /dev/shm is then an OSError here, never a SIGBUS at a later write."""

    def __init__(self, path: str, size: int, create: bool):
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            if create:
                os.unlink(path)
            raise
        finally:
            os.close(fd)
        self.path, self.size = path, size

    @classmethod
    def new(cls, size: int) -> "Segment":
        return cls(os.path.join(SHM_DIR, f"naiad-{os.getpid()}-{next(_names)}"), size, create=True)

    def close(self, unlink: bool = False) -> None:
        try:
            self.map.close()
        except BufferError:  # a model still holds an array of it; the mapping goes with that array
            pass
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


# A BLS call's tensors (or its answer's) that take more than this cross in a shared-memory file of their
# own; smaller ones travel inside the message.
SHARE_TENSOR_BYTES = 64 << 10


@dataclass(slots=True)
class SharedTensors:
    """Tensors in a shared-memory file of their own: one side writes it, the other maps and unlinks it
    (a file left by a process that died is removed by remove_stale_segments)."""
    path: str
    size: int
    described: list[tuple]


def share_tensors(tensors: dict) -> list | SharedTensors:
    """Tensors for a message: packed (pack_tensors) when small (or when /dev/shm has no room for
    them), else written into a new shared-memory file."""
    named = [(name, to_host(tensor)) for name, tensor in tensors.items()]
    raws = [tensor_bytes(array) for _, array in named]
    size = layout_size(raws)
    if size <= SHARE_TENSOR_BYTES:
        return pack_tensors(dict(named))
    try:
        segment = Segment.new(size)
    except OSError:
        return pack_tensors(dict(named))
    try:
        described, _ = write_tensors(segment, named, raws)
    finally:
        segment.close()
    return SharedTensors(segment.path, size, described)


def take_tensors(tensors: list | SharedTensors) -> dict:
    """The tensors of a message, read-only; shared ones as views of their file, which is unlinked now
    (the mapping lasts as long as the arrays do)."""
    if not isinstance(tensors, SharedTensors):
        return unpack_tensors(tensors)
    segment = Segment(tensors.path, tensors.size, create=False)
    os.unlink(tensors.path)
    return dict(read_tensor(segment.map, d, copy=False) for d in tensors.described)


def remove_stale_segments() -> None:
    """Remove the shared-memory files of naiad servers that are gone (killed before cleaning up)."""
    for name in os.listdir(SHM_DIR):
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "naiad" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, name))
        except PermissionError:  # alive, another user's
            pass


def shm_space_error(model_name: str, what: str, needed: int, error: OSError) -> Unavailable:
    """The error of a batch whose tensors do not fit the shared memory this machine has left."""
    try:
        stats = os.statvfs(SHM_DIR)
        room = (f"{SHM_DIR} has {stats.f_bavail * stats.f_frsize / 2**20:.1f} MiB free of "
                f"{stats.f_blocks * stats.f_frsize / 2**20:.1f} MiB")
    except OSError:
        room = f"{SHM_DIR} cannot hold it"
    return Unavailable(f"model '{model_name}': {what} need {needed / 2**20:.1f} MiB of shared memory and "
                       f"{room} ({error.strerror or error}); make {SHM_DIR} larger (docker run "
                       f"--shm-size, or a memory-backed emptyDir in Kubernetes) or send smaller batches")


def tensor_bytes(array: np.ndarray) -> int | bytes:
    """How a tensor is laid out: its size for fixed-size types, its serialized bytes for BYTES."""
    return datatypes.to_raw(array) if array.dtype == object or array.dtype.kind in "SU" else array.nbytes


def _aligned(n: int) -> int:
    return (n + 63) & ~63


def layout_size(raws: list) -> int:
    """The bytes a list of tensors takes in a segment (see tensor_bytes)."""
    return sum(_aligned(raw if isinstance(raw, int) else len(raw)) for raw in raws)


def write_tensors(segment: Segment, named: list[tuple[str, np.ndarray]], raws: list, offset: int = 0
                  ) -> tuple[list[tuple], int]:
    """Copy tensors into the segment from `offset`; their descriptions and the next free offset."""
    described = []
    for (name, array), raw in zip(named, raws):
        datatype = datatypes.of_array(array).name
        if isinstance(raw, int):
            np.ndarray(array.shape, array.dtype, buffer=segment.map, offset=offset)[...] = array
            size = raw
        else:
            segment.map[offset:offset + len(raw)] = raw
            size = len(raw)
        described.append((name, datatype, array.shape, offset, size))
        offset += _aligned(size)
    return described, offset


def read_tensor(buffer, description, copy: bool) -> tuple[str, np.ndarray]:
    name, datatype_name, shape, offset, size = description
    datatype = datatypes.BY_NAME[datatype_name]
    if datatype is datatypes.BYTES:
        raw = memoryview(buffer)[offset:offset + size]
        return name, datatypes.bytes_from_raw(name, raw, datatypes.element_count(shape)).reshape(shape)
    array = np.ndarray(shape, datatype.numpy, buffer=buffer, offset=offset)
    if copy:
        return name, array.copy()
    array.flags.writeable = False
    return name, array


# --- the parent's side ---------------------------------------------------------------------------

def _describe_exit(status: int | None) -> str:
    if status is None:
        return "it stopped answering"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


async def wait_for_exit(processes: list[subprocess.Popen], timeout: float) -> None:
    """Until every process has exited, or `timeout` seconds have passed (without blocking the loop)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class _Child:
    """A worker process and the parent's ends of its three pipes (main, side, reply). Each descriptor
    is closed once, by `close` (the main and side pipes possibly earlier, by `end_requests`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.main_fd = self.side_fd = self.reply_fd = -1
        self.watched = False
        pipes: list[tuple[int, int]] = []
        try:
            for _ in range(3):
                pipes.append(os.pipe())
            (main_read, main_write), (side_read, side_write), (reply_read, reply_write) = pipes
            child_ends = (main_read, side_read, reply_write)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "naiad.batching.worker_process", *map(str, child_ends)],
                pass_fds=child_ends)
        except BaseException:
            for pipe in pipes:
                for fd in pipe:
                    os.close(fd)
            raise
        for fd in child_ends:
            os.close(fd)
        self.main_fd, self.side_fd, self.reply_fd = main_write, side_write, reply_read
        os.set_blocking(reply_read, False)
        self.replies = Receiver(reply_read)

    def watch(self, on_readable: Callable[[], None]) -> None:
        self.unwatch()
        self.loop.add_reader(self.reply_fd, on_readable)
        self.watched = True

    def unwatch(self) -> None:
        if self.watched:
            self.loop.remove_reader(self.reply_fd)
            self.watched = False

    def read(self) -> bool:
        """What the reply pipe holds; False at its end (the process exited)."""
        try:
            return self.replies.read()
        except BlockingIOError:
            return True
        except OSError:
            return False

    def send(self, message) -> None:
        """To the main thread: a message it waits for."""
        send(self.main_fd, message)

    def send_side(self, message) -> None:
        """To the reader thread: a message for the model while a batch may run."""
        send(self.side_fd, message)

    def end_requests(self) -> None:
        """Close the main and side pipes: the process finishes its batch, runs finalize and exits."""
        for fd in (self.main_fd, self.side_fd):
            if fd >= 0:
                os.close(fd)
        self.main_fd = self.side_fd = -1

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        self.unwatch()
        self.end_requests()
        if self.reply_fd >= 0:
            os.close(self.reply_fd)
            self.reply_fd = -1

    async def exited(self, timeout: float) -> int | None:
        """Its exit status once it has exited, waiting up to `timeout` s; None if it has not."""
        await wait_for_exit([self.process], timeout)
        return self.process.poll()

    def end(self) -> int:
        """Kill it if it still runs, reap it, close the pipes: its exit status."""
        self.kill()
        status = self.process.wait()  # at once after SIGKILL
        self.close()
        return status


class ProcessWorker:
    """One instance in a child process (`python -m naiad.batching.worker_process`). Made on the event
    loop; `await start()` sets it up, `await stop()` ends it."""

    depth = 1  # one batch at a time: its tensors occupy the shared memory until it is done

    def __init__(self, files: ModelFiles, spec: InstanceSpec, loop: asyncio.AbstractEventLoop,
                 limits: Limits = Limits(), models: Models | None = None):
        self.files = files
        self.models = models    # where the model's BLS calls go
        self.spec = spec
        self.model_name = files.name
        self.name = spec.name
        self.loop = loop
        self.limits = limits
        self.on_done: Done | None = None
        self.on_change: Callable[[], None] | None = None
        self.in_hand = 0
        self.available = False
        self.trouble = "it is starting"
        self.expected_back = True
        self.stopping = False
        self.child: _Child | None = None
        self.batch: list[Pending] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cause = ""     # why we ended the process ourselves, for the log and the batch's error
        self.recovering: asyncio.Task | None = None
        self.inputs: Segment | None = None
        self.outputs: Segment | None = None
        self.sent_segments: tuple | None = None
        self.streams: dict[int, ResponseStream] = {}     # key -> a decoupled request's sink, until final
        self.stream_keys = count()
        self.calls: set[asyncio.Future] = set()        # the model's BLS calls being served

    # --- start and restart ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process and set the model up in it; raises ConfigError with the reasons when it
        cannot. Nothing is left running when it fails."""
        try:
            self.inputs = Segment.new(FIRST_SEGMENT_BYTES)
            self.outputs = Segment.new(FIRST_SEGMENT_BYTES)
        except OSError as e:
            self._drop_segments()
            error = shm_space_error(self.model_name, "its inputs and outputs", 2 * FIRST_SEGMENT_BYTES, e)
            raise ConfigError([f"instance '{self.name}': {error.message}"]) from None
        try:
            self.child = await self._spawn()
        except BaseException:
            self._drop_segments()
            raise

    async def _spawn(self) -> _Child:
        """A new process with the model set up in it, within load_timeout_seconds; raises ConfigError
        with the model's own reasons when it cannot, and leaves no process behind."""
        try:
            child = _Child(self.loop)
        except OSError as e:
            raise ConfigError([f"instance '{self.name}': cannot start a worker process: {e}"]) from None
        self.sent_segments = None
        setting_up = False
        try:
            child.send(Setup(self.files, self.spec))
            # the process says when it has started and begins the model's set-up: only that is timed
            answer = await asyncio.wait_for(self._next_message(child), START_SECONDS)
            if isinstance(answer, SettingUp):
                setting_up = True
                answer = await asyncio.wait_for(self._next_message(child), self.limits.load)
        except BaseException as e:
            child.end()
            if isinstance(e, TimeoutError):
                raise ConfigError([f"instance '{self.name}': the model's set-up (initialize) did not finish "
                                   f"within load_timeout_seconds ({self.limits.load:g} s); its worker "
                                   f"process was killed" if setting_up else
                                   f"instance '{self.name}': its worker process did not start within "
                                   f"{START_SECONDS:g} s; it was killed"]) from None
            if isinstance(e, OSError):
                answer = None
            else:
                raise
        if not isinstance(answer, SetUp) or answer.problems is not None:
            status = child.end()
            raise ConfigError(answer.problems if isinstance(answer, SetUp) else [
                f"instance '{self.name}': the worker process ended ({_describe_exit(status)}) before the "
                f"model was set up; its output is in the server's log"])
        return child

    async def _next_message(self, child: _Child):
        """The process's next message (None at the end of its pipe), while it sets up."""
        for message in child.replies.messages():  # read already, with the one before
            return message
        answered = self.loop.create_future()

        def readable() -> None:
            alive = child.read()
            for message in child.replies.messages():
                if not answered.done():
                    answered.set_result(message)
                return  # the next stays in the buffer
            if not alive and not answered.done():
                answered.set_result(None)

        child.watch(readable)
        try:
            return await answered
        finally:
            child.unwatch()

    def attach(self, on_done: Done, on_change: Callable[[], None]) -> None:
        """Start answering, from the event loop."""
        self.on_done, self.on_change = on_done, on_change
        self._serve()

    def _serve(self) -> None:
        self.child.watch(self._readable)
        self.available, self.trouble, self.expected_back, self.cause = True, "", True, ""

    def _lost(self) -> None:
        """The reply pipe ended: the process exited or is exiting. Start it again, unless stopping."""
        self._cancel_timer()
        child, self.child = self.child, None
        child.unwatch()
        self.available = False
        if self.stopping:
            self.child = child  # stop() reaps it
            return
        self.trouble = "its worker process is being started again"
        self.recovering = self.loop.create_task(self._recover(child))
        self.on_change()

    async def _recover(self, child: _Child) -> None:
        try:
            await child.exited(1.0)
        finally:
            status = child.end()  # killed if it still runs a second after closing its pipe
        why = self.cause or _describe_exit(status)
        self.cause = ""
        log.error("model '%s': the worker process of instance '%s' died (%s); starting it again",
                  self.model_name, self.name, why)
        error = Internal(f"the worker process of model '{self.model_name}' (instance '{self.name}') "
                         f"died ({why}) while it ran this request; it is being started again")
        self._end_streams(error)
        batch, self.batch = self.batch, None
        if batch:
            self.on_done(self, batch, failed([p.request for p in batch], error), now_timings())
        wait = 0.5
        while True:
            try:
                self.child = await self._spawn()
                break
            except ConfigError as e:
                log.error("model '%s': instance '%s' failed to start again: %s; next try in %.1f s",
                          self.model_name, self.name, e, wait)
                self.trouble = f"its worker process failed to start again ({e}); next try in {wait:.1f} s"
                self.expected_back = False
                self.on_change()
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30)
        self.recovering = None
        self._serve()
        log.info("model '%s': instance '%s' is serving again", self.model_name, self.name)
        self.on_change()

    # --- batches ----------------------------------------------------------------------------------

    def run(self, batch: list[Pending]) -> None:
        self.batch = batch
        try:
            message = self._hand_over(batch)
        except Exception as e:  # out of shared memory, of descriptors...: this batch fails, no more
            self.batch = None
            if not isinstance(e, NaiadError):
                log.error("model '%s': handing a batch to instance '%s' failed: %s: %s",
                          self.model_name, self.name, type(e).__name__, e)
                e = Internal(f"model '{self.model_name}': handing the batch to the worker process of "
                             f"instance '{self.name}' failed: {type(e).__name__}: {e}")
            self.loop.call_soon(self.on_done, self, batch, failed([p.request for p in batch], e),
                                now_timings())
            return
        try:
            self.child.send(message)
        except OSError as e:  # it died, or the pipe is in an unknown state: end it (the restart follows)
            self.cause = f"the request pipe failed: {e}"
            self.child.kill()
            return
        if self.limits.execution:
            self.timer = self.loop.call_later(self.limits.execution, self._overdue)

    def _hand_over(self, batch: list[Pending]) -> Batch:
        """Write the batch's inputs into the input segment (grown if needed): the message for it."""
        named = [(n, to_host(a)) for p in batch for n, a in p.request.inputs.items()]
        raws = [tensor_bytes(a) for _, a in named]
        needed = layout_size(raws)
        if needed > self.inputs.size:
            grown = max(needed, 2 * self.inputs.size)
            try:
                segment = Segment.new(grown if grown <= KEEP_SEGMENT_BYTES else needed)
            except OSError as e:
                raise shm_space_error(self.model_name, "the batch's inputs", needed, e) from None
            self.inputs.close(unlink=True)
            self.inputs = segment
        described, _ = write_tensors(self.inputs, named, raws)
        requests, at = [], 0
        for p in batch:
            r = p.request
            n = len(r.inputs)
            requests.append((r.model_name, r.model_version, r.id, r.parameters, r.output_names,
                             r.batch_size, self._open_stream(r.sink), described[at:at + n]))
            at += n
        segments = self._segments()
        if segments == self.sent_segments:
            return Batch(requests)
        self.sent_segments = segments
        return Batch(requests, segments)

    def _open_stream(self, sink: ResponseStream | None) -> int | None:
        """A key for a decoupled request's responses; the process is told if its client goes away."""
        if sink is None:
            return None
        key = next(self.stream_keys)
        self.streams[key] = sink
        sink.on_cancel.append(lambda: self._cancel_stream(key))
        return key

    def _cancel_stream(self, key: int) -> None:
        if self.streams.pop(key, None) is not None and self.child is not None:
            with contextlib.suppress(OSError):  # it died: its streams end with it
                self.child.send_side(StreamCancelled(key))

    def _end_streams(self, error: NaiadError) -> None:
        streams, self.streams = self.streams, {}
        for sink in streams.values():
            sink.send(InferResponse(error=error), True)

    def _segments(self) -> tuple:
        return self.inputs.path, self.inputs.size, self.outputs.path, self.outputs.size

    def _readable(self) -> None:
        alive = self.child.read()
        try:
            for message in self.child.replies.messages():
                if isinstance(message, BatchDone):
                    self._answer(message)
                elif isinstance(message, Streamed):
                    self._streamed(message)
                elif isinstance(message, Call):
                    self._serve_call(message)
                else:
                    raise TypeError(f"unexpected {type(message).__name__}")
        except Exception as e:  # not a message of ours: the process is in an unknown state
            log.error("model '%s': unreadable answer from instance '%s': %s", self.model_name, self.name, e)
            self.cause = f"its answer could not be read: {type(e).__name__}: {e}"
            self.child.kill()
        if not alive:
            self._lost()

    def _streamed(self, message: Streamed) -> None:
        sink = self.streams.pop(message.key, None) if message.final else self.streams.get(message.key)
        if sink is not None:  # else its client went away
            sink.send(message.response, message.final)

    def _serve_call(self, call: Call) -> None:
        def deliver(response: InferResponse | None, final: bool) -> None:
            if child is self.child:  # else the process that asked is gone
                if response is None:
                    answer = CallAnswer(call.id, None, final)
                else:
                    outputs, response.outputs = response.outputs, {}
                    answer = CallAnswer(call.id, pack_response(response), final, share_tensors(outputs))
                with contextlib.suppress(OSError):
                    (child.send if call.on_main else child.send_side)(answer)

        child = self.child
        request = unpack_request(call.request)
        request.inputs = take_tensors(call.inputs)
        if self.models is None:
            deliver(InferResponse(error=Unavailable("calls to other models are not possible here")), True)
            return
        running = serve_call(self.models, request, call.stream, call.timeout, deliver)
        if running is not None:
            self.calls.add(running)
            running.add_done_callback(self.calls.discard)

    def _answer(self, message: BatchDone) -> None:
        self._cancel_timer()
        batch, self.batch = self.batch, None
        if batch is None:  # answered already
            return
        try:
            source = message.inline or self.outputs.map
            responses = []
            for answer in message.responses:
                if "error" in answer:
                    responses.append(InferResponse(error=answer["error"]))
                else:
                    outputs = dict(read_tensor(source, d, copy=True) for d in answer["outputs"])
                    responses.append(InferResponse(outputs, parameters=answer["parameters"]))
            place_outputs([p.request for p in batch], responses)
            timings = Timings(*message.timings)
        except Exception as e:
            log.exception("model '%s': reading the answer of instance '%s' failed",
                          self.model_name, self.name)
            responses = failed([p.request for p in batch], Internal(
                f"model '{self.model_name}': reading the answer of instance '{self.name}' failed: "
                f"{type(e).__name__}: {e}"))
            timings = now_timings()
        self._resize(len(message.inline or b""))
        self.on_done(self, batch, responses, timings)

    def _resize(self, inline_bytes: int) -> None:
        """After a batch: give back an input segment grown past KEEP_SEGMENT_BYTES; grow the output
        segment, up to that size, when the outputs did not fit it."""
        changed = False
        if self.inputs.size > KEEP_SEGMENT_BYTES and (small := self._new_segment(FIRST_SEGMENT_BYTES)):
            self.inputs.close(unlink=True)
            self.inputs = small
            changed = True
        if self.outputs.size < inline_bytes <= KEEP_SEGMENT_BYTES:
            grown = self._new_segment(min(max(inline_bytes, 2 * self.outputs.size), KEEP_SEGMENT_BYTES))
            if grown is not None:
                self.outputs.close(unlink=True)
                self.outputs = grown
                changed = True
        if changed and self.child is not None:
            try:  # the process maps the new segments and lets the old ones go now, not at the next batch
                self.sent_segments = self._segments()
                self.child.send(Segments(self.sent_segments))
            except OSError:
                pass  # it died: its reply pipe's end restarts it

    def _new_segment(self, size: int) -> Segment | None:
        try:
            return Segment.new(size)
        except OSError as e:
            log.warning("model '%s': no %d MiB shared-memory segment for instance '%s' (%s)",
                        self.model_name, size >> 20, self.name, e)
            return None

    def _overdue(self) -> None:
        """The batch ran past execution_timeout_seconds: fail it, kill the process (it restarts)."""
        self.timer = None
        batch, self.batch = self.batch, None
        if batch is None:
            return
        seconds = self.limits.execution
        log.error("model '%s': instance '%s' exceeded execution_timeout_seconds (%g s); killing its worker "
                  "process", self.model_name, self.name, seconds)
        self.available = False  # before on_done: the scheduler must not hand it the next batch
        self.trouble = "its worker process is being started again after a batch ran out of time"
        self.cause = f"killed after exceeding execution_timeout_seconds ({seconds:g} s)"
        self.child.kill()
        self.on_done(self, batch, failed([p.request for p in batch], Unavailable(
            f"model '{self.model_name}' exceeded its execution timeout of {seconds:g} s "
            f"(parameters.execution_timeout_seconds) on instance '{self.name}'; its worker process was "
            f"killed and is being started again")), now_timings())
        self.on_change()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # --- stop -------------------------------------------------------------------------------------

    async def stop(self, timeout: float | None = None, error: NaiadError | None = None) -> None:
        """Let the process finish its batch and run finalize, within `timeout` seconds (None: the
        model's finalize bound); then kill it, answering its batch with `error`. Leaves no process,
        descriptor or shared-memory file behind, even when cancelled."""
        self.stopping = True
        self.available = False
        try:
            if self.recovering is not None:
                self.recovering.cancel()  # a process half started is killed by _spawn
                await asyncio.wait([self.recovering])
            if self.child is not None:
                self.child.end_requests()
                bound = self.limits.wait if timeout is None else timeout
                if await self.child.exited(bound) is None:
                    log.error("model '%s': instance '%s' did not exit within %g s; killing it",
                              self.model_name, self.name, bound)
        finally:
            self._cancel_timer()
            if self.child is not None:
                if self.child.watched:
                    self._readable()  # an answer it wrote before it exited
                self.child.end()
                self.child = None
            for task in self.calls:
                task.cancel()
            error = error or Unavailable(f"model '{self.model_name}' is unloading")
            self._end_streams(error)
            batch, self.batch = self.batch, None
            if batch:
                self.on_done(self, batch, failed([p.request for p in batch], error), now_timings())
            self._drop_segments()

    def _drop_segments(self) -> None:
        for segment in (self.inputs, self.outputs):
            if segment is not None:
                segment.close(unlink=True)
        self.inputs = self.outputs = None
