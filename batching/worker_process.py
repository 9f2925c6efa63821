"""The child side of a ProcessWorker:
`python -m naiad.batching.worker_process MAIN_FD SIDE_FD REPLY_FD`. Sets up one model instance, then
runs the batches the server sends until the main pipe closes.

The main thread reads the main pipe: batches, which it runs, and the answer to a BLS call it makes
and waits for (the usual `exec()` inside `execute`), which it reads itself, after polling for it a
moment (CALL_POLL_SECONDS). A reader thread takes what comes on the side pipe at once, even while a
batch runs: answers to calls made otherwise (from other threads, `async_exec`, streams) and cancelled
streams. Replies are written from any thread (a decoupled model sends from its own), one whole
message at a time."""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from itertools import count

from naiad.backends import python_api
from naiad.backends.bls import BlsClient, Deliver
from naiad.batching.instances import close_instance, create_instance, execute
from naiad.batching.processes import (BatchDone, Call, CallAnswer, Receiver, Segment, Segments,
                                      SettingUp, SetUp, Setup, StreamCancelled, Streamed, layout_size,
                                      read_tensor, send, share_tensors, take_tensors, tensor_bytes,
                                      write_tensors)
from naiad.daemon import logs
from naiad.daemon.errors import ConfigError, Internal, Unavailable
from naiad.daemon.inference import (InferRequest, InferResponse, RequestedOutput, pack_request,
                                    unpack_response)

log = logging.getLogger(__name__)

# A blocking BLS call polls for its answer this long before the thread sleeps: a process woken from
# sleep runs late and on cold caches, which cost a quick callee's caller more than the callee itself.
# It polls only while the answers come that fast (the last one did): under load they do not, and the
# cores have better things to do.
CALL_POLL_SECONDS = 1e-3


class Replies:
    """The reply pipe, written whole message by whole message from any thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, message) -> None:
        with self.lock:
            send(self.fd, message)


class PipeSink:
    """A decoupled request's responses, sent to the server as the model sends them."""

    def __init__(self, key: int, replies: Replies, streams: dict[int, "PipeSink"]):
        self.key = key
        self.replies = replies
        self.streams = streams
        self.cancelled = False

    def send(self, response: InferResponse | None, final: bool) -> None:
        if final:
            self.streams.pop(self.key, None)
        if not self.cancelled:
            self.replies.send(Streamed(self.key, response, final))


class PipeCalls:
    """The model's BLS calls, sent to the server. A call the main thread waits for is answered on the
    main pipe, which that thread reads itself (`infer_on_main`); the others' answers come through
    the reader thread. When the server goes away, every call still waiting fails."""

    def __init__(self, replies: Replies, main_in: Receiver):
        self.replies = replies
        self.main_in = main_in
        self.ids = count()
        self.waiting: dict[int, Deliver] = {}
        self.closed = False
        self.answers_are_quick = True   # the main thread's last call was answered within CALL_POLL_SECONDS

    def start(self, request: InferRequest, stream: bool, timeout: float | None, deliver: Deliver) -> None:
        call_id = next(self.ids)
        self.waiting[call_id] = deliver
        if self.closed:  # whoever takes it out of `waiting` answers it: here, or close()
            if self.waiting.pop(call_id, None) is not None:
                deliver(_stopping(), True)
            return
        self._send(call_id, request, stream, timeout, on_main=False)

    def infer_on_main(self, request: InferRequest, timeout: float | None) -> InferResponse:
        """A call from the main thread, which waits for it: answered on the main pipe, read here."""
        if self.closed:
            return _stopping()
        call_id = next(self.ids)
        sent = time.monotonic()
        self._send(call_id, request, False, timeout, on_main=True)
        if self.answers_are_quick:
            self.main_in.poll(CALL_POLL_SECONDS)
        while (message := self.main_in.receive()) is not None:
            if not isinstance(message, CallAnswer):
                raise Internal(f"the server sent a {type(message).__name__} while the model waited "
                               f"for its call to model '{request.model_name}'")
            if message.id == call_id:
                self.answers_are_quick = time.monotonic() - sent <= CALL_POLL_SECONDS
                return _response(message)
            self.answer(message)
        return _stopping()

    def _send(self, call_id: int, request: InferRequest, stream: bool, timeout: float | None,
              on_main: bool) -> None:
        inputs, request.inputs = share_tensors(request.inputs), {}
        self.replies.send(Call(call_id, pack_request(request), inputs, stream, timeout, on_main))

    def answer(self, message: CallAnswer) -> None:
        response = _response(message)  # its shared file is taken even when nobody waits any more
        deliver = self.waiting.pop(message.id, None) if message.final else self.waiting.get(message.id)
        if deliver is not None:
            deliver(response, message.final)

    def close(self) -> None:
        self.closed = True
        for call_id in list(self.waiting):
            deliver = self.waiting.pop(call_id, None)
            if deliver is not None:
                deliver(_stopping(), True)


