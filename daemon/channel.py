"""The channel between a frontend process and the process that owns the models: a Unix socket that
carries length-prefixed messages (daemon/messages.py) both ways. A frontend sends `Call`s (a DataPlane
method and its arguments) and gets `Reply`s, matched by id, many in flight at once; the model process
runs each call on its DataPlane. A `stream` call gets its responses as `Partial`s, then its Reply. Small
tensors travel inside the messages, large ones through the tensor arenas (arena.py).

One call is not a DataPlane method: `infer_grpc` carries a small gRPC ModelInferRequest as it came off
the wire, and the model process decodes it, runs it and answers it serialized. Decoding and encoding
cost a busy frontend several times what they cost the model process, so a frontend passes small
requests on undecoded while the model process has time to spare; since that one process serves every
frontend, it tells them to decode a growing share themselves as it gets busy (`ForwardBalance`)."""
from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from naiad.batching.processes import Segment
from naiad.daemon import event_loop, grpc_frontend, logs
from naiad.daemon.arena import SMALLEST, Arena
from naiad.daemon.dataplane import METHODS, DataPlane
from naiad.daemon.errors import Internal, InvalidArgument, NaiadError, Unavailable
from naiad.daemon.inference import (InferRequest, InferResponse, pack_request, pack_response, unpack_request,
                                    unpack_response)
from naiad.daemon.messages import Codec
from naiad.daemon.served_model import checked

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
# the calls that run a request: the model process drops one whose client went away
INFER_METHODS = ("infer", "infer_grpc")


class Call(NamedTuple):
    id: int
    method: str
    args: tuple


class Reply(NamedTuple):
    id: int
    value: Any = None
    error: NaiadError | None = None


class Partial(NamedTuple):
    """One response of a `stream` call: (version, packed response or None, final)."""
    id: int
    value: tuple


@dataclass(slots=True)
class ArenaOutput:
    """An output the model process wrote into its arena for this frontend (or a large serialized
    response to `infer_grpc`, as bytes)."""
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class Release(NamedTuple):
    """From a frontend: it has copied these blocks of the model process's arena out."""
    blocks: list[tuple[int, int]]


class Cancel(NamedTuple):
    """From a frontend: the client of call `id` went away; the model process drops the request."""
    id: int


class Started(NamedTuple):
    """A frontend process's first message: it listens (with its tensor arena's file and size, if it
    has one), or why it cannot."""
    error: str | None = None
    arena: tuple[str, int] | None = None


class LogSettingsChanged(NamedTuple):
    """To a frontend: the server's log settings changed."""
    settings: logs.LogSettings


class ForwardShare(NamedTuple):
    """To a frontend: the share of small gRPC requests to pass on undecoded (0 to 1)."""
    share: float


CODEC = Codec(Call, Reply, Partial, Release, Cancel, Started, LogSettingsChanged, ForwardShare)


