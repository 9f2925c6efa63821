"""Fuzz a live naiad: generated requests, most of them wrong on purpose, over HTTP (JSON, the binary
tensor extension, odd headers and framing) and gRPC (ModelInfer, ModelStreamInfer, the metadata RPCs,
and bytes that are not a valid message at all). A request that is the client's fault must get a 4xx
(or 501, 503) / a gRPC code other than INTERNAL, UNKNOWN and DATA_LOSS; a well-formed one must get its
right answer; none may go unanswered; the server must stay alive and ready throughout.

    python bench/fuzz.py [--requests 100000] [--seed 1] [--frontends 1] [--processes 2]
                         [--concurrency 16] [--timeout 30] [--url HOST:HTTP_PORT,GRPC_PORT]
    python bench/fuzz.py --replay 1:0:1234     # print and send again the request of seed:process:index

Every request is generated from its own key (seed:process:index), so any request a run reports can
be printed and sent again with --replay. Exits 1 on any fault (5xx other than 501 and 503, INTERNAL,
UNKNOWN, DATA_LOSS, an exception's text as the answer, a wrong answer to a well-formed request, no
answer in --timeout seconds, the server not ready at a check, an error or a dead process in its log)
and writes the faults' requests to --faults (a JSON file) for study.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gzip
import json
import multiprocessing
import os
import queue as queue_module
import random
import re
import shutil
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import harness
import numpy as np
import yaml
from naiad.daemon import datatypes
from naiad.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "/inference.GRPCInferenceService/"
# codes a client-fault request must never get: the server's own failure (a dead server fails the
# health checks; UNAVAILABLE / 503 is a fair answer to a request this server does not take now)
GRPC_FAULTS = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}
# an answer text that is a Python exception leaking out (what naiad sends for an unexpected error)
LEAKED_EXCEPTION = re.compile(r"^[A-Z]\w*(Error|Exception)\b")
LOG_DEATHS = re.compile(r"frontend process \d+ .*ended|worker process .* died|Fatal Python error|Segmentation")
LOG_ERROR = re.compile(r"^\S+ \S+ E (?:frontend\[\d+\] )?([\w.]+):")   # an ERROR line: its logger


# --- the models ----------------------------------------------------------------------------------

IDENTITY = '''\
from naiad.backends.python_api import InferenceResponse, Tensor


class TritonPythonModel:
    def execute(self, requests):
        return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
'''


@dataclass(frozen=True)
class Input:
    name: str
    datatype: str
    dims: tuple[int, ...]   # without the batch dimension; -1 varies


@dataclass(frozen=True)
class Model:
    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    max_batch_size: int
    kind: str               # identity | simple | any (answers not checked)


def identity_model(datatype: str) -> Model:
    return Model(f"id_{datatype.lower()}", (Input("INPUT0", datatype, (-1,)),), ("OUTPUT0",), 8, "identity")


MODELS = [identity_model(dt) for dt in datatypes.BY_NAME] + [
    Model("simple", (Input("INPUT0", "INT32", (16,)), Input("INPUT1", "INT32", (16,))),
          ("OUTPUT0", "OUTPUT1"), 8, "simple"),
    Model("onnx_mlp", (Input("x", "FP32", (8,)),), ("probabilities",), 8, "any"),
]
# where each identity model's instances run: the worker-process path, a thread, the event loop
EXECUTION = {"id_fp32": "process", "id_int64": "process", "id_bytes": "thread", "id_fp16": "thread"}


def write_repository(folder: Path) -> Path:
    """The fuzzed models: an identity model per datatype (Python backend, inline, on a thread or in a
    worker process with dynamic batching), and `simple` and `onnx_mlp` as naiad ships them."""
    repository = folder / "models"
    for model in MODELS:
        if model.kind != "identity":
            shutil.copytree(ROOT / "model_repository" / model.name, repository / model.name)
            continue
        execution = EXECUTION.get(model.name, "inline")
        config = {"backend": "python", "max_batch_size": model.max_batch_size,
                  "input": [{"name": "INPUT0", "data_type": model.inputs[0].datatype, "dims": [-1]}],
                  "output": [{"name": "OUTPUT0", "data_type": model.inputs[0].datatype, "dims": [-1]}],
                  "parameters": {"execution": execution}}
        if execution == "process":
            config["dynamic_batching"] = {"max_queue_delay_microseconds": 200}
        (repository / model.name / "1").mkdir(parents=True)
        (repository / model.name / "config.yaml").write_text(yaml.safe_dump(config))
        (repository / model.name / "1" / "model.py").write_text(IDENTITY)
    return repository


# --- the requests --------------------------------------------------------------------------------

@dataclass
class Case:
    """One generated request. HTTP: method, path, headers, body, or `raw` bytes sent whole on a
    connection of its own; gRPC: the method and its serialized messages (several for a stream)."""
    key: str
    kind: str
    valid: bool = False                      # well-formed: must be answered 200 / OK, rightly
    method: str = "POST"
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes | None = None
    incomplete: bool = False                 # raw bytes that stop short of what their framing promises
    answer_owed: bool = False                # raw bytes that frame a request well: closing is no answer
    rpc: str = ""
    messages: list[bytes] = field(default_factory=list)
    expect: dict[str, bytes] | None = None   # a valid request's outputs, as raw bytes
    note: str = ""                           # what was done to it

    def describe(self, limit: int = 600) -> dict:
        shown = {k: v for k, v in asdict(self).items()
                 if k == "valid" or (v not in (None, "", b"", [], {}, False) and k != "expect")}
        if self.rpc:
            shown.pop("method")
        for name in ("body", "raw"):
            if name in shown:
                shown[name] = _show(shown[name], limit)
        if "messages" in shown:
            shown["messages"] = [_show(m, limit) for m in shown["messages"]]
        return shown


def _show(data: bytes, limit: int) -> str:
    text = repr(data[:limit])
    return text + (f" ... ({len(data)} bytes)" if len(data) > limit else "")


JUNK = [None, True, False, 0, -1, 1, 2 ** 63, -2 ** 63 - 1, 10 ** 30, 1.5, -0.0, float("nan"), float("inf"),
        "", "x", "FP32", "\u00e9\u4e2d\U0001F600", "\ud800", "\udfff\ud800", [], [1], [[]], {}, {"a": 1},
        "1" * 300, [None], [True, "a", 1.5], {"name": "INPUT0"}]
PARAMETER_KEYS = ["priority", "timeout", "binary_data_output", "binary_data", "binary_data_size",
                  "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
                  "classification", "sequence_id", "sequence_start", "sequence_end", "max_tokens", "",
                  "\u00e9", "x" * 200]
BAD_DATATYPES = ["", "fp32", "FP8", "TYPE_FP32", "FLOAT", "STRING", "INT128", "BF32", " FP32", "FP32\x00",
                 "\u00c9", "BOOL ", "bytes", "UINT1", "FP64" * 40]
BAD_VERSIONS = ["0", "2", "-1", "abc", "1.0", "99999999999999999999999", "%00", "%ff%fe", "%E9", "..", " 1",
                "1" * 300]
BAD_NAMES = ["nope", "", "ID_FP32", "id_fp32 ", "%2e%2e", "id_fp32%00", "%C3%A9", "%ed%a0%80", "a" * 3000,
             "simple/versions", "..%2f..%2fetc"]


def random_values(rng: random.Random, datatype: str, count: int) -> np.ndarray:
    """Values that survive JSON and every datatype exactly."""
    if datatype == "BYTES":
        alphabet = ["a", "b", "7", " ", "\u00e9", "\u4e2d", "\U0001F600", "\\", '"', "\n"]
        array = np.empty(count, dtype=object)
        array[:] = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))).encode()
                    for _ in range(count)]
        return array
    dtype = datatypes.BY_NAME[datatype].numpy
    if datatype == "BOOL":
        return np.array([rng.random() < 0.5 for _ in range(count)], dtype=bool)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        edges = [int(info.min), int(info.max), 0, 1]
        return np.array([rng.choice(edges) if rng.random() < 0.2 else rng.randint(max(int(info.min), -1000), min(int(info.max), 1000))
                         for _ in range(count)], dtype=dtype)
    return np.array([rng.randint(-64, 64) / 4 for _ in range(count)], dtype=dtype)


def to_json_values(array: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [v.decode() for v in array.reshape(-1)]
    if datatype in ("FP16", "BF16"):
        return array.astype(np.float32).reshape(-1).tolist()
    return array.reshape(-1).tolist()


def nest(flat: list, shape: list[int]) -> list:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def valid_tensors(rng: random.Random, model: Model) -> tuple[dict[str, tuple[list[int], np.ndarray]], dict]:
    """Inputs of a well-formed request ({name: (shape, values)}) and the outputs it must get."""
    batch = rng.randint(1, model.max_batch_size)
    inputs = {}
    for spec in model.inputs:
        shape = [batch] + [rng.randint(0 if rng.random() < 0.05 else 1, 6) if d < 0 else d for d in spec.dims]
        count = int(np.prod(shape))
        inputs[spec.name] = (shape, random_values(rng, spec.datatype, count).reshape(shape))
    if model.kind == "identity":
        expect = {"OUTPUT0": datatypes.to_raw(inputs["INPUT0"][1])}
    elif model.kind == "simple":
        a, b = inputs["INPUT0"][1], inputs["INPUT1"][1]
        with np.errstate(over="ignore"):
            expect = {"OUTPUT0": (a + b).astype(np.int32).tobytes(), "OUTPUT1": (a - b).astype(np.int32).tobytes()}
    else:
        expect = None
    return inputs, expect


def spec_of(model: Model, name: str) -> Input:
    return next(i for i in model.inputs if i.name == name)


# --- HTTP ----------------------------------------------------------------------------------------

def http_infer(rng: random.Random, key: str) -> Case:
    """A JSON or binary-extension inference request, most of them broken in one to three ways."""
    model = rng.choice(MODELS)
    inputs, expect = valid_tensors(rng, model)
    binary_in = rng.random() < 0.4
    binary_out = rng.random() < 0.4
    header: dict = {"inputs": []}
    chunks = []
    for name, (shape, values) in inputs.items():
        datatype = spec_of(model, name).datatype
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary_in:
            raw = datatypes.to_raw(values)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = to_json_values(values, datatype)
            entry["data"] = nest(flat, shape) if rng.random() < 0.5 else flat
        header["inputs"].append(entry)
    if rng.random() < 0.3:
        header["id"] = f"req-{key}"
    if binary_out:
        header["parameters"] = {"binary_data_output": True}
    if rng.random() < 0.3:
        header["outputs"] = [{"name": n} for n in model.outputs]
    case = Case(key, "http/binary" if binary_in else "http/json", path=f"/v2/models/{model.name}/infer")
    notes = []
    if rng.random() < 0.12:
        case.valid, case.expect = True, expect
    else:
        for _ in range(rng.randint(1, 3)):
            mutation = rng.choice(JSON_MUTATIONS)
            notes.append(mutation(rng, header, chunks, case) or mutation.__name__)
    body = json.dumps(header).encode()
    if binary_in or chunks:
        case.headers["Inference-Header-Content-Length"] = str(len(body))
        body += b"".join(chunks)
    case.body = body
    case.headers.setdefault("Content-Type", "application/json")
    if not case.valid and rng.random() < 0.25:
        mutation = rng.choice(BODY_MUTATIONS)
        notes.append(mutation(rng, case) or mutation.__name__)
    case.note = "; ".join(notes)
    return case


def _some_input(rng, header) -> dict:
    inputs = header.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        return rng.choice(inputs)
    header["inputs"] = [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]
    return header["inputs"][0]


def m_junk_field(rng, header, chunks, case):
    target = rng.choice(["header", "input", "input", "input"])
    holder = header if target == "header" else _some_input(rng, header)
    keys = (["inputs", "outputs", "parameters", "id"] if target == "header"
            else ["name", "datatype", "shape", "data", "parameters"])
    key, value = rng.choice(keys), rng.choice(JUNK)
    holder[key] = value
    return f"{target}.{key} = {value!r:.40}"


def m_missing_field(rng, header, chunks, case):
    holder = _some_input(rng, header) if rng.random() < 0.8 else header
    if holder:
        key = rng.choice(sorted(holder))
        del holder[key]
        return f"deleted {key}"


def m_shape(rng, header, chunks, case):
    tensor = _some_input(rng, header)
    shape = tensor.get("shape") if isinstance(tensor.get("shape"), list) else [1]
    choice = rng.randrange(9)
    if choice == 0:
        shape = [-1] + shape[1:]
    elif choice == 1:
        shape = [2 ** 63 - 1] + shape[1:]
    elif choice == 2:
        shape = [2 ** 31, 2 ** 31, 2 ** 31]
    elif choice == 3:
        shape = [1] * rng.choice([33, 64, 200, 5000])
    elif choice == 4:
        shape = []
    elif choice == 5:
        shape = [s + rng.choice([-1, 1]) if isinstance(s, int) else s for s in shape]
    elif choice == 6:
        shape = [1.0] + shape[1:]
    elif choice == 7:
        shape = [0] + shape[1:]
    else:
        shape = [10 ** 25] + shape[1:]
    tensor["shape"] = shape
    return f"shape {str(shape)[:40]}"


def m_datatype(rng, header, chunks, case):
    tensor = _some_input(rng, header)
    tensor["datatype"] = rng.choice(BAD_DATATYPES + list(datatypes.BY_NAME))
    return f"datatype {tensor['datatype']!r:.20}"


def m_data(rng, header, chunks, case):
    tensor = _some_input(rng, header)
    data = tensor.get("data") if isinstance(tensor.get("data"), list) else [1]
    choice = rng.randrange(12)
    if choice == 0:
        data = data + [1]
    elif choice == 1:
        data = data[:-1]
    elif choice == 2:
        data = [[1, 2], [3]]                       # ragged
    elif choice == 3:
        deep: list = [1]
        depth = rng.choice([50, 500, 900])   # deeper still: b_bytes sends 100,000 brackets
        for _ in range(depth):
            deep = [deep]
        tensor["data"] = deep
        return f"data nested {depth} deep"
    elif choice == 4:
        data = [10 ** rng.choice([19, 20, 40, 300])] * max(1, len(data))
    elif choice == 5:
        data = [rng.choice(["1", "\ud800", "\U0001F600", "nan", ""]) for _ in data] or ["x"]
    elif choice == 6:
        data = [rng.choice([None, True, {}, [], 1.5, -1]) for _ in data] or [None]
    elif choice == 7:
        data = [float(rng.choice(["nan", "inf", "-inf"]))] * max(1, len(data))
    elif choice == 8:
        data = {"values": data}
    elif choice == 9:
        data = "\ud800" * 3
    elif choice == 10:
        data = [1e308 * 10] * max(1, len(data))
    else:
        data = [-(2 ** 64)] * max(1, len(data))
    tensor["data"] = data
    return f"data {str(data)[:40]}"


def _random_parameters(rng) -> dict:
    return {rng.choice(PARAMETER_KEYS): rng.choice(JUNK) for _ in range(rng.randint(1, 3))}


def m_parameters(rng, header, chunks, case):
    where = rng.choice(["request", "input", "output"])
    params = _random_parameters(rng)
    if where == "request":
        header["parameters"] = params
    elif where == "input":
        _some_input(rng, header)["parameters"] = params
    else:
        header["outputs"] = [{"name": rng.choice(["OUTPUT0", "OUTPUT1", "nope"]), "parameters": params}]
    return f"{where} parameters {str(params)[:60]}"


def m_inputs(rng, header, chunks, case):
    inputs = header.get("inputs") if isinstance(header.get("inputs"), list) else []
    choice = rng.randrange(5)
    if choice == 0 and inputs and isinstance(inputs[0], dict):
        inputs.append(dict(inputs[0]))                        # the same input twice
    elif choice == 1:
        inputs.append({"name": "EXTRA", "datatype": "FP32", "shape": [1], "data": [1]})
    elif choice == 2:
        header["inputs"] = []
    elif choice == 3 and inputs:
        inputs.pop()
    else:
        header["inputs"] = [{"name": f"IN{i}", "datatype": "INT8", "shape": [1], "data": [1]} for i in range(300)]
    header.setdefault("inputs", inputs)
    return f"inputs change {choice}"


def m_outputs(rng, header, chunks, case):
    header["outputs"] = [{"name": rng.choice(["OUTPUT0", "OUTPUT1", "nope", "", "INPUT0"])}
                         for _ in range(rng.randint(0, 3))] if rng.random() < 0.8 else [{"name": "OUTPUT0"}] * 2
    if rng.random() < 0.5 and header["outputs"]:
        header["outputs"][0]["parameters"] = {"binary_data": rng.choice(JUNK)}
    return f"outputs {str(header['outputs'])[:60]}"


def m_binary_size(rng, header, chunks, case):
    tensor = _some_input(rng, header)
    size = rng.choice([-1, 0, 1, 3, 7, 2 ** 63, 1.5, "8", None, True])
    if chunks and rng.random() < 0.5:
        chunk = chunks[0]
        size = len(chunk) + rng.choice([-5, -1, 1, 4, 1000])
    tensor["parameters"] = {"binary_data_size": size}
    tensor.pop("data", None) if rng.random() < 0.7 else None
    return f"binary_data_size {size!r}"


def m_binary_bytes(rng, header, chunks, case):
    """Binary data that does not match what the header says: trailing, missing, bad BYTES prefixes."""
    if not chunks:
        chunks.append(os.urandom(rng.randint(1, 16)))
        return "binary data nothing accounts for"
    choice = rng.randrange(4)
    if choice == 0:
        chunks.append(b"\x00" * rng.randint(1, 9))
    elif choice == 1:
        chunks[0] = chunks[0][:-1]
    elif choice == 2:
        chunks[0] = struct.pack("<I", rng.choice([2 ** 32 - 1, 2 ** 31, 100])) + chunks[0][4:]
    else:
        chunks[0] = bytes(rng.getrandbits(8) for _ in range(len(chunks[0])))
    return f"binary bytes change {choice}"


def m_model_path(rng, header, chunks, case):
    model = rng.choice(BAD_NAMES + [m.name for m in MODELS])
    version = rng.choice(BAD_VERSIONS + ["1", ""])
    case.path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return f"path {case.path[:60]}"


JSON_MUTATIONS = [m_junk_field, m_missing_field, m_shape, m_shape, m_datatype, m_data, m_data, m_parameters,
                  m_inputs, m_outputs, m_binary_size, m_binary_bytes, m_model_path]


def b_header_length(rng, case):
    length = len(case.body)
    case.headers["Inference-Header-Content-Length"] = str(rng.choice(
        [-1, 0, 1, length + 1, length * 2, 2 ** 64, "abc", "12.0", " 5", "", "0x10", "+5", "١٢"]))
    return f"header length {case.headers['Inference-Header-Content-Length']!r}"


def b_truncate(rng, case):
    case.body = case.body[:rng.randrange(len(case.body) + 1)]
    return f"body cut to {len(case.body)}"


def b_bytes(rng, case):
    """Invalid UTF-8, stray bytes, lone surrogates written as escapes, or nothing JSON at all."""
    choice = rng.randrange(7)
    if choice == 0:
        at = rng.randrange(len(case.body) + 1)
        case.body = case.body[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + case.body[at:]
    elif choice == 1:
        case.body = os.urandom(rng.randint(0, 200))
    elif choice == 2:
        case.body = rng.choice([b"[]", b"null", b"1", b'"x"', b"{}", b"{", b"", b"\xef\xbb\xbf{}", b"NaN"])
    elif choice == 3:
        case.body = b"[" * rng.choice([1000, 100000]) + b"]" * rng.choice([0, 1000, 100000])
    elif choice == 4:
        case.body = b'{"inputs": [{"name": "\\ud800", "datatype": "BYTES", "shape": [1], "data": ["\\udc00"]}]}'
    elif choice == 5:
        case.body = b'{"inputs": [], "inputs": 5, "id": 1' + b"0" * 5000 + b"}"
    else:
        case.body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1],
                                            "data": ["\ud800\udfff\udbff"]}]}).encode()
    case.headers.pop("Inference-Header-Content-Length", None)
    return f"body bytes {choice}"


BODY_MUTATIONS = [b_header_length, b_truncate, b_bytes, b_bytes]


def http_other(rng: random.Random, key: str) -> Case:
    """Metadata, readiness, configuration, statistics and wrong methods, for any name and version."""
    name = rng.choice(BAD_NAMES + [m.name for m in MODELS])
    version = rng.choice(BAD_VERSIONS + ["1", "", ""])
    base = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    tail = rng.choice(["", "/ready", "/config", "/stats", "/infer", "/nope", "/trace/setting"])
    method = rng.choice(["GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
    path = rng.choice([base + tail, "/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats",
                       "/v2/repository/index", "/v2/logging", "/", "/v3", "/v2/models", "/metrics",
                       "/v2/systemsharedmemory/status", "/v2/cudasharedmemory/region/x/status",
                       base + tail + "?x=%ff&y", "//v2//health//ready", "/v2/repository/models/nope/load",
                       f"/v2/repository/models/{name}/unload", "/v2/systemsharedmemory/region/r/register",
                       "/v2/cudasharedmemory/region/r/register", "/v2/systemsharedmemory/region/r/unregister"])
    body = rng.choice([b"", b"{}", b"[", b'{"ready": true}', os.urandom(8), b'{"parameters": 5}',
                       b'{"key": "/naiad-1", "offset": -1, "byte_size": 18446744073709551616}',
                       b'{"raw_handle": {"b64": "!!"}, "device_id": "0", "byte_size": 1}'])
    return Case(key, "http/other", method=method, path=path, body=body, note=f"{method} {path[:60]}")


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """`size` spaces, gzipped: about a thousandth of that on the wire."""
    return gzip.compress(b" " * size, 9)


def http_headers(rng: random.Random, key: str) -> Case:
    """Framing and content headers that lie or make no sense, sent as raw bytes on a connection of
    their own that the client then half-closes."""
    inner = http_infer(rng, key)
    body = inner.body
    headers = [(k, v) for k, v in inner.headers.items()]
    length: str | None = str(len(body))
    choice = rng.randrange(14)
    note = ""
    incomplete = False     # the framing promises more bytes than are sent: the client half-closes
    owed = choice in (0, 5, 6, 12, 13)   # framed well (a first request, at least): it must be answered
    if choice == 0:
        length = str(max(0, len(body) - rng.randint(1, 20)))
        note = "Content-Length shorter than the body"
    elif choice == 1:
        length = str(len(body) + rng.randint(1, 5000))
        note, incomplete = "Content-Length longer than the body", True
    elif choice == 2:
        length = rng.choice(["-1", "abc", "1e3", "", "99999999999999999999999", " 5", "0x10"])
        note, incomplete = f"Content-Length {length!r}", length.strip().isdigit() and int(length) > len(body)
    elif choice == 3:
        length = None
        note = "no Content-Length"
    elif choice == 4:
        headers.append(("Content-Length", str(len(body) + 1)))
        note = "two Content-Length headers"
    elif choice == 5:
        encoding = rng.choice(["gzip", "deflate"])
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        length = str(len(body))
        headers.append(("Content-Encoding", encoding))
        note = f"Content-Encoding {encoding}, rightly compressed"
    elif choice == 6:
        encoding = rng.choice(["gzip", "deflate", "br", "zstd", "compress", "foo", "gzip, gzip", "identity", ""])
        headers.append(("Content-Encoding", encoding))
        note = f"Content-Encoding {encoding!r}, body not compressed"
    elif choice == 7:
        body = gzip_bomb(rng.choice([10 << 20, 200 << 20]))
        length = str(len(body))
        headers.append(("Content-Encoding", "gzip"))
        note = f"gzip bomb of {len(body)} bytes"
    elif choice == 8:
        length = None
        headers.append(("Transfer-Encoding", "chunked"))
        size = rng.choice([f"{len(body):x}", "zz", "-1", f"{len(body) + 10:x}", "ffffffffffffffffff"])
        end = rng.choice([b"0\r\n\r\n", b"", b"5\r\nab"])
        body = size.encode() + b"\r\n" + body + b"\r\n" + end
        note, incomplete = f"chunked, size {size}", size != "zz" and size != "-1"
    elif choice == 9:
        headers.append(("Transfer-Encoding", rng.choice(["chunked", "gzip, chunked", "foo"])))
        note = "Transfer-Encoding beside Content-Length"
    elif choice == 10:
        headers.append(("X-Long", "a" * rng.choice([9000, 100000])))
        note = "a very long header"
    elif choice == 11:
        headers.extend((f"X-H{i}", "v") for i in range(rng.choice([200, 5000])))
        note = "many headers"
    elif choice == 12:
        headers.append(("Expect", rng.choice(["100-continue", "200-ok"])))
        note = "Expect"
    else:
        headers.append(("Inference-Header-Content-Length", "3"))
        note = "two Inference-Header-Content-Length headers"
    if length is not None:
        headers.insert(0, ("Content-Length", length))
    path = request_target(inner.path)
    request_line = rng.choice([f"POST {path} HTTP/1.1"] * 8 + [
        f"POST {path} HTTP/1.0", f"POST {path} HTTP/9.9", f"FOO {path} HTTP/1.1",
        f"POST  {path} HTTP/1.1", "POST", f"POST {path}\x00 HTTP/1.1"])
    head = request_line + "\r\nHost: naiad\r\nConnection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw = head.encode("utf-8", "surrogateescape") + b"\r\n" + body
    owed = owed and request_line == f"POST {path} HTTP/1.1"
    return Case(key, "http/headers", raw=raw, incomplete=incomplete, answer_owed=owed,
                note=f"{note}; {inner.note}".strip("; "))


# --- gRPC ----------------------------------------------------------------------------------------

def _parameter(message, rng) -> None:
    choice = rng.randrange(5)
    if choice == 0:
        message.bool_param = rng.random() < 0.5
    elif choice == 1:
        message.int64_param = rng.choice([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 10])
    elif choice == 2:
        message.string_param = rng.choice(["", "x", "\u00e9", "region", "1"])
    elif choice == 3:
        message.double_param = rng.choice([0.0, -1.5, float("nan"), float("inf"), 1e308])
    elif choice == 4:
        message.uint64_param = rng.choice([0, 1, 2 ** 64 - 1, 2 ** 63])


def grpc_request(rng: random.Random, key: str) -> tuple[pb.ModelInferRequest, bool, dict | None, str]:
    """A ModelInferRequest, broken in one to three ways unless it is one of the valid ones."""
    model = rng.choice(MODELS)
    inputs, expect = valid_tensors(rng, model)
    message = pb.ModelInferRequest(model_name=model.name, id=f"req-{key}" if rng.random() < 0.3 else "")
    raw = rng.random() < 0.6 or any(spec_of(model, n).datatype in ("FP16", "BF16") for n in inputs)
    for name, (shape, values) in inputs.items():
        datatype = spec_of(model, name).datatype
        tensor = message.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            message.raw_input_contents.append(datatypes.to_raw(values))
        else:
            field_name = CONTENTS_FIELD[datatype]
            contents = getattr(tensor.contents, field_name)
            contents.extend(values.reshape(-1).tolist())
    if rng.random() < 0.3:
        for name in model.outputs:
            message.outputs.add(name=name)
    if rng.random() < 0.12:
        return message, True, expect, ""
    notes = []
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(GRPC_MUTATIONS)
        notes.append(mutation(rng, message) or mutation.__name__)
    return message, False, None, "; ".join(notes)


CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def _tensor(rng, message):
    if not message.inputs:
        message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    return rng.choice(message.inputs)


def g_both_contents(rng, message):
    tensor = _tensor(rng, message)
    tensor.contents.int_contents.extend([1, 2, 3])
    tensor.contents.fp32_contents.extend([1.0])
    if not message.raw_input_contents:
        message.raw_input_contents.append(b"\x00" * 8)
    return "raw_input_contents and contents both set"


def g_raw_size(rng, message):
    if message.raw_input_contents:
        i = rng.randrange(len(message.raw_input_contents))
        data = message.raw_input_contents[i]
        message.raw_input_contents[i] = rng.choice([data[:-1], data + b"\x00", b"", data * 2, os.urandom(3)])
    else:
        message.raw_input_contents.append(os.urandom(rng.randint(0, 12)))
    return "raw bytes of the wrong size"


def g_raw_count(rng, message):
    if message.raw_input_contents and rng.random() < 0.5:
        del message.raw_input_contents[-1]
    else:
        message.raw_input_contents.extend([b"\x00" * 4] * rng.randint(1, 3))
    return "raw_input_contents count"


def g_shape(rng, message):
    tensor = _tensor(rng, message)
    choice = rng.randrange(7)
    shape = {0: [1] * rng.choice([33, 64, 1000, 20000]), 1: [-1, 4], 2: [-2 ** 63, -1], 3: [2 ** 62, 2 ** 62],
             4: [2 ** 63 - 1], 5: [], 6: [0, 2 ** 40]}[choice]
    del tensor.shape[:]
    tensor.shape.extend(shape)
    return f"shape {str(shape)[:40]}"


def g_datatype(rng, message):
    tensor = _tensor(rng, message)
    tensor.datatype = rng.choice(BAD_DATATYPES + list(datatypes.BY_NAME))
    return f"datatype {tensor.datatype!r:.20}"


def g_contents(rng, message):
    """Typed contents of the wrong kind or count, or for a type that has none."""
    tensor = _tensor(rng, message)
    del message.raw_input_contents[:]
    field_name = rng.choice(list(set(CONTENTS_FIELD.values())))
    values = {"bool_contents": [True], "int_contents": [2 ** 31 - 1, -5], "int64_contents": [2 ** 63 - 1],
              "uint_contents": [2 ** 32 - 1], "uint64_contents": [2 ** 64 - 1], "fp32_contents": [1e38, float("nan")],
              "fp64_contents": [1e308], "bytes_contents": [b"\xff\xfe", b""]}[field_name]
    getattr(tensor.contents, field_name).extend(values * rng.randint(1, 40))
    return f"contents {field_name}"


def g_parameters(rng, message):
    where = rng.choice(["request", "input", "output"])
    if where == "request":
        target = message.parameters
    elif where == "input":
        target = _tensor(rng, message).parameters
    else:
        target = (message.outputs[0] if message.outputs else message.outputs.add(name="OUTPUT0")).parameters
    for _ in range(rng.randint(1, 4)):
        _parameter(target[rng.choice(PARAMETER_KEYS)], rng)
    return f"{where} parameters"


def g_names(rng, message):
    choice = rng.randrange(5)
    if choice == 0:
        message.model_name = rng.choice(["nope", "", "ID_FP32", "a" * 5000, "\u00e9", "simple\x00"])
    elif choice == 1:
        message.model_version = rng.choice(BAD_VERSIONS)
    elif choice == 2:
        _tensor(rng, message).name = rng.choice(["", "nope", "INPUT1", "\x00", "OUTPUT0"])
    elif choice == 3:
        message.outputs.add(name=rng.choice(["nope", "", "INPUT0", "OUTPUT0"]))
    else:
        copy = message.inputs.add()
        copy.CopyFrom(_tensor(rng, message))
    return f"names {choice}"


GRPC_MUTATIONS = [g_both_contents, g_raw_size, g_raw_count, g_shape, g_shape, g_datatype, g_contents,
                  g_parameters, g_parameters, g_names]


def corrupt(rng: random.Random, data: bytes) -> bytes:
    """Bytes that are (mostly) not a valid ModelInferRequest: truncated, flipped, invalid UTF-8."""
    choice = rng.randrange(4)
    if choice == 0 and data:
        return data[:rng.randrange(len(data))]
    if choice == 1 and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if choice == 2:
        return b"\x0a\x03\xff\xfe\xfd" + data           # model_name = invalid UTF-8
    return os.urandom(rng.randint(0, 64))


def grpc_infer(rng: random.Random, key: str) -> Case:
    message, valid, expect, note = grpc_request(rng, key)
    data = message.SerializeToString()
    if not valid and rng.random() < 0.1:
        return Case(key, "grpc/bytes", rpc="ModelInfer", messages=[corrupt(rng, data)], note="not a message")
    return Case(key, "grpc/infer", valid=valid, rpc="ModelInfer", messages=[data], expect=expect, note=note)


def grpc_stream(rng: random.Random, key: str) -> Case:
    built = [grpc_request(rng, f"{key}.{i}") for i in range(rng.randint(1, 4))]
    messages = [m.SerializeToString() for m, _, _, _ in built]
    notes = [n for _, _, _, n in built]
    if rng.random() < 0.1:   # one that is not a message at all
        at = rng.randrange(len(messages))
        messages[at], notes[at] = corrupt(rng, messages[at]), "not a message"
        built[at] = (None, False, None, "")
    valid = all(v for _, v, _, _ in built)
    return Case(key, "grpc/stream", valid=valid, rpc="ModelStreamInfer", messages=messages,
                expect=built[0][2] if valid and len(built) == 1 else None, note=" | ".join(notes))


def grpc_other(rng: random.Random, key: str) -> Case:
    rpc = rng.choice(["ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ServerLive",
                      "ServerReady", "ServerMetadata"])
    name = rng.choice(["nope", "", "a" * 3000, "\u00e9"] + [m.name for m in MODELS])
    version = rng.choice(BAD_VERSIONS + ["", "1"])
    request_type = {"ModelMetadata": pb.ModelMetadataRequest, "ModelReady": pb.ModelReadyRequest,
                    "ModelConfig": pb.ModelConfigRequest, "ModelStatistics": pb.ModelStatisticsRequest,
                    "ServerLive": pb.ServerLiveRequest, "ServerReady": pb.ServerReadyRequest,
                    "ServerMetadata": pb.ServerMetadataRequest}[rpc]
    message = request_type(name=name, version=version) if rpc.startswith("Model") else request_type()
    data = message.SerializeToString()
    if rng.random() < 0.1:
        data = corrupt(rng, data)
    return Case(key, "grpc/other", rpc=rpc, messages=[data], note=f"{rpc} {name[:20]!r} {version[:20]!r}")


GENERATORS = [(http_infer, 34), (http_other, 6), (http_headers, 6), (grpc_infer, 40), (grpc_stream, 8),
              (grpc_other, 6)]


def generate(key: str) -> Case:
    rng = random.Random(key)
    generator = rng.choices([g for g, _ in GENERATORS], weights=[w for _, w in GENERATORS])[0]
    return generator(rng, key)


# --- sending and judging -------------------------------------------------------------------------

@dataclass
class Outcome:
    label: str                 # "http 400", "grpc INVALID_ARGUMENT", "closed", "timeout", ...
    fault: str = ""            # why this answer breaks the promise; "" when it does not
    detail: str = ""


def request_target(path: str) -> str:
    """The path as it goes on the request line: spaces, controls and non-ASCII %-escaped (escapes
    already in it, deliberate ones, are kept)."""
    return urllib.parse.quote(path, safe="/%?=&")


class HttpClient:
    """A minimal HTTP/1.1 client on asyncio streams: it sends exactly the bytes it is given."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.retries = 0
        self.connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, case: Case) -> list[tuple[int, dict, bytes]]:
        if case.raw is not None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                writer.write(case.raw)
                await writer.drain()
                if case.incomplete:
                    # the server waits for the rest: tell it none comes (a half-close it may take as
                    # the client leaving, as aiohttp does, so only here)
                    writer.write_eof()
                return await read_responses(reader, until_eof=True)
            finally:
                writer.close()
        head = [f"{case.method} {request_target(case.path)} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(case.body)}"]
        head += [f"{k}: {v}" for k, v in case.headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + case.body
        # a server may close a kept-alive connection between requests: then once more on a new one
        reused = self.connection is not None
        try:
            return await self._exchange(data, case.method == "HEAD")
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
        self.retries += 1
        return await self._exchange(data, case.method == "HEAD")

    async def _exchange(self, data: bytes, head_only: bool) -> list[tuple[int, dict, bytes]]:
        if self.connection is None:
            self.connection = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.connection
        try:
            writer.write(data)
            await writer.drain()
            responses = await read_responses(reader, until_eof=False, head_only=head_only)
        except BaseException:
            self.close()
            raise
        if not responses:
            self.close()
            raise ConnectionResetError("the server closed the connection without an answer")
        if responses[0][1].get("connection", "").lower() == "close":
            self.close()
        return responses

    def close(self) -> None:
        if self.connection is not None:
            self.connection[1].close()
            self.connection = None


async def read_responses(reader: asyncio.StreamReader, until_eof: bool, head_only: bool = False
                         ) -> list[tuple[int, dict, bytes]]:
    """(status, headers, body) of each response read: one, or all until the server closes."""
    responses = []
    while True:
        line = await reader.readline()
        if not line:
            return responses
        parts = line.split(None, 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while (size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16)):
                body += await reader.readexactly(size)
                await reader.readline()
            await reader.readline()
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
        if not 100 <= status < 200:
            responses.append((status, headers, body))
        if not until_eof and responses:
            return responses


def judge_http(case: Case, responses: list[tuple[int, dict, bytes]]) -> Outcome:
    if not responses:
        if case.raw is not None and not case.answer_owed:
            return Outcome("closed")     # framing the server could not read: closing is a fair answer
        return Outcome("closed", "the connection closed without an answer")
    status, headers, body = responses[0]
    label = f"http {status}"
    text = body[:300].decode("utf-8", "replace")
    for other_status, _, other_body in responses:
        if other_status >= 500 and other_status not in (501, 503):
            return Outcome(f"http {other_status}", f"HTTP {other_status}", other_body[:300].decode("utf-8", "replace"))
    if case.valid:
        if status != 200:
            return Outcome(label, f"a well-formed request got HTTP {status}", text)
        problem = check_http_outputs(case, headers, body)
        if problem:
            return Outcome(label, problem, text)
    # a mutated request may still be valid (an unknown parameter, say): 200 is then a fair answer
    if status >= 400:
        error = _error_text(body)
        if LEAKED_EXCEPTION.match(error):
            return Outcome(label, "the answer is a Python exception", error[:300])
    return Outcome(label)


def _error_text(body: bytes) -> str:
    try:
        found = json.loads(body)
        return found.get("error", "") if isinstance(found, dict) else ""
    except ValueError:
        return ""


def check_http_outputs(case: Case, headers: dict, body: bytes) -> str:
    if case.expect is None:
        return ""
    length = headers.get("inference-header-content-length")
    header = json.loads(body[:int(length)] if length else body)
    binary = memoryview(body)[int(length):] if length else memoryview(b"")
    offset, found = 0, {}
    for output in header.get("outputs", []):
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            found[output["name"]] = bytes(binary[offset:offset + size])
            offset += size
        else:
            if output["datatype"] == "BYTES":
                array = np.array([v.encode() for v in output["data"]], dtype=object)
            else:
                array = np.array(output["data"], dtype=datatypes.BY_NAME[output["datatype"]].numpy)
            found[output["name"]] = datatypes.to_raw(array)
    for name, expected in case.expect.items():
        if found.get(name) != expected:
            return f"wrong answer for output '{name}'"
    return ""


class GrpcClient:
    def __init__(self, target: str):
        self.channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.unary = {}

    async def request(self, case: Case, timeout: float) -> Outcome:
        if case.rpc == "ModelStreamInfer":
            return await self._stream(case, timeout)
        call = self.unary.get(case.rpc)
        if call is None:
            call = self.unary[case.rpc] = self.channel.unary_unary(SERVICE + case.rpc)
        try:
            answer = await call(case.messages[0], timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return judge_grpc_error(case, e.code().name, e.details() or "")
        if case.valid:
            return Outcome("grpc OK", check_grpc_outputs(case, pb.ModelInferResponse.FromString(answer)))
        return Outcome("grpc OK")

    async def _stream(self, case: Case, timeout: float) -> Outcome:
        call = self.channel.stream_stream(SERVICE + "ModelStreamInfer")(iter(case.messages), timeout=timeout)
        answers = []
        try:
            async for data in call:
                answers.append(pb.ModelStreamInferResponse.FromString(data))
        except grpc.aio.AioRpcError as e:
            return judge_grpc_error(case, e.code().name, e.details() or "")
        if len(answers) != len(case.messages):
            return Outcome("grpc stream", f"{len(case.messages)} requests on a stream got {len(answers)} answers")
        for answer in answers:
            if LEAKED_EXCEPTION.match(answer.error_message):
                return Outcome("grpc stream", "a stream answer is a Python exception", answer.error_message[:300])
            if case.valid and answer.error_message:
                return Outcome("grpc stream", "a well-formed request got an error", answer.error_message[:300])
        if case.valid and case.expect is not None:
            return Outcome("grpc stream", check_grpc_outputs(case, answers[0].infer_response))
        return Outcome("grpc stream")

    async def close(self) -> None:
        await self.channel.close()


def judge_grpc_error(case: Case, code: str, details: str) -> Outcome:
    label = f"grpc {code}"
    if code == "DEADLINE_EXCEEDED":
        return Outcome("timeout", "no answer in time", details[:300])
    if code in GRPC_FAULTS:
        return Outcome(label, f"gRPC {code}", details[:300])
    if case.valid:
        return Outcome(label, f"a well-formed request got {code}", details[:300])
    if LEAKED_EXCEPTION.match(details):
        return Outcome(label, "the answer is a Python exception", details[:300])
    return Outcome(label)


def check_grpc_outputs(case: Case, answer: pb.ModelInferResponse) -> str:
    if case.expect is None:
        return ""
    found = {o.name: answer.raw_output_contents[i] for i, o in enumerate(answer.outputs)
             if i < len(answer.raw_output_contents)}
    for name, expected in case.expect.items():
        if found.get(name) != expected:
            return f"wrong answer for output '{name}'"
    return ""


async def send(case: Case, http: HttpClient, grpc_client: GrpcClient, timeout: float) -> Outcome:
    try:
        if case.rpc:
            return await asyncio.wait_for(grpc_client.request(case, timeout), timeout + 5)
        return judge_http(case, await asyncio.wait_for(http.request(case), timeout))
    except (asyncio.TimeoutError, TimeoutError):
        http.close()
        return Outcome("timeout", "no answer in time")
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        if case.raw is not None and not case.answer_owed:
            return Outcome("closed")
        return Outcome("closed", "the connection broke without an answer", repr(e))


# --- the client processes and the coordinator ----------------------------------------------------

@dataclass
class Target:
    host: str
    http_port: int
    grpc_port: int


def client_process(index: int, seed: int, count: int, target: Target, concurrency: int, timeout: float,
                   queue) -> None:
    asyncio.run(_client(index, seed, count, target, concurrency, timeout, queue))


async def _client(index, seed, count, target: Target, concurrency, timeout, queue) -> None:
    grpc_client = GrpcClient(f"{target.host}:{target.grpc_port}")
    labels: collections.Counter = collections.Counter()
    faults: list[dict] = []
    next_index = iter(range(count))
    done = 0

    async def worker():
        nonlocal done
        http = HttpClient(target.host, target.http_port)
        for n in next_index:
            try:
                case = generate(f"{seed}:{index}:{n}")
            except Exception as e:  # noqa: BLE001 (the fuzzer's own bug: counted, and the run goes on)
                label = f"FAULT in the fuzzer, not the server: {type(e).__name__}"
                labels[label] += 1
                if labels[label] <= 5:
                    faults.append({"fault": f"generating {seed}:{index}:{n} failed: {e!r}"})
                continue
            outcome = await send(case, http, grpc_client, timeout)
            labels[f"{case.kind} -> {outcome.label}"] += 1
            if outcome.fault:
                labels[f"FAULT {outcome.fault}"] += 1
                if labels[f"FAULT {outcome.fault}"] <= 5:   # a few examples of each
                    faults.append({"fault": outcome.fault, "answer": outcome.label, "detail": outcome.detail,
                                   "request": case.describe()})
            done += 1
            if done % 250 == 0:
                queue.put(("progress", index, 250))
        http.close()
        if http.retries:
            labels["(kept-alive connections the server closed; request sent again)"] += http.retries

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await grpc_client.close()
    queue.put(("progress", index, done % 250))
    queue.put(("done", index, dict(labels), faults))


def health(target: Target) -> str:
    """'' when the server says it is live and ready over HTTP and gRPC; else what is wrong."""
    try:
        with urllib.request.urlopen(f"http://{target.host}:{target.http_port}/v2/health/ready", timeout=30) as r:
            if r.status != 200:
                return f"HTTP readiness {r.status}"
    except (OSError, urllib.error.HTTPError) as e:
        return f"HTTP readiness: {e}"
    channel = grpc.insecure_channel(f"{target.host}:{target.grpc_port}")
    try:
        answer = channel.unary_unary(SERVICE + "ServerReady")(pb.ServerReadyRequest().SerializeToString(),
                                                               timeout=30)
        if not pb.ServerReadyResponse.FromString(answer).ready:
            return "gRPC ServerReady says not ready"
    except grpc.RpcError as e:
        return f"gRPC ServerReady: {e.code().name}"
    finally:
        channel.close()
    return ""


def models_ready(target: Target) -> list[str]:
    """The fuzzed models that are not ready."""
    missing = []
    for model in MODELS:
        try:
            with urllib.request.urlopen(f"http://{target.host}:{target.http_port}/v2/models/{model.name}/ready",
                                        timeout=30):
                pass
        except (OSError, urllib.error.HTTPError):
            missing.append(model.name)
    return missing


def run(args, target: Target, server: harness.Server | None, log_path: Path | None) -> int:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    shares = [args.requests // args.processes + (i < args.requests % args.processes) for i in range(args.processes)]
    processes = [context.Process(target=client_process, args=(i, args.seed, share, target, args.concurrency,
                                                             args.timeout, queue), daemon=True)
                 for i, share in enumerate(shares)]
    started = time.monotonic()
    for process in processes:
        process.start()
    sent, next_check, finished = 0, args.check_every, 0
    labels: collections.Counter = collections.Counter()
    faults: list[dict] = []
    checks: list[str] = []
    while finished < len(processes):
        try:
            message = queue.get(timeout=5)
        except queue_module.Empty:
            if not any(p.is_alive() for p in processes):
                checks.append("a client process ended without its results")
                break
            continue
        if message[0] == "progress":
            sent += message[2]
            if sent >= next_check:
                next_check += args.check_every
                problem = health(target) or (server and server.process.poll() is not None and "server exited")
                checks.append(f"after {sent:,} requests: {problem or 'live and ready'}")
                print(f"{sent:>9,} requests, {time.monotonic() - started:5.0f} s: server "
                      f"{problem or 'live and ready'}", flush=True)
        else:
            finished += 1
            labels.update(message[2])
            faults.extend(message[3])
    elapsed = time.monotonic() - started
    for process in processes:
        process.join(timeout=10)
    problems = [c for c in checks if not c.endswith("live and ready")]
    final = health(target)
    if final:
        problems.append(f"at the end: {final}")
    not_ready = models_ready(target)
    if not_ready:
        problems.append(f"at the end, models not ready: {', '.join(not_ready)}")
    if server is not None and server.process.poll() is not None:
        problems.append(f"the server exited with {server.process.returncode}")
    if log_path is not None:
        problems += scan_log(log_path)
    return report(args, labels, faults, problems, elapsed, sum(shares))


def scan_log(log_path: Path) -> list[str]:
    """A process's death in the server's log is a fault; ERROR lines are counted by logger (each
    500 or INTERNAL has one; so do, from aiohttp and grpc, some client faults they log themselves)."""
    lines = log_path.read_text(errors="replace").splitlines()
    errors = collections.Counter(m.group(1) for line in lines if (m := LOG_ERROR.match(line)))
    if errors:
        print("ERROR lines in the server's log, by logger: "
              + ", ".join(f"{name} {count:,}" for name, count in errors.most_common()))
    deaths = [line for line in lines if LOG_DEATHS.search(line)]
    return [f"{len(deaths)} process death(s) in the server's log, e.g. {deaths[0][:200]}"] if deaths else []


def report(args, labels: collections.Counter, faults: list[dict], problems: list[str], elapsed: float,
           total: int) -> int:
    fault_count = sum(v for k, v in labels.items() if k.startswith("FAULT"))
    hangs = labels.get("FAULT no answer in time", 0)
    print(f"\n{total:,} requests in {elapsed:.0f} s ({total / elapsed:,.0f}/s), seed {args.seed}, "
          f"--frontends {args.frontends}")
    print("\n| request kind -> answer | count |\n| --- | ---: |")
    for label, count in sorted(labels.items()):
        if not label.startswith("FAULT"):
            print(f"| {label} | {count:,} |")
    print(f"\nfaults: {fault_count:,} (hangs: {hangs:,})")
    for label, count in sorted(labels.items()):
        if label.startswith("FAULT"):
            print(f"  {label[6:]}: {count:,}")
    for problem in problems:
        print(f"server: {problem}")
    if faults:
        Path(args.faults).write_text(json.dumps(faults, indent=1, ensure_ascii=True, default=str))
        print(f"\n{len(faults)} faulty request(s) written to {args.faults}; the first:")
        print(json.dumps(faults[0], indent=1, ensure_ascii=True, default=str)[:2000])
    verdict = not fault_count and not problems
    print(f"\nverdict: {'PASS' if verdict else 'FAIL'}: {fault_count} faulty answers, {hangs} hangs, "
          f"{len(problems)} server problems")
    return 0 if verdict else 1


def replay(key: str, target: Target, timeout: float) -> int:
    case = generate(key)
    print(json.dumps(case.describe(limit=4000), indent=1, ensure_ascii=True, default=str))

    async def once():
        http, grpc_client = HttpClient(target.host, target.http_port), GrpcClient(f"{target.host}:{target.grpc_port}")
        try:
            return await send(case, http, grpc_client, timeout)
        finally:
            http.close()
            await grpc_client.close()
    outcome = asyncio.run(once())
    print(f"answer: {outcome.label} {outcome.detail}\nfault: {outcome.fault or 'none'}")
    return 1 if outcome.fault else 0


def parse_url(text: str) -> Target:
    host_port, _, grpc_port = text.partition(",")
    host, _, http_port = host_port.rpartition(":")
    return Target(host or "127.0.0.1", int(http_port), int(grpc_port or 8001))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frontends", type=int, default=1, help="frontend processes of the naiad started")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per client process")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as hung")
    parser.add_argument("--check-every", type=int, default=10_000, help="requests between health checks")
    parser.add_argument("--url", help="HOST:HTTP_PORT,GRPC_PORT of a running naiad serving a repository "
                        "written by this script (--write-repository)")
    parser.add_argument("--write-repository", metavar="DIR", help="write the fuzzed models to DIR and exit")
    parser.add_argument("--replay", metavar="SEED:PROCESS:INDEX", help="print and send one request again")
    parser.add_argument("--faults", default="fuzz-faults.json", help="where the faulty requests go")
    args = parser.parse_args()
    if args.write_repository:
        print(write_repository(Path(args.write_repository)))
        return
    status = 1
    with tempfile.TemporaryDirectory() as folder:
        server = log_path = None
        if args.url:
            target = parse_url(args.url)
        else:
            repository = write_repository(Path(folder))
            server = harness.start_naiad(repository, "--frontends", str(args.frontends))
            log_path = Path(folder) / "naiad.log"
            target = Target("127.0.0.1", server.http_port, server.grpc_port)
        try:
            if args.replay:
                status = replay(args.replay, target, args.timeout)
            else:
                status = run(args, target, server, log_path)
        finally:
            if server is not None:
                server.stop()
                if log_path is not None and status:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    print(f"\nthe server's log ends:\n{tail}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
