"""Soak a live naiad: a million mixed requests (HTTP JSON, HTTP binary, gRPC, gRPC streams, requests
the client cancels) while a model is reloaded through the repository API every --reload-every
requests and a worker process is killed every --kill-every. Samples the server's memory (resident
pages of the model process and all its children, shared memory apart), open descriptors
(/proc/PID/fd of the same processes) and its files in /dev/shm as it goes, and accounts for every failed request by the fault injected.

    python bench/soak.py [--requests 1000000] [--frontends 1] [--clients 2] [--concurrency 8]
                         [--kill-every 100000] [--reload-every 50000] [--samples 40]

Prints a table of samples and a verdict. Flat means: after warm-up (the first --warmup share of the
requests), the mean of the last quarter of the samples is within 5% of the mean of the first quarter
(descriptors and /dev/shm files: or within 2 of it). Exits 1 if a figure is not flat, if any failure
is unexplained, or if the server is not alive and ready with every model at the end. Explained: the
worker-died error of a request in flight on a killed worker, a request queued too long while a
killed worker restarted, and the client's own cancellations. A reload explains no failure: the
previous load keeps serving until the new one is ready.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import queue as queue_module
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import harness
import numpy as np
import yaml
from fuzz import SERVICE, Case, HttpClient, Target
from naiad.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60.0               # seconds without an answer before a request counts as hung
SLOW_MS = 30                 # what the `slow` model sleeps on a request the client cancels

IDENTITY = '''\
from naiad.backends.python_api import InferenceResponse, Tensor


class TritonPythonModel:
    def execute(self, requests):
        return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
'''
SLOW = '''\
import time
from naiad.backends.python_api import InferenceResponse, Tensor


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            time.sleep(float(r.input("INPUT0").reshape(-1)[0]) / 1000)
        return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
'''


def identity_config(execution: str, count: int, **extra) -> dict:
    return {"backend": "python", "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "instance_group": [{"count": count, "kind": "KIND_CPU"}],
            "parameters": {"execution": execution}, **extra}


MODELS = {
    # two worker processes with dynamic batching: one of them is killed every --kill-every requests
    "echo": (identity_config("process", 2, dynamic_batching={"max_queue_delay_microseconds": 200}), IDENTITY),
    # reloaded through the repository API every --reload-every requests (its worker process too)
    "reloaded": (identity_config("process", 1), IDENTITY),
    # sleeps: the requests the clients cancel go here
    "slow": (identity_config("thread", 2), SLOW),
}


def write_repository(folder: Path) -> Path:
    repository = folder / "models"
    shutil.copytree(ROOT / "model_repository" / "simple", repository / "simple")
    for name, (config, code) in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.yaml").write_text(yaml.safe_dump(config))
        (repository / name / "1" / "model.py").write_text(code)
    return repository


# --- the clients ---------------------------------------------------------------------------------

@dataclass
class Failure:
    when: float              # time.monotonic() (one clock for all processes)
    kind: str                # the request's kind
    model: str
    error: str


@dataclass
class Tally:
    answered: collections.Counter = field(default_factory=collections.Counter)  # kind -> count
    cancelled: collections.Counter = field(default_factory=collections.Counter)  # kind/outcome -> count
    failures: list[Failure] = field(default_factory=list)
    failure_count: int = 0

    def fail(self, kind: str, model: str, error: str) -> None:
        self.failure_count += 1
        if len(self.failures) < 20_000:
            self.failures.append(Failure(time.monotonic(), kind, model, error[:300]))


def simple_inputs(rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([rng.randint(-1000, 1000) for _ in range(16)], dtype=np.int32).reshape(1, 16)
    return a, np.full((1, 16), rng.randint(-9, 9), dtype=np.int32)


def fp32_input(rng: random.Random) -> np.ndarray:
    return np.full((rng.randint(1, 4), rng.randint(1, 64)), rng.randint(-100, 100) / 4, dtype=np.float32)


def infer_message(model: str, rng: random.Random) -> tuple[pb.ModelInferRequest, dict[str, bytes]]:
    """A gRPC request and the raw outputs it must get."""
    message = pb.ModelInferRequest(model_name=model)
    if model == "simple":
        a, b = simple_inputs(rng)
        for name, x in (("INPUT0", a), ("INPUT1", b)):
            message.inputs.add(name=name, datatype="INT32", shape=x.shape)
            message.raw_input_contents.append(x.tobytes())
        return message, {"OUTPUT0": (a + b).tobytes(), "OUTPUT1": (a - b).tobytes()}
    x = fp32_input(rng)
    message.inputs.add(name="INPUT0", datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(x.tobytes())
    return message, {"OUTPUT0": x.tobytes()}


def check_grpc(answer: pb.ModelInferResponse, expect: dict[str, bytes]) -> str:
    found = {o.name: answer.raw_output_contents[i] for i, o in enumerate(answer.outputs)}
    wrong = [name for name, data in expect.items() if found.get(name) != data]
    return f"wrong answer for {', '.join(wrong)}" if wrong else ""


class Client:
    """One task's connections and its request kinds."""

    def __init__(self, target: Target, channel: grpc.aio.Channel, rng: random.Random, tally: Tally):
        self.target, self.rng, self.tally = target, rng, tally
        self.http = HttpClient(target.host, target.http_port)
        self.unary = channel.unary_unary(SERVICE + "ModelInfer")
        self.stream = channel.stream_stream(SERVICE + "ModelStreamInfer")

    async def one(self, budget: int) -> int:
        """One operation of at most `budget` requests; how many it made."""
        roll = self.rng.random()
        if roll < 0.25:
            return await self.http_json()
        if roll < 0.45:
            return await self.http_binary()
        if roll < 0.75:
            return await self.grpc_unary()
        if roll < 0.92:
            return await self.grpc_stream(min(budget, self.rng.randint(1, 8)))
        return await self.cancel(budget)

    async def http_json(self) -> int:
        a, b = simple_inputs(self.rng)
        body = json.dumps({"inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": a.reshape(-1).tolist()},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": b.reshape(-1).tolist()}]}).encode()
        status, body = await self._http("simple", body, {})
        if status == 200:
            outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
            if outputs.get("OUTPUT0") != (a + b).reshape(-1).tolist() or \
                    outputs.get("OUTPUT1") != (a - b).reshape(-1).tolist():
                self.tally.fail("http/json", "simple", "wrong answer")
                return 1
        self._count("http/json", "simple", status, body)
        return 1

    async def http_binary(self) -> int:
        model = "reloaded" if self.rng.random() < 0.3 else "echo"
        x = fp32_input(self.rng)
        header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape),
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "parameters": {"binary_data_output": True}}).encode()
        status, body = await self._http(model, header + x.tobytes(),
                                        {"Inference-Header-Content-Length": str(len(header))})
        if status == 200 and not body.endswith(x.tobytes()):
            self.tally.fail("http/binary", model, "wrong answer")
            return 1
        self._count("http/binary", model, status, body)
        return 1

    async def _http(self, model: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        case = Case("", "soak", path=f"/v2/models/{model}/infer", body=body,
                    headers={"Content-Type": "application/json", **headers})
        try:
            responses = await asyncio.wait_for(self.http.request(case), TIMEOUT)
        except (asyncio.TimeoutError, TimeoutError):
            self.http.close()
            return -1, b"no answer in time"
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            return -1, f"connection broke: {e!r}".encode()
        return responses[0][0], responses[0][2]

    def _count(self, kind: str, model: str, status: int, body: bytes) -> None:
        if status == 200:
            self.tally.answered[kind] += 1
            return
        try:
            error = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            error = body[:200].decode("utf-8", "replace")
        self.tally.fail(kind, model, f"HTTP {status}: {error}")

    async def grpc_unary(self) -> int:
        model = self.rng.choice(["simple", "echo", "echo", "reloaded"])
        message, expect = infer_message(model, self.rng)
        try:
            answer = pb.ModelInferResponse.FromString(await self.unary(message.SerializeToString(), timeout=TIMEOUT))
        except grpc.aio.AioRpcError as e:
            self.tally.fail("grpc", model, f"{e.code().name}: {e.details()}")
            return 1
        problem = check_grpc(answer, expect)
        if problem:
            self.tally.fail("grpc", model, problem)
        else:
            self.tally.answered["grpc"] += 1
        return 1

    async def grpc_stream(self, count: int) -> int:
        built = [infer_message(self.rng.choice(["simple", "echo", "reloaded"]), self.rng) for _ in range(count)]
        by_id = {}
        for i, (message, expect) in enumerate(built):
            message.id = str(i)
            by_id[message.id] = (message.model_name, expect)
        call = self.stream(iter([m.SerializeToString() for m, _ in built]), timeout=TIMEOUT)
        try:
            async for data in call:
                answer = pb.ModelStreamInferResponse.FromString(data)
                model, expect = by_id.pop(answer.infer_response.id, ("?", {}))
                problem = answer.error_message or check_grpc(answer.infer_response, expect)
                if problem:
                    self.tally.fail("grpc/stream", model, problem)
                else:
                    self.tally.answered["grpc/stream"] += 1
        except grpc.aio.AioRpcError as e:
            for model, _ in by_id.values():
                self.tally.fail("grpc/stream", model, f"{e.code().name}: {e.details()}")
            return len(built)
        for model, _ in by_id.values():
            self.tally.fail("grpc/stream", model, "the stream ended without this request's answer")
        return len(built)

    async def cancel(self, budget: int) -> int:
        """A request to `slow` that the client gives up on: a gRPC deadline, a gRPC cancel, a stream
        cancelled mid-way, or an HTTP connection closed before the answer."""
        x = np.full((1, 1), SLOW_MS, dtype=np.float32)
        message = pb.ModelInferRequest(model_name="slow", raw_input_contents=[x.tobytes()])
        message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
        data = message.SerializeToString()
        how = self.rng.choice(["deadline", "cancel", "stream", "http"] if budget >= 3 else ["deadline", "http"])
        if how == "http":
            header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1],
                                             "parameters": {"binary_data_size": 4}}]}).encode()
            _, writer = await asyncio.open_connection(self.target.host, self.target.http_port)
            writer.write(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: naiad\r\nContent-Length: %d\r\n"
                         b"Inference-Header-Content-Length: %d\r\n\r\n" % (len(header) + 4, len(header))
                         + header + x.tobytes())
            await writer.drain()
            await asyncio.sleep(self.rng.uniform(0, SLOW_MS / 2000))
            writer.close()
            self.tally.cancelled["http: closed the connection"] += 1
            return 1
        if how == "stream":
            call = self.stream(iter([data] * 3), timeout=TIMEOUT)
            try:
                async for _ in call:
                    break
            except grpc.aio.AioRpcError as e:
                self.tally.fail("cancel/stream", "slow", f"{e.code().name}: {e.details()}")
                return 3
            call.cancel()
            self.tally.cancelled["grpc stream: cancelled after its first answer"] += 3
            return 3
        if how == "deadline":
            call = self.unary(data, timeout=SLOW_MS / 3000)
        else:
            call = self.unary(data, timeout=TIMEOUT)
            asyncio.get_running_loop().call_later(self.rng.uniform(0, SLOW_MS / 2000), call.cancel)
        try:
            await call
            self.tally.cancelled[f"grpc {how}: answered first"] += 1
        except asyncio.CancelledError:
            self.tally.cancelled[f"grpc {how}: CANCELLED"] += 1
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                self.tally.cancelled[f"grpc {how}: {e.code().name}"] += 1
            else:
                self.tally.fail(f"cancel/{how}", "slow", f"{e.code().name}: {e.details()}")
        return 1

    def close(self) -> None:
        self.http.close()


