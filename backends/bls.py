"""BLS: how a Python model's `InferenceRequest(...).exec()` reaches another model.

Two halves. `BlsClient` is where the model runs (a worker thread, or a worker process): it hands the
request to a `Start` function and waits for the answers. `serve_call` is the server's side, on its
event loop: it runs the request through the callee's own scheduler (a `Models` the registry hands in)
and delivers each response. Between the two there is either nothing (a thread in the server's
process) or the worker process's pipes (batching/processes.py).

Every call ends: a timeout (the request's `timeout`, in microseconds) answers with an error, and so
does the callee being unloaded or the server going away. That is what keeps a model that waits on
itself, or on callees whose instances all wait, from hanging forever.
"""
from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

from naiad.backends.base import to_host
from naiad.daemon.errors import Internal, NaiadError, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse

# (response, final): called once per response, the last one with final=True
Deliver = Callable[[InferResponse | None, bool], None]
# (request, stream, timeout seconds or None, deliver): start one call; answers come through deliver
Start = Callable[[InferRequest, bool, "float | None", Deliver], None]


class Models(Protocol):
    """The server's models, as the registry offers them."""

    def submit(self, request: InferRequest) -> asyncio.Future: ...

    def stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | None, bool]]: ...


def serve_call(models: Models, request: InferRequest, stream: bool, timeout: float | None,
               deliver: Deliver) -> asyncio.Future | None:
    """Start one BLS call, which delivers its answers; never raises (a failure is the last answer).
    What it returns (None when the call was answered at once) ends the call when cancelled, with an
    answer that says so. A plain call runs on the callee's future, without a task: the hop from a
    worker process is on the request path of every call."""
    if stream:
        return asyncio.ensure_future(_serve_stream(models, request, timeout, deliver))
    name = request.model_name
    try:
        answer = models.submit(request)
    except Exception as e:
        deliver(_failure(name, e), True)
        return None
    timed_out = False

    def time_out() -> None:
        nonlocal timed_out
        timed_out = True
        answer.cancel()

    timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, time_out)

    def done(answer: asyncio.Future) -> None:
        if timer is not None:
            timer.cancel()
        if answer.cancelled():
            deliver(_timed_out(name, timeout) if timed_out else _cancelled(name), True)
        elif (error := answer.exception()) is None:
            deliver(_on_host(answer.result()), True)
        else:
            deliver(_failure(name, error), True)

    answer.add_done_callback(done)
    return answer


async def _serve_stream(models: Models, request: InferRequest, timeout: float | None,
                        deliver: Deliver) -> None:
    name = request.model_name
    try:
        async with asyncio.timeout(timeout):
            async for response, final in models.stream(request):
                deliver(_on_host(response), final)
                if final:
                    return
            deliver(None, True)
    except TimeoutError:
        deliver(_timed_out(name, timeout), True)
    except asyncio.CancelledError:
        deliver(_cancelled(name), True)
        raise
    except Exception as e:
        deliver(_failure(name, e), True)


def _timed_out(name: str, timeout: float) -> InferResponse:
    return InferResponse(error=Unavailable(
        f"the call to model '{name}' did not finish within its timeout of {timeout:g} s"))


def _cancelled(name: str) -> InferResponse:
    return InferResponse(error=Unavailable(f"the call to model '{name}' was cancelled: the server or the "
                                           f"calling model is stopping"))


def _failure(name: str, error: BaseException) -> InferResponse:
    if not isinstance(error, NaiadError):
        error = Internal(f"the call to model '{name}' failed: {type(error).__name__}: {error}")
    return InferResponse(error=error)


def _on_host(response: InferResponse | None) -> InferResponse | None:
    if response is not None:
        response.outputs = {name: to_host(tensor) for name, tensor in response.outputs.items()}
    return response


def start_in_process(models: Models, loop: asyncio.AbstractEventLoop) -> Start:
    """Calls from model code on the server's own threads: each runs as a task on the event loop."""
    def start(request: InferRequest, stream: bool, timeout: float | None, deliver: Deliver) -> None:
        if _on_loop(loop):
            raise RuntimeError("a model that runs on the server's event loop (execution: inline) cannot "
                               "wait for another model; use execution: thread or process")
        loop.call_soon_threadsafe(serve_call, models, request, stream, timeout, deliver)
    return start


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class BlsClient:
    """python_api.ServerCalls on top of a Start function."""

    def __init__(self, start: Start):
        self.start = start

    def infer(self, request: InferRequest, timeout: float | None) -> InferResponse:
        answers: queue.SimpleQueue = queue.SimpleQueue()
        self.start(request, False, timeout, lambda response, final: answers.put(response))
        return answers.get()

    def stream(self, request: InferRequest, timeout: float | None) -> Iterator[InferResponse]:
        answers: queue.SimpleQueue = queue.SimpleQueue()
        self.start(request, True, timeout, lambda response, final: answers.put((response, final)))
        while True:
            response, final = answers.get()
            if response is not None:
                yield response
            if final:
                return

    async def async_infer(self, request: InferRequest, timeout: float | None) -> InferResponse:
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        self.start(request, False, timeout,
                   lambda response, final: loop.call_soon_threadsafe(_settle, answered, response))
        return await answered

    async def async_stream(self, request: InferRequest, timeout: float | None
                           ) -> AsyncIterator[InferResponse]:
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue = asyncio.Queue()
        self.start(request, True, timeout,
                   lambda response, final: loop.call_soon_threadsafe(answers.put_nowait, (response, final)))
        while True:
            response, final = await answers.get()
            if response is not None:
                yield response
            if final:
                return


def _settle(future: asyncio.Future, response: InferResponse) -> None:
    if not future.done():
        future.set_result(response)
