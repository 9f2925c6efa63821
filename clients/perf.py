"""`naiad perf`: a load generator for any v2 server (naiad, Triton, MLServer), in the manner of Triton's
perf_analyzer. Worker processes keep N requests in flight (a thread per request, making blocking calls)
or send at a fixed rate (an asyncio loop); the coordinator measures in windows until three in a row
agree, and reports throughput, client-side latency percentiles and the server's own breakdown of each
request's time (from the statistics extension, before and after the measurement)."""
from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import csv
import json
import math
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass

import grpc
import numpy as np
from naiad.clients import grpc_protocol, http_protocol, tensors
from naiad.clients.client import AsyncClient, Client, parse_url
from naiad.clients.errors import ClientError

# the server-side parts of a request's time, as the statistics extension names them
SERVER_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")
# gRPC in the worker processes (unless GRPC_EXPERIMENTS is set already): without its EventEngine
# client, a blocking call polls for its answer itself instead of being handed it by an I/O thread,
# which took a fifth off the time per call of one client thread on a 2-core machine
# (bench/client_perf.py; docs/benchmarks.md)
WORKER_GRPC_EXPERIMENTS = "-event_engine_client"
# requests in flight per client process (one process keeps up with about 3,000 calls a second)
SLOTS_PER_PROCESS = 4


@dataclass
class Plan:
    """What every worker process needs to send the same requests."""
    url: str
    model: str
    version: str
    inputs: dict[str, np.ndarray]
    output_bytes: dict[str, int]         # each output's room in shared memory
    shared_memory: str                   # "none", "system" or "cuda"
    timeout: float | None
    binary_data: bool = True             # HTTP: False for a server without binary tensor data


@dataclass
class Window:
    start: float
    end: float
    completed: int

    @property
    def throughput(self) -> float:
        return self.completed / (self.end - self.start)


@dataclass
class Measurement:
    model: str
    protocol: str
    mode: str                    # "concurrency" or "request_rate"
    value: float                 # the concurrency, or requests a second
    batch_size: int
    shared_memory: str
    processes: int
    throughput: float            # inferences a second (requests times batch size)
    requests: int
    errors: int
    latency_us: dict             # avg, p50, p90, p95, p99: from sending to the full answer, client-side
    server_us: dict | None       # per request: queue, compute_input, compute_infer, compute_output
    server_requests: int
    windows: int
    stable: bool
    first_error: str = ""

    def text(self) -> str:
        what = f"concurrency {self.value:g}" if self.mode == "concurrency" else f"request rate {self.value:g}/s"
        lat = self.latency_us
        line = (f"{what}: {self.throughput:,.1f} infer/s, latency p50 {lat['p50']:,.0f} µs, "
                f"p90 {lat['p90']:,.0f}, p95 {lat['p95']:,.0f}, p99 {lat['p99']:,.0f} (avg {lat['avg']:,.0f})")
        if self.server_us:
            s = self.server_us
            line += (f"\n    server: queue {s['queue']:,.0f} µs, compute input {s['compute_input']:,.0f}, "
                     f"infer {s['compute_infer']:,.0f}, output {s['compute_output']:,.0f} "
                     f"({self.server_requests:,} requests)")
        if not self.stable:
            line += f"\n    not stable within the windows allowed ({self.windows})"
        if self.errors:
            line += f"\n    {self.errors} request(s) failed: {self.first_error}"
        return line

    def row(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k not in ("latency_us", "server_us")}
        row.update({f"latency_{k}_us": round(v, 1) for k, v in self.latency_us.items()})
        for part in SERVER_PARTS:
            row[f"server_{part}_us"] = round(self.server_us[part], 1) if self.server_us else ""
        return row


# --- the plan: the model's inputs, from its metadata -----------------------------------------------

def parse_value(text: str):
    """An input value given on the command line: a .npy file's array, or JSON (a number or nested
    lists)."""
    if text.endswith(".npy"):
        return np.load(text, allow_pickle=False)
    try:
        return json.loads(text)
    except ValueError:
        raise SystemExit(f"'{text}' is neither a .npy file nor JSON") from None


def named_values(items: list[str], what: str) -> dict[str, str]:
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"{what} '{item}': expected NAME=VALUE")
        found[name] = value
    return found


