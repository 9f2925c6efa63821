"""What an ensemble and a BLS call cost, in naiad and in Triton serving the same repository in one run.

One repository of config.pbtxt files that both servers load unchanged: three Python steps (FP32 [16],
+1, max_batch_size 8, one CPU instance each), `pipeline` (an ensemble of the three in a row), `bls`
(a Python model that calls `step1` once per request with exec() and returns its answer) and `nocall`
(the same Python model doing the +1 itself, no call). naiad also serves copies run on a worker thread
(`parameters { execution: thread }`, the `_thread` models); Triton loads only the shared ones.

perf_analyzer, gRPC, --async, batch 1: every model alone at concurrency 1 (avg, p50, p99, and from the
server's statistics around the run its own time per request and how much of it was spent inside the
models it calls), then `pipeline`, `step1`, `bls` and `nocall` at concurrency 16; the servers take
turns on each target, in rounds, and each figure is its median over the rounds. From them, per server:

- the ensemble's added latency per step, (pipeline - (step1 + step2 + step3)) / 3 with the client's
  averages: the steps called one by one pay three trips over the wire where the ensemble pays one, so
  this is what a client saves, per step; and (pipeline - time inside its steps) / 3 with the server's
  statistics: what the ensemble itself adds around its steps;
- BLS overhead per call, bls - (step1 + nocall) with the client's averages (step1 alone carries a trip
  over the wire that the call does not); with the server's statistics, bls - time inside step1 -
  nocall: what the call costs beyond the callee's own time; and bls - nocall, what one call adds to a
  request, the callee included.

    python bench/pipelines.py [--window-ms 2000] [--rounds 3] [--triton CMD] [--before CHECKOUT]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("step1", "step2", "step3")
SIGNATURE = """max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""
ADD_ONE = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1)]) for r in requests]
"""
# step1's answer, through one exec() per request
BLS = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                answer = pb_utils.InferenceRequest(
                    model_name="{callee}", inputs=[pb_utils.Tensor("INPUT0", x)],
                    requested_output_names=["OUTPUT0"]).exec()
                if answer.has_error():
                    responses.append(pb_utils.InferenceResponse(error=answer.error()))
                    continue
                y = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
            return responses
"""
# the BLS model's own work, the call left out
NOCALL = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + 1)]))
            return responses
"""
# on a host with GPUs, Triton would place Python models on them and hand tensors between them in GPU
# memory; here both servers run them on the CPU, as naiad does by default
CPU_INSTANCE = "instance_group [ { kind: KIND_CPU } ]\n"
THREAD = 'parameters { key: "execution" value { string_value: "thread" } }\n'
SHARED_MODELS = (*STEPS, "pipeline", "bls", "nocall")
CALLEES = {"pipeline": STEPS, "bls": ("step1",)}
WIDE = ("pipeline", "step1", "bls", "nocall")   # also measured at concurrency 16


def python_model(repository: Path, name: str, source: str, extra: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.py").write_text(textwrap.dedent(source).lstrip())
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\n{SIGNATURE}{CPU_INSTANCE}{extra}')


def ensemble(repository: Path, name: str, steps: list[str]) -> None:
    """The steps in a row: INPUT0 -> steps[0] -> t1 -> ... -> OUTPUT0; an empty version folder."""
    tensors = ["INPUT0", *(f"t{i}" for i in range(1, len(steps))), "OUTPUT0"]
    text = ",\n".join(
        f'    {{ model_name: "{step}" model_version: -1\n'
        f'      input_map {{ key: "INPUT0" value: "{tensors[i]}" }}\n'
        f'      output_map {{ key: "OUTPUT0" value: "{tensors[i + 1]}" }} }}' for i, step in enumerate(steps))
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(
        f'name: "{name}"\nplatform: "ensemble"\n{SIGNATURE}ensemble_scheduling {{\n  step [\n{text}\n  ]\n}}\n')


def write_repository(repository: Path) -> None:
    """The shared models, then naiad's `_thread` copies (the same files with execution: thread)."""
    for suffix, extra in (("", ""), ("_thread", THREAD)):
        for step in STEPS:
            python_model(repository, step + suffix, ADD_ONE, extra)
        ensemble(repository, "pipeline" + suffix, [step + suffix for step in STEPS])
        python_model(repository, "bls" + suffix, BLS.replace("{callee}", "step1" + suffix), extra)
        python_model(repository, "nocall" + suffix, NOCALL, extra)


@dataclass
class Figures:
    throughput: float   # inferences a second
    avg: float          # client latency, µs
    p50: float
    p99: float
    server: float       # the server's own time per request (its statistics: success ns / count), µs
    inside: float       # of that, the time spent inside the models it calls (ensemble steps, BLS callee)


