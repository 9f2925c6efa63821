"""Model instances in processes of their own (the default for Python models): a CPU-bound model with
count 2 uses two cores, and a model that crashes the interpreter takes down only its process.

Parent and child talk over two pipes with small pickled messages; tensors travel through two shared
memory files per instance, both owned by the parent: inputs (parent writes, the model reads them in
place) and outputs (the child writes, the parent copies them out). The event loop watches the reply
pipe, so a batch costs two process wake-ups and no thread. A process that dies fails only the batch
it held; it is started again, and the model's readiness says so until it is back.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from itertools import count

import numpy as np

from naiad.backends.base import InstanceSpec, ModelFiles, failed, to_host
from naiad.batching.instances import Done, Pending, Timings
from naiad.daemon import datatypes
from naiad.daemon.errors import ConfigError, Internal
from naiad.daemon.inference import InferResponse, place_outputs

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
FIRST_SEGMENT_BYTES = 1 << 20
_LENGTH = struct.Struct("<Q")
_READ_BYTES = 1 << 16
_names = count()


# --- messages and shared memory, used on both sides ----------------------------------------------

def send(fd: int, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    payload = _LENGTH.pack(len(data)) + data
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


class Receiver:
    """Length-prefixed pickled messages from a pipe: `read` takes what the pipe holds, `messages`
    takes out the complete ones."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()

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
            message = pickle.loads(memoryview(self.buffer)[_LENGTH.size:end])
            del self.buffer[:end]
            yield message

    def receive(self):
        """The next message, waiting for it (blocking pipe); None at the end of the pipe."""
        while True:
            for message in self.messages():
                return message
            if not self.read():
                return None


class Segment:
    """A shared-memory file, mapped."""

    def __init__(self, path: str, size: int, create: bool):
        fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
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