def typed_input(tensor: dict, value, batched: bool, batch_size: int = 1) -> np.ndarray:
    """A given value as an array of the input's datatype; the batch dimension is added where the
    model batches and the value leaves it out (repeated to batch_size)."""
    datatype = tensor["datatype"]
    array = np.asarray(value) if datatype == "BYTES" or isinstance(value, np.ndarray) else \
        np.asarray(value, dtype=tensors.DTYPES[datatype])
    if datatype == "BYTES":
        array = array.astype(object)
    elif array.dtype != tensors.DTYPES[datatype]:
        array = array.astype(tensors.DTYPES[datatype])
    if batched and array.ndim == len(tensor["shape"]) - 1:
        array = np.repeat(array[np.newaxis], batch_size, axis=0)
    return array


def random_input(tensor: dict, shape: list[int], kind: str, rng: np.random.Generator) -> np.ndarray:
    datatype = tensor["datatype"]
    dtype = tensors.DTYPES[datatype]
    if datatype == "BYTES":
        values = rng.integers(0, 100, size=shape) if kind == "random" else np.zeros(shape, np.int64)
        return values.astype(str).astype(object)
    if kind == "zero":
        return np.zeros(shape, dtype)
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(size=shape).astype(dtype)


def make_plan(client: Client, args) -> Plan:
    metadata = client.model_metadata(args.model, args.model_version)
    try:
        max_batch_size = int(client.model_config(args.model, args.model_version).get("max_batch_size", 0))
    except ClientError:
        max_batch_size = 0     # a server without the configuration extension
    if args.batch_size > 1 and max_batch_size == 0:
        raise SystemExit(f"model '{args.model}' does not batch (max_batch_size 0): --batch-size must be 1")
    given = {name: parse_value(text) for name, text in named_values(args.input, "--input").items()}
    shapes = {name: [int(d) for d in text.split(",")]
              for name, text in named_values(args.shape, "--shape").items()}
    known = {t["name"] for t in metadata["inputs"]}
    for name in [*given, *shapes]:
        if name not in known:
            raise SystemExit(f"model '{args.model}' has no input '{name}'; its inputs: {', '.join(sorted(known))}")
    rng = np.random.default_rng(0)
    inputs = {}
    for tensor in metadata["inputs"]:
        name = tensor["name"]
        if name in given:
            inputs[name] = typed_input(tensor, given[name], max_batch_size > 0, args.batch_size)
            continue
        dims = [int(d) for d in tensor["shape"]][1 if max_batch_size > 0 else 0:]
        dims = shapes.get(name) or [1 if d < 0 else d for d in dims]   # variable sizes: 1 unless given
        shape = [args.batch_size, *dims] if max_batch_size > 0 else dims
        inputs[name] = random_input(tensor, shape, args.input_data, rng)
    output_bytes = {}
    for tensor in metadata["outputs"]:
        dims = [int(d) for d in tensor["shape"]][1 if max_batch_size > 0 else 0:]
        fixed = tensor["datatype"] != "BYTES" and all(d >= 0 for d in dims)
        output_bytes[tensor["name"]] = (max(math.prod(dims) * args.batch_size
                                            * tensors.DTYPES[tensor["datatype"]].itemsize, 1)
                                        if fixed else args.output_shared_memory_size)
    return Plan(args.url, args.model, args.model_version or "", inputs, output_bytes, args.shared_memory,
                args.request_timeout, binary_data(client))


def binary_data(client: Client) -> bool:
    """Whether tensors may travel as binary data: always over gRPC; over HTTP where the server has the
    binary tensor data extension (MLServer, for one, takes JSON values only)."""
    if client.protocol != "http":
        return True
    try:
        return "binary_tensor_data" in client.server_metadata().get("extensions", [])
    except ClientError:
        return True


# --- the worker processes --------------------------------------------------------------------------

def _worker(index: int, plan: Plan, connection, counts, failures, stop) -> None:
    try:
        _serve(index, plan, connection, counts, failures, stop)
    except KeyboardInterrupt:
        pass
    except Exception as e:   # told to the coordinator, which is waiting for "ready" or a level's result
        with contextlib.suppress(OSError):
            connection.send(f"{type(e).__name__}: {e}")


def _serve(index, plan: Plan, connection, counts, failures, stop) -> None:
    """Make the request (and its regions) once, then run each level the coordinator asks for: a
    concurrency with one thread per request in flight, each making blocking calls (the quickest
    turnaround in Python, as perf_analyzer's threads); a request rate on an asyncio loop."""
    with Client(plan.url, timeout=plan.timeout, retries=0, binary_data=plan.binary_data) as client, \
            contextlib.ExitStack() as regions:
        inputs, outputs = dict(plan.inputs), None
        if plan.shared_memory != "none":
            device = "cuda" if plan.shared_memory == "cuda" else None
            for name, value in plan.inputs.items():
                inputs[name] = regions.enter_context(client.shared_memory(value, device=device))
            outputs = {name: regions.enter_context(client.shared_memory(byte_size=size, device=device))
                       for name, size in plan.output_bytes.items()}
        call = client._codec.infer(plan.model, inputs, outputs, plan.version, None, None, "")
        send = _sender(client, call, plan.timeout)
        with contextlib.suppress(ClientError):   # the first call opens the connection; errors are
            send()                                # counted in the measurements
        connection.send("ready")
        while (command := connection.recv()) is not None:
            mode, share, offset = command
            record = _Record(index, counts, failures)
            if mode == "concurrency":
                _keep_in_flight(send, int(share), record, stop)
            elif share > 0:
                asyncio.run(_send_at_rate(plan, call, share, offset, record, stop))
            connection.send(record.result())


