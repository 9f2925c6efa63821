"""The clients: `Client` (blocking) and `AsyncClient` (asyncio) have the same methods; the protocol is
the URL's scheme. Every method is written once, in `_Methods`: it describes its call (the protocol's
Codec) and hands it to `_run`, which returns the result (Client) or an awaitable of it (AsyncClient)."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from naiad.clients import grpc_protocol, http_protocol, shm
from naiad.clients.calls import Call
from naiad.clients.errors import ClientError

DEFAULT_URL = "localhost:8001"
_DEFAULT_PORTS = {"grpc": 8001, "grpcs": 443, "http": 8000, "https": 443}
# retries of a call answered UNAVAILABLE: the first waits this long, each next twice as long
BACKOFF_FIRST_SECS = 0.05
BACKOFF_MAX_SECS = 2.0


@dataclass(frozen=True)
class Endpoint:
    protocol: str    # "grpc" or "http"
    address: str     # host:port
    tls: bool


def parse_url(url: str) -> Endpoint:
    """grpc://host:port, http://host:port (https://, grpcs:// with TLS), or host:port for gRPC."""
    scheme, found, rest = url.partition("://")
    if not found:
        scheme, rest = "grpc", url
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"URL '{url}': unknown scheme '{scheme}'; expected grpc://, grpcs://, http://, "
                         f"https:// or host:port (gRPC)")
    address = rest.rstrip("/")
    if not address or "/" in address:
        raise ValueError(f"URL '{url}': expected host:port after the scheme, without a path")
    _, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or address.endswith("]"):
        address = f"{address}:{_DEFAULT_PORTS[scheme]}"
    return Endpoint("http" if scheme.startswith("http") else "grpc", address, scheme in ("https", "grpcs"))


