"""The Python work a frontend process does for one ModelInfer of `simple` beyond gRPC's own when it
decodes the request itself: parsing and decoding the message, packing the call for the model process,
reading its reply and encoding the answer. (While the model process has time to spare, it decodes and
encodes small requests itself: docs/scheduling.md.) Timed in a loop, without processes or sockets;
prints microseconds a request (the best of five repeats). With --before, the same for the code of
another checkout, in a process of its own. Needs naiad importable.

Under perf_analyzer's shared connections each frontend process serves one busy connection, and this
work is part of what bounds it (docs/benchmarks.md).

    python bench/wire_path.py [--before CHECKOUT] [--number 50000]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

import harness
from naiad.daemon import grpc_frontend
from naiad.daemon.arena import Arena
from naiad.daemon.channel import CODEC, Call, Reply
from naiad.daemon.inference import InferResponse, pack_request, pack_response, unpack_response
from naiad.proto import grpc_service_pb2 as pb


def measure(number: int) -> dict[str, float]:
    values = np.arange(16, dtype=np.int32).reshape(1, 16)
    message = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        message.raw_input_contents.append(values.tobytes())
    wire = message.SerializeToString()
    arena = Arena(1 << 20)
    if hasattr(grpc_frontend, "RequestDecoder"):
        decode = grpc_frontend.RequestDecoder().decode
    else:   # a checkout from before descriptions were remembered
        def decode(data: bytes):
            return grpc_frontend.decode_request(pb.ModelInferRequest.FromString(data))
    reply = CODEC.dumps(Reply(1, ("1", pack_response(InferResponse({"OUTPUT0": values, "OUTPUT1": values})))))

    def request_path():
        request = decode(wire)
        arena.place(request)
        CODEC.dumps(Call(1, "infer", (pack_request(request),)))
        return request

    request = request_path()

    def reply_path():
        version, packed = CODEC.loads(reply).value
        grpc_frontend.serialize_response(request, version, unpack_response(packed))

    try:
        return {name: min(timeit.repeat(path, number=number, repeat=5)) / number * 1e6
                for name, path in (("request", request_path), ("reply", reply_path))}
    finally:
        arena.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, metavar="CHECKOUT", help="another checkout of naiad's source")
    parser.add_argument("--number", type=int, default=50_000)
    parser.add_argument("--only", action="store_true", help=argparse.SUPPRESS)   # one line, for --before
    args = parser.parse_args()
    figures = measure(args.number)
    line = f"{figures['request']:.2f} | {figures['reply']:.2f} | {sum(figures.values()):.2f}"
    if args.only:
        print(line)
        return
    print("| naiad | request path µs | reply path µs | together µs |\n| --- | --- | --- | --- |")
    if args.before:
        with tempfile.TemporaryDirectory() as work:
            before = subprocess.run([sys.executable, __file__, "--only", "--number", str(args.number)],
                                    env=harness.checkout_environment(args.before, Path(work)),
                                    capture_output=True, text=True, check=True).stdout.strip()
        print(f"| before | {before} |")
    print(f"| this checkout | {line} |")


if __name__ == "__main__":
    main()
