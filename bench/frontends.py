"""The data plane on many cores: naiad's `simple` with --frontends 1, 2, 4 and 8 against Triton (`simple`
with and without dynamic batching) and a bare grpc.aio servicer, perf_analyzer over gRPC with
--async and batch 1, at concurrency 16, 64 and 128, and at concurrency 1 for the latency (naiad with each
frontend count, Triton's `simple`, the bare servicer). Prints Markdown tables.

    python bench/frontends.py [--perf-analyzer PATH] [--triton CMD] [--frontends 1 2 4 8] [--seconds 2]
                              [--channel-share N]

perf_analyzer's gRPC client shares one connection among several of its workers, so 16 or more
concurrent requests arrive on only a few connections, and each connection is served by one frontend
process. --channel-share 1 gives every worker a connection of its own (for every server measured),
as many independent clients would.

--triton is a command that starts Triton given HTTP GRPC METRICS ports and a repository folder after
them, e.g. `bash bench/peers/peers.sh triton` (after `bench/peers/peers.sh setup`); without it the
Triton rows are left out. Needs naiad importable and perf_analyzer.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

import harness

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (16, 64, 128)


def write_repository(folder: Path) -> Path:
    """`simple` as shipped (inline), and `simple_dyna`: the same with dynamic batching of 100 µs and
    batches up to 64, as Triton's peer model has."""
    repository = folder / "naiad"
    shutil.copytree(ROOT / "model_repository" / "simple", repository / "simple")
    shutil.copytree(ROOT / "model_repository" / "simple", repository / "simple_dyna")
    config = yaml.safe_load((repository / "simple" / "config.yaml").read_text())
    config.update(max_batch_size=64, dynamic_batching={"max_queue_delay_microseconds": 100})
    (repository / "simple_dyna" / "config.yaml").write_text(yaml.safe_dump(config))
    return repository


def row(label: str, figures: list[harness.Measurement]) -> str:
    return f"| {label} | " + " | ".join(f"{m.throughput:,.0f}" for m in figures) + " |"


def measure(analyzer: str, server: harness.Server, model: str, seconds: float) -> list[harness.Measurement]:
    return [harness.perf(analyzer, server.grpc_port, model, c, seconds, "--async") for c in CONCURRENCY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("--triton", default="", help="command that starts Triton (see above)")
    parser.add_argument("--frontends", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--channel-share", type=int, default=0,
                        help="perf_analyzer workers per gRPC connection (0: its default)")
    args = parser.parse_args()
    if args.channel_share:
        os.environ["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = str(args.channel_share)
    header = " | ".join(f"c={c} infer/s" for c in CONCURRENCY)
    print(f"| server, model | {header} |\n| --- |" + " --- |" * len(CONCURRENCY))
    latency = []
    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder))
        for count in args.frontends:
            server = harness.start_naiad(repository, "--frontends", str(count))
            try:
                latency.append((f"naiad, --frontends {count}",
                                harness.perf(args.perf_analyzer, server.grpc_port, "simple", 1, args.seconds)))
                print(row(f"naiad `simple`, --frontends {count}",
                          measure(args.perf_analyzer, server, "simple", args.seconds)), flush=True)
                if count == max(args.frontends):
                    print(row(f"naiad `simple_dyna` (dynamic batching 100 µs), --frontends {count}",
                              measure(args.perf_analyzer, server, "simple_dyna", args.seconds)), flush=True)
            finally:
                server.stop()
        if args.triton:
            server = harness.start_command(shlex.split(args.triton))
            try:
                latency.append(("Triton", harness.perf(args.perf_analyzer, server.grpc_port, "simple", 1,
                                                       args.seconds)))
                for model in ("simple", "simple_dyna"):
                    print(row(f"Triton `{model}`", measure(args.perf_analyzer, server, model, args.seconds)),
                          flush=True)
            finally:
                server.stop()
        ceiling = harness.start_grpc_only([sys.executable, str(ROOT / "bench" / "grpc_ceiling.py")])
        try:
            latency.append(("bare grpc.aio servicer",
                            harness.perf(args.perf_analyzer, ceiling.grpc_port, "simple", 1, args.seconds)))
            print(row("bare grpc.aio servicer", measure(args.perf_analyzer, ceiling, "simple", args.seconds)))
        finally:
            ceiling.stop()
    print("\n| `simple` at concurrency 1 | infer/s | avg latency µs |\n| --- | --- | --- |")
    for label, found in latency:
        print(f"| {label} | {found.throughput:,.0f} | {found.latency_ms * 1000:,.0f} |")


if __name__ == "__main__":
    main()