class _Methods:
    """The calls both clients make. Arguments named `timeout` are seconds for the whole call, retries
    included (None: the client's default; None there: no limit)."""

    def __init__(self, url: str = DEFAULT_URL, *, timeout: float | None = None, retries: int = 3,
                 binary_data: bool = True):
        """`url`: grpc://host:port or host:port for gRPC, http://host:port for HTTP (grpcs:// and
        https:// with TLS). `retries`: how often a call answered UNAVAILABLE (server not reachable, model
        not ready, queue full) is sent again, with exponential backoff. `binary_data=False` (HTTP):
        tensors travel as JSON values, for servers without the binary tensor data extension."""
        self.url = url
        self.endpoint = parse_url(url)
        self.timeout = timeout
        self.retries = retries
        grpc_side = self.endpoint.protocol == "grpc"
        self._codec = grpc_protocol.Codec() if grpc_side else http_protocol.Codec(binary_data)
        self._transport = self._make_transport(grpc_side)

    @property
    def protocol(self) -> str:
        return self.endpoint.protocol

    # --- health and metadata ----------------------------------------------------------------------

    def live(self, *, timeout: float | None = None):
        """Whether the server is live."""
        return self._run(self._codec.live(), timeout)

    def ready(self, *, timeout: float | None = None):
        """Whether the server is ready for inference."""
        return self._run(self._codec.ready(), timeout)

    def model_ready(self, model: str, version: str | int | None = None, *, timeout: float | None = None):
        """Whether the model (that version, or the version its policy serves) is ready."""
        return self._run(self._codec.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None):
        """{"name", "version", "extensions"}."""
        return self._run(self._codec.server_metadata(), timeout)

    def model_metadata(self, model: str, version: str | int | None = None, *,
                       timeout: float | None = None):
        """{"name", "versions", "platform", "inputs", "outputs"}; each tensor {"name", "datatype",
        "shape"}."""
        return self._run(self._codec.model_metadata(model, version), timeout)

    def model_config(self, model: str, version: str | int | None = None, *, timeout: float | None = None):
        """The model's configuration, as Triton's model configuration JSON has it."""
        return self._run(self._codec.model_config(model, version), timeout)

    def statistics(self, model: str = "", version: str | int | None = None, *,
                   timeout: float | None = None):
        """Per-model statistics (the statistics extension): a list with one dict per model version;
        every model's when `model` is empty."""
        return self._run(self._codec.statistics(model, version), timeout)

    # --- the model repository ---------------------------------------------------------------------

    def repository_index(self, ready: bool = False, *, timeout: float | None = None):
        """The models of the repository: [{"name", "version", "state", "reason"}]; only the ready
        ones with ready=True."""
        return self._run(self._codec.repository_index(ready), timeout)

    def load_model(self, model: str, config: str | None = None, files: Mapping[str, bytes] | None = None,
                   *, timeout: float | None = None):
        """Load (or reload) a model. `config`: a configuration (JSON) to use instead of the one in the
        repository; `files`: model files by path within the model's folder ("1/model.onnx")."""
        return self._run(self._codec.load_model(model, config, files), timeout)

    def unload_model(self, model: str, unload_dependents: bool = False, *, timeout: float | None = None):
        return self._run(self._codec.unload_model(model, unload_dependents), timeout)

    # --- inference --------------------------------------------------------------------------------

    def infer(self, model: str, inputs: Mapping[str, Any],
              outputs: Iterable[str] | Mapping[str, Any] | None = None, version: str | int | None = None,
              priority: int | None = None, timeout: float | None = None,
              parameters: Mapping[str, bool | int | float | str] | None = None, request_id: str = ""):
        """Run the model once: `inputs` maps each input's name to a numpy array (BYTES: an array of
        bytes or str; BF16: ml_dtypes.bfloat16) or to a shared-memory region holding its data.
        `outputs`: the names of the outputs wanted (None: all of them), or a dict of name to a region
        to place it in (or None). Returns {name: array}: arrays view the response's bytes (read-only)
        or the region an output was placed in. `priority`: 1 is the highest; `parameters` go to the
        server and the model with the request."""
        return self._run(self._codec.infer(model, inputs, outputs, version, priority, parameters,
                                           request_id), timeout)

    # --- shared memory ----------------------------------------------------------------------------

    def shared_memory(self, data=None, *, byte_size: int | None = None, device: str | None = None):
        """A shared-memory region for this client's server, as a context manager: created on this host
        (system memory, or a GPU's memory with device="cuda" or "cuda:N"), holding `data` if given
        (byte_size: room for an output, or more than data takes), registered with the server on
        entering and unregistered and released on leaving. Pass it as an input's value or an output's
        place in infer()."""
        return shm.create(self, data, byte_size, device)

    def register_system_shm(self, name: str, key: str, byte_size: int, offset: int = 0, *,
                            timeout: float | None = None):
        return self._run(self._codec.register_system_shm(name, key, byte_size, offset), timeout)

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int, *,
                          timeout: float | None = None):
        return self._run(self._codec.register_cuda_shm(name, raw_handle, device_id, byte_size), timeout)

    def unregister_shm(self, kind: str = "system", name: str = "", *, timeout: float | None = None):
        """Unregister one region of a kind ("system" or "cuda"), or all of them when name is empty."""
        return self._run(self._codec.unregister_shm(_kind(kind), name), timeout)

    def shm_status(self, kind: str = "system", name: str = "", *, timeout: float | None = None):
        """The registered regions of a kind: [{"name", "byte_size", ...}]."""
        return self._run(self._codec.shm_status(_kind(kind), name), timeout)

    # --- what each client does its own way --------------------------------------------------------

    def _make_transport(self, grpc_side: bool):
        raise NotImplementedError

    def _run(self, call: Call, timeout: float | None):
        raise NotImplementedError

    def _stream_request(self, model, inputs, outputs, version, parameters, request_id):
        if self.endpoint.protocol != "grpc":
            raise ClientError("UNIMPLEMENTED", "streaming needs gRPC (a grpc:// or host:port URL); the v2 "
                              "HTTP protocol has no streaming inference")
        parameters = {**(parameters or {}), grpc_protocol.ENABLE_FINAL: True}
        return grpc_protocol.infer_request(model, inputs, outputs, version, None, parameters, request_id)

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    def _retry_wait(self, error: ClientError, attempt: int, deadline: float | None) -> float:
        """Seconds to wait before sending a failed call again; raises `error` when it is not to be."""
        if error.code != "UNAVAILABLE" or attempt >= self.retries:
            raise error
        wait = min(BACKOFF_FIRST_SECS * 2 ** attempt, BACKOFF_MAX_SECS) * random.uniform(0.5, 1)
        if deadline is not None and time.monotonic() + wait >= deadline:
            raise error
        return wait


