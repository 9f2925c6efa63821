"""The HTTP/REST frontend: KServe v2 endpoints and Triton's extensions on aiohttp, with JSON tensors and
the binary tensor data extension. Translates HTTP to naiad's core types and back; nothing else."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import resource
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ml_dtypes
import numpy as np
from aiohttp import hdrs, http_exceptions, web

from naiad.daemon import datatypes
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.errors import (BodyTimeout, Internal, InvalidArgument, NaiadError, TooLarge, Unimplemented,
                                 UnsupportedEncoding)
from naiad.daemon.inference import (InferRequest, InferResponse, Placed, RequestedOutput, SharedInput,
                                    check_tensor_parameters, region_slice, scheduling_parameters)
from naiad.daemon.settings import Settings

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_INTEGER_KINDS = "iu"
_JSON_NAMES = {dict: "object", list: "list", str: "string"}
# Bodies larger than this are decompressed and decoded in a worker thread, so that the event loop (health
# checks, every other request) keeps running meanwhile. Few threads: each holds up to a body's worth.
_DECODE_IN_THREAD_BYTES = 256 << 10
_DECODERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="http-decode")
# Content-Encoding -> zlib's wbits ("deflate" is the zlib format; _inflate also takes raw deflate)
_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ClientGone(Exception):
    """The client closed its connection before its whole body arrived: there is no one to answer."""


def _json(value: Any, status: int = 200) -> web.Response:
    # allow_nan=False: bare NaN and Infinity are not JSON, and clients' parsers refuse them
    return web.Response(body=json.dumps(value, allow_nan=False).encode(), status=status,
                        content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


def _parse_json(body: bytes, what: str, max_elements: int) -> Any:
    """The JSON in body. A body that may hold more than max_elements values is refused before anything
    is built: each value comes first in its list or object, or after a comma, so commas and brackets
    count them from above, at memchr's speed."""
    if not body:
        return {}
    bound = body.count(b",") + body.count(b"[") + body.count(b"{") + 1
    if bound > max_elements:
        raise TooLarge(f"{what} may hold up to {bound} JSON values (counting its commas and "
                             f"brackets); this server takes at most {max_elements} "
                             f"(--http-max-json-elements): send large tensors as binary data")
    # A large body is parsed in a worker thread, where Python-level number hooks let the interpreter
    # hand the GIL to the event loop now and then; the C parser alone would hold it to the end.
    hooks = {"parse_int": _int, "parse_float": _float} if len(body) > _DECODE_IN_THREAD_BYTES else {}
    try:
        return json.loads(body, **hooks)
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{what} is not valid JSON: {e}")


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float:
    return float(text)


async def _off_loop(size: int, function, *args):
    """function(*args), in a worker thread when `size` bytes make it slow enough to hold up the loop."""
    if size <= _DECODE_IN_THREAD_BYTES:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, function, *args)


# --- the body ------------------------------------------------------------------------------------

def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is larger than {limit} bytes, the most this server takes "
                          f"(--http-max-input-size)")


def _declared_too_large(request: web.Request, limit: int) -> web.Response | None:
    """A 413 for a request whose Content-Length is over the limit, before any of its body is read."""
    length = request.content_length
    if length is not None and length > limit:
        return _error(_too_large(limit).message, 413)
    return None


