"""The HTTP/REST frontend: KServe v2 endpoints and Triton's extensions on aiohttp, with JSON tensors and
the binary tensor data extension. Translates HTTP to naiad's core types and back; nothing else."""
from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

import numpy as np
from aiohttp import web

from naiad.daemon import datatypes
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.errors import InvalidArgument, NaiadError, Unimplemented
from naiad.daemon.inference import (InferRequest, InferResponse, Placed, RequestedOutput, SharedInput,
                                    check_tensor_parameters, region_slice, scheduling_parameters)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_INTEGER_KINDS = "iu"
_JSON_NAMES = {dict: "object", list: "list", str: "string"}


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(value).encode(), status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body) if body else {}
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}")


def _field(container: dict, key: str, kind: type, where: str, required: bool = True):
    """container[key], checked to be of `kind` (a JSON object, list or string)."""
    value = container.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{where}: missing '{key}'")
        return None
    if not isinstance(value, kind):
        raise InvalidArgument(f"{where}: '{key}' must be a JSON {_JSON_NAMES[kind]}, got "
                              f"{json.dumps(value)[:40]}")
    return value


# --- wire to core --------------------------------------------------------------------------------

def _shape(name: str, shape: list) -> list[int]:
    """A shape from JSON: each size a non-negative integer."""
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"input '{name}': shape {shape} must list sizes >= 0")
    return shape

def _flatten(data: Any, out: list) -> list:
    if isinstance(data, list):
        for item in data:
            _flatten(item, out)
    else:
        out.append(data)
    return out


def _from_json(name: str, datatype: datatypes.DataType, shape: list[int], data: Any) -> np.ndarray:
    count = datatypes.element_count(shape)
    if datatype is datatypes.BYTES:
        flat = _flatten(data, [])
        if len(flat) != count:
            raise InvalidArgument(f"input '{name}': shape {shape} needs {count} elements, data holds "
                                  f"{len(flat)}")
        array = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidArgument(f"input '{name}': BYTES data in JSON must be strings, element "
                                      f"{i} is {json.dumps(value)[:40]}")
            array[i] = value.encode()
        return array.reshape(shape)
    try:
        array = np.array(data)
    except (ValueError, RecursionError):
        raise InvalidArgument(f"input '{name}': data must be a flat or nested (row-major) list of "
                              f"numbers of one shape")
    if array.size != count:
        raise InvalidArgument(f"input '{name}': shape {shape} needs {count} elements, data holds "
                              f"{array.size}")
    kind = datatype.numpy.kind
    if count and kind in _INTEGER_KINDS and array.dtype.kind not in _INTEGER_KINDS:
        # numpy reads integers beyond int64 (large UINT64 values) as floats: check them one by one
        flat = _flatten(data, [])
        if not all(type(v) is int for v in flat):
            raise InvalidArgument(f"input '{name}': {datatype} data must be integers")
        array = np.array(flat, dtype=object)
    allowed = {"b": "b", "i": _INTEGER_KINDS + "O", "u": _INTEGER_KINDS + "O"}.get(kind, "iuf")
    if count and array.dtype.kind not in allowed:
        expected = {"b": "true/false"}.get(kind, "numbers")
        raise InvalidArgument(f"input '{name}': {datatype} data must be {expected}, got "
                              f"{json.dumps(array.reshape(-1)[:1].tolist())[1:-1]}")
    if count and kind in _INTEGER_KINDS:
        info = np.iinfo(datatype.numpy)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidArgument(f"input '{name}': a value is outside the range of {datatype} "
                                  f"({info.min} to {info.max})")
    return array.astype(datatype.numpy).reshape(shape)