def _sender(client, call, timeout: float | None):
    """A function that sends `call` as cheaply as the protocol allows (a coroutine function for an
    AsyncClient): over gRPC its message is serialized once and the answer's outputs are not decoded;
    over HTTP the body is built once and the answer's status is checked. A failure raises ClientError."""
    transport = client._transport
    if client.protocol == "grpc":
        rpc, message = transport.raw(call.method), call.request.SerializeToString()
        if isinstance(client, AsyncClient):
            async def send():
                try:
                    await rpc(message, timeout=timeout)
                except grpc.RpcError as e:
                    raise grpc_protocol.error(e) from None
            return send

        def send():
            try:
                rpc(message, timeout=timeout)
            except grpc.RpcError as e:
                raise grpc_protocol.error(e) from None
        return send
    if isinstance(client, AsyncClient):
        async def send():
            reply = await transport.call(call, timeout)
            if reply.status >= 300:
                raise http_protocol.error(reply)
        return send

    def send():
        reply = transport.call(call, timeout)
        if reply.status >= 300:
            raise http_protocol.error(reply)
    return send


class _Record:
    """The (end, latency) of every answered request of a level, the count the coordinator reads while
    it runs, and the failures; safe to use from several threads."""

    def __init__(self, index: int, counts, failures):
        self.index, self.counts, self.failures = index, counts, failures
        self.ends, self.latencies = array.array("d"), array.array("d")
        self.first_error = ""
        self.lock = threading.Lock()

    def answered(self, start: float) -> None:
        end = time.monotonic()
        with self.lock:
            self.ends.append(end)
            self.latencies.append(end - start)
            self.counts[self.index] += 1

    def failed(self, error: ClientError) -> None:
        with self.lock:
            self.failures[self.index] += 1
            self.first_error = self.first_error or str(error)

    def result(self) -> tuple[bytes, bytes, str]:
        return self.ends.tobytes(), self.latencies.tobytes(), self.first_error


