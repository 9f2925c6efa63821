"""`naiad infer`, `naiad models` and `naiad perf` against a running naiad, run as a user runs them."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from naiad.daemon.cli import main
from tests.conftest import REPO_ROOT, SHIPPED_REPOSITORY, copy_model, session_server
from tests.test_clients import IDENTITY, SIMPLE, SIMPLE_CONFIG, TRITON_TYPES, types_config, write_model

A = np.arange(16, dtype=np.int32)


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("cli_models")
    write_model(repository, "simple", SIMPLE_CONFIG, SIMPLE)
    write_model(repository, "types", types_config(TRITON_TYPES), IDENTITY)
    write_model(repository, "broken", SIMPLE_CONFIG.replace("TYPE_INT32", "TYPE_NOPE", 1), SIMPLE)
    for name in ("tokenizer", "word_stream", "onnx_mlp"):    # for the examples in docs/clients.md
        copy_model(SHIPPED_REPOSITORY, name, repository)
    yield from session_server(repository, tmp_path_factory, "cli", "--allow-client-shm", "true")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def naiad(*args: str, check: bool = True) -> Ran:
    """`naiad ARGS`, run by the command line's own main() in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:     # argparse, and messages given to SystemExit
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    result = Ran(code, out.getvalue(), err.getvalue())
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("scheme", ["", "grpc://", "http://"])
def test_models(cli_server, scheme):
    url = scheme + (cli_server.http_url if scheme == "http://" else cli_server.grpc_url)
    lines = naiad("models", "--url", url).stdout.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["simple"].split()[:3] == ["simple", "1", "READY"]
    assert "UNAVAILABLE" in rows["broken"] and "TYPE_NOPE" in rows["broken"]   # the reason, as given
    listed = json.loads(naiad("models", "--url", url, "--ready", "--json").stdout)
    assert {row["name"] for row in listed} == {"simple", "types", "tokenizer", "word_stream", "onnx_mlp"}


def test_infer_prints_outputs(cli_server, tmp_path):
    np.save(tmp_path / "a.npy", A.reshape(1, 16))
    result = naiad("infer", "simple", "--input", f"INPUT0={tmp_path / 'a.npy'}", "--input", f"INPUT1={[2] * 16}",
                   "--url", cli_server.grpc_url)
    assert result.stdout.startswith("OUTPUT0 (INT32, shape [1, 16]):\n[[ 2  3  4")
    assert "OUTPUT1 (INT32, shape [1, 16]):\n[[-2 -1  0" in result.stdout
    # JSON values take the input's datatype; the batch dimension is added for a batching model
    printed = json.loads(naiad("infer", "simple", "--input", f"INPUT0={A.tolist()}", "--input", f"INPUT1={[1] * 16}",
                               "--output", "OUTPUT0", "--url", f"http://{cli_server.http_url}", "--json").stdout)
    assert printed == {"OUTPUT0": {"datatype": "INT32", "shape": [1, 16], "data": [(A + 1).tolist()]}}


def test_infer_every_datatype_as_json(cli_server):
    values = {"BOOL": [True, False], "BYTES": ["caf\u00e9", "x"], "FP16": [0.5, 2], "FP64": [1e300, -1]}
    args = []
    for datatype in TRITON_TYPES:
        args += ["--input", f"IN_{datatype}={json.dumps(values.get(datatype, [1, 2]))}"]
    printed = json.loads(naiad("infer", "types", *args, "--url", cli_server.grpc_url, "--json").stdout)
    for datatype in TRITON_TYPES:
        assert printed[f"OUT_{datatype}"] == {"datatype": datatype, "shape": [2],
                                              "data": values.get(datatype, [1, 2])}, datatype


def test_infer_errors(cli_server):
    result = naiad("infer", "simple", "--input", "INPUT9=1", "--url", cli_server.grpc_url, check=False)
    assert result.returncode == 2 and "no input 'INPUT9'" in result.stderr and "INPUT0, INPUT1" in result.stderr
    result = naiad("infer", "no_such_model", "--url", cli_server.grpc_url, check=False)
    assert result.returncode == 1 and "no_such_model" in result.stderr
    result = naiad("infer", "simple", "--input", "INPUT0=[1,2]", "--input", "INPUT1=[1,2]",
                   "--url", cli_server.grpc_url, check=False)
    assert result.returncode == 1 and "INVALID_ARGUMENT" in result.stderr and "INPUT0" in result.stderr