def decode_request(model: str, version: str, body: bytes, header_length: str | None) -> tuple[
        InferRequest, bool]:
    """The request, and whether outputs go back as binary data unless an output says otherwise."""
    binary = memoryview(b"")
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} must be the JSON header's length, from 1 to the "
                                  f"body's {len(body)} bytes; got '{header_length}'")
        binary = memoryview(body)[length:]
        body = body[:length]
    header = _parse_json(body, "the request's JSON header")
    if not isinstance(header, dict):
        raise InvalidArgument("the request must be a JSON object with 'inputs'")
    parameters = _field(header, "parameters", dict, "request", required=False) or {}
    offset = 0
    inputs = {}
    for i, tensor in enumerate(_field(header, "inputs", list, "request")):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidArgument(f"{where}: expected an object with name, datatype, shape, data")
        name = _field(tensor, "name", str, where)
        where = f"input '{name}'"
        if name in inputs:
            raise InvalidArgument(f"{where} appears twice in the request")
        text = _field(tensor, "datatype", str, where)
        datatype = datatypes.BY_NAME.get(text)
        if datatype is None:
            raise InvalidArgument(f"{where}: unknown datatype '{text}'; expected one of "
                                  f"{', '.join(datatypes.BY_NAME)}")
        shape = _shape(name, _field(tensor, "shape", list, where))
        tensor_params = _field(tensor, "parameters", dict, where, required=False) or {}
        check_tensor_parameters("input", name, tensor_params)
        size = tensor_params.get("binary_data_size")
        shared = region_slice("input", name, tensor_params)
        if shared is not None:
            inputs[name] = SharedInput(datatype, tuple(shape), shared)
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
                raise InvalidArgument(f"{where}: binary_data_size {size!r} does not fit the "
                                      f"{len(binary) - offset} bytes of binary data left")
            inputs[name] = datatypes.from_raw(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = _from_json(name, datatype, shape, tensor["data"])
        else:
            raise InvalidArgument(f"{where}: give its values in 'data' or as binary data with "
                                  f"parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data follow the inputs that "
                              f"binary_data_size accounts for")
    binary_default = parameters.get("binary_data_output") is True
    requested = None
    outputs = _field(header, "outputs", list, "request", required=False)
    if outputs is not None:
        requested = []
        for i, output in enumerate(outputs):
            if not isinstance(output, dict):
                raise InvalidArgument(f"outputs[{i}]: expected an object with 'name'")
            name = _field(output, "name", str, f"outputs[{i}]")
            output_params = _field(output, "parameters", dict, f"output '{name}'", required=False) or {}
            check_tensor_parameters("output", name, output_params)
            binary = output_params.get("binary_data")
            requested.append(RequestedOutput(name, binary if isinstance(binary, bool) else None,
                                             region_slice("output", name, output_params)))
    request_id = header.get("id", "")
    priority, timeout_us = scheduling_parameters(parameters)
    request = InferRequest(model, version, inputs, requested,
                           request_id if isinstance(request_id, str) else str(request_id), parameters,
                           priority, timeout_us)
    return request, binary_default


# --- core to wire --------------------------------------------------------------------------------

def _to_json(name: str, array: np.ndarray) -> list:
    flat = array.reshape(-1)
    if flat.dtype == object or flat.dtype.kind in "SU":
        try:
            return [datatypes.element_bytes(v).decode() for v in flat]
        except UnicodeDecodeError:
            raise InvalidArgument(f"output '{name}' holds bytes that are not UTF-8 text, which JSON "
                                  f"cannot carry; ask for it with parameters.binary_data: true")
    if flat.dtype.kind == "f" and flat.dtype.itemsize < 4 or flat.dtype == datatypes.BF16.numpy:
        flat = flat.astype(np.float32)
    return flat.tolist()


def encode_response(request: InferRequest, model_version: str, response: InferResponse,
                    binary_default: bool) -> web.Response:
    binary_outputs = {o.name: o.binary for o in request.requested_outputs or () if o.binary is not None}
    outputs, chunks = [], []
    for name, array in response.outputs.items():
        if isinstance(array, Placed):
            # no data and no parameters: clients take an output's parameters as binary data's
            outputs.append({"name": name, "datatype": array.datatype.name, "shape": list(array.shape)})
            continue
        entry = {"name": name, "datatype": datatypes.of_array(array).name, "shape": list(array.shape)}
        if binary_outputs.get(name, binary_default):
            raw = datatypes.to_raw(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(name, array)
        outputs.append(entry)
    header = {"model_name": request.model_name, "model_version": model_version, "outputs": outputs}
    if request.id:
        header["id"] = request.id
    if response.parameters:
        header["parameters"] = response.parameters
    body = json.dumps(header).encode()
    if not chunks:
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=b"".join([body, *chunks]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(body))})


# --- the endpoints -------------------------------------------------------------------------------

