"""HTTP: each call as a v2 REST request (JSON, with tensors as binary data after the JSON header, or as
JSON values for servers without that extension), and the connections that carry them: keep-alive
HTTP/1.1 connections of its own for blocking calls, aiohttp for asyncio."""
from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np
from naiad.clients import calls, tensors
from naiad.clients.calls import Call
from naiad.clients.errors import ClientError

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]      # looked up by lower-case name
    body: bytes


def error(reply: Reply) -> ClientError:
    """A failed call's ClientError, with the server's text."""
    try:
        message = json.loads(reply.body)["error"]
    except (ValueError, KeyError, TypeError):
        message = reply.body.decode(errors="replace") or f"HTTP status {reply.status}"
    return ClientError.from_http(reply.status, message)


def _json(reply: Reply) -> Any:
    if reply.status >= 300:
        raise error(reply)
    return json.loads(reply.body) if reply.body else None


def _nothing(reply: Reply) -> None:
    _json(reply)


def _ok(reply: Reply) -> bool:
    """A health endpoint's answer: 200 is yes; any other status (not ready, unknown model) is no."""
    return reply.status == 200


def _model_path(model: str, version) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    text = calls.version_text(version)
    return f"{path}/versions/{quote(text, safe='')}" if text else path


def _body(value: dict) -> bytes:
    return json.dumps(value).encode()


def _json_data(name: str, array: np.ndarray) -> list:
    """A tensor's values for JSON, flat: BYTES as text, FP16 and BF16 as numbers."""
    flat = array.reshape(-1)
    if flat.dtype.kind in "SUO":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
        except UnicodeDecodeError:
            raise ValueError(f"input '{name}': BYTES elements that are not UTF-8 text cannot travel as "
                             f"JSON; use binary data (binary_data=True) or gRPC") from None
    if flat.dtype.kind not in "biuf" or flat.dtype.itemsize < 4 and flat.dtype.kind == "f":
        flat = flat.astype(np.float32)
    return flat.tolist()


def infer_body(inputs: Mapping[str, Any], outputs, priority, parameters, request_id: str, binary: bool = True
               ) -> tuple[bytes, dict, dict]:
    """The body (JSON header, then every input's raw bytes; only JSON without `binary`), its headers,
    and the output regions."""
    header: dict[str, Any] = {}
    if request_id:
        header["id"] = request_id
    entries, chunks = [], []
    for tensor in calls.inputs_of(inputs, raw=binary):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.region is not None:
            entry["parameters"] = calls.region_parameters(tensor.region, tensor.region.nbytes)
        elif binary:
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            chunks.append(tensor.raw)
        else:
            entry["data"] = _json_data(tensor.name, tensor.array)
        entries.append(entry)
    header["inputs"] = entries
    wanted = calls.outputs_of(outputs)
    if wanted is not None:
        header["outputs"] = [{"name": name, "parameters": calls.region_parameters(region, region.byte_size)
                              if region is not None else {"binary_data": binary}}
                             for name, region in wanted]
    request_parameters = dict(parameters or {})
    if priority is not None:
        request_parameters["priority"] = priority
    if wanted is None and binary:
        request_parameters["binary_data_output"] = True
    header["parameters"] = request_parameters
    head = _body(header)
    if not chunks:
        return head, dict(_JSON), calls.output_regions(wanted)
    return b"".join([head, *chunks]), {HEADER_LENGTH: str(len(head))}, calls.output_regions(wanted)


def outputs(reply: Reply, regions: dict) -> dict:
    if reply.status >= 300:
        raise error(reply)
    length = reply.headers.get(HEADER_LENGTH.lower())
    body = memoryview(reply.body)
    if length is None:
        header, binary = json.loads(reply.body), body[:0]
    else:
        header, binary = json.loads(body[:int(length)].tobytes()), body[int(length):]
    found = {}
    offset = 0
    for output in header.get("outputs", []):
        name, datatype, shape = output["name"], output["datatype"], output["shape"]
        parameters = output.get("parameters") or {}
        if name in regions:
            found[name] = calls.placed(regions, name, datatype, shape, parameters)
        elif "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            found[name] = tensors.from_raw(datatype, shape, binary[offset:offset + size])
            offset += size
        else:
            found[name] = tensors.from_list(datatype, shape, output.get("data", []))
    return found