class MessageProtocol(asyncio.Protocol):
    """Frames: a 4-byte length, then a message (daemon/messages.py). `on_message` gets each one as it
    completes."""

    def __init__(self, on_message, on_lost):
        self.on_message = on_message
        self.on_lost = on_lost
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # written together, at the end of a turn of the event loop, or of a read that answered at once
        self.outgoing: list[bytes] = []
        self.flush_due = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + length
            if len(buffer) < end:
                break
            message = CODEC.loads(memoryview(buffer)[start + _LENGTH.size:end])
            start = end
            self.on_message(message)
        del buffer[:start]
        self._write_outgoing()  # the answers these messages got at once go now, together

    def send(self, message) -> None:
        if self.closed:
            return
        data = CODEC.dumps(message)
        if not self.flush_due:
            self.flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing += (_LENGTH.pack(len(data)), data)

    def _flush(self) -> None:
        self.flush_due = False
        self._write_outgoing()

    def _write_outgoing(self) -> None:
        if self.outgoing and not self.transport.is_closing():
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    @property
    def closed(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_lost(self, exc) -> None:
        self.on_lost()


# --- the frontend's side -------------------------------------------------------------------------

class RemoteDataPlane:
    """A DataPlane whose every method is a call to the model process. Large inputs go through the
    tensor arena, when there is one; their space comes back with the reply (the model is done then),
    not when the client goes away."""

    def __init__(self, arena: Arena | None = None, replies: Segment | None = None):
        self.arena = arena
        self.replies = replies   # the model process's arena for this frontend, mapped
        # id -> (the call's future, its method, the blocks of the arena its inputs took)
        self.pending: dict[int, tuple[asyncio.Future, str, list]] = {}
        self.partials: dict[int, asyncio.Queue] = {}   # a stream call's responses, until its Reply
        self.next_id = 0
        self.lost = asyncio.Event()
        self.protocol = MessageProtocol(self._reply, self._lost)
        self.forward_share = 1.0

    async def infer(self, request: InferRequest):
        taken = self.arena.place(request) if self.arena is not None else []
        return await self._call("infer", (pack_request(request),), taken)

    def takes(self, size: int) -> bool:
        """Whether to pass on, undecoded, a gRPC ModelInferRequest of `size` bytes. A large one is
        decoded here, so that its tensors go through the arena."""
        return size < SMALLEST and random.random() < self.forward_share

    async def infer_grpc(self, wire: bytes) -> bytes:
        """A gRPC ModelInferRequest as it came off the wire, decoded and run by the model process: its
        ModelInferResponse, serialized."""
        return await self._call("infer_grpc", (wire,))

    async def stream(self, request: InferRequest) -> AsyncIterator[tuple[str, InferResponse | None, bool]]:
        taken = self.arena.place(request) if self.arena is not None else []
        call_id, ended = self._start("stream", (pack_request(request),), taken)
        responses = self.partials[call_id] = asyncio.Queue()
        ended.add_done_callback(lambda _: responses.put_nowait(None))
        try:
            while (item := await responses.get()) is not None:
                yield item
            await ended  # raises the call's error
        finally:
            self.partials.pop(call_id, None)
            if not ended.done():  # the consumer went away first
                self._cancel(call_id, taken)
                ended.cancel()  # its Reply still comes, and gives back the arena's space

    async def _call(self, method: str, args: tuple, taken: list | None = None):
        call_id, future = self._start(method, args, taken)
        try:
            return await future
        except asyncio.CancelledError:
            if method in INFER_METHODS:
                self._cancel(call_id, taken)
            raise

    def _start(self, method: str, args: tuple, taken: list | None) -> tuple[int, asyncio.Future]:
        if self.lost.is_set():
            raise Unavailable("the server is shutting down")
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        call_id = self.next_id
        self.pending[call_id] = (future, method, taken)
        self.protocol.send(Call(call_id, method, args))
        return call_id, future

    def _cancel(self, call_id: int, taken: list | None) -> None:
        # The model process drops the request, unless its inputs are in this frontend's arena: the
        # model may be reading them, so it runs to its end and the space comes back with its reply.
        if not taken and call_id in self.pending and not self.protocol.closed:
            self.protocol.send(Cancel(call_id))

    def _reply(self, reply: Reply | Partial | LogSettingsChanged | ForwardShare) -> None:
        """A call's answer; done here, whether or not anyone still awaits it (a client that went away),
        so that the arenas' space always comes back."""
        if isinstance(reply, LogSettingsChanged):
            logs.apply(reply.settings)
            return
        if isinstance(reply, ForwardShare):
            self.forward_share = reply.share
            return
        if isinstance(reply, Partial):
            version, packed, final = reply.value
            response = None if packed is None else self._unpack(packed)
            responses = self.partials.get(reply.id)
            if responses is not None:
                responses.put_nowait((version, response, final))
            return
        future, method, taken = self.pending.pop(reply.id, (None, "", None))
        if taken:
            self.arena.give_back(taken)
        value = reply.value
        if reply.error is None and method == "infer":
            value = (value[0], self._unpack(value[1]))
        elif reply.error is None and method == "infer_grpc":
            value = self._copy_out(value) if isinstance(value, ArenaOutput) else value
        if future is None or future.done():
            return
        if reply.error is not None:
            future.set_exception(reply.error)
        else:
            future.set_result(value)

    def _unpack(self, packed: tuple) -> InferResponse:
        """A response as the model process sent it: outputs in its arena become arrays of their own,
        and the space goes back."""
        response = unpack_response(packed)
        blocks = []
        for name, output in response.outputs.items():
            if isinstance(output, ArenaOutput):
                response.outputs[name] = np.ndarray(output.shape, output.dtype, buffer=self.replies.map,
                                                    offset=output.offset).copy()
                blocks.append((output.offset, output.nbytes))
        if blocks:
            self.protocol.send(Release(blocks))
        return response

    def _copy_out(self, output: ArenaOutput) -> bytes:
        data = self.replies.map[output.offset:output.offset + output.nbytes]
        self.protocol.send(Release([(output.offset, output.nbytes)]))
        return data

    def _lost(self) -> None:
        self.lost.set()  # pending stream calls end with their future
        error = Unavailable("the server's model process is gone")
        for future, _, _ in self.pending.values():
            if not future.done():
                future.set_exception(error)
        self.pending.clear()

    def __getattr__(self, method: str):
        if method not in METHODS:
            raise AttributeError(method)

        async def call(*args):
            return await self._call(method, args)
        return call


# --- the model process's side --------------------------------------------------------------------

class ForwardBalance:
    """The share of small gRPC requests the frontends pass on undecoded, in STEPS steps from none to
    all: every WINDOW of the model process's time, a step up while its event loop was busy less than
    BUSY of the time, a step down otherwise. `send` tells the frontends each new share."""
    WINDOW = 0.01
    STEPS = 20
    BUSY = 0.98

    def __init__(self, send: Callable[[float], None], clock: Callable[[], float] = time.monotonic,
                 waited: Callable[[], float] = event_loop.waited_seconds):
        self.send = send
        self.clock = clock
        self.waited_seconds = waited
        self.steps = self.STEPS
        self.since = clock()
        self.waited = waited()

    @property
    def share(self) -> float:
        return self.steps / self.STEPS

    def tick(self) -> None:
        """Called with each request: measures once a WINDOW."""
        now = self.clock()
        if now - self.since < self.WINDOW:
            return
        waited = self.waited_seconds()
        busy = 1 - (waited - self.waited) / (now - self.since)
        self.since, self.waited = now, waited
        steps = min(self.STEPS, self.steps + 1) if busy < self.BUSY else max(0, self.steps - 1)
        if steps != self.steps:
            self.steps = steps
            self.send(self.share)


class PlaneServer:
    """Runs the calls of one frontend process on the DataPlane: `infer` and `infer_grpc` from their
    future's callback, the others each as a task of its own. `started` gets the frontend's Started
    message."""

    def __init__(self, plane: DataPlane, started: asyncio.Future, on_lost, arena: Arena | None = None,
                 balance: ForwardBalance | None = None):
        self.plane = plane
        self.started = started
        self.on_lost = on_lost
        self.arena = arena   # large outputs go back through it
        self.balance = balance
        self.decoder = grpc_frontend.RequestDecoder()
        self.protocol = MessageProtocol(self._call, self._lost)
        self.running: dict[int, asyncio.Future] = {}   # call id -> its answer or task, until done

    def _lost(self) -> None:
        if not self.started.done():
            self.started.set_result(Started("the frontend process ended before it listened; its output "
                                            "is in the server's log"))
            return
        self.on_lost()

    def _call(self, call: Call | Started | Release | Cancel) -> None:
        if isinstance(call, Release):
            self.arena.give_back(call.blocks)
            return
        if isinstance(call, Cancel):
            task = self.running.get(call.id)
            if task is not None:
                task.cancel()
            return
        if isinstance(call, Started):
            if not self.started.done():
                self.started.set_result(call)
            return
        if call.method in INFER_METHODS:
            self._infer(call)
            return
        if call.method not in METHODS:
            self.protocol.send(Reply(call.id, error=Internal(f"unknown data-plane method '{call.method}'")))
            return
        task = asyncio.ensure_future(self._run(call))
        self.running[call.id] = task
        task.add_done_callback(lambda done, call_id=call.id: self._ended(call_id, done))

    def _infer(self, call: Call) -> None:
        """The busiest calls, answered from their future's callback: no task, no coroutine. `infer`
        carries a packed request and gets the packed response; `infer_grpc` the request and the response
        serialized as gRPC sends them."""
        if self.balance is not None:
            self.balance.tick()
        try:
            message = call.args[0]
            request = unpack_request(message) if call.method == "infer" else self._decode_grpc(message)
            version, answer = self.plane.submit(request)
        except Exception as e:
            self.protocol.send(Reply(call.id, error=_naiad_error(e)))
            return
        if answer.done():
            self._answer(call, request, version, answer)
            return
        self.running[call.id] = answer
        answer.add_done_callback(lambda done: self._answer(call, request, version, done))

    def _decode_grpc(self, wire: bytes) -> InferRequest:
        try:
            return self.decoder.decode(wire)
        except InvalidArgument:
            message = grpc_frontend.parse_request(wire)
            self.plane.registry.get(message.model_name, message.model_version)  # an unknown model first
            raise

    def _answer(self, call: Call, request: InferRequest, version: str, answer: asyncio.Future) -> None:
        if answer.cancelled():
            self._ended(call.id, answer)
            return
        self.running.pop(call.id, None)
        try:
            response = checked(answer.result())
            if call.method == "infer":
                value = (version, self._pack(response))
            else:
                value = self._place(grpc_frontend.serialize_response(request, version, response))
        except Exception as e:
            self.protocol.send(Reply(call.id, error=_naiad_error(e)))
        else:
            self.protocol.send(Reply(call.id, value))

    def _ended(self, call_id: int, task: asyncio.Future) -> None:
        self.running.pop(call_id, None)
        if task.cancelled():  # the frontend's client went away (even before the call started): it
            # still gets its reply, which ends the call there and gives back what the call held
            self.protocol.send(Reply(call_id, error=Unavailable("the request was cancelled")))

    async def _run(self, call: Call) -> None:
        try:
            if call.method == "stream":
                async for version, response, final in self.plane.stream(unpack_request(call.args[0])):
                    packed = None if response is None else self._pack(response)
                    self.protocol.send(Partial(call.id, (version, packed, final)))
                value = None
            else:
                value = await getattr(self.plane, call.method)(*call.args)
        except Exception as e:
            self.protocol.send(Reply(call.id, error=_naiad_error(e, call.method)))
        else:
            self.protocol.send(Reply(call.id, value))

    def _pack(self, response: InferResponse) -> tuple:
        """A response for the frontend: large outputs go into the arena when there is one."""
        for name, output in response.outputs.items():
            placed = self._in_arena(output)
            if placed is not None:
                response.outputs[name] = placed
        return pack_response(response)

    def _place(self, data: bytes) -> bytes | ArenaOutput:
        """A serialized response for the frontend: through the arena when it is large."""
        placed = self._in_arena(np.frombuffer(data, np.uint8))
        return data if placed is None else placed

    def _in_arena(self, output) -> ArenaOutput | None:
        """A large array copied into the arena, when there is one and it has room."""
        if self.arena is None or self.protocol.closed:
            return None
        offset = self.arena.put(output)
        return None if offset is None else ArenaOutput(output.dtype, output.shape, offset, output.nbytes)


def _naiad_error(error: BaseException, method: str = "infer") -> NaiadError:
    if isinstance(error, NaiadError):
        return error
    log.error("data-plane call %s failed", method, exc_info=error)
    return Internal(f"{type(error).__name__}: {error}")