@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves as {"error": "..."} with the status its kind maps to."""
    try:
        return await handler(request)
    except NaiadError as e:
        return _error(e.message, e.code.http_status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(f"{request.method} {request.path}: {e.reason}", e.status)
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(f"{type(e).__name__}: {e}", 500)


class Endpoints:
    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def live(self, request):
        return web.Response()

    async def ready(self, request):
        return web.Response(status=200 if await self.plane.ready() else 400)

    async def server_metadata(self, request):
        return _json(await self.plane.server_metadata())

    async def model_metadata(self, request):
        info = request.match_info
        return _json(await self.plane.model_metadata(info["model"], info.get("version", "")))

    async def model_ready(self, request):
        info = request.match_info
        ready = await self.plane.model_ready(info["model"], info.get("version", ""))
        return web.Response(status=200 if ready else 400)

    async def model_config(self, request):
        info = request.match_info
        return _json(await self.plane.model_config(info["model"], info.get("version", "")))

    async def infer(self, request):
        info = request.match_info
        body = await request.read()
        try:
            infer_request, binary_default = decode_request(
                info["model"], info.get("version", ""), body, request.headers.get(HEADER_LENGTH))
        except InvalidArgument:
            # an unknown model is the first thing to report
            await self.plane.model_metadata(info["model"], info.get("version", ""))
            raise
        version, response = await self.plane.infer(infer_request)
        return encode_response(infer_request, version, response, binary_default)

    async def statistics(self, request):
        info = request.match_info
        return _json({"model_stats": await self.plane.statistics(info.get("model", ""),
                                                                 info.get("version", ""))})

    async def repository_index(self, request):
        body = _parse_json(await request.read(), "the request body")
        return _json(await self.plane.index(isinstance(body, dict) and body.get("ready") is True))

    async def load(self, request):
        parameters = self._parameters(await request.read())
        for key, value in parameters.items():
            if key.startswith("file:"):
                try:
                    parameters[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise InvalidArgument(f"load parameter '{key}' must be base64-encoded file contents")
        await self.plane.load(request.match_info["model"], parameters)
        return web.Response()

    async def unload(self, request):
        self._parameters(await request.read())
        await self.plane.unload(request.match_info["model"])
        return web.Response()

    @staticmethod
    def _parameters(body: bytes) -> dict:
        parsed = _parse_json(body, "the request body")
        parameters = parsed.get("parameters", {}) if isinstance(parsed, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidArgument("the request body must be a JSON object with an object 'parameters'")
        return parameters

    # --- shared memory ----------------------------------------------------------------------------

    async def system_register(self, request):
        body = await self._region_body(request)
        await self.plane.register_system(request.match_info["region"], _field(body, "key", str, "register"),
                                         _count(body, "offset", 0), _count(body, "byte_size"))
        return web.Response()

    async def cuda_register(self, request):
        body = await self._region_body(request)
        handle = _field(body, "raw_handle", dict, "register")
        try:
            raw_handle = base64.b64decode(_field(handle, "b64", str, "register: raw_handle"), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument("register: raw_handle.b64 must be the CUDA IPC handle in base64")
        await self.plane.register_cuda(request.match_info["region"], raw_handle,
                                       _count(body, "device_id", 0), _count(body, "byte_size"))
        return web.Response()

    async def unregister(self, request):
        await request.read()
        await self.plane.unregister(_REGION_KINDS[request.match_info["kind"]],
                                    request.match_info.get("region", ""))
        return web.Response()

    async def region_status(self, request):
        return _json(await self.plane.region_status(_REGION_KINDS[request.match_info["kind"]],
                                                    request.match_info.get("region", "")))

    async def _region_body(self, request) -> dict:
        await self.plane.check_shared_memory()
        body = _parse_json(await request.read(), "the request body")
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return body


_REGION_KINDS = {"systemsharedmemory": "system", "cudasharedmemory": "cuda"}


def _count(body: dict, key: str, default: int | None = None) -> int:
    """A non-negative integer field of a register request."""
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"register: '{key}' must be an integer >= 0, got {json.dumps(value)[:40]}")
    return value


def _unimplemented(what: str):
    async def handler(request):
        raise Unimplemented(f"{what} is not supported yet")
    return handler


def make_app(plane: DataPlane, max_body_bytes: int) -> web.Application:
    e = Endpoints(plane)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    model = "/v2/models/{model}"
    versioned = model + "/versions/{version}"
    app.router.add_get("/v2/health/live", e.live)
    app.router.add_get("/v2/health/ready", e.ready)
    app.router.add_get("/v2", e.server_metadata)
    app.router.add_get("/v2/models/stats", e.statistics)
    for base in (model, versioned):
        app.router.add_get(base, e.model_metadata)
        app.router.add_get(base + "/ready", e.model_ready)
        app.router.add_get(base + "/config", e.model_config)
        app.router.add_post(base + "/infer", e.infer)
        app.router.add_get(base + "/stats", e.statistics)
    app.router.add_post("/v2/repository/index", e.repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", e.load)
    app.router.add_post("/v2/repository/models/{model}/unload", e.unload)
    app.router.add_post("/v2/systemsharedmemory/region/{region}/register", e.system_register)
    app.router.add_post("/v2/cudasharedmemory/region/{region}/register", e.cuda_register)
    for kind in _REGION_KINDS:
        base = "/v2/{kind:%s}" % kind
        for scope in (base, base + "/region/{region}"):
            app.router.add_get(scope + "/status", e.region_status)
            app.router.add_post(scope + "/unregister", e.unregister)
    app.router.add_route("*", "/v2/trace/setting", _unimplemented("tracing"))
    app.router.add_route("*", model + "/trace/setting", _unimplemented("tracing"))
    app.router.add_route("*", "/v2/logging", _unimplemented("changing log settings at run time"))
    return app


async def start(plane: DataPlane, address: str, port: int, max_body_bytes: int,
                shared_port: bool = False) -> web.AppRunner:
    """The HTTP server, listening; shared_port as in grpc_frontend.start."""
    runner = web.AppRunner(make_app(plane, max_body_bytes), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_port=shared_port).start()
    log.info("HTTP frontend listening on %s:%d", address, port)
    return runner
