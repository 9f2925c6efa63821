"""What the gRPC and HTTP frontends share: inference with tensors in client shared memory, model
metadata and the repository API's load parameters. The frontends only translate their wire to these
calls and back."""
from __future__ import annotations

import asyncio

from naiad.daemon import EXTENSIONS, SERVER_NAME, VERSION, cuda
from naiad.daemon.errors import InvalidArgument
from naiad.daemon.inference import InferRequest, InferResponse, SharedInput
from naiad.daemon.registry import Registry
from naiad.daemon.served_model import ServedModel
from naiad.daemon.shared_memory import SharedMemory


class DataPlane:
    def __init__(self, registry: Registry, shared_memory: SharedMemory):
        self.registry = registry
        self.shared_memory = shared_memory

    async def infer(self, request: InferRequest) -> tuple[ServedModel, InferResponse]:
        """Run a request on the model version it names; raises NaiadError on failure."""
        served = self.registry.get(request.model_name, request.model_version)
        if not _uses_shared_memory(request):
            return served, await served.infer(request)
        used = self.shared_memory.attach(request)
        # The regions stay in use until the model is done with the request, even if the client goes
        # away first: a region unregistered meanwhile is unmapped only then.
        running = asyncio.ensure_future(served.infer(request))

        def release(task: asyncio.Future) -> None:
            if not task.cancelled():
                task.exception()  # taken here too: the client that awaited it may be gone
            self.shared_memory.detach(used)

        running.add_done_callback(release)
        return served, await asyncio.shield(running)

    def server_metadata(self) -> dict:
        extensions = list(EXTENSIONS)
        if self.shared_memory.allowed:
            extensions.append("system_shared_memory")
            if cuda.available():
                extensions.append("cuda_shared_memory")
        return {"name": SERVER_NAME, "version": VERSION, "extensions": extensions}

    def model_metadata(self, name: str, version: str) -> dict:
        metadata = self.registry.get(name, version).metadata()
        metadata["versions"] = self.registry.versions_of(name)
        return metadata

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


def _uses_shared_memory(request: InferRequest) -> bool:
    return (any(isinstance(value, SharedInput) for value in request.inputs.values())
            or any(output.where is not None for output in request.requested_outputs or ()))