async def read_body(request: web.Request, settings: Settings) -> bytes:
    """The request's body with its Content-Encoding undone, within the size and time limits. The size
    is checked as the bytes arrive, and as they inflate; an over-limit body is never held whole."""
    limit = settings.http_max_input_size
    if _declared_too_large(request, limit) is not None:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.http_body_timeout_secs):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {settings.http_body_timeout_secs:g} s "
                             f"(--http-body-timeout-secs)")
    except (ConnectionError, web.RequestPayloadError):
        raise ClientGone()
    body = b"".join(chunks)
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    if encoding == "identity" or not body:
        return body
    if encoding not in _ENCODINGS:
        raise UnsupportedEncoding(f"Content-Encoding '{encoding}' is not supported; send gzip, deflate or "
                             f"identity")
    # always in a thread: how long inflating takes has little to do with the compressed size
    return await asyncio.get_running_loop().run_in_executor(_DECODERS, _inflate, body, encoding, limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip or deflate, never holding more than limit + 1 bytes of output (a 200 KB gzip body may
    inflate to 200 MB)."""
    wbits = _ENCODINGS[encoding]
    if encoding == "deflate" and body[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS   # raw deflate, without the zlib header, as some clients send it
    parts, size, rest = [], 0, body
    try:
        while rest:   # gzip data may be several members, one after the other
            inflater = zlib.decompressobj(wbits)
            part = inflater.decompress(rest, limit - size + 1)
            size += len(part)
            if size > limit:
                raise TooLarge(f"the request body inflates to more than {limit} bytes, the most "
                                     f"this server takes (--http-max-input-size)")
            if not inflater.eof:
                raise InvalidArgument(f"the request body's {encoding} data is cut short")
            parts.append(part)
            rest = inflater.unused_data
    except zlib.error as e:
        raise InvalidArgument(f"the request body is not {encoding} data, as its Content-Encoding says "
                             f"({e})")
    return b"".join(parts)


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
    """A shape from JSON, checked by the rule both frontends share."""
    datatypes.check_shape("input", name, shape)
    return shape


def _flatten(name: str, data: Any, rank: int, out: list | None = None) -> list:
    """The values of nested lists, row-major; nested deeper than the tensor's rank is refused."""
    out = [] if out is None else out
    if isinstance(data, list):
        if rank == 0:
            raise InvalidArgument(f"input '{name}': data nests lists deeper than its shape's dimensions")
        for item in data:
            _flatten(name, item, rank - 1, out)
    else:
        out.append(data)
    return out


def _nesting_limit(shape: list[int]) -> int:
    """How deep a tensor's data may nest lists: one per dimension (a flat list for any shape)."""
    return max(len(shape), 1)


def _from_json(name: str, datatype: datatypes.DataType, shape: list[int], data: Any) -> np.ndarray:
    count = datatypes.element_count(shape)
    if datatype is datatypes.BYTES:
        flat = _flatten(name, data, _nesting_limit(shape))
        if len(flat) != count:
            raise InvalidArgument(f"input '{name}': shape {shape} needs {count} elements, data holds "
                                  f"{len(flat)}")
        array = np.empty(count, dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str):
                raise InvalidArgument(f"input '{name}': BYTES data in JSON must be strings, element "
                                      f"{i} is {json.dumps(value)[:40]}")
            array[i] = datatypes.text_element(name, i, value)
        return array.reshape(shape)
    try:
        array = np.array(data)
    except (ValueError, RecursionError):
        raise InvalidArgument(f"input '{name}': data must be a flat or nested (row-major) list of "
                              f"numbers of one shape")
    if array.ndim > _nesting_limit(shape):
        raise InvalidArgument(f"input '{name}': data nests lists {array.ndim} deep, deeper than its "
                              f"shape {shape}")
    if array.size != count:
        raise InvalidArgument(f"input '{name}': shape {shape} needs {count} elements, data holds "
                              f"{array.size}")
    kind = datatype.numpy.kind
    if count and kind in _INTEGER_KINDS and array.dtype.kind not in _INTEGER_KINDS:
        # numpy reads integers beyond int64 (large UINT64 values) as floats: check them one by one
        flat = _flatten(name, data, _nesting_limit(shape))
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
    converted = array.astype(datatype.numpy)
    if count and converted.dtype.kind not in "biu" and np.isinf(converted).any():
        # a number beyond FP16's (or BF16's, FP32's) range would silently become infinity
        if (np.isinf(converted) & ~np.isinf(array)).any():
            largest = ml_dtypes.finfo(datatype.numpy).max
            raise InvalidArgument(f"input '{name}': a value is outside the range of {datatype} "
                                  f"(-{largest:g} to {largest:g})")
    return converted.reshape(shape)


def _scalar_parameters(container: dict, where: str) -> dict:
    """A 'parameters' object. Its values are strings, numbers and booleans (KServe's rule, and all that
    gRPC can carry): nothing nested, which would reach models and their JSON unbounded."""
    parameters = _field(container, "parameters", dict, where, required=False) or {}
    for key, value in parameters.items():
        if isinstance(value, (dict, list)):
            raise InvalidArgument(f"{where}: parameter '{key}' must be a string, number or boolean, got "
                                  f"a JSON {_JSON_NAMES[type(value)]}")
    return parameters


def decode_request(model: str, version: str, body: bytes, header_length: str | None,
                   max_json_elements: int) -> tuple[InferRequest, bool]:
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
    header = _parse_json(body, "the request's JSON header", max_json_elements)
    if not isinstance(header, dict):
        raise InvalidArgument("the request must be a JSON object with 'inputs'")
    parameters = _scalar_parameters(header, "request")
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
        tensor_params = _scalar_parameters(tensor, where)
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
            output_params = _scalar_parameters(output, f"output '{name}'")
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
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise InvalidArgument(f"output '{name}' holds NaN or infinity, which JSON cannot carry; ask for "
                              f"it with parameters.binary_data: true")
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
            raw = datatypes.raw_view(array)
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
    try:
        body = json.dumps(header, allow_nan=False).encode()
    except ValueError:
        raise Internal(f"model '{request.model_name}' answered with parameters that hold NaN or "
                       f"infinity, which JSON cannot carry")
    if not chunks:
        return web.Response(body=body, content_type="application/json")
    return web.Response(body=b"".join([body, *chunks]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(body))})


