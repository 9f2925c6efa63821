"""naiad's client library: numpy in, numpy out, over gRPC or HTTP, blocking or asyncio.

    from naiad.clients import Client
    client = Client("localhost:8001")            # or "http://localhost:8000"
    outputs = client.infer("simple", {"INPUT0": a, "INPUT1": b})

It speaks the KServe v2 protocol with Triton's extensions, so it works with any such server (naiad,
Triton, MLServer). docs/clients.md describes it; `tritonclient` stays fully supported by naiad."""
from naiad.clients.client import AsyncClient, AsyncStream, Client, Stream
from naiad.clients.errors import ClientError

__all__ = ["AsyncClient", "AsyncStream", "Client", "ClientError", "Stream"]
