"""The child side of a ProcessWorker: `python -m naiad.batching.worker_process REQUEST_FD REPLY_FD`.
Sets up one model instance, then runs the batches the server sends until the request pipe closes.

The main thread runs the batches. A reader thread takes every message off the request pipe: batches
go to the main thread; answers to the model's BLS calls and cancelled streams are dealt with at once,
even while a batch runs (the batch may be the one waiting for them). Replies are written from any
thread (a decoupled model sends from its own), one whole message at a time."""
from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
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
from naiad.daemon.inference import InferRequest, InferResponse, RequestedOutput

log = logging.getLogger(__name__)


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
    """The model's BLS calls, sent to the server; each one's answers come back through the reader
    thread. When the server goes away, every call still waiting fails."""

    def __init__(self, replies: Replies):
        self.replies = replies
        self.ids = count()
        self.waiting: dict[int, Deliver] = {}
        self.closed = False

    def start(self, request: InferRequest, stream: bool, timeout: float | None, deliver: Deliver) -> None:
        call_id = next(self.ids)
        self.waiting[call_id] = deliver
        if self.closed:
            self.answer(CallAnswer(call_id, InferResponse(error=Unavailable("the server is stopping")), True))
            return
        inputs, request.inputs = share_tensors(request.inputs), {}
        self.replies.send(Call(call_id, request, inputs, stream, timeout))

    def answer(self, message: CallAnswer) -> None:
        if message.outputs is not None:
            message.response.outputs = take_tensors(message.outputs)  # even when nobody waits any more
        deliver = self.waiting.pop(message.id, None) if message.final else self.waiting.get(message.id)
        if deliver is not None:
            deliver(message.response, message.final)

    def close(self) -> None:
        self.closed = True
        for call_id in list(self.waiting):
            self.answer(CallAnswer(call_id, InferResponse(error=Unavailable("the server is stopping")), True))


def read_requests(requests_in: Receiver, batches: queue.SimpleQueue, calls: PipeCalls,
                  streams: dict[int, PipeSink]) -> None:
    """The reader thread: until the request pipe ends (then the main thread is told with None)."""
    try:
        while (message := requests_in.receive()) is not None:
            if isinstance(message, CallAnswer):
                calls.answer(message)
            elif isinstance(message, StreamCancelled):
                sink = streams.pop(message.key, None)
                if sink is not None:
                    sink.cancelled = True
            else:
                batches.put(message)
    finally:
        calls.close()
        batches.put(None)


def main(request_fd: int, reply_fd: int) -> int:
    # Ctrl-C, and SIGTERM from a supervisor that signals the whole process group, are for the server:
    # it decides when its workers end (it closes their request pipe), after requests in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests_in = Receiver(request_fd)
    setup = requests_in.receive()
    if not isinstance(setup, Setup):
        return 0
    files, spec = setup.files, setup.spec
    # the server's log settings when this process started: the environment carries them
    logs.setup(logs.inherited(), process=f"{files.name}/{spec.name}", model=files.name)
    replies = Replies(reply_fd)
    calls = PipeCalls(replies)
    python_api.connect(BlsClient(calls.start))
    streams: dict[int, PipeSink] = {}
    batches: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=read_requests, args=(requests_in, batches, calls, streams), daemon=True,
                     name="naiad-requests").start()
    replies.send(SettingUp())  # the server times the set-up from here
    try:
        instance = create_instance(files, spec)  # never raises but ConfigError, even for SystemExit
    except ConfigError as e:
        replies.send(SetUp(e.problems))
        return 1
    replies.send(SetUp())
    inputs = outputs = None
    while (message := batches.get()) is not None:
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
            request = InferRequest(model, version, tensors, wanted, request_id, parameters, batch_size=batch_size)
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
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