# --- the endpoints -------------------------------------------------------------------------------

@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    """Every error leaves as {"error": "..."} with the status its kind maps to."""
    if log.isEnabledFor(logging.DEBUG):  # --log-verbose: a line per request
        log.debug("HTTP %s %s", request.method, request.path)
    try:
        return await handler(request)
    except BodyTimeout as e:
        # the client stalled: answer, and close at once rather than linger on its body
        response = _error(e.message, e.code.http_status)
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response
    except NaiadError as e:
        return _error(e.message, e.code.http_status)
    except ClientGone:
        log.debug("HTTP %s %s: the client closed its connection before sending its whole body",
                  request.method, request.path)
        return _error("the client closed its connection", 400)   # no one reads it
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(f"{request.method} {request.path}: {e.reason}", e.status)
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(f"{type(e).__name__}: {e}", 500)


class Endpoints:
    def __init__(self, plane: DataPlane, settings: Settings):
        self.plane = plane
        self.settings = settings

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
        body = await read_body(request, self.settings)
        try:
            infer_request, binary_default = await _off_loop(
                len(body), decode_request, info["model"], info.get("version", ""), body,
                request.headers.get(HEADER_LENGTH), self.settings.http_max_json_elements)
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
        body = await self._json_body(request)
        return _json(await self.plane.index(isinstance(body, dict) and body.get("ready") is True))

    async def load(self, request):
        parameters = self._parameters(await self._json_body(request))
        for key, value in parameters.items():
            if key.startswith("file:"):
                try:
                    parameters[key] = base64.b64decode(value, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    raise InvalidArgument(f"load parameter '{key}' must be base64-encoded file contents")
        await self.plane.load(request.match_info["model"], parameters)
        return web.Response()

    async def unload(self, request):
        self._parameters(await self._json_body(request))
        await self.plane.unload(request.match_info["model"])
        return web.Response()

    async def _json_body(self, request: web.Request) -> Any:
        body = await read_body(request, self.settings)
        return await _off_loop(len(body), _parse_json, body, "the request body",
                               self.settings.http_max_json_elements)

    @staticmethod
    def _parameters(parsed: Any) -> dict:
        parameters = parsed.get("parameters", {}) if isinstance(parsed, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidArgument("the request body must be a JSON object with an object 'parameters'")
        return parameters

    # --- logging (Triton's logging extension) -----------------------------------------------------

    async def log_settings(self, request):
        return _json(await self.plane.log_settings())

    async def update_log_settings(self, request):
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise InvalidArgument('the request body must be a JSON object of log settings, such as '
                                  '{"log_verbose_level": 1}')
        return _json(await self.plane.update_log_settings(body))

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
        await read_body(request, self.settings)
        await self.plane.unregister(_REGION_KINDS[request.match_info["kind"]],
                                    request.match_info.get("region", ""))
        return web.Response()

    async def region_status(self, request):
        return _json(await self.plane.region_status(_REGION_KINDS[request.match_info["kind"]],
                                                    request.match_info.get("region", "")))

    async def _region_body(self, request) -> dict:
        await self.plane.check_shared_memory()
        body = await self._json_body(request)
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


def _expect_handler(limit: int):
    """For `Expect: 100-continue`: a 413 in place of the 100 when Content-Length is over the limit,
    so that the client does not send the body at all."""
    async def expect(request: web.Request) -> web.Response | None:
        too_large = _declared_too_large(request, limit)
        if too_large is not None:
            return too_large
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            return _error(f"Expect: {request.headers[hdrs.EXPECT]} is not supported", 417)
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0   # the response proper has not started
        return None
    return expect


def make_app(plane: DataPlane, settings: Settings) -> web.Application:
    e = Endpoints(plane, settings)
    app = web.Application(client_max_size=settings.http_max_input_size, middlewares=[_errors])
    expect = _expect_handler(settings.http_max_input_size)

    def add_post(path: str, handler) -> None:
        app.router.add_post(path, handler, expect_handler=expect)

    model = "/v2/models/{model:[^/]+}"  # any model name, braces included
    versioned = model + "/versions/{version}"
    app.router.add_get("/v2/health/live", e.live)
    app.router.add_get("/v2/health/ready", e.ready)
    app.router.add_get("/v2", e.server_metadata)
    app.router.add_get("/v2/models/stats", e.statistics)
    for base in (model, versioned):
        app.router.add_get(base, e.model_metadata)
        app.router.add_get(base + "/ready", e.model_ready)
        app.router.add_get(base + "/config", e.model_config)
        add_post(base + "/infer", e.infer)
        app.router.add_get(base + "/stats", e.statistics)
    from naiad.daemon import http_generate  # here: it builds on this module's decoding
    http_generate.add_routes(app, plane, settings, add_post)
    add_post("/v2/repository/index", e.repository_index)
    add_post("/v2/repository/models/{model:[^/]+}/load", e.load)
    add_post("/v2/repository/models/{model:[^/]+}/unload", e.unload)
    add_post("/v2/systemsharedmemory/region/{region}/register", e.system_register)
    add_post("/v2/cudasharedmemory/region/{region}/register", e.cuda_register)
    for kind in _REGION_KINDS:
        base = "/v2/{kind:%s}" % kind
        for scope in (base, base + "/region/{region}"):
            app.router.add_get(scope + "/status", e.region_status)
            add_post(scope + "/unregister", e.unregister)
    app.router.add_route("*", "/v2/trace/setting", _unimplemented("tracing"))
    app.router.add_route("*", model + "/trace/setting", _unimplemented("tracing"))
    app.router.add_get("/v2/logging", e.log_settings)
    add_post("/v2/logging", e.update_log_settings)
    return app


async def start(plane: DataPlane, settings: Settings, shared_port: bool = False,
                shutdown_timeout: float = 60.0) -> web.AppRunner:
    """The HTTP server on settings' address and port, with their limits, listening; shared_port as in
    grpc_frontend.start. At cleanup, requests in flight get shutdown_timeout seconds to finish."""
    report_accept_failures_once_per_period(asyncio.get_running_loop())
    _quiet_malformed_requests()
    # auto_decompress off: read_body inflates, off the event loop and within the size limit
    runner = web.AppRunner(make_app(plane, settings), access_log=None, shutdown_timeout=shutdown_timeout,
                           auto_decompress=False, keepalive_timeout=settings.http_idle_timeout_secs)
    await runner.setup()
    await web.TCPSite(runner, settings.http_address, settings.http_port, reuse_port=shared_port).start()
    log.info("HTTP frontend listening on %s:%d", settings.http_address, settings.http_port)
    return runner


def _malformed_request(record: logging.LogRecord) -> bool:
    """False for aiohttp's report of a request that is not valid HTTP (logged at ERROR with a traceback
    by default): the client's fault, answered with a 400, and no line for the server's log."""
    fault = record.exc_info[1] if record.exc_info else None
    return not isinstance(fault, http_exceptions.BadHttpMessage)


def _quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if _malformed_request not in server_log.filters:
        server_log.addFilter(_malformed_request)


_ACCEPT_FAILED = "socket.accept() out of system resource"
_ACCEPT_REPORT_SECS = 10.0


class _AcceptFailures:
    """At the open-files limit, asyncio reports each failed accept() with a traceback, about a hundred a
    second for each listening socket (selector_events._accept_connection retries the whole backlog).
    This loop exception handler reports them once per period instead; anything else goes on to the
    handler it replaces."""

    def __init__(self, previous):
        self.previous = previous
        self.failed = 0
        self.next_report = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.failed += 1
        now = time.monotonic()
        if now >= self.next_report:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.error("cannot accept connections: %s; the open-files limit (%d) is reached: raise it "
                      "(ulimit -n). %d failure(s) since the last report; the next in %g s at the earliest",
                      context.get("exception"), soft, self.failed, _ACCEPT_REPORT_SECS)
            self.failed = 0
            self.next_report = now + _ACCEPT_REPORT_SECS


def report_accept_failures_once_per_period(loop: asyncio.AbstractEventLoop) -> None:
    if not isinstance(loop.get_exception_handler(), _AcceptFailures):
        loop.set_exception_handler(_AcceptFailures(loop.get_exception_handler()))
