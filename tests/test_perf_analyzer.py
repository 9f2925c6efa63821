"""perf_analyzer, Triton's load generator, drives naiad over gRPC and HTTP without an error."""
from __future__ import annotations

import subprocess

import pytest

from tests.conftest import perf_analyzer


@pytest.mark.parametrize("protocol,extra", [("grpc", []), ("http", []), ("grpc", ["--streaming"]),
                                            ("grpc", ["-b", "8"])])
def test_perf_analyzer_runs(shipped_server, protocol, extra):
    url = shipped_server.grpc_url if protocol == "grpc" else shipped_server.http_url
    result = subprocess.run(
        [perf_analyzer(), "-m", "simple", "-i", protocol, "-u", url, "--concurrency-range", "1:4:3",
         "--measurement-interval", "500", "--stability-percentage", "100", "--max-trials", "10",
         *extra],
        capture_output=True, text=True, timeout=180)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Throughput:" in output and "error" not in output.lower(), output
