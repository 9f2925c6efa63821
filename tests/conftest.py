"""Fixtures that start real naiad servers (`python -m naiad.daemon serve`) on free local ports."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import models

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_REPOSITORY = REPO_ROOT / "model_repository"
# how many frontend processes every server the tests start has (pytest --frontends N)
FRONTENDS = ["1"]


def pytest_addoption(parser):
    parser.addoption("--frontends", default="1", help="frontend processes of every naiad the tests start "
                     "(1: gRPC and HTTP served by the server's own process)")


def pytest_configure(config):
    FRONTENDS[0] = config.getoption("--frontends")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = 20):
    """condition()'s first true value, polled until `timeout` seconds have passed (then AssertionError
    naming `what`)."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(0.005)
    return found


def descendants(pid: int) -> set[int]:
    """The ids of every process below `pid` (its frontend and worker processes, theirs...)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class NaiadServer:
    """A naiad process serving `repository`; its output goes to a log file the tests can read."""

    def __init__(self, repository: Path, log_path: Path, *args: str, prefix: tuple[str, ...] = ()):
        """`prefix`: a command that runs naiad's command line (its arguments follow). Test servers
        are ready once their start's loads are done (`--strict-readiness false`), since many serve
        broken models on purpose; a test passes `--strict-readiness true` in `args` to check the
        default."""
        self.repository = repository
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_path = log_path
        self.killed = False
        command = [*prefix, sys.executable, "-m", "naiad.daemon", "serve",
                   "--model-repository", str(repository),
                   "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                   "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                   "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                   "--frontends", FRONTENDS[0], "--strict-readiness", "false", *args]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str) -> int:
        """The HTTP status of GET path (no exception for error statuses)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

    def wait_ready(self, timeout: float = 60) -> "NaiadServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"naiad exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/v2/health/ready") == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()  # no fixture will stop a server that never became ready
        raise TimeoutError(f"naiad was not ready in {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.killed = True

    def stop(self) -> int:
        """SIGTERM, as Kubernetes sends it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture
def start_server(tmp_path):
    """Start servers for one test: start_server(repository, *flags) -> a ready NaiadServer."""
    started = []

    def start(repository: Path, *args: str, ready: bool = True) -> NaiadServer:
        server = NaiadServer(repository, tmp_path / f"naiad-{len(started)}.log", *args)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        status = server.stop()
        assert server.killed or status == 0, f"naiad exited with {status} at shutdown:\n{server.log()}"


def session_server(repository: Path, tmp_path_factory, name: str, *args: str):
    """A server for a whole session (a fixture's body): started, yielded, stopped and checked."""
    server = NaiadServer(repository, tmp_path_factory.mktemp(name) / "naiad.log", *args).wait_ready()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def shipped_server(tmp_path_factory):
    """One server for the session, serving the repository naiad ships."""
    yield from session_server(SHIPPED_REPOSITORY, tmp_path_factory, "shipped")


@pytest.fixture(scope="session")
def test_repository(tmp_path_factory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    models.write_test_models(repository)
    return repository


@pytest.fixture(scope="session")
def server(test_repository, tmp_path_factory):
    """One server for the session, serving the test models (tests/models.py)."""
    yield from session_server(test_repository, tmp_path_factory, "server")


@pytest.fixture
def repository(tmp_path) -> Path:
    """An empty model repository for one test."""
    path = tmp_path / "repository"
    path.mkdir()
    return path


def copy_model(source_repository: Path, name: str, target_repository: Path) -> None:
    shutil.copytree(source_repository / name, target_repository / name)


def perf_analyzer() -> str:
    """perf_analyzer from PATH or beside this Python; a clear failure when it is not installed."""
    found = shutil.which("perf_analyzer") or shutil.which("perf_analyzer", path=os.path.dirname(sys.executable))
    if found is None:
        pytest.fail("perf_analyzer is not installed: run `bash tools/install-perf-analyzer.sh VENV` "
                    "on this virtualenv (the README's test command does)")
    return found