def perf(*args: str, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
    """`naiad perf ARGS` as a process of its own (it starts worker processes), with short windows."""
    result = subprocess.run([sys.executable, "-m", "naiad.daemon", "perf", "--measurement-seconds", "0.15",
                             "--warmup-seconds", "0.05", "--max-trials", "3", "--stability-percentage", "100", *args],
                            capture_output=True, text=True, timeout=120, check=False, cwd=cwd)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def measurements(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_perf_concurrency_sweep(cli_server, tmp_path):
    result = perf("simple", "--url", cli_server.grpc_url, "--concurrency", "1,3", "--json",
                  "--csv", str(tmp_path / "perf.csv"))
    found = measurements(result)
    assert [(m["mode"], m["value"]) for m in found] == [("concurrency", 1), ("concurrency", 3)]
    for m in found:
        assert m["throughput"] > 0 and m["errors"] == 0 and m["requests"] > 0 and m["stable"]
        latency = m["latency_us"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
        assert set(m["server_us"]) == {"queue", "compute_input", "compute_infer", "compute_output"}
        assert m["server_requests"] > 0 and all(v >= 0 for v in m["server_us"].values())
    assert "window" in result.stderr   # the progress line
    rows = list(csv.DictReader((tmp_path / "perf.csv").read_text().splitlines()))
    assert [r["value"] for r in rows] == ["1.0", "3.0"] and float(rows[1]["latency_p99_us"]) > 0


def test_perf_request_rate_over_http_in_two_processes(cli_server):
    found = measurements(perf("simple", "--url", f"http://{cli_server.http_url}", "--request-rate", "40",
                              "--processes", "2", "--batch-size", "4", "--json", "--measurement-seconds", "0.5"))
    assert len(found) == 1
    m = found[0]
    assert m["mode"] == "request_rate" and m["processes"] == 2 and m["protocol"] == "http"
    # 40 requests a second of 4 inferences each
    assert 100 < m["throughput"] < 220 and m["errors"] == 0


def test_perf_shared_memory_and_given_data(cli_server, tmp_path):
    np.save(tmp_path / "a.npy", A)
    found = measurements(perf("simple", "--url", cli_server.grpc_url, "--shared-memory", "system",
                              "--input", f"INPUT0={tmp_path / 'a.npy'}", "--input-data", "zero", "--json"))
    assert found[0]["shared_memory"] == "system" and found[0]["errors"] == 0 and found[0]["throughput"] > 0
    text = perf("types", "--url", cli_server.grpc_url, "--shape", "IN_INT32=5").stdout
    assert text.startswith("concurrency 1: ") and "infer/s" in text and "server: queue" in text


def test_perf_errors(cli_server):
    result = perf("simple", "--url", cli_server.grpc_url, "--batch-size", "9", "--json", check=False)
    assert result.returncode == 1
    m = measurements(result)[0]
    assert m["errors"] > 0 and "INPUT0" in m["first_error"]
    result = perf("no_such_model", "--url", cli_server.grpc_url, check=False)
    assert result.returncode != 0 and "no_such_model" in result.stderr
    result = perf("simple", "--url", cli_server.grpc_url, "--concurrency", "0", check=False)
    assert result.returncode != 0 and "--concurrency" in result.stderr


# --- the examples in docs/clients.md and the README ------------------------------------------------

def example(path, name: str) -> str:
    """The fenced block after `<!-- doc-test: NAME -->`, with its URLs pointing at the server."""
    lines = path.read_text().splitlines()
    at = lines.index(f"<!-- doc-test: {name} -->")
    return "\n".join(lines[at + 2:lines.index("```", at + 2)]) + "\n"


def on(server, text: str) -> str:
    return text.replace("localhost:8001", server.grpc_url).replace("localhost:8000", server.http_url)


def python_output(server, text: str) -> str:
    result = subprocess.run([sys.executable, "-c", on(server, text)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_python_examples(cli_server):
    docs = REPO_ROOT / "docs" / "clients.md"
    one_to_sixteen = "[[ 1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16]]"
    assert python_output(cli_server, example(docs, "clients-quick-start")).split("\n")[0] == one_to_sixteen
    assert python_output(cli_server, example(REPO_ROOT / "README.md", "readme-naiad-client")).startswith(one_to_sixteen)
    assert python_output(cli_server, example(docs, "clients-asyncio")) == f"[[{' '.join(['-7'] * 16)}]]\n"
    assert python_output(cli_server, example(docs, "clients-stream")) == "[b'one']\n[b'two']\n[b'three']\n"
    printed = python_output(cli_server, example(docs, "clients-shared-memory")).split("\n")
    assert printed[:2] == [str(2 * A.reshape(1, 16)).replace("\n", ""), str(A.reshape(1, 16)).replace("\n", "")]


def example_commands(server, name: str) -> list[list[str]]:
    found = []
    for line in on(server, example(REPO_ROOT / "docs" / "clients.md", name)).splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == "naiad", line
        found.append(words[1:] if "--url" in words else [*words[1:], "--url", server.grpc_url])
    return found


def test_command_examples(cli_server, tmp_path):
    models, infer, tokenize = example_commands(cli_server, "clients-cli")
    assert "word_stream" in naiad(*models).stdout
    assert naiad(*infer).stdout.startswith("OUTPUT0 (INT32, shape [1, 16]):\n[[ 2  3  4")
    assert json.loads(naiad(*tokenize).stdout)["INPUT_IDS"]["data"] == [[2, 144, 5, 223, 8, 3]]
    for command in example_commands(cli_server, "clients-perf"):
        assert command[0] == "perf"
        result = perf(*command[1:], "--quiet", cwd=tmp_path)
        assert "infer/s" in result.stdout or json.loads(result.stdout)["throughput"] > 0
    assert (tmp_path / "onnx_mlp.csv").read_text().count("\n") == 3