def _kind(kind: str) -> str:
    if kind not in ("system", "cuda"):
        raise ValueError(f"shared-memory kind must be 'system' or 'cuda', got '{kind}'")
    return kind


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until the deadline (None: no deadline)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class Client(_Methods):
    """A blocking client; one connection, reused by every call, safe to share between threads."""

    def _make_transport(self, grpc_side: bool):
        transport = grpc_protocol.Transport if grpc_side else http_protocol.Transport
        return transport(self.endpoint.address, self.endpoint.tls)

    def _run(self, call: Call, timeout: float | None):
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return call.parse(self._transport.call(call, _remaining(deadline)))
            except ClientError as e:
                time.sleep(self._retry_wait(e, attempt, deadline))
            attempt += 1

    def stream(self, model: str, inputs: Mapping[str, Any],
               outputs: Iterable[str] | Mapping[str, Any] | None = None, version: str | int | None = None,
               timeout: float | None = None, parameters: Mapping[str, Any] | None = None,
               request_id: str = "") -> Stream:
        """Send one request over a ModelStreamInfer stream and iterate its responses ({name: array}
        each): one for an ordinary model, as many as a decoupled model sends. cancel() (or leaving the
        loop) ends the call."""
        request, regions = self._stream_request(model, inputs, outputs, version, parameters, request_id)
        deadline = self._deadline(timeout)
        return Stream(self._transport.stream(iter([request]), _remaining(deadline)), regions)

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Methods):
    """The asyncio client: the same methods as Client, each a coroutine. One connection (a grpc.aio
    channel or an aiohttp session), made on the first call in the running event loop."""

    def _make_transport(self, grpc_side: bool):
        transport = grpc_protocol.AsyncTransport if grpc_side else http_protocol.AsyncTransport
        return transport(self.endpoint.address, self.endpoint.tls)

    async def _run(self, call: Call, timeout: float | None):
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return call.parse(await self._transport.call(call, _remaining(deadline)))
            except ClientError as e:
                await asyncio.sleep(self._retry_wait(e, attempt, deadline))
            attempt += 1

    def stream(self, model: str, inputs: Mapping[str, Any],
               outputs: Iterable[str] | Mapping[str, Any] | None = None, version: str | int | None = None,
               timeout: float | None = None, parameters: Mapping[str, Any] | None = None,
               request_id: str = "") -> AsyncStream:
        """As Client.stream, for `async for`."""
        request, regions = self._stream_request(model, inputs, outputs, version, parameters, request_id)
        deadline = self._deadline(timeout)

        async def requests():
            yield request
        return AsyncStream(self._transport.stream(requests(), _remaining(deadline)), regions)

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# --- streams -------------------------------------------------------------------------------------

def _stream_item(message, regions: dict) -> tuple[dict | None, bool]:
    """A stream message's outputs (None for the empty response that only marks the end), and whether it
    is its request's last: a response without the final-response flag is the only one of an ordinary
    model's request."""
    if message.error_message:
        raise ClientError("UNKNOWN", message.error_message)
    response = message.infer_response
    final = grpc_protocol.response_parameters(response).get(grpc_protocol.FINAL, True)
    if final and not response.outputs:
        return None, True
    return grpc_protocol.outputs(response, regions), bool(final)


class Stream:
    """The responses of a streamed request; iterate it once."""

    def __init__(self, call, regions: dict):
        self._call = call
        self._regions = regions

    def __iter__(self):
        try:
            for message in self._call:
                outputs, final = _stream_item(message, self._regions)
                if outputs is not None:
                    yield outputs
                if final:
                    return
        except Exception as e:
            if _cancelled(e):
                return
            if isinstance(e, ClientError):
                raise
            raise grpc_protocol.stream_error(e) from None
        finally:
            self._call.cancel()

    def cancel(self) -> None:
        """End the call: the model's requests are cancelled, iteration stops."""
        self._call.cancel()


def _cancelled(e: BaseException) -> bool:
    code = getattr(e, "code", None)
    return callable(code) and code() is not None and code().name == "CANCELLED"


class AsyncStream:
    """The responses of a streamed request, for `async for`; iterate it once."""

    def __init__(self, call, regions: dict):
        self._call = call
        self._regions = regions
        self._done = False

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> dict:
        while not self._done:
            try:
                message = await self._call.read()
            except asyncio.CancelledError:
                if self._done:    # cancel() ended the call while it was being read
                    break
                self.cancel()     # the task reading it was cancelled
                raise
            except Exception as e:
                self._done = True
                if _cancelled(e):
                    break
                raise grpc_protocol.stream_error(e) from None
            if message is grpc_protocol.EOF:
                break
            try:
                outputs, final = _stream_item(message, self._regions)
            except ClientError:
                self.cancel()
                raise
            if final:
                self.cancel()
            if outputs is not None:
                return outputs
        self._done = True
        raise StopAsyncIteration

    def cancel(self) -> None:
        """End the call: the model's requests are cancelled, iteration stops."""
        self._done = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()
