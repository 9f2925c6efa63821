"""Large gRPC requests: megabytes a second into naiad, perf_analyzer sending one FP32 tensor of --megabytes
to a Python model that answers with one element (so the request's bytes are what is measured), or with
--echo the whole tensor back (the bytes both ways), at --concurrency, for each --frontends count. With
--before, the same for the code of another checkout, the two servers taking turns --rounds times.
Prints a Markdown table of the medians (lowest – highest).

    python bench/large_requests.py [--perf-analyzer PATH] [--megabytes 9.6] [--concurrency 4] [--echo]
                                   [--frontends 1 2] [--rounds 3] [--seconds 3] [--before CHECKOUT]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

import harness

MODEL = '''
from naiad.backends.python_api import InferenceResponse, Tensor


class TritonPythonModel:
    def execute(self, requests):
        return [InferenceResponse([Tensor("OUTPUT0", request.input("INPUT0")%s)]) for request in requests]
'''


def write_repository(folder: Path) -> Path:
    """`sink`: FP32 of any length in, its first element out; `echo`: the same tensor out. Both run on
    the event loop."""
    for name, answer, dims in (("sink", "[:1].copy()", [1]), ("echo", "", [-1])):
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "1" / "model.py").write_text(MODEL % answer)
        (folder / name / "config.yaml").write_text(yaml.safe_dump({
            "backend": "python", "max_batch_size": 0, "parameters": {"execution": "inline"},
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": dims}]}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("--megabytes", type=float, default=9.6,
                        help="the tensor's size (ResNet-50, batch 16)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--echo", action="store_true", help="the model answers with the whole tensor")
    parser.add_argument("--frontends", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--before", type=Path, metavar="CHECKOUT", help="another checkout of naiad's source")
    args = parser.parse_args()
    elements = int(args.megabytes * 1e6) // 4
    model, way = ("echo", "each way") if args.echo else ("sink", "in")
    codes = {"before": args.before, "this code": None} if args.before else {"this code": None}
    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder) / "repository")
        servers = {}
        try:
            for count in args.frontends:
                for code, checkout in codes.items():
                    servers[code, count] = harness.start_naiad(repository, "--frontends", str(count),
                                                               checkout=checkout)
            found = {key: [] for key in servers}
            for _ in range(args.rounds):
                for key, server in servers.items():
                    measured = harness.perf(args.perf_analyzer, server.grpc_port, model, args.concurrency,
                                            args.seconds, "--shape", f"INPUT0:{elements}")
                    found[key].append(measured.throughput * elements * 4 / 1e6)
        finally:
            for server in servers.values():
                server.stop()
    print(f"| code | --frontends | MB/s {way}, {args.megabytes} MB tensors, "
          f"concurrency {args.concurrency} |\n"
          "| --- | --- | --- |")
    for (code, count), rates in found.items():
        rates.sort()
        print(f"| {code} | {count} | {statistics.median(rates):,.0f} ({rates[0]:,.0f} – {rates[-1]:,.0f}) |")


if __name__ == "__main__":
    main()