class ProcessWorker:
    """One instance in a child process (`python -m naiad.batching.worker_process`)."""

    depth = 1  # one batch at a time: its tensors occupy the shared memory until it is done

    def __init__(self, files: ModelFiles, spec: InstanceSpec, loop: asyncio.AbstractEventLoop):
        self.files = files
        self.spec = spec
        self.model_name = files.name
        self.name = spec.name
        self.loop = loop
        self.on_done: Done | None = None
        self.on_available = None
        self.in_hand = 0
        self.available = False
        self.stopping = False
        self.batch: list[Pending] | None = None
        self.inputs = Segment.new(FIRST_SEGMENT_BYTES)
        self.outputs = Segment.new(FIRST_SEGMENT_BYTES)
        self.sent_segments: tuple | None = None
        try:
            self._start()  # blocking; raises when the model fails to set itself up
        except BaseException:
            self.inputs.close(unlink=True)
            self.outputs.close(unlink=True)
            raise

    def _start(self) -> None:
        """Start the process and set the model up in it (blocking); raises ConfigError with the
        model's own reasons when it cannot."""
        request_read, self.request_fd = os.pipe()
        self.reply_fd, reply_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "naiad.batching.worker_process", str(request_read), str(reply_write)],
                pass_fds=(request_read, reply_write))
        finally:
            os.close(request_read)
            os.close(reply_write)
        self.sent_segments = None
        self.replies = Receiver(self.reply_fd)
        try:
            send(self.request_fd, {"files": self.files, "spec": self.spec,
                                   "log_level": logging.getLogger().getEffectiveLevel()})
            answer = self.replies.receive()
        except OSError:
            answer = None
        if answer is None or "error" in answer:
            self._close_pipes()
            self.process.kill()
            self.process.wait()
            raise ConfigError(answer["error"] if answer else [
                f"the worker process ended ({_describe_exit(self.process.returncode)}) before the "
                f"model was set up; its output is in the server's log"])

    def attach(self, on_done: Done, on_available) -> None:
        """Start answering, from the event loop."""
        self.on_done, self.on_available = on_done, on_available
        self._watch()

    def _watch(self) -> None:
        os.set_blocking(self.reply_fd, False)
        self.loop.add_reader(self.reply_fd, self._readable)
        self.available = True

    def run(self, batch: list[Pending]) -> None:
        self.batch = batch
        named = [(n, to_host(a)) for p in batch for n, a in p.request.inputs.items()]
        raws = [tensor_bytes(a) for _, a in named]
        needed = layout_size(raws)
        if needed > self.inputs.size:
            self.inputs.close(unlink=True)
            self.inputs = Segment.new(max(needed, 2 * self.inputs.size))
        described, _ = write_tensors(self.inputs, named, raws)
        requests, at = [], 0
        for p in batch:
            r = p.request
            n = len(r.inputs)
            requests.append((r.model_name, r.model_version, r.id, r.parameters, r.output_names,
                             r.batch_size, described[at:at + n]))
            at += n
        segments = (self.inputs.path, self.inputs.size, self.outputs.path, self.outputs.size)
        message = {"requests": requests}
        if segments != self.sent_segments:
            message["segments"] = self.sent_segments = segments
        try:
            send(self.request_fd, message)
        except OSError:  # the process just died: the end of its reply pipe fails this batch
            pass

    def _readable(self) -> None:
        try:
            if not self.replies.read():
                self._ended()
                return
        except BlockingIOError:
            return
        for message in self.replies.messages():
            self._answer(message)

    def _answer(self, message: dict) -> None:
        batch, self.batch = self.batch, None
        source = message.get("inline") or self.outputs.map
        responses = []
        for answer in message["responses"]:
            if "error" in answer:
                responses.append(InferResponse(error=answer["error"]))
            else:
                outputs = dict(read_tensor(source, d, copy=True) for d in answer["outputs"])
                responses.append(InferResponse(outputs, parameters=answer["parameters"]))
        place_outputs([p.request for p in batch], responses)
        if "inline" in message:  # they did not fit: give the next batch more room
            self.outputs.close(unlink=True)
            self.outputs = Segment.new(max(len(message["inline"]), 2 * self.outputs.size))
        self.on_done(self, batch, responses, Timings(*message["timings"]))

    def _ended(self) -> None:
        """The reply pipe closed: the process exited."""
        self.loop.remove_reader(self.reply_fd)
        os.close(self.reply_fd)
        self.available = False
        if self.stopping:
            return
        status = self.process.poll()
        if status is None:
            try:
                status = self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                status = None
        why = _describe_exit(status)
        log.error("model '%s': the worker process of instance '%s' died (%s); starting it again",
                  self.model_name, self.name, why)
        batch, self.batch = self.batch, None
        if batch:
            error = Internal(f"the worker process of model '{self.model_name}' (instance '{self.name}') "
                             f"died ({why}) while it ran this request; it is being started again")
            self.on_done(self, batch, failed([p.request for p in batch], error),
                         Timings(time.perf_counter_ns(), 0, 0, 0))
        os.close(self.request_fd)
        threading.Thread(target=self._restart, name=f"naiad-restart-{self.name}", daemon=True).start()

    def _restart(self) -> None:
        wait = 0.5
        while not self.stopping:
            try:
                self._start()
            except Exception as e:
                log.error("model '%s': instance '%s' failed to start again: %s; next try in %.0f s",
                          self.model_name, self.name, e, wait)
                time.sleep(wait)
                wait = min(wait * 2, 30)
                continue
            self.loop.call_soon_threadsafe(self._back)
            return

    def _back(self) -> None:
        if self.stopping:
            return
        self._watch()
        log.info("model '%s': instance '%s' is serving again", self.model_name, self.name)
        self.on_available()

    def _close_pipes(self) -> None:
        for fd in (self.request_fd, self.reply_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def stop(self) -> None:
        """Let the process finish (its model's finalize runs), then clean up (blocks)."""
        self.stopping = True
        try:
            os.close(self.request_fd)  # the child reads the end of its requests and exits
        except OSError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.error("model '%s': instance '%s' did not exit in 30 s; killing it", self.model_name, self.name)
            self.process.kill()
            self.process.wait()
        self.inputs.close(unlink=True)
        self.outputs.close(unlink=True)