def client_process(index: int, count: int, target: Target, concurrency: int, queue) -> None:
    asyncio.run(_client(index, count, target, concurrency, queue))


async def _client(index: int, count: int, target: Target, concurrency: int, queue) -> None:
    channel = grpc.aio.insecure_channel(f"{target.host}:{target.grpc_port}")
    tally = Tally()
    left = count
    reported = 0

    async def task(n: int):
        nonlocal left, reported
        client = Client(target, channel, random.Random(f"{index}:{n}"), tally)
        while left > 0:
            budget = min(left, 8)
            left -= budget                      # reserved before the wait: other tasks see it taken
            made = await client.one(budget)
            left += budget - made
            reported += made
            if reported >= 500:
                queue.put(("progress", reported))
                reported = 0
        client.close()

    await asyncio.gather(*(task(n) for n in range(concurrency)))
    await channel.close()
    queue.put(("progress", reported))
    queue.put(("done", dict(tally.answered), dict(tally.cancelled), tally.failure_count,
               [(f.when, f.kind, f.model, f.error) for f in tally.failures]))


# --- the server's figures ------------------------------------------------------------------------

def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children[parent].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


@dataclass
class Sample:
    requests: int
    seconds: float
    rss_mib: float
    fds: int
    shm_files: int
    shm_mib: float
    processes: int


