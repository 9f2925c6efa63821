"""Triton's generate extension on HTTP: `POST /v2/models/{m}[/versions/{v}]/generate` and
`.../generate_stream`. The request is one flat JSON object whose fields are the model's inputs by name
(`"text_input": "hello"`, `"max_tokens": 8`), plus `parameters` and `id`; each response is one such
object with the outputs by name. generate_stream sends a decoupled model's responses as server-sent
events (`data: {...}` each), which is how token streams reach browsers and curl."""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import web

from naiad.daemon import datatypes
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.errors import InvalidArgument, NaiadError
from naiad.daemon.http_frontend import (_from_json, _json, _parse_json, _scalar_parameters, _to_json,
                                        read_body)
from naiad.daemon.inference import InferRequest, InferResponse, scheduling_parameters
from naiad.daemon.settings import Settings

_RESERVED = ("id", "parameters")


def decode(model: str, version: str, config: dict, body: bytes, max_elements: int) -> InferRequest:
    """The request a generate body asks for, its fields typed and shaped by the model's configuration."""
    fields = _parse_json(body, "the generate request", max_elements)
    if not isinstance(fields, dict):
        raise InvalidArgument("a generate request must be a JSON object whose fields are the model's inputs")
    inputs = {i["name"]: i for i in config.get("input", [])}
    batching = config.get("max_batch_size", 0) > 0
    tensors = {}
    for name, value in fields.items():
        if name in _RESERVED:
            continue
        spec = inputs.get(name)
        if spec is None:
            raise InvalidArgument(f"field '{name}' is not an input of model '{model}'; its inputs are "
                                  f"{', '.join(inputs) or 'none'}")
        datatype = datatypes.parse(spec["data_type"])
        shape = _shape(name, value, spec.get("dims", []))
        tensors[name] = _from_json(name, datatype, ([1] if batching else []) + shape, value)
    parameters = _scalar_parameters(fields, "generate request")
    priority, timeout_us = scheduling_parameters(parameters)
    request_id = fields.get("id", "")
    return InferRequest(model, version, tensors, None, str(request_id), parameters, priority, timeout_us)


def _shape(name: str, value: Any, dims: list[int]) -> list[int]:
    """A field's shape: the configured dims, their one variable size (-1) taken from the value's
    element count; else the value's own nesting (a scalar is one element)."""
    count = int(np.size(np.array(value, dtype=object))) if isinstance(value, list) else 1
    variable = [i for i, d in enumerate(dims) if d == -1]
    fixed = int(np.prod([d for d in dims if d != -1])) if dims else 1
    if len(variable) <= 1 and dims and fixed and count % fixed == 0:
        return [count // fixed if d == -1 else d for d in dims]
    return list(np.shape(value)) if isinstance(value, list) else [1]


def encode(request: InferRequest, version: str, response: InferResponse) -> dict:
    """One response as a flat JSON object: each output by name, one element as a scalar."""
    answer: dict[str, Any] = {"model_name": request.model_name, "model_version": version}
    if request.id:
        answer["id"] = request.id
    for name, array in response.outputs.items():
        values = _to_json(name, np.asarray(array))
        answer[name] = values[0] if len(values) == 1 else values
    return answer


class GenerateEndpoints:
    def __init__(self, plane: DataPlane, settings: Settings):
        self.plane = plane
        self.settings = settings

    async def _request(self, request: web.Request) -> InferRequest:
        model, version = request.match_info["model"], request.match_info.get("version", "")
        config = await self.plane.model_config(model, version)   # an unknown model is reported first
        body = await read_body(request, self.settings)
        return decode(model, version, config, body, self.settings.http_max_json_elements)

    async def generate(self, request: web.Request) -> web.Response:
        """One response (a decoupled model must send exactly one)."""
        infer_request = await self._request(request)
        version, response = await self.plane.infer(infer_request)
        return _json(encode(infer_request, version, response))

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """Each response as a server-sent event; an error after the first one is an event too."""
        infer_request = await self._request(request)
        responses = self.plane.stream(infer_request)
        stream = None
        try:
            async for version, response, final in responses:
                if response is None:
                    continue
                if response.error is not None:
                    if stream is None:
                        raise response.error
                    await _event(stream, {"error": response.error.message})
                    continue
                if stream is None:
                    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                         "Cache-Control": "no-cache"})
                    await stream.prepare(request)
                await _event(stream, encode(infer_request, version, response))
        except NaiadError as e:
            if stream is None:
                raise
            await _event(stream, {"error": e.message})
        except ConnectionResetError:  # the client went away: the model is told (aclose cancels)
            return stream
        finally:
            await responses.aclose()
        if stream is None:  # the model ended without a response: an empty stream
            stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await stream.prepare(request)
        await stream.write_eof()
        return stream


async def _event(stream: web.StreamResponse, value: dict) -> None:
    await stream.write(b"data: " + json.dumps(value, allow_nan=False).encode() + b"\n\n")


def add_routes(app: web.Application, plane: DataPlane, settings: Settings, add_post) -> None:
    endpoints = GenerateEndpoints(plane, settings)
    for base in ("/v2/models/{model:[^/]+}", "/v2/models/{model:[^/]+}/versions/{version}"):
        add_post(base + "/generate", endpoints.generate)
        add_post(base + "/generate_stream", endpoints.generate_stream)
