"""The data plane on many cores: naiad's `simple` with --frontends 1, 2, 4 and 8 against Triton (`simple`
with and without dynamic batching), a bare grpc.aio servicer and the ceiling of naiad's design in
Python (bench/grpc_ceiling.py --forwarders: as many bare servicers as naiad's most frontends, passing
each request to one process that does the work), perf_analyzer over gRPC with --async and batch 1, at
concurrency 16, 64 and 128, and at concurrency 1 for the latency (`simple` on every server). Every
server runs for the whole script; at concurrency 1 they take turns, --rounds times, and each gets the
median of its rounds, since a few percent of latency is less than this measure varies from one minute
to the next on a busy host. Prints Markdown tables.

    python bench/frontends.py [--perf-analyzer PATH] [--triton CMD] [--frontends 1 2 4 8] [--seconds 2]
                              [--rounds 5] [--batching-rounds 3] [--channel-share N]

perf_analyzer's gRPC client shares one connection among several of its workers, so 16 or more
concurrent requests arrive on only a few connections (three), and each connection is served by one
frontend process. Which frontends get them is the kernel's choice, made anew for each measurement:
two connections on one frontend serve less than two on two. So `simple_dyna`, and `simple` on naiad's
most frontends and on the forwarders, are measured --batching-rounds times at each concurrency, and
show the median (lowest – highest).
--channel-share 1 gives every worker a connection of its own (for every server measured), as many
independent clients would.

--triton is a command that starts Triton given HTTP GRPC METRICS ports and a repository folder after
them, e.g. `bash bench/peers/peers.sh triton` (after `bench/peers/peers.sh setup`); without it the
Triton rows are left out. Needs naiad importable and perf_analyzer.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
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


def label(server: str, model: str) -> str:
    """'naiad, --frontends 8' and 'simple' -> 'naiad `simple`, --frontends 8'."""
    name, _, detail = server.partition(", ")
    return f"{name} `{model}`" + (f", {detail}" if detail else "")


def row(title: str, figures: list[list[harness.Measurement]]) -> str:
    """A cell per concurrency: the throughput, or the median (lowest – highest) of several."""
    cells = []
    for measurements in figures:
        found = sorted(m.throughput for m in measurements)
        cells.append(f"{statistics.median(found):,.0f}"
                     + (f" ({found[0]:,.0f} – {found[-1]:,.0f})" if len(found) > 1 else ""))
    return f"| {title} | " + " | ".join(cells) + " |"


def measure(analyzer: str, server: harness.Server, model: str, seconds: float, rounds: int = 1
            ) -> list[list[harness.Measurement]]:
    return [[harness.perf(analyzer, server.grpc_port, model, c, seconds, "--async") for _ in range(rounds)]
            for c in CONCURRENCY]


def latencies(analyzer: str, servers: dict[str, harness.Server], rounds: int, seconds: float
              ) -> dict[str, list[harness.Measurement]]:
    """`simple` at concurrency 1 on every server, the servers taking turns, `rounds` times over: the
    host's drift over the run then touches every server alike."""
    found = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            found[name].append(harness.perf(analyzer, server.grpc_port, "simple", 1, seconds))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", default="perf_analyzer")
    parser.add_argument("--triton", default="", help="command that starts Triton (see above)")
    parser.add_argument("--frontends", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5, help="turns of the servers at concurrency 1")
    parser.add_argument("--batching-rounds", type=int, default=3,
                        help="measurements at each concurrency where connections land by chance")
    parser.add_argument("--channel-share", type=int, default=0,
                        help="perf_analyzer workers per gRPC connection (0: its default)")
    args = parser.parse_args()
    if args.channel_share:
        os.environ["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = str(args.channel_share)
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as running:
        repository = write_repository(Path(folder))
        servers: dict[str, harness.Server] = {}

        def keep(name: str, server: harness.Server) -> None:
            servers[name] = server
            running.callback(server.stop)

        for count in args.frontends:
            keep(f"naiad, --frontends {count}", harness.start_naiad(repository, "--frontends", str(count)))
        if args.triton:
            keep("Triton", harness.start_command(shlex.split(args.triton)))
        ceiling = [sys.executable, str(ROOT / "bench" / "grpc_ceiling.py")]
        keep("bare grpc.aio servicer", harness.start_grpc_only(ceiling))
        most = max(args.frontends)
        naiad_most = f"naiad, --frontends {most}"
        forwarders = f"grpc.aio forwarders, {most} processes"
        keep(forwarders, harness.start_grpc_only([*ceiling, "--forwarders", str(most)]))
        placed = (naiad_most, forwarders)   # where connections land decides their figures

        header = " | ".join(f"c={c} infer/s" for c in CONCURRENCY)
        print(f"| server, model | {header} |\n| --- |" + " --- |" * len(CONCURRENCY))
        for name, server in servers.items():
            rounds = {"simple": args.batching_rounds if name in placed else 1}
            if name in (naiad_most, "Triton"):
                rounds["simple_dyna"] = args.batching_rounds  # dynamic batching of 100 µs, batches up to 64
            for model, times in rounds.items():
                figures = measure(args.perf_analyzer, server, model, args.seconds, times)
                print(row(label(name, model), figures), flush=True)

        found = latencies(args.perf_analyzer, servers, args.rounds, args.seconds)
    print(f"\n| `simple` at concurrency 1, {args.rounds} rounds | avg latency µs, median | lowest – highest |"
          "\n| --- | --- | --- |")
    for name, measurements in found.items():
        averages = sorted(m.latency_ms * 1000 for m in measurements)
        print(f"| {name} | {statistics.median(averages):,.0f} | {averages[0]:,.0f} – {averages[-1]:,.0f} |")


if __name__ == "__main__":
    main()