SHM_NAME = re.compile(r"naiad-(\d+)-")


def sample(pid: int, seen_pids: set[int], requests: int, started: float) -> Sample:
    pids = process_tree(pid)
    seen_pids.update(pids)
    rss = fds = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                # resident memory of its own: shared memory (arenas, segments) is counted below
                rss += sum(int(line.split()[1]) for line in f if line.startswith(("RssAnon:", "RssFile:")))
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    shm_files, shm_bytes = 0, 0
    for name in os.listdir("/dev/shm"):
        match = SHM_NAME.match(name)
        if match and int(match.group(1)) in seen_pids:
            shm_files += 1
            try:
                shm_bytes += os.stat(f"/dev/shm/{name}").st_blocks * 512
            except OSError:
                pass
    return Sample(requests, time.monotonic() - started, rss / 1024, fds, shm_files, shm_bytes / 2 ** 20, len(pids))


def worker_processes(pid: int) -> list[int]:
    found = []
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"naiad.batching.worker_process" in f.read():
                    found.append(p)
        except OSError:
            pass
    return found


# --- the faults injected, and the run ------------------------------------------------------------

@dataclass
class Injection:
    kind: str               # "kill" | "reload"
    started: float
    ended: float
    detail: str


async def reload_model(target: Target) -> str:
    def post() -> str:
        request = urllib.request.Request(f"http://{target.host}:{target.http_port}/v2/repository/models/reloaded/load",
                                         data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return f"reload: HTTP {response.status}"
        except urllib.error.HTTPError as e:
            return f"reload: HTTP {e.code} {e.read()[:200]!r}"
    return await asyncio.to_thread(post)


def explain(failure: tuple, injections: list[Injection]) -> tuple[str, bool]:
    """What a failure comes from, and whether that explains it: a killed worker explains the
    requests it held and those its restart kept waiting too long (within 30 s of the kill); a
    reload explains nothing (the previous load serves until the new one is ready), but failures
    during one are named so."""
    when, _, model, error = failure
    for injection in injections:
        if injection.kind == "kill" and injection.started - 1 <= when <= injection.started + 30:
            if re.search(r"worker process .* died", error):
                return "in flight on a killed worker process", True
            if re.search(r"has no instance (able )?to run", error):
                return "queued for a killed worker process (restarting, or retired by a reload)", True
    for injection in injections:
        if injection.kind == "reload" and model == "reloaded" and \
                injection.started - 1 <= when <= injection.ended + 1:
            return "UNEXPLAINED: failed during a reload of its model", False
    return "UNEXPLAINED", False


def run(args) -> int:
    with tempfile.TemporaryDirectory() as folder:
        repository = write_repository(Path(folder))
        loads = [arg for name in ["simple", *MODELS] for arg in ("--load-model", name)]
        server = harness.start_naiad(repository, "--frontends", str(args.frontends),
                                     "--model-control-mode", "explicit", *loads)
        try:
            return asyncio.run(soak(args, server, Path(folder) / "naiad.log"))
        finally:
            server.stop()


async def soak(args, server: harness.Server, log_path: Path) -> int:
    target = Target("127.0.0.1", server.http_port, server.grpc_port)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    shares = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]
    processes = [context.Process(target=client_process, args=(i, share, target, args.concurrency, queue),
                                 daemon=True) for i, share in enumerate(shares)]
    started = time.monotonic()
    seen_pids: set[int] = set()
    samples = [sample(server.process.pid, seen_pids, 0, started)]
    for process in processes:
        process.start()
    kill_every, reload_every = args.kill_every, args.reload_every
    sample_every = max(1, args.requests // args.samples)
    # reloads halfway between kills' multiples: the two faults apart, so that each failure has one cause
    next_kill, next_reload, next_sample = kill_every, reload_every // 2, sample_every
    injections: list[Injection] = []
    reloads: set[asyncio.Task] = set()
    done, finished = 0, []
    loop = asyncio.get_running_loop()
    while len(finished) < len(processes):
        try:
            message = await loop.run_in_executor(None, queue.get, True, 5)
        except queue_module.Empty:
            if not any(p.is_alive() for p in processes):
                print("a client process ended without its results", file=sys.stderr)
                break
            continue
        if message[0] == "done":
            finished.append(message)
            continue
        done += message[1]
        if done >= next_sample:
            next_sample += sample_every
            samples.append(sample(server.process.pid, seen_pids, done, started))
            if len(samples) % 5 == 1:
                print(f"{done:>10,} requests, {samples[-1].seconds:6.0f} s", flush=True)
        if done >= next_kill and done < args.requests:
            next_kill += kill_every
            workers = worker_processes(server.process.pid)
            if workers:
                victim = random.Random(done).choice(workers)
                now = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                injections.append(Injection("kill", now, now, f"SIGKILL worker process {victim} at {done:,}"))
        if done >= next_reload and done < args.requests:
            next_reload += reload_every
            injection = Injection("reload", time.monotonic(), float("inf"), f"reload at {done:,}")
            injections.append(injection)
            task = asyncio.create_task(reload_model(target))

            def ended(task, injection=injection):
                injection.ended = time.monotonic()
                injection.detail += f": {task.result()}"
                reloads.discard(task)
            task.add_done_callback(ended)
            reloads.add(task)
    if reloads:
        await asyncio.gather(*reloads)
    elapsed = time.monotonic() - started
    for process in processes:
        process.join(timeout=10)
    await asyncio.sleep(1)   # let the last answers' resources go before the last figures
    samples.append(sample(server.process.pid, seen_pids, done, started))
    return verdict(args, server, target, samples, injections, finished, elapsed, log_path)


def flat(values: list[float], slack: float) -> tuple[bool, float, float]:
    quarter = max(1, len(values) // 4)
    first, last = statistics.mean(values[:quarter]), statistics.mean(values[-quarter:])
    return last <= first * 1.05 or last - first <= slack, first, last


def verdict(args, server, target: Target, samples: list[Sample], injections: list[Injection], finished: list,
            elapsed: float, log_path: Path) -> int:
    answered: collections.Counter = collections.Counter()
    cancelled: collections.Counter = collections.Counter()
    failures, failure_count = [], 0
    for _, a, c, count, listed in finished:
        answered.update(a)
        cancelled.update(c)
        failure_count += count
        failures.extend(listed)
    total = sum(answered.values()) + sum(cancelled.values()) + failure_count
    print(f"\n{total:,} requests in {elapsed:.0f} s ({total / elapsed:,.0f}/s), --frontends {args.frontends}, "
          f"{args.clients} client processes x {args.concurrency}")
    print("\n| requests | seconds | RSS MiB | descriptors | /dev/shm files | /dev/shm MiB | processes |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in samples:
        print(f"| {s.requests:,} | {s.seconds:.0f} | {s.rss_mib:.1f} | {s.fds} | {s.shm_files} | "
              f"{s.shm_mib:.1f} | {s.processes} |")
    problems = []
    after = [s for s in samples if s.requests >= args.warmup * args.requests]
    if len(after) < 4:
        problems.append(f"only {len(after)} samples after warm-up: too few to judge flatness")
    else:
        for name, unit, slack in (("rss_mib", "MiB", 0.0), ("fds", "", 2), ("shm_files", "", 2),
                                  ("shm_mib", "MiB", 1.0)):
            ok, first, last = flat([getattr(s, name) for s in after], slack)
            print(f"{name}: first quarter after warm-up {first:,.1f}{unit}, last quarter {last:,.1f}{unit}: "
                  f"{'flat' if ok else 'GROWS'}")
            if not ok:
                problems.append(f"{name} grows from {first:,.1f} to {last:,.1f}")
    print("\n| answered | count |\n| --- | ---: |")
    for kind, count in sorted(answered.items()):
        print(f"| {kind} | {count:,} |")
    print("\n| cancelled by the client | count |\n| --- | ---: |")
    for kind, count in sorted(cancelled.items()):
        print(f"| {kind} | {count:,} |")
    print("\nfaults injected:")
    for injection in injections:
        print(f"  {injection.detail}")
        if injection.kind == "reload" and "HTTP 200" not in injection.detail:
            killed = any(i.kind == "kill" and injection.started <= i.started <= injection.ended
                         for i in injections)
            if killed:
                print("    (a worker process killed while it loaded explains it)")
            else:
                problems.append(f"a reload failed: {injection.detail}")
    reasons: collections.Counter = collections.Counter()
    examples: dict[str, str] = {}
    unexplained = []
    for failure in failures:
        why, explained = explain(failure, injections)
        reasons[why] += 1
        examples.setdefault(why, f"{failure[1]} to '{failure[2]}': {failure[3]}")
        if not explained:
            unexplained.append(failure)
    if failure_count > len(failures):
        problems.append(f"{failure_count - len(failures):,} failures beyond the ones kept could not be checked")
    hangs = sum(1 for f in failures if "no answer in time" in f[3] or f[3].startswith("DEADLINE_EXCEEDED"))
    print(f"\nfailed requests: {failure_count:,} (hangs, no answer in {TIMEOUT:g} s: {hangs:,})")
    for why, count in reasons.most_common():
        print(f"  {why}: {count:,}, e.g. {examples[why]}")
    if unexplained:
        problems.append(f"{len(unexplained):,} failed requests no injected fault explains")
    models_not_ready = []
    for name in ["simple", *MODELS]:
        try:
            with urllib.request.urlopen(f"http://{target.host}:{target.http_port}/v2/models/{name}/ready", timeout=30):
                pass
        except (OSError, urllib.error.HTTPError):
            models_not_ready.append(name)
    if server.process.poll() is not None:
        problems.append(f"the server exited with {server.process.returncode}")
    elif models_not_ready:
        problems.append(f"models not ready at the end: {', '.join(models_not_ready)}")
    if total != args.requests:
        problems.append(f"{args.requests:,} requests meant, {total:,} accounted for")
    deaths = [line for line in log_path.read_text(errors="replace").splitlines()
              if "frontend process" in line and "ended" in line]
    if deaths:
        problems.append(f"{len(deaths)} frontend process(es) died: {deaths[0][:200]}")
    for problem in problems:
        print(f"problem: {problem}")
    print(f"\nverdict: {'PASS' if not problems else 'FAIL'}")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--frontends", type=int, default=1, help="frontend processes of the naiad started")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per client process")
    parser.add_argument("--kill-every", type=int, default=0,
                        help="requests between worker-process kills (default: 100,000, or a quarter of --requests if less)")
    parser.add_argument("--reload-every", type=int, default=0,
                        help="requests between reloads of `reloaded` (default: 50,000, or an eighth of --requests if less)")
    parser.add_argument("--samples", type=int, default=40, help="samples of the server's figures")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of the requests before figures count")
    args = parser.parse_args()
    args.kill_every = args.kill_every or min(100_000, max(1, args.requests // 4))
    args.reload_every = args.reload_every or min(50_000, max(1, args.requests // 8))
    sys.exit(run(args))


if __name__ == "__main__":
    main()
