"""The client side of the `naiad` command: `naiad infer`, `naiad models` and `naiad perf`, for any v2
server. daemon/cli.py adds them to its parser with add_commands and hands them to run."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

COMMANDS = ("infer", "models", "perf")
_URL_HELP = "grpc://host:port or host:port (gRPC), http://host:port (HTTP) (default: %(default)s)"


def add_commands(commands) -> None:
    """Add the client subcommands to naiad's subparsers."""
    from naiad.clients import perf

    infer = commands.add_parser("infer", help="send one request to a model and print its outputs")
    infer.add_argument("model")
    infer.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy|JSON",
                       help="an input's value: a .npy file or JSON (a number or nested lists, cast to the "
                            "input's datatype; the batch dimension may be left out); repeatable")
    infer.add_argument("--output", action="append", default=[], metavar="NAME",
                       help="an output to ask for (repeatable; default: all)")
    infer.add_argument("--url", default="localhost:8001", help=_URL_HELP)
    infer.add_argument("--model-version", default="")
    infer.add_argument("--parameter", action="append", default=[], metavar="KEY=JSON",
                       help="a request parameter (a JSON number, true/false, or text); repeatable")
    infer.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    infer.add_argument("--json", action="store_true",
                       help="print {name: {datatype, shape, data}} as one JSON object")

    models = commands.add_parser("models", help="list a server's models with their states and reasons")
    models.add_argument("--url", default="localhost:8001", help=_URL_HELP)
    models.add_argument("--ready", action="store_true", help="only the models ready for inference")
    models.add_argument("--json", action="store_true", help="print the index as JSON")

    perf.add_arguments(commands.add_parser(
        "perf", help="load-test a model: throughput, latency percentiles and the server's breakdown",
        description="Measure a model's throughput and latency under load, over gRPC or HTTP, against any "
                    "v2 server. Each concurrency (or request rate) is measured in windows until three in "
                    "a row agree."))


def run(args: argparse.Namespace) -> int:
    from naiad.clients.errors import ClientError

    try:
        if args.command == "infer":
            return _infer(args)
        if args.command == "models":
            return _models(args)
        from naiad.clients import perf
        return perf.run(args)
    except ClientError as e:
        print(f"{args.url}: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parameter(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def _infer(args) -> int:
    from naiad.clients import Client
    from naiad.clients.perf import binary_data, named_values, parse_value, typed_input

    with Client(args.url, timeout=args.timeout) as asking:
        binary = binary_data(asking)
    with Client(args.url, timeout=args.timeout, binary_data=binary) as client:
        metadata = client.model_metadata(args.model, args.model_version or None)
        by_name = {t["name"]: t for t in metadata["inputs"]}
        given = named_values(args.input, "--input")
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise ValueError(f"model '{args.model}' has no input {', '.join(repr(u) for u in unknown)}; its "
                             f"inputs: {', '.join(by_name)}")
        batched = bool(by_name) and all(str(t["shape"][0]) == "-1" for t in by_name.values()) and \
            _batches(client, args)
        inputs = {name: typed_input(by_name[name], parse_value(text), batched) for name, text in given.items()}
        parameters = {key: _parameter(value) for key, value in named_values(args.parameter, "--parameter").items()}
        outputs = client.infer(args.model, inputs, outputs=args.output or None,
                               version=args.model_version or None, parameters=parameters or None)
    if args.json:
        print(json.dumps({name: {"datatype": _datatype(array), "shape": list(array.shape),
                                 "data": _json_data(array)} for name, array in outputs.items()}))
        return 0
    for name, array in outputs.items():
        print(f"{name} ({_datatype(array)}, shape {list(array.shape)}):")
        print(np.array2string(_printable(array), threshold=1000, max_line_width=110))
    return 0


def _batches(client, args) -> bool:
    from naiad.clients.errors import ClientError
    try:
        return int(client.model_config(args.model, args.model_version or None).get("max_batch_size", 0)) > 0
    except ClientError:
        return False


def _datatype(array: np.ndarray) -> str:
    from naiad.clients import tensors
    return tensors.datatype_of(array)


def _printable(array: np.ndarray) -> np.ndarray:
    """BYTES elements as text where they are UTF-8."""
    if array.dtype != object:
        return array
    out = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        try:
            out[index] = value.decode() if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            out[index] = value
    return out


def _json_data(array: np.ndarray) -> list:
    if array.dtype == object:    # BYTES: text where UTF-8, Python's bytes literal otherwise
        return np.vectorize(lambda v: v if isinstance(v, str) else repr(v), otypes=[object])(
            _printable(array)).tolist()
    if array.dtype.kind == "f" and array.dtype.itemsize < 4 or array.dtype.kind == "V":
        array = array.astype(np.float32)    # FP16 and BF16 as JSON numbers
    return array.tolist()


def _models(args) -> int:
    from naiad.clients import Client

    with Client(args.url, timeout=30) as client:
        rows = client.repository_index(ready=args.ready)
    if args.json:
        print(json.dumps(rows))
        return 0
    table = [("MODEL", "VERSION", "STATE", "REASON")] + [
        (r.get("name", ""), r.get("version", ""), r.get("state", ""), r.get("reason", "")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    return 0
