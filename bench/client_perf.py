"""naiad's client side against Triton's, on one naiad server in one run:

1. `naiad perf` beside perf_analyzer: throughput and latency of the shipped `simple` model over gRPC at
   each concurrency, the two tools taking turns, each measuring in windows until three agree (10%).
2. The client-side cost of one call: naiad.clients against tritonclient (gRPC, HTTP, asyncio gRPC),
   both in one process per protocol, taking turns (1,500 calls each, 10 rounds, the order swapped every
   round), calling `simple` one call after another with numpy in and out. Wall time per call, and the
   process's CPU time per call (gRPC's threads included); the median of the rounds.

    python bench/client_perf.py [--concurrency 1 4 16] [--window-secs 3] [--rounds 3] [--calls 1500]
                                [--cost-rounds 10] [--skip-agreement] [--skip-cost]

Needs perf_analyzer (`bash tools/install-perf-analyzer.sh VENV`) and tritonclient (pip's test extra).
Prints Markdown tables; each throughput cell is the median of --rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness

PAIRS = ["grpc", "http", "grpc asyncio"]
A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


# --- the cost per call: naiad's client and tritonclient, taking turns in one process ----------------

def _naiad_call(client):
    def call():
        outputs = client.infer("simple", {"INPUT0": A, "INPUT1": B})
        return outputs["OUTPUT0"], outputs["OUTPUT1"]
    return call


def _triton_inputs(module):
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    return inputs


def _triton_call(module, client):
    def call():
        result = client.infer("simple", _triton_inputs(module))
        return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    return call


def _timed(call, calls: int) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return {"wall_us": (time.perf_counter() - wall) / calls * 1e6, "cpu_us": (time.process_time() - cpu) / calls * 1e6}


def _take_turns(callers: dict, calls: int, rounds: int) -> dict:
    """Each caller `calls` times per round, the order swapped every round; the median of each figure."""
    for call in callers.values():
        for _ in range(200):
            call()
    found = {name: [] for name in callers}
    for round_ in range(rounds):
        for name in (list(callers) if round_ % 2 == 0 else list(reversed(callers))):
            found[name].append(_timed(callers[name], calls))
    return {name: {key: statistics.median(m[key] for m in found[name]) for key in ("wall_us", "cpu_us")}
            for name in found}


async def _take_turns_async(callers: dict, calls: int, rounds: int) -> dict:
    for call in callers.values():
        for _ in range(200):
            await call()
    found = {name: [] for name in callers}
    for round_ in range(rounds):
        for name in (list(callers) if round_ % 2 == 0 else list(reversed(callers))):
            call = callers[name]
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                await call()
            found[name].append({"wall_us": (time.perf_counter() - wall) / calls * 1e6,
                                "cpu_us": (time.process_time() - cpu) / calls * 1e6})
    return {name: {key: statistics.median(m[key] for m in found[name]) for key in ("wall_us", "cpu_us")}
            for name in found}


def one_pair(kind: str, grpc_port: int, http_port: int, calls: int, rounds: int) -> dict:
    """naiad's client and tritonclient over one protocol ("grpc", "http", "grpc asyncio")."""
    from naiad.clients import AsyncClient, Client
    grpc_url, http_url = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
    if kind == "grpc":
        import tritonclient.grpc as module
        with Client(grpc_url) as ours, module.InferenceServerClient(grpc_url) as theirs:
            return _take_turns({"naiad": _naiad_call(ours), "tritonclient": _triton_call(module, theirs)},
                               calls, rounds)
    if kind == "http":
        import tritonclient.http as module
        with Client(f"http://{http_url}") as ours, module.InferenceServerClient(http_url) as theirs:
            return _take_turns({"naiad": _naiad_call(ours), "tritonclient": _triton_call(module, theirs)},
                               calls, rounds)
    import tritonclient.grpc as sync_module
    import tritonclient.grpc.aio as module

    async def run():
        async with AsyncClient(grpc_url) as ours, module.InferenceServerClient(grpc_url) as theirs:
            async def naiad_call():
                outputs = await ours.infer("simple", {"INPUT0": A, "INPUT1": B})
                return outputs["OUTPUT0"], outputs["OUTPUT1"]

            async def triton_call():
                result = await theirs.infer("simple", _triton_inputs(sync_module))
                return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
            return await _take_turns_async({"naiad": naiad_call, "tritonclient": triton_call}, calls, rounds)
    return asyncio.run(run())


