"""What the benchmark scripts share: free ports, servers started and stopped, perf_analyzer runs and
their figures."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server process (its own process group) with its HTTP and gRPC ports."""
    process: subprocess.Popen
    http_port: int
    grpc_port: int

    def wait_ready(self, timeout: float = 300) -> "Server":
        """Until HTTP's readiness says 200 (or, for a server without HTTP, gRPC's port answers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}")
            try:
                if not self.http_port:
                    socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2).close()
                    return self
                url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise SystemExit(f"the server was not ready in {timeout} s")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_naiad(repository: Path, *args: str, checkout: Path | None = None) -> Server:
    """naiad serving the repository (the code of another checkout of naiad's source, if given); its
    log goes to naiad.log beside the repository."""
    http_port, grpc_port = free_port(), free_port()
    env = None if checkout is None else checkout_environment(checkout, repository.parent)
    with open(repository.parent / "naiad.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "naiad.daemon", "serve", "--model-repository", str(repository),
             "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--allow-metrics", "false", *args],
            start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return Server(process, http_port, grpc_port).wait_ready()
    except SystemExit:
        print((repository.parent / "naiad.log").read_text()[-3000:], file=sys.stderr)
        raise


def checkout_environment(checkout: Path, work: Path) -> dict[str, str]:
    """This environment, where `naiad.*` imports the checkout's folders first, then whatever this
    environment imports from."""
    paths = [_importable(checkout, work), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def _importable(checkout: Path, work: Path) -> str:
    """A folder (made in `work`) to put first on PYTHONPATH, where `naiad.*` imports the checkout's
    folders (linked the way its pyproject.toml maps them), ahead of the naiad installed here."""
    folders = tomllib.loads((checkout / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    site = Path(tempfile.mkdtemp(prefix="checkout-", dir=work))
    (site / "naiad").mkdir()
    for package, folder in folders.items():
        if "." in package:
            (site / "naiad" / package.split(".", 1)[1]).symlink_to((checkout / folder).resolve())
    return str(site)


def start_command(command: list[str]) -> Server:
    """A server started by a command that takes HTTP GRPC METRICS ports after its own arguments."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    process = subprocess.Popen([*command, str(http_port), str(grpc_port), str(metrics_port)],
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Server(process, http_port, grpc_port).wait_ready()


def start_grpc_only(command: list[str]) -> Server:
    """A gRPC server started by a command that takes its port after its own arguments."""
    grpc_port = free_port()
    process = subprocess.Popen([*command, str(grpc_port)], start_new_session=True)
    return Server(process, 0, grpc_port).wait_ready()


@dataclass
class Measurement:
    throughput: float      # inferences a second (perf_analyzer counts batch items)
    latency_ms: float      # average


def perf(analyzer: str, port: int, model: str, concurrency: int, seconds: float, *extra: str) -> Measurement:
    """One perf_analyzer measurement over gRPC; NaN figures (and the output on stderr) if it failed."""
    command = [analyzer, "-m", model, "-i", "grpc", "-u", f"127.0.0.1:{port}",
               "--concurrency-range", str(concurrency), "--measurement-interval", str(int(seconds * 1000)),
               "--max-trials", "5", "--stability-percentage", "50", *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    text = result.stdout + result.stderr
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", text)
    average = re.search(r"Avg latency: (\d+) usec", text)
    if result.returncode != 0 or throughput is None:
        print(f"perf_analyzer failed ({' '.join(command[1:])}):\n{text[-2000:]}", file=sys.stderr)
        return Measurement(float("nan"), float("nan"))
    return Measurement(float(throughput.group(1)), int(average.group(1)) / 1000 if average else float("nan"))
