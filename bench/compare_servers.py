"""naiad against Triton, MLServer and a bare grpc.aio servicer, side by side in one run.

Starts every server on loopback, drives each with perf_analyzer (gRPC, --async, batch 1) at each
concurrency in turn, interleaved so that drift hits all alike, and prints a Markdown table of
throughput and p50/p99 latency.

    python bench/compare_servers.py [--concurrency 1 4 16] [--window-ms 3000] [--peers DIR]

Needs perf_analyzer (`bash tools/install-perf-analyzer.sh VENV`), and the peers set up once with
`NAIAD_PEERS=DIR bench/peers/peers.sh setup` (DIR defaults to ~/.cache/naiad-peers).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    raise TimeoutError(url)


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(port)


class Servers:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str], env: dict | None = None) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")
        # one BLAS thread per process: numpy models behave alike in every server
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            process.wait(timeout=60)


def naiad_repository(work: Path) -> Path:
    """The shipped repository, plus `simple` run on a worker thread and in a worker process."""
    repository = work / "naiad_repository"
    shutil.copytree(ROOT / "model_repository", repository)
    for execution in ("thread", "process"):
        shutil.copytree(repository / "simple", repository / f"simple_{execution}")
        config = repository / f"simple_{execution}" / "config.yaml"
        config.write_text(config.read_text().replace("execution: inline", f"execution: {execution}"))
    return repository


def measure(perf_analyzer: str, model: str, grpc_port: int, concurrency: int, window_ms: int,
            report: Path, extra: list[str] = ()) -> dict:
    command = [perf_analyzer, "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{grpc_port}", "--async",
               "--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms),
               "--stability-percentage", "20", "--max-trials", "6", "-f", str(report), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not report.exists():
        return {"error": (result.stdout + result.stderr).strip().splitlines()[-1:]}
    with open(report) as f:
        row = next(csv.DictReader(f))
    return {"throughput": float(row["Inferences/Second"]), "p50": int(row["p50 latency"]),
            "p99": int(row["p99 latency"])}


def median_round(found: list[dict]) -> dict:
    """The round with the median throughput among those that measured (perf_analyzer gives up on a
    window that will not settle); an error only when no round did."""
    measured = [r for r in found if "error" not in r]
    if not measured:
        return found[0]
    return sorted(measured, key=lambda r: r["throughput"])[len(measured) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure every target this many times; the median round is reported")
    parser.add_argument("--peers", type=Path, default=Path(os.environ.get(
        "NAIAD_PEERS", Path.home() / ".cache" / "naiad-peers")))
    parser.add_argument("--skip", nargs="*", default=[], help="targets to leave out")
    args = parser.parse_args()
    perf_analyzer = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    work = Path(tempfile.mkdtemp(prefix="naiad-bench-"))
    servers = Servers(work)
    ports = {name: (free_port(), free_port(), free_port())
             for name in ("naiad", "triton", "mlserver", "mlserver_default", "ceiling")}
    peers_sh = str(ROOT / "bench" / "peers" / "peers.sh")
    peers_env = {"NAIAD_PEERS": str(args.peers)}
    # (label, model, server name)
    targets = [("naiad, `simple` (inline)", "simple", "naiad"),
               ("naiad, `simple` on a worker thread", "simple_thread", "naiad"),
               ("naiad, `simple` in a worker process", "simple_process", "naiad"),
               ("Triton, `simple` (python backend)", "simple", "triton"),
               ("MLServer, parallel_workers=0", "simple", "mlserver"),
               ("MLServer, default settings", "simple", "mlserver_default"),
               ("bare grpc.aio servicer (ceiling)", "simple", "ceiling")]
    targets = [t for t in targets if t[2] not in args.skip]
    wanted = {t[2] for t in targets}
    try:
        http, grpc_port, metrics = ports["naiad"]
        servers.start("naiad", [sys.executable, "-m", "naiad.daemon", "serve", "--model-repository",
                                str(naiad_repository(work)), "--http-address", "127.0.0.1",
                                "--grpc-address", "127.0.0.1", "--http-port", str(http),
                                "--grpc-port", str(grpc_port), "--metrics-address", "127.0.0.1",
                                "--metrics-port", str(metrics)])
        if "triton" in wanted:
            servers.start("triton", ["bash", peers_sh, "triton", *map(str, ports["triton"])], peers_env)
        if "mlserver" in wanted:
            servers.start("mlserver", ["bash", peers_sh, "mlserver", *map(str, ports["mlserver"]), "0"], peers_env)
        if "mlserver_default" in wanted:
            servers.start("mlserver_default", ["bash", peers_sh, "mlserver",
                                               *map(str, ports["mlserver_default"]), "1"], peers_env)
        servers.start("ceiling", [sys.executable, str(ROOT / "bench" / "grpc_ceiling.py"),
                                  str(ports["ceiling"][1])])
        for name in wanted:
            if name == "ceiling":
                wait_port(ports[name][1])
            else:
                wait_http(f"http://127.0.0.1:{ports[name][0]}/v2/health/ready")
        for label, model, name in targets:  # warm-up, not reported
            measure(perf_analyzer, model, ports[name][1], 4, 1000, work / "warmup.csv")
        rounds: dict = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                for label, model, name in targets:
                    report = work / f"{name}-{model}-{concurrency}-{round_}.csv"
                    result = measure(perf_analyzer, model, ports[name][1], concurrency, args.window_ms, report)
                    rounds.setdefault((label, concurrency), []).append(result)
                    print(label, concurrency, result, file=sys.stderr, flush=True)
        results = {key: median_round(found) for key, found in rounds.items()}
    finally:
        servers.stop()
    header = "| server and model | " + " | ".join(
        f"c={c} infer/s | c={c} p50 / p99 µs" for c in args.concurrency) + " |"
    print(header)
    print("|" + " --- |" * (1 + 2 * len(args.concurrency)))
    for label, _, _ in targets:
        cells = []
        for c in args.concurrency:
            r = results[(label, c)]
            cells += ([f"{r['throughput']:,.0f}", f"{r['p50']:,} / {r['p99']:,}"] if "error" not in r
                      else ["error", " ".join(r["error"])[:60]])
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