def _keep_in_flight(send, count: int, record: _Record, stop) -> None:
    def keep_sending():
        while not stop.is_set():
            start = time.monotonic()
            try:
                send()
            except ClientError as e:
                record.failed(e)
                time.sleep(0.01)    # a failing server is not to be flooded
                continue
            record.answered(start)

    threads = [threading.Thread(target=keep_sending, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def _send_at_rate(plan: Plan, call, rate: float, offset: float, record: _Record, stop) -> None:
    """A request every 1/rate seconds, from `offset` on, whatever the answers, until `stop` is set."""
    async with AsyncClient(plan.url, timeout=plan.timeout, retries=0, binary_data=plan.binary_data) as client:
        send = _sender(client, call, plan.timeout)
        with contextlib.suppress(ClientError):   # opens the connection
            await send()

        async def one():
            start = time.monotonic()
            try:
                await send()
            except ClientError as e:
                record.failed(e)
                return
            record.answered(start)

        running: set[asyncio.Task] = set()
        due = time.monotonic() + offset
        while not stop.is_set():
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.ensure_future(one())
            running.add(task)
            task.add_done_callback(running.discard)
            due += 1 / rate
        await asyncio.gather(*running)


# --- the coordinator ------------------------------------------------------------------------------

class Progress:
    """One line on stderr, rewritten in place on a terminal (a line per update otherwise)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write(f"\r\033[K{text}")
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def clear(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _server_times(before: list[dict] | None, after: list[dict] | None, version: str) -> tuple[dict | None, int]:
    """The average time per request of each server-side part between two statistics snapshots."""
    def pick(stats):
        chosen = [s for s in stats or () if not version or s.get("version") == version]
        return chosen[0]["inference_stats"] if len(chosen) == 1 else None
    first, last = pick(before), pick(after)
    if first is None or last is None:
        return None, 0
    requests = last["success"]["count"] - first["success"]["count"]
    if requests <= 0:
        return None, 0
    return {part: (last[part]["ns"] - first[part]["ns"]) / requests / 1000 for part in SERVER_PARTS}, requests


def _percentiles(latencies: np.ndarray) -> dict:
    if not len(latencies):
        return {key: float("nan") for key in ("avg", "p50", "p90", "p95", "p99")}
    us = latencies * 1e6
    p50, p90, p95, p99 = np.percentile(us, [50, 90, 95, 99])
    return {"avg": float(us.mean()), "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99)}


class Generator:
    """The worker processes, started once and driven level after level."""

    def __init__(self, plan: Plan, processes: int):
        context = multiprocessing.get_context("spawn")   # no gRPC state crosses a fork
        self.counts = context.Array("q", processes, lock=False)
        self.failures = context.Array("q", processes, lock=False)
        self.stop = context.Event()
        self.connections, self.processes = [], []
        with _environment("GRPC_EXPERIMENTS", WORKER_GRPC_EXPERIMENTS):   # the processes started inherit it
            for index in range(processes):
                mine, theirs = context.Pipe()
                process = context.Process(target=_worker, daemon=True, name=f"naiad-perf-{index}",
                                          args=(index, plan, theirs, self.counts, self.failures, self.stop))
                process.start()
                self.connections.append(mine)
                self.processes.append(process)
        for connection in self.connections:
            ready = connection.recv() if connection.poll(120) else "it did not start within 120 s"
            if ready != "ready":
                self.close()
                raise SystemExit(f"a load-generator process failed: {ready}")

    def start(self, mode: str, value: float) -> None:
        self.stop.clear()
        count = len(self.processes)
        # Requests in flight fill the processes SLOTS_PER_PROCESS at a time (each process is one
        # connection), as perf_analyzer's threads share a connection a few at a time: a server with
        # several frontend processes spreads its connections among them.
        per_process = max(SLOTS_PER_PROCESS, math.ceil(value / count))
        for index, connection in enumerate(self.connections):
            if mode == "concurrency":
                share = min(max(int(value) - index * per_process, 0), per_process)
                connection.send((mode, share, 0.0))
            else:   # each process sends value/count a second, the processes' sends interleaved
                connection.send((mode, value / count, index / value))

    def completed(self) -> int:
        return sum(self.counts)

    def failed(self) -> int:
        return sum(self.failures)

    def finish(self) -> tuple[np.ndarray, np.ndarray, str]:
        self.stop.set()
        ends, latencies, first_error = [], [], ""
        for connection in self.connections:
            result = connection.recv()
            if isinstance(result, str):
                raise SystemExit(f"a load-generator process failed: {result}")
            end_bytes, latency_bytes, error = result
            ends.append(np.frombuffer(end_bytes))
            latencies.append(np.frombuffer(latency_bytes))
            first_error = first_error or error
        return np.concatenate(ends), np.concatenate(latencies), first_error

    def close(self) -> None:
        self.stop.set()    # a level still running (after Ctrl-C, say) ends first
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.send(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


@contextlib.contextmanager
def _environment(name: str, default: str):
    """The environment variable set to `default` (if it is not set) for the time of the block."""
    if name in os.environ:
        yield
        return
    os.environ[name] = default
    try:
        yield
    finally:
        del os.environ[name]


def _stable(windows: list[Window], percentage: float) -> bool:
    if len(windows) < 3:
        return False
    last = [w.throughput for w in windows[-3:]]
    mean = sum(last) / 3
    return mean > 0 and all(abs(t - mean) <= mean * percentage / 100 for t in last)


def measure(generator: Generator, client: Client, plan: Plan, args, mode: str, value: float,
            progress: Progress) -> Measurement:
    def statistics():
        try:
            return client.statistics(plan.model, plan.version or None)
        except ClientError:
            return None   # a server without the statistics extension

    label = f"{'concurrency' if mode == 'concurrency' else 'request rate'} {value:g}"
    generator.start(mode, value)
    time.sleep(args.warmup_seconds)
    windows, snapshots = [], [statistics()]
    failed_before = generator.failed()
    for trial in range(args.max_trials):
        start, before = time.monotonic(), generator.completed()
        time.sleep(args.measurement_seconds)
        end, after = time.monotonic(), generator.completed()
        snapshots.append(statistics())
        windows.append(Window(start, end, after - before))
        progress.show(f"{plan.model} · {label} · window {trial + 1}/{args.max_trials} · "
                      f"{windows[-1].throughput * args.batch_size:,.1f} infer/s")
        if generator.failed() > failed_before or _stable(windows, args.stability_percentage):
            break
    ends, latencies, first_error = generator.finish()
    progress.clear()
    used = windows[-3:]
    span_start, span_end = used[0].start, used[-1].end
    inside = (ends >= span_start) & (ends <= span_end)
    server_us, server_requests = _server_times(snapshots[-len(used) - 1], snapshots[-1], plan.version)
    completed = sum(w.completed for w in used)
    return Measurement(
        model=plan.model, protocol=parse_url(plan.url).protocol, mode=mode, value=value,
        batch_size=args.batch_size, shared_memory=plan.shared_memory, processes=len(generator.processes),
        throughput=completed / (span_end - span_start) * args.batch_size, requests=completed,
        errors=generator.failed() - failed_before, latency_us=_percentiles(latencies[inside]),
        server_us=server_us, server_requests=server_requests, windows=len(windows),
        stable=_stable(windows, args.stability_percentage), first_error=first_error)


def _levels(text: str, what: str) -> list[float]:
    """1,4,16 or start:end:step (perf_analyzer's range form)."""
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            start, end, step = (parts + [1.0])[:3] if len(parts) == 2 else parts
            values, value = [], start
            while value <= end + 1e-9:
                values.append(value)
                value += step
        else:
            values = [float(p) for p in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values) or (what == "--concurrency" and any(v != int(v) for v in values)):
        raise SystemExit(f"{what} '{text}': expected numbers > 0 as a list (1,4,16) or a range (1:16:4)")
    return values


def default_processes(levels: list[float], mode: str) -> int:
    """Enough client processes that one Python process's ceiling (about 3,000 calls a second) is not
    the generator's: one for every 4 requests in flight (or 1,000 a second), at most one for every two
    cores, at least one."""
    wanted = math.ceil(max(levels) / (SLOTS_PER_PROCESS if mode == "concurrency" else 1000))
    return max(1, min((os.cpu_count() or 1) // 2, wanted))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("--url", default="localhost:8001",
                        help="grpc://host:port or host:port (gRPC), http://host:port (default: %(default)s)")
    parser.add_argument("--model-version", default="")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default=None, metavar="N[,N...]",
                      help="requests kept in flight: one number, a list (1,4,16) or a range (1:16:4); "
                           "default 1")
    load.add_argument("--request-rate", default=None, metavar="R[,R...]",
                      help="requests sent a second, whatever the answers: a list or a range")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy|JSON",
                        help="an input's data (the batch dimension may be left out); repeatable")
    parser.add_argument("--input-data", choices=["random", "zero"], default="random",
                        help="data for the inputs not given with --input (default: %(default)s)")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=D1,D2",
                        help="the size of an input's variable dimensions, without the batch (default 1)")
    parser.add_argument("--shared-memory", choices=["none", "system", "cuda"], default="none",
                        help="pass inputs and outputs through shared-memory regions (client and server on "
                             "one host)")
    parser.add_argument("--output-shared-memory-size", type=int, default=100 * 1024, metavar="BYTES",
                        help="room for an output whose size the metadata leaves open (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=0,
                        help="client processes sharing the load (default: one for every 4 requests in "
                             "flight or 1,000 a second, at most one for every two cores, at least 1)")
    parser.add_argument("--measurement-seconds", type=float, default=3.0,
                        help="each measurement window (default: %(default)s)")
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--stability-percentage", type=float, default=10.0,
                        help="the last 3 windows' throughputs must lie this close to their mean "
                             "(default: %(default)s)")
    parser.add_argument("--max-trials", type=int, default=10, help="windows at most per measurement")
    parser.add_argument("--request-timeout", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per measurement on standard output")
    parser.add_argument("--csv", default=None, metavar="FILE", help="also write the measurements as CSV")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    if args.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    mode = "request_rate" if args.request_rate else "concurrency"
    levels = _levels(args.request_rate or args.concurrency or "1",
                     "--request-rate" if args.request_rate else "--concurrency")
    processes = args.processes or default_processes(levels, mode)
    progress = Progress(args.quiet)
    with Client(args.url, timeout=30) as client:
        try:
            plan = make_plan(client, args)
        except ClientError as e:
            raise SystemExit(f"{args.url}: {e}") from None
        progress.show(f"{args.model}: starting {processes} client process(es)")
        generator = Generator(plan, processes)
        measurements = []
        try:
            for value in levels:
                measurement = measure(generator, client, plan, args, mode, value, progress)
                measurements.append(measurement)
                if args.json:
                    print(json.dumps(asdict(measurement)), flush=True)
                else:
                    print(measurement.text(), flush=True)
        finally:
            generator.close()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(measurements[0].row()))
            writer.writeheader()
            for measurement in measurements:
                writer.writerow(measurement.row())
    return 1 if any(m.errors for m in measurements) else 0
