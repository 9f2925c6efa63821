"""The hop between frontend processes and the model process, without the wire: stand-in frontends
(processes of their own, each a RemoteDataPlane with C clients calling `infer` in a loop) drive the
model process's PlaneServer over the real channel, each on the event loop its kind of process has in
the server (daemon/event_loop.py). Prints, for each setting, requests a second, the
model process's CPU time per request, the frontends' CPU per request and the mean round trip; and first
the floor any two asyncio processes pay for a round trip over a Unix socket.

With --grpc the stand-in frontends call `infer_grpc` instead: each request is a serialized gRPC
ModelInferRequest, as perf_analyzer sends it, that the model process decodes, runs and answers
serialized (what frontends do with small requests while the model process has time to spare).

    python bench/channel.py [--seconds 3] [--settings 1x1 1x64 8x8 8x16] [--grpc]  # FRONTENDSxCLIENTS
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

import frontends
from naiad.daemon import event_loop
from naiad.daemon.channel import PlaneServer, RemoteDataPlane
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.frontends import fewer_collections
from naiad.daemon.inference import InferRequest
from naiad.daemon.registry import Registry
from naiad.daemon.shared_memory import SharedMemory
from naiad.proto import grpc_service_pb2 as pb

PING_ROUNDS = 20_000
SPIN = [0.0]   # how long this process (the model process) polls before it sleeps


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Ping(asyncio.Protocol):
    def __init__(self, done: asyncio.Future):
        self.done, self.rounds = done, 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(bytes(100))

    def data_received(self, data):
        self.rounds += 1
        if self.rounds == PING_ROUNDS:
            self.done.set_result(None)
        else:
            self.transport.write(data)


def echo_process(fd: int) -> None:
    async def run():
        await asyncio.get_running_loop().create_connection(Echo, sock=socket.socket(fileno=fd))
        await asyncio.Event().wait()
    event_loop.run(run())


async def ping_pong() -> None:
    ours, theirs = socket.socketpair()
    echo = multiprocessing.Process(target=echo_process, args=(theirs.fileno(),), daemon=True)
    echo.start()
    theirs.close()
    done = asyncio.get_running_loop().create_future()
    start = time.perf_counter()
    await asyncio.get_running_loop().create_connection(lambda: Ping(done), sock=ours)
    await done
    print(f"asyncio round trip between two processes: {(time.perf_counter() - start) / PING_ROUNDS * 1e6:.0f} µs")
    echo.kill()


def grpc_request(model: str, tensor: np.ndarray) -> bytes:
    """A serialized ModelInferRequest as perf_analyzer sends one for `simple`: both inputs, both
    outputs asked for, an id and the empty-final-response parameter."""
    message = pb.ModelInferRequest(model_name=model, id="1")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="INT32", shape=tensor.shape)
        message.raw_input_contents.append(tensor.tobytes())
    for name in ("OUTPUT0", "OUTPUT1"):
        message.outputs.add(name=name)
    message.parameters["triton_enable_empty_final_response"].bool_param = False
    return message.SerializeToString()


def frontend_process(fd: int, model: str, clients: int, seconds: float, spin: float, grpc: bool,
                     report) -> None:
    async def run():
        fewer_collections()
        plane = RemoteDataPlane()
        await asyncio.get_running_loop().create_connection(lambda: plane.protocol, sock=socket.socket(fileno=fd))
        tensor = np.arange(16, dtype=np.int32).reshape(1, 16)
        wire = grpc_request(model, tensor) if grpc else None
        count = 0
        stop = time.perf_counter() + seconds

        async def client():
            nonlocal count
            while time.perf_counter() < stop:
                if wire is not None:
                    await plane.infer_grpc(wire)
                else:
                    await plane.infer(InferRequest(model, "", {"INPUT0": tensor, "INPUT1": tensor}))
                count += 1
        cpu = time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        report.send((count, time.process_time() - cpu))
    event_loop.run(run(), lambda: spin)


async def measure(plane: DataPlane, model: str, count: int, clients: int, seconds: float, grpc: bool
                  ) -> None:
    loop = asyncio.get_running_loop()
    SPIN[0] = spin = event_loop.spin_seconds(max(count, 2))   # as in a server with that many frontends
    reports, processes = [], []
    for _ in range(count):
        ours, theirs = socket.socketpair()
        receive, send = multiprocessing.Pipe(duplex=False)
        process = multiprocessing.Process(target=frontend_process,
                                          args=(theirs.fileno(), model, clients, seconds, spin, grpc, send))
        process.start()
        theirs.close()
        reports.append(receive)
        processes.append(process)
        server = PlaneServer(plane, loop.create_future(), lambda: None)
        await loop.create_connection(lambda: server.protocol, sock=ours)
    cpu, start = time.process_time(), time.perf_counter()
    while not all(report.poll() for report in reports):
        await asyncio.sleep(0.02)
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - start
    done = [report.recv() for report in reports]
    requests, frontend_cpu = sum(d[0] for d in done), sum(d[1] for d in done)
    for process in processes:
        process.join()
    print(f"| {model} | {count}x{clients} | {requests / elapsed:,.0f} | {cpu / requests * 1e6:.1f} | "
          f"{cpu / elapsed:.0%} | {frontend_cpu / requests * 1e6:.1f} | "
          f"{seconds * count * clients / requests * 1e6:,.0f} |", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--settings", nargs="+", default=["1x1", "1x64", "8x8", "8x16"])
    parser.add_argument("--grpc", action="store_true", help="serialized gRPC requests (infer_grpc)")
    args = parser.parse_args()
    await ping_pong()
    fewer_collections()
    with tempfile.TemporaryDirectory() as folder:
        registry = Registry(frontends.write_repository(Path(folder)))
        await registry.start()
        plane = DataPlane(registry, SharedMemory(False))
        print("\n| model | frontends x clients | requests/s | model process CPU µs/request | model process "
              "busy | frontend CPU µs/request | round trip µs |\n| --- | --- | --- | --- | --- | --- | --- |")
        for model in ("simple", "simple_dyna"):
            for setting in args.settings:
                count, clients = map(int, setting.split("x"))
                await measure(plane, model, count, clients, args.seconds, args.grpc)
        await registry.close(5)


if __name__ == "__main__":
    event_loop.run(main(), lambda: SPIN[0])
