"""The one interface the gRPC and HTTP frontends use: inference (with tensors in client shared memory),
health, metadata, statistics, the repository API and the shared-memory registry. The frontends only
translate their wire to these calls and back.

`DataPlane` answers in the process that owns the models. A frontend in a process of its own holds a
`RemoteDataPlane` (daemon/frontends.py) with the same methods, each a call over a channel to that
process; so every method is a coroutine and takes and returns plain, picklable values."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from naiad.daemon import EXTENSIONS, SERVER_NAME, VERSION, cuda, logs
from naiad.daemon.errors import InvalidArgument, Unimplemented
from naiad.daemon.inference import InferRequest, InferResponse, SharedInput
from naiad.daemon.model_config import to_dict
from naiad.daemon.registry import Registry
from naiad.daemon.served_model import ServedModel, checked
from naiad.daemon.shared_memory import SharedMemory

# the methods a frontend calls (RemoteDataPlane forwards exactly these)
METHODS = ("infer", "stream", "ready", "model_ready", "server_metadata", "model_metadata", "model_config",
           "statistics", "index", "load", "unload", "register_system", "register_cuda", "unregister",
           "region_status", "check_shared_memory", "log_settings", "update_log_settings")

log = logging.getLogger(__name__)


class DataPlane:
    def __init__(self, registry: Registry, shared_memory: SharedMemory, strict_readiness: bool = True):
        self.registry = registry
        self.shared_memory = shared_memory
        self.strict_readiness = strict_readiness
        # called with new log settings, for the processes that log on their own (frontends.py)
        self.log_listeners: list[Callable[[logs.LogSettings], None]] = []

    async def infer(self, request: InferRequest) -> tuple[str, InferResponse]:
        """Run a request on the model version it names: the version that ran it, and its response.
        Raises NaiadError on failure."""
        version, answer = self.submit(request)
        return version, checked(await answer)

    def submit(self, request: InferRequest) -> tuple[str, asyncio.Future]:
        """infer without a coroutine: the version that runs the request and a future of its response,
        read with `checked` (ServedModel.submit). Raises NaiadError when the request is refused
        at once."""
        served = self.registry.get(request.model_name, request.model_version)
        if not _uses_shared_memory(request):
            return served.version_text, served.submit(request)
        return served.version_text, asyncio.ensure_future(self._in_regions(served, request))

    async def _in_regions(self, served: ServedModel, request: InferRequest) -> InferResponse:
        used = self.shared_memory.attach(request)
        # The regions stay in use until the model is done with the request, even if the client goes
        # away first: a region unregistered meanwhile is unmapped only then.
        try:
            running = served.submit(request)
        except BaseException:
            self.shared_memory.detach(used)
            raise

        def release(done: asyncio.Future) -> None:
            if not done.cancelled():
                done.exception()  # taken here too: the client that awaited it may be gone
            self.shared_memory.detach(used)

        running.add_done_callback(release)
        return await asyncio.shield(running)

    async def stream(self, request: InferRequest) -> AsyncIterator[tuple[str, InferResponse | None, bool]]:
        """The responses to a request as its model sends them: (version, response, final); a model
        that is not decoupled sends one. Raises NaiadError before the first when the request fails."""
        served = self.registry.get(request.model_name, request.model_version)
        if not served.decoupled:
            yield (*await self.infer(request), True)
            return
        if any(output.where is not None for output in request.requested_outputs or ()):
            raise Unimplemented(f"model '{served.name}' is decoupled: its outputs come in the responses, "
                                f"not in shared memory")
        used = self.shared_memory.attach(request) if _uses_shared_memory(request) else []
        try:
            async for response, final in served.stream(request):
                yield served.version_text, response, final
        finally:
            self.shared_memory.detach(used)

    # --- health and metadata ----------------------------------------------------------------------

    async def ready(self) -> bool:
        return self.registry.server_ready(self.strict_readiness)

    async def model_ready(self, name: str, version: str) -> bool:
        return self.registry.is_ready(name, version)

    async def server_metadata(self) -> dict:
        extensions = list(EXTENSIONS)
        if self.shared_memory.allowed:
            extensions.append("system_shared_memory")
            if cuda.available():
                extensions.append("cuda_shared_memory")
        return {"name": SERVER_NAME, "version": VERSION, "extensions": extensions}

    async def model_metadata(self, name: str, version: str) -> dict:
        metadata = self.registry.get(name, version).metadata()
        metadata["versions"] = self.registry.versions_of(name)
        return metadata

    async def model_config(self, name: str, version: str) -> dict:
        return to_dict(self.registry.get(name, version).config)

    async def statistics(self, name: str, version: str) -> list[dict]:
        return self.registry.statistics(name, version)

    # --- the repository API -----------------------------------------------------------------------

    async def index(self, ready_only: bool) -> list[dict]:
        return self.registry.index(ready_only=ready_only)

    async def load(self, name: str, parameters: dict[str, str | bytes]) -> None:
        """The repository API's load, with its parameters: `config` (JSON text) and
        `file:<version>/<name>` (the file's bytes)."""
        config, files = None, {}
        for key, value in parameters.items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidArgument("load parameter 'config' must be the configuration as JSON text")
                config = value
            elif key.startswith("file:"):
                if not isinstance(value, bytes):
                    raise InvalidArgument(f"load parameter '{key}' must hold the file's contents")
                files[key[len("file:"):]] = value
            else:
                raise InvalidArgument(f"load parameter '{key}' is not known; known: config, "
                                      f"file:<version>/<name>")
        await self.registry.load(name, config, files or None)

    async def unload(self, name: str) -> None:
        await self.registry.unload(name)

    # --- logging (Triton's logging extension) -----------------------------------------------------

    async def log_settings(self) -> dict:
        return logs.current().to_triton()

    async def update_log_settings(self, changes: dict) -> dict:
        """Change the log settings of every process of the server; raises InvalidArgument naming a bad
        key. Frontend processes change at once, worker processes when they next start."""
        settings = logs.current().updated(changes)
        if settings == logs.current():
            return settings.to_triton()
        logs.apply(settings)
        for listener in self.log_listeners:
            listener(settings)
        log.info("log settings changed: %s", settings.to_triton())
        return settings.to_triton()

    # --- client shared memory ---------------------------------------------------------------------

    async def check_shared_memory(self) -> None:
        """Raises when client shared memory is turned off."""
        self.shared_memory.check_allowed()

    async def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self.shared_memory.register_system(name, key, offset, byte_size)

    async def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        self.shared_memory.register_cuda(name, raw_handle, device_id, byte_size)

    async def unregister(self, kind: str, name: str) -> None:
        """Unregister a region of `kind` ("system" or "cuda"), or all of them when name is ""."""
        self.shared_memory.unregister(kind, name)

    async def region_status(self, kind: str, name: str) -> list[dict]:
        return self.shared_memory.status(kind, name)


def _uses_shared_memory(request: InferRequest) -> bool:
    return (any(isinstance(value, SharedInput) for value in request.inputs.values())
            or any(output.where is not None for output in request.requested_outputs or ()))