def success(http_port: int, model: str) -> tuple[int, int]:
    """The model's successful requests and their total time in ns, from the statistics extension."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=10) as r:
        found = json.load(r)["model_stats"][0]["inference_stats"]["success"]
    return int(found["count"]), int(found["ns"])


def measure(analyzer: str, server: harness.Server, model: str, callees: list[str], concurrency: int,
            seconds: float, report: Path) -> Figures:
    """perf_analyzer on the model, and the server's statistics of it and its callees around the run."""
    names = [model, *callees]
    before = [success(server.http_port, name) for name in names]
    report.unlink(missing_ok=True)
    found = harness.perf(analyzer, server.grpc_port, model, concurrency, seconds, "--async", "-f", str(report))
    after = [success(server.http_port, name) for name in names]
    if math.isnan(found.throughput):
        return Figures(*[math.nan] * 6)
    with open(report) as f:
        row = next(csv.DictReader(f))
    requests = max(after[0][0] - before[0][0], 1)
    spent = [(a[1] - b[1]) / requests / 1000 for a, b in zip(after, before)]
    return Figures(found.throughput, found.latency_ms * 1000, float(row["p50 latency"]),
                   float(row["p99 latency"]), spent[0], sum(spent[1:]))


def median(found: list[Figures]) -> Figures:
    """Each figure's median over the rounds that measured."""
    kept = [f for f in found if not math.isnan(f.throughput)] or found
    return Figures(*(statistics.median(getattr(f, field) for f in kept)
                     for field in ("throughput", "avg", "p50", "p99", "server", "inside")))


def start_triton(command: str, repository: Path) -> harness.Server:
    """Triton on the shared models only (explicit mode): the command takes the ports, then the folder."""
    loads = " ".join(f"--load-model={name}" for name in SHARED_MODELS)
    script = f'{command} "$1" "$2" "$3" "{repository}" --model-control-mode=explicit {loads}'
    return harness.start_command(["bash", "-c", script, "triton"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, metavar="CHECKOUT",
                        help="also measure the naiad of another checkout of its source (an earlier commit, "
                             "from `git worktree add`), with worker processes")
    parser.add_argument("--triton", default=f"bash {ROOT / 'bench' / 'peers' / 'peers.sh'} triton",
                        help="command that starts Triton given HTTP GRPC METRICS ports and a repository "
                             "folder after it (default: the peers script, after `bench/peers/peers.sh setup`)")
    args = parser.parse_args()
    analyzer = (shutil.which("perf_analyzer")
                or shutil.which("perf_analyzer", path=os.path.dirname(sys.executable)))
    if analyzer is None:
        raise SystemExit("perf_analyzer is not installed: run `bash tools/install-perf-analyzer.sh VENV`")
    # (label, server, model suffix): naiad's Python models run in worker processes by default
    setups = [("naiad (process)", "naiad", ""), ("naiad (thread)", "naiad", "_thread"),
              ("Triton", "triton", "")]
    if args.before:
        setups.insert(0, ("naiad before (process)", "before", ""))
    # (model, concurrency), each measured on every setup in turn
    targets = [(model, 1) for model in SHARED_MODELS] + [(model, 16) for model in WIDE]
    work = Path(tempfile.mkdtemp(prefix="naiad-pipelines-"))
    repository = work / "repository"
    write_repository(repository)
    servers: dict[str, harness.Server] = {}
    try:
        servers["naiad"] = harness.start_naiad(repository)
        if args.before:
            servers["before"] = harness.start_naiad(repository, checkout=args.before)
        servers["triton"] = start_triton(args.triton, repository)
        seconds = args.window_ms / 1000
        for _, server, suffix in setups:  # warm-up, not reported
            for model in SHARED_MODELS:
                harness.perf(analyzer, servers[server].grpc_port, model + suffix, 4, 0.5, "--async")
        rounds: dict = {}
        for round_ in range(args.rounds):
            for model, concurrency in targets:
                for label, server, suffix in setups:
                    callees = [callee + suffix for callee in CALLEES.get(model, ())]
                    found = measure(analyzer, servers[server], model + suffix, callees, concurrency,
                                    seconds, work / "report.csv")
                    rounds.setdefault((label, model, concurrency), []).append(found)
                    print(round_, label, model, concurrency, found, file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    results = {key: median(found) for key, found in rounds.items()}
    print("| server | model | c=1 avg µs | p50 µs | p99 µs | server's own µs | of it inside callees µs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model in SHARED_MODELS:
        for label, _, suffix in setups:
            r = results[(label, model, 1)]
            inside = f"{r.inside:,.0f}" if model in CALLEES else "–"
            print(f"| {label} | `{model}{suffix}` | {r.avg:,.0f} | {r.p50:,.0f} | {r.p99:,.0f} | "
                  f"{r.server:,.0f} | {inside} |")
    print("\n| server | ensemble: (pipeline - sum of steps) / 3, client µs | ensemble's own time per "
          "step, server µs | BLS: bls - (step1 + nocall), client µs | BLS call beyond the callee, server µs "
          "| one BLS call end to end: bls - nocall, client µs | c=16 infer/s: " + " / ".join(
              f"`{model}`" for model in WIDE) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, _, _ in setups:
        r = {model: results[(label, model, 1)] for model in SHARED_MODELS}
        cells = [(r["pipeline"].avg - sum(r[step].avg for step in STEPS)) / 3,
                 (r["pipeline"].server - r["pipeline"].inside) / 3,
                 r["bls"].avg - r["step1"].avg - r["nocall"].avg,
                 r["bls"].server - r["bls"].inside - r["nocall"].server,
                 r["bls"].avg - r["nocall"].avg]
        wide = [f"{results[(label, model, 16)].throughput:,.0f}" for model in WIDE]
        print(f"| {label} | " + " | ".join(f"{cell:,.0f}" for cell in cells)
              + " | " + " / ".join(wide) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