def _stopping() -> InferResponse:
    return InferResponse(error=Unavailable("the server is stopping"))


def _response(message: CallAnswer) -> InferResponse | None:
    if message.response is None:
        return None
    response = unpack_response(message.response)
    response.outputs = take_tensors(message.outputs)
    return response


class WorkerBls(BlsClient):
    """BLS from a worker process: a blocking call from the main thread reads its own answer."""

    def __init__(self, calls: PipeCalls):
        super().__init__(calls.start)
        self.calls = calls

    def infer(self, request: InferRequest, timeout: float | None) -> InferResponse:
        if threading.current_thread() is threading.main_thread():
            return self.calls.infer_on_main(request, timeout)
        return super().infer(request, timeout)


def read_side(side_in: Receiver, calls: PipeCalls, streams: dict[int, PipeSink]) -> None:
    """The reader thread: until the side pipe ends (the server is gone or stopping)."""
    try:
        while (message := side_in.receive()) is not None:
            if isinstance(message, CallAnswer):
                calls.answer(message)
            elif isinstance(message, StreamCancelled):
                sink = streams.pop(message.key, None)
                if sink is not None:
                    sink.cancelled = True
            else:
                raise TypeError(f"unexpected {type(message).__name__} on the side pipe")
    finally:
        calls.close()


def main(main_fd: int, side_fd: int, reply_fd: int) -> int:
    # Ctrl-C, and SIGTERM from a supervisor that signals the whole process group, are for the server:
    # it decides when its workers end (it closes their pipes), after requests in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    main_in = Receiver(main_fd)
    setup = main_in.receive()
    if not isinstance(setup, Setup):
        return 0
    files, spec = setup.files, setup.spec
    # the server's log settings when this process started: the environment carries them
    logs.setup(logs.inherited(), process=f"{files.name}/{spec.name}", model=files.name)
    replies = Replies(reply_fd)
    calls = PipeCalls(replies, main_in)
    python_api.connect(WorkerBls(calls))
    streams: dict[int, PipeSink] = {}
    threading.Thread(target=read_side, args=(Receiver(side_fd), calls, streams), daemon=True,
                     name="naiad-side").start()
    replies.send(SettingUp())  # the server times the set-up from here
    try:
        instance = create_instance(files, spec)  # never raises but ConfigError, even for SystemExit
    except ConfigError as e:
        replies.send(SetUp(e.problems))
        return 1
    replies.send(SetUp())
    inputs = outputs = None
    while (message := main_in.receive()) is not None:
        if message.segments is not None:
            for segment in (inputs, outputs):
                if segment is not None:
                    segment.close()
            in_path, in_size, out_path, out_size = message.segments
            inputs, outputs = Segment(in_path, in_size, False), Segment(out_path, out_size, False)
        if isinstance(message, Segments):  # new segments only: the server gave back a large one
            continue
        requests = []
        for model, version, request_id, parameters, requested, batch_size, key, described in message.requests:
            tensors = dict(read_tensor(inputs.map, d, copy=False) for d in described)
            wanted = None if requested is None else [RequestedOutput(name) for name in requested]
            request = InferRequest(model, version, tensors, wanted, request_id, parameters,
                                   batch_size=batch_size)
            if key is not None:
                request.sink = streams[key] = PipeSink(key, replies, streams)
            requests.append(request)
        responses, timings = execute(files.name, instance, requests)
        try:
            reply = _reply(responses, timings, outputs)
        except Exception as e:  # outputs that cannot be laid out: this batch fails, the process lives
            log.exception("model '%s': the outputs of a batch could not be sent back", files.name)
            error = Internal(f"model '{files.name}': its outputs could not be sent back: "
                             f"{type(e).__name__}: {e}")
            reply = _reply([InferResponse(error=error) for _ in responses], timings, outputs)
        replies.send(reply)
    close_instance(files.name, instance)
    return 0


def _reply(responses, timings, outputs: Segment) -> BatchDone:
    """Outputs go into the output segment, or in the message itself when they do not fit."""
    named = [[(n, a) for n, a in r.outputs.items()] for r in responses if r.error is None]
    raws = [[tensor_bytes(a) for _, a in tensors] for tensors in named]
    needed = sum(layout_size(r) for r in raws)
    if needed <= outputs.size:
        target, inline = outputs, None
    else:
        inline = bytearray(needed)
        target = _Bytes(inline)
    answers, offset, i = [], 0, 0
    for response in responses:
        if response.error is not None:
            answers.append({"error": response.error})
            continue
        described, offset = write_tensors(target, named[i], raws[i], offset)
        answers.append({"outputs": described, "parameters": response.parameters})
        i += 1
    timings = (timings.start_ns, timings.input_ns, timings.infer_ns, timings.output_ns)
    return BatchDone(answers, timings, bytes(inline) if inline is not None else None)


class _Bytes:
    """A bytearray in the place of a segment, for outputs that do not fit the segment."""

    def __init__(self, data: bytearray):
        self.map = data


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:4])))