class Codec:
    """The calls over HTTP. Without `binary`, tensors travel as JSON values, for servers without the
    binary tensor data extension."""
    protocol = "http"

    def __init__(self, binary: bool = True):
        self.binary = binary

    def live(self) -> Call:
        return Call("GET", None, _ok, "/v2/health/live")

    def ready(self) -> Call:
        return Call("GET", None, _ok, "/v2/health/ready")

    def model_ready(self, model: str, version) -> Call:
        return Call("GET", None, _ok, _model_path(model, version) + "/ready")

    def server_metadata(self) -> Call:
        return Call("GET", None, _json, "/v2")

    def model_metadata(self, model: str, version) -> Call:
        return Call("GET", None, _json, _model_path(model, version))

    def model_config(self, model: str, version) -> Call:
        return Call("GET", None, _json, _model_path(model, version) + "/config")

    def statistics(self, model: str, version) -> Call:
        path = _model_path(model, version) + "/stats" if model else "/v2/models/stats"
        return Call("GET", None, lambda r: _json(r)["model_stats"], path)

    def repository_index(self, ready: bool) -> Call:
        return Call("POST", _body({"ready": ready}), _json, "/v2/repository/index", _JSON)

    def load_model(self, model: str, config: str | None, files: Mapping[str, bytes] | None) -> Call:
        parameters: dict[str, Any] = {}
        if config is not None:
            parameters["config"] = config
        for path, content in (files or {}).items():
            parameters[f"file:{path}"] = base64.b64encode(content).decode()
        body = _body({"parameters": parameters} if parameters else {})
        return Call("POST", body, _nothing, f"/v2/repository/models/{quote(model, safe='')}/load", _JSON)

    def unload_model(self, model: str, unload_dependents: bool) -> Call:
        body = _body({"parameters": {"unload_dependents": True}} if unload_dependents else {})
        return Call("POST", body, _nothing, f"/v2/repository/models/{quote(model, safe='')}/unload", _JSON)

    def register_system_shm(self, name: str, key: str, byte_size: int, offset: int) -> Call:
        body = _body({"key": key, "offset": offset, "byte_size": byte_size})
        return Call("POST", body, _nothing, f"/v2/systemsharedmemory/region/{quote(name, safe='')}/register",
                    _JSON)

    def register_cuda_shm(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> Call:
        body = _body({"raw_handle": {"b64": base64.b64encode(raw_handle).decode()}, "device_id": device_id,
                      "byte_size": byte_size})
        return Call("POST", body, _nothing, f"/v2/cudasharedmemory/region/{quote(name, safe='')}/register",
                    _JSON)

    def unregister_shm(self, kind: str, name: str) -> Call:
        base = "/v2/cudasharedmemory" if kind == "cuda" else "/v2/systemsharedmemory"
        path = f"{base}/region/{quote(name, safe='')}/unregister" if name else f"{base}/unregister"
        return Call("POST", b"", _nothing, path)

    def shm_status(self, kind: str, name: str) -> Call:
        base = "/v2/cudasharedmemory" if kind == "cuda" else "/v2/systemsharedmemory"
        path = f"{base}/region/{quote(name, safe='')}/status" if name else f"{base}/status"
        return Call("GET", None, _json, path)

    def infer(self, model, inputs, outputs_wanted, version, priority, parameters, request_id) -> Call:
        body, headers, regions = infer_body(inputs, outputs_wanted, priority, parameters, request_id, self.binary)
        return Call("POST", body, lambda r: outputs(r, regions), _model_path(model, version) + "/infer",
                    headers)


# --- the connections -----------------------------------------------------------------------------

def _unavailable(address: str, e: BaseException) -> ClientError:
    return ClientError("UNAVAILABLE", f"cannot reach {address}: {type(e).__name__}: {e}")


def _deadline(address: str, timeout: float | None) -> ClientError:
    return ClientError("DEADLINE_EXCEEDED", f"no answer from {address} within {timeout:g} s")


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as expected."""


class _Connection:
    """One keep-alive HTTP/1.1 connection: a request written with one send, its answer read with a
    buffered reader (http.client's email-based header parsing took a tenth of a small call's time)."""

    def __init__(self, host: str, port: int, tls: bool, timeout: float | None):
        sock = socket.create_connection((host, port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock, self.reader = sock, sock.makefile("rb")
        self.host = f"{host}:{port}".encode()

    def exchange(self, method: str, path: str, body: bytes | None, headers: dict | None) -> tuple[Reply, bool]:
        """The answer, and whether the connection may be used again."""
        lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self.host]
        lines += [f"{name}: {value}".encode() for name, value in (headers or {}).items()]
        if body is not None or method == "POST":
            lines.append(b"Content-Length: %d" % len(body or b""))
        self.sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))
        status_line = self.reader.readline(65537)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 answer: {status_line[:60]!r}")
        status = int(parts[1])
        found = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            found[name.strip().lower()] = value.strip()
        keep = parts[0] == b"HTTP/1.1" and found.get("connection", "").lower() != "close"
        if found.get("transfer-encoding", "").lower() == "chunked":
            data = self._chunked()
        elif "content-length" in found:
            data = self.reader.read(int(found["content-length"]))
        elif status in (204, 304) or 100 <= status < 200:
            data = b""
        else:
            data, keep = self.reader.read(), False    # the body ends with the connection
        return Reply(status, found, data), keep

    def _chunked(self) -> bytes:
        chunks = []
        while (size := int(self.reader.readline(65537).split(b";")[0], 16)) > 0:
            chunks.append(self.reader.read(size))
            self.reader.readline(65537)
        while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):   # trailers
            pass
        return b"".join(chunks)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Transport:
    """Keep-alive HTTP/1.1 connections, one per concurrent caller, reused; thread-safe."""

    def __init__(self, address: str, tls: bool = False):
        self.address = address
        self.host, _, port = address.rpartition(":")
        self.host = self.host.strip("[]")
        self.port = int(port)
        self.tls = tls
        self.idle: list[_Connection] = []
        self.lock = threading.Lock()

    def call(self, call: Call, timeout: float | None) -> Reply:
        while True:
            with self.lock:
                connection = self.idle.pop() if self.idle else None
            reused = connection is not None
            try:
                if connection is None:
                    connection = _Connection(self.host, self.port, self.tls, timeout)
                connection.settimeout(timeout)
                reply, keep = connection.exchange(call.method, call.path, call.request, call.headers)
            except TimeoutError:
                if connection is not None:
                    connection.close()
                raise _deadline(self.address, timeout) from None
            except (OSError, ValueError, ProtocolError) as e:
                if connection is not None:
                    connection.close()
                if reused:
                    continue    # the server closed a kept-alive connection: again on a new one
                raise _unavailable(self.address, e) from None
            if keep:
                with self.lock:
                    self.idle.append(connection)
            else:
                connection.close()
            return reply

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()


class AsyncTransport:
    """One aiohttp session (its connection pool), made on first use in the running event loop."""

    def __init__(self, address: str, tls: bool = False):
        self.address = address
        self.base = f"{'https' if tls else 'http'}://{address}"
        self.session = None

    async def call(self, call: Call, timeout: float | None) -> Reply:
        import aiohttp  # only asyncio HTTP users pay for importing it

        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            async with self.session.request(call.method, self.base + call.path, data=call.request,
                                            headers=call.headers,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return Reply(response.status, response.headers, await response.read())
        except TimeoutError:
            raise _deadline(self.address, timeout) from None
        except aiohttp.ClientError as e:
            raise _unavailable(self.address, e) from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