def pair_cost(kind: str, server: harness.Server, calls: int, rounds: int) -> dict:
    result = subprocess.run([sys.executable, __file__, "--one-pair", kind, "--grpc-port", str(server.grpc_port),
                             "--http-port", str(server.http_port), "--calls", str(calls), "--rounds", str(rounds)],
                            capture_output=True, text=True, timeout=1200, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


# --- naiad perf beside perf_analyzer --------------------------------------------------------------

def perf_analyzer(analyzer: str, port: int, concurrency: int, window: float) -> dict:
    command = [analyzer, "-m", "simple", "-i", "grpc", "-u", f"127.0.0.1:{port}", "--concurrency-range",
               str(concurrency), "--measurement-interval", str(int(window * 1000)), "--stability-percentage", "10",
               "--max-trials", "10", "--percentile", "50"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    text = result.stdout + result.stderr
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", text)
    p50 = re.search(r"p50 latency: (\d+) usec", text)
    if result.returncode != 0 or throughput is None:
        print(f"perf_analyzer failed at concurrency {concurrency}:\n{text[-1500:]}", file=sys.stderr)
        return {"throughput": float("nan"), "p50_us": float("nan")}
    return {"throughput": float(throughput.group(1)), "p50_us": float(p50.group(1)) if p50 else float("nan")}


def naiad_perf(port: int, concurrency: int, window: float) -> dict:
    command = [sys.executable, "-m", "naiad.daemon", "perf", "simple", "--url", f"127.0.0.1:{port}",
               "--concurrency", str(concurrency), "--measurement-seconds", str(window), "--json", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        print(f"naiad perf failed at concurrency {concurrency}:\n{result.stderr[-1500:]}", file=sys.stderr)
        return {"throughput": float("nan"), "p50_us": float("nan")}
    measurement = json.loads(result.stdout)
    return {"throughput": measurement["throughput"], "p50_us": measurement["latency_us"]["p50"]}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--window-secs", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1500, help="calls per client and round of the cost")
    parser.add_argument("--cost-rounds", type=int, default=10, help="rounds of the cost, clients taking turns")
    parser.add_argument("--perf-analyzer", default=shutil.which("perf_analyzer")
                        or shutil.which("perf_analyzer", path=os.path.dirname(sys.executable)))
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--one-pair", help=argparse.SUPPRESS)
    parser.add_argument("--grpc-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_pair:
        print(json.dumps(one_pair(args.one_pair, args.grpc_port, args.http_port, args.calls, args.rounds)))
        return
    if not args.skip_agreement and not args.perf_analyzer:
        raise SystemExit("perf_analyzer not found: run `bash tools/install-perf-analyzer.sh VENV`, or --skip-agreement")

    import grpc
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}, grpcio {grpc.__version__}, "
          f"numpy {np.__version__}, {time.strftime('%Y-%m-%d')}\n")
    work = Path(tempfile.mkdtemp(prefix="client_perf_"))
    repository = work / "repository"
    repository.mkdir()
    shutil.copytree(HERE.parent / "model_repository" / "simple", repository / "simple")
    server = harness.start_naiad(repository)
    try:
        if not args.skip_agreement:
            found = {(tool, c): [] for tool in ("pa", "naiad") for c in args.concurrency}
            for _ in range(args.rounds):
                for c in args.concurrency:
                    found["pa", c].append(perf_analyzer(args.perf_analyzer, server.grpc_port, c, args.window_secs))
                    found["naiad", c].append(naiad_perf(server.grpc_port, c, args.window_secs))
            print("| concurrency | perf_analyzer infer/s | naiad perf infer/s | difference | perf_analyzer p50 µs "
                  "| naiad perf p50 µs |")
            print("| --- | --- | --- | --- | --- | --- |")
            for c in args.concurrency:
                pa = median([m["throughput"] for m in found["pa", c]])
                ours = median([m["throughput"] for m in found["naiad", c]])
                print(f"| {c} | {pa:,.0f} | {ours:,.0f} | {(ours - pa) / pa:+.1%} | "
                      f"{median([m['p50_us'] for m in found['pa', c]]):,.0f} | "
                      f"{median([m['p50_us'] for m in found['naiad', c]]):,.0f} |")
            print()
        if not args.skip_cost:
            print("| protocol | naiad wall µs per call | tritonclient wall µs | naiad client CPU µs | "
                  "tritonclient client CPU µs |")
            print("| --- | --- | --- | --- | --- |")
            for kind in PAIRS:
                cost = pair_cost(kind, server, args.calls, args.cost_rounds)
                ours, theirs = cost["naiad"], cost["tritonclient"]
                print(f"| {kind} | {ours['wall_us']:,.0f} | {theirs['wall_us']:,.0f} | {ours['cpu_us']:,.0f} | "
                      f"{theirs['cpu_us']:,.0f} |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
