"""Dynamic batching, queue policies, instances in threads and processes, worker crashes, statistics
and Prometheus metrics, through a real server and tritonclient."""
from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.utils import InferenceServerException

from tests import conftest, models
from tests.conftest import wait_until

# A command of HOLD - k holds its batch until the test releases gate k: the model marks the gate
# `running-k` when the batch starts, and waits for `release-k` (files in the model's folder).
HOLD = -1000
GATED_PROBE = models.PROBE + f"""
    _Probe = TritonPythonModel
    HOLD = {HOLD}

    class TritonPythonModel(_Probe):
        def execute(self, requests):
            folder = self.marker.parent
            gates = {{int(HOLD - float(r.input("INPUT0").reshape(-1)[0])) for r in requests}}
            for gate in sorted(g for g in gates if g >= 0):
                (folder / f"running-{{gate}}").touch()
                deadline = time.monotonic() + 60  # never held forever, whatever the test does
                while not (folder / f"release-{{gate}}").exists() and time.monotonic() < deadline:
                    time.sleep(0.002)
            return super().execute(requests)
"""


def probe_input(module, command: float, width: int = 3, batch: int = 1):
    data = np.zeros((batch, width), np.float32)
    data[:, 0] = command
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor], data


def serve_probe(start_server, repository, config: dict, *flags: str):
    models.write_model(repository, "probe", config, GATED_PROBE)
    return start_server(repository, *flags)


def call(url: str, command: float, width: int = 3, batch: int = 1, **options):
    with grpcclient.InferenceServerClient(url) as client:
        inputs, data = probe_input(grpcclient, command, width, batch)
        result = client.infer("probe", inputs, **options)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        return {name: result.as_numpy(name)[0, 0] for name in ("BATCH", "SHAPES", "EXECUTION", "PID")} | {
            "window": result.as_numpy("WINDOW")[0]}


def in_background(function, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Run a call on a thread; its result or its exception lands in the returned dict."""
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args, **kwargs)
        except Exception as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


class Gates:
    """Requests of the gated probe that hold their instance until the test releases them."""

    def __init__(self, server, repository: Path):
        self.server = server
        self.folder = repository / "probe"
        self.count = 0

    def new(self) -> int:
        """A gate not used before."""
        self.count += 1
        return self.count - 1

    def start(self, batch: int = 1, **options) -> tuple[threading.Thread, dict, int]:
        """Send a request that holds its batch once it runs: its thread, result box and gate."""
        gate = self.new()
        return (*in_background(call, self.server.grpc_url, HOLD - gate, batch=batch, **options), gate)

    def hold(self, batch: int = 1, **options) -> tuple[threading.Thread, dict, int]:
        """Send a request that holds its batch, and return once that batch runs."""
        sent = self.start(batch, **options)
        self.wait_running(sent[2])
        return sent

    def wait_running(self, gate: int) -> None:
        wait_until((self.folder / f"running-{gate}").exists, f"the held batch {gate} to run")

    def release(self, gate: int) -> None:
        (self.folder / f"release-{gate}").touch()


def wait_queued(server, count: int) -> None:
    """Until `count` requests wait in the probe's queue (the pending-request gauge)."""
    line = f'nv_inference_pending_request_count{{model="probe",version="1"}} {count}\n'
    wait_until(lambda: line in server.metrics(), f"{count} queued request(s)")


def executions(server) -> int:
    """The probe's batches run so far (its statistics' execution_count)."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("probe", as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0))  # JSON leaves zeros out


def test_batches_form_under_concurrent_load(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 20000}))

    async def burst():
        async with aiogrpc.InferenceServerClient(server.grpc_url) as client:
            async def one(i):
                inputs, data = probe_input(aiogrpc, 0)
                data[:, 1] = i
                inputs[0].set_data_from_numpy(data)
                result = await client.infer("probe", inputs)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)  # its own slice
                return result.as_numpy("BATCH")[0, 0]
            return await asyncio.gather(*(one(i) for i in range(64)))

    sizes = asyncio.run(burst())
    assert max(sizes) > 1 and all(1 <= s <= 8 for s in sizes)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("probe", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == 64
    assert int(stats["execution_count"]) < 64
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"])


def test_delay_bound_holds(repository, start_server):
    """A lone request waits for company at most max_queue_delay_microseconds (0.3 s here)."""
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 300000}))
    call(server.grpc_url, 0)  # warm
    start = time.monotonic()
    result = call(server.grpc_url, 0)
    waited = time.monotonic() - start
    assert result["BATCH"] == 1
    assert 0.29 <= waited < 2.0, waited


def test_full_batch_does_not_wait_for_the_delay(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 5_000_000}))
    start = time.monotonic()
    assert call(server.grpc_url, 0, batch=8)["BATCH"] == 8  # max_batch_size: goes at once
    assert time.monotonic() - start < 2.0


def test_preferred_sizes_are_preferred(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"preferred_batch_size": [4], "max_queue_delay_microseconds": 300_000}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold(batch=8)  # a full batch: runs at once, alone
    calls = [in_background(call, server.grpc_url, 0) for _ in range(6)]
    wait_queued(server, 6)
    gates.release(gate)
    for thread, _ in [*calls, (blocker, None)]:
        thread.join()
    sizes = sorted(box["result"]["BATCH"] for _, box in calls)
    assert sizes == [2, 2, 4, 4, 4, 4]  # cut at the preferred 4; the other two waited the delay


def test_priorities_reorder(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"priority_levels": 2, "default_priority_level": 2}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold()
    low = [in_background(call, server.grpc_url, 0) for _ in range(3)]
    wait_queued(server, 3)
    high = in_background(call, server.grpc_url, 0, priority=1)
    wait_queued(server, 4)
    gates.release(gate)
    for thread, _ in [*low, high, (blocker, None)]:
        thread.join()
    order = {"high": high[1]["result"]["EXECUTION"]} | {
        f"low{i}": box["result"]["EXECUTION"] for i, (_, box) in enumerate(low)}
    assert order["high"] == 2, order  # right after the blocker, ahead of the three sent before it


def test_full_queue_rejects_at_once(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {"max_queue_size": 2}}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold()
    queued = [in_background(call, server.grpc_url, 0) for _ in range(2)]
    wait_queued(server, 2)
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, 0)  # answered while the instance is still held: at once
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    assert "queue of priority level 1 is full (max_queue_size 2)" in raised.value.message()
    gates.release(gate)
    for thread, box in queued:
        thread.join()
        assert "result" in box
    blocker.join()
    metrics = server.metrics()
    assert 'nv_inference_request_failure{model="probe",version="1",reason="REJECTED"} 1' in metrics


def test_timeout_rejects(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {"default_timeout_microseconds": 100000}}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold()
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, 0)  # rejected when its time was up, while the instance is still held
    assert raised.value.status() == "StatusCode.UNAVAILABLE" and "timed out" in raised.value.message()
    gates.release(gate)
    blocker.join()


def test_timeout_delays(repository, start_server):
    """DELAY: a request past its own timeout (allowed to override) goes behind one that came later."""
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {
            "timeout_action": "DELAY", "allow_timeout_override": True}}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold()
    early = in_background(call, server.grpc_url, 0, timeout=50000)  # 50 ms, in microseconds
    wait_queued(server, 1)
    # It was queued before it was seen queued: 50 ms from now, its timeout has passed for sure.
    timed_out = time.monotonic() + 0.05
    wait_until(lambda: time.monotonic() > timed_out, "the early request's timeout")
    late = in_background(call, server.grpc_url, 0)
    wait_queued(server, 2)
    gates.release(gate)
    for thread, _ in (early, late, (blocker, None)):
        thread.join()
    assert late[1]["result"]["EXECUTION"] == 2 and early[1]["result"]["EXECUTION"] == 3


def test_different_shapes_are_not_merged(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 200000}))
    gates = Gates(server, repository)
    blocker, _, gate = gates.hold(batch=8)
    calls = [in_background(call, server.grpc_url, 0, width=3 + i % 2) for i in range(6)]
    wait_queued(server, 6)
    gates.release(gate)
    for thread, _ in [*calls, (blocker, None)]:
        thread.join()
    results = [box["result"] for _, box in calls]
    assert all(r["SHAPES"] == 1 for r in results)
    assert sorted(r["BATCH"] for r in results) == [3] * 6  # three of each width, batched by width


def test_preserve_ordering(repository, start_server):
    """Two instances; the first request is held: with preserve_ordering the quick one, though done
    long before, gets its response only after the held one's."""
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, instance_group=[{"count": 2, "kind": "KIND_CPU"}],
        dynamic_batching={"preserve_ordering": True}))
    call(server.grpc_url, 0)
    gates = Gates(server, repository)
    held_thread, held, gate = gates.hold()
    quick = in_background(lambda: (call(server.grpc_url, 0), time.time()))
    wait_until(lambda: executions(server) == 2, "the quick request to run")
    assert not quick[1]  # done, and still not answered
    gates.release(gate)
    held_thread.join()
    quick[0].join()
    quick_result, quick_returned = quick[1]["result"]
    held_end = held["result"]["window"][1]
    assert quick_result["window"][1] < held_end <= quick_returned


def test_cancelled_requests_leave_nothing_behind_with_preserve_ordering(repository, start_server):
    """Requests cancelled while they run: their late responses are dropped, not kept for ever (the
    server's memory stays flat round after round), and later requests are still answered in order."""
    server = serve_probe(start_server, repository, models.probe_config(
        instance_group=[{"count": 2, "kind": "KIND_CPU"}],
        dynamic_batching={"preserve_ordering": True, "preferred_batch_size": [8],
                          "max_queue_delay_microseconds": 30_000_000}))
    gates = Gates(server, repository)
    width = 512 * 1024  # 2 MB a request, 4 MB with its response: 32 MB a round

    def failures(reason: str) -> int:
        line = f'nv_inference_request_failure{{model="probe",version="1",reason="{reason}"}} '
        return int(server.metrics().split(line)[1].split()[0])

    async def cancelled_round(client, size: int = width) -> None:
        """Eight requests in one batch that is held; their clients give up while it runs."""
        cancelled, executed = failures("CANCELED"), executions(server)
        gate = gates.new()
        calls = [asyncio.ensure_future(client.infer("probe", probe_input(aiogrpc, HOLD - gate, size)[0]))
                 for _ in range(8)]
        await asyncio.to_thread(gates.wait_running, gate)  # 8: the preferred size, so it runs at once
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if conftest.FRONTENDS[0] == "1" or size < width:  # a frontend process lets requests whose
            # tensors are in its arena (2 MB ones are) run to their end: the model may be reading them
            await asyncio.to_thread(wait_until, lambda: failures("CANCELED") == cancelled + 8,
                                    "the server to see the cancellations")
        gates.release(gate)
        await asyncio.to_thread(wait_until, lambda: executions(server) == executed + 1,
                                "the held batch to end")

    def rss_mb() -> float:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    async def rounds():
        async with aiogrpc.InferenceServerClient(server.grpc_url) as client:
            for _ in range(2):  # warm up: buffers, allocator pools
                await cancelled_round(client)
            before = rss_mb()
            for _ in range(8):
                await cancelled_round(client)
            after = rss_mb()
            await cancelled_round(client, size=16)  # small: in any mode, the model's process hears of it
            return before, after

    before, after = asyncio.run(rounds())
    # A leak keeps 8 rounds x 32 MB; without one, the allocator may still take a step or two.
    assert after - before < 128, (before, after)
    # still in order: a request held on one instance, then one that runs on the other
    held_thread, held, gate = gates.hold(batch=8)
    quick = in_background(call, server.grpc_url, 0, batch=8)
    wait_until(lambda: executions(server) == 12, "the quick request to run")
    assert not quick[1]
    gates.release(gate)
    held_thread.join()
    quick[0].join()
    assert quick[1]["result"]["window"][1] < held["result"]["window"][1]
    assert server.get("/v2/health/ready") == 200


def test_two_instances_run_at_the_same_time(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(instance_group=[{"count": 2, "kind": "KIND_CPU"}]))
    gates = Gates(server, repository)
    # the second runs while the first still holds its instance (hold waits until it runs)
    calls = [gates.hold(), gates.hold()]
    for *_, gate in calls:
        gates.release(gate)
    for thread, *_ in calls:
        thread.join()
    first, second = (box["result"] for _, box, _ in calls)
    assert first["PID"] != second["PID"]  # two processes


@pytest.mark.parametrize("execution", ["thread", "inline"])
def test_other_execution_modes(repository, start_server, execution):
    import os
    server = serve_probe(start_server, repository, models.probe_config(
        parameters={"execution": execution}, dynamic_batching={"max_queue_delay_microseconds": 1000}))
    assert call(server.grpc_url, 0)["PID"] == server.process.pid  # in the server's own process
    assert os.getpid() != server.process.pid


def test_killed_worker_fails_only_its_request_and_recovers(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 1000}))
    first_pid = call(server.grpc_url, 0)["PID"]
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, -9)
    assert raised.value.status() == "StatusCode.INTERNAL"
    assert "died (killed by SIGKILL)" in raised.value.message() and "started again" in raised.value.message()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert not client.is_model_ready("probe")  # while it starts again (its set-up takes 1.5 s now)
    assert client.is_server_live() and client.is_server_ready()
    waiting = in_background(call, server.grpc_url, 0)  # queued meanwhile: served once it is back
    waiting[0].join()
    assert "result" in waiting[1] and waiting[1]["result"]["PID"] != first_pid
    assert client.is_model_ready("probe")
    assert "the worker process of instance 'probe_0_0' died (killed by SIGKILL)" in server.log()
    assert 'reason="BACKEND"} 1' in server.metrics()


def test_statistics_and_metrics_count_what_happened(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 1000}))
    for _ in range(3):
        call(server.grpc_url, 0, batch=2)
    with pytest.raises(InferenceServerException):
        call(server.grpc_url, 0, batch=9)  # over max_batch_size
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("probe", as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) == 3 and int(inference["fail"]["count"]) == 1
    assert int(stats["inference_count"]) == 6 and int(stats["execution_count"]) == 3
    assert [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in stats["batch_stats"]] == [(2, 3)]
    assert int(inference["queue"]["count"]) == 3 and int(inference["compute_infer"]["ns"]) > 0
    metrics = server.metrics()
    labels = '{model="probe",version="1"}'
    for line in (f"nv_inference_request_success{labels} 3", f"nv_inference_count{labels} 6",
                 f"nv_inference_exec_count{labels} 3", f"nv_inference_pending_request_count{labels} 0",
                 'nv_inference_request_failure{model="probe",version="1",reason="OTHER"} 1',
                 'nv_inference_request_duration_histogram_us_count{model="probe",version="1"} 4',
                 'nv_inference_queue_duration_histogram_us_bucket{model="probe",version="1",le="+Inf"} 3'):
        assert line in metrics, line
    duration = re.search(rf"nv_inference_request_duration_us{re.escape(labels)} (\d+)", metrics)
    assert duration and int(duration.group(1)) > 0
    assert "# TYPE nv_inference_compute_duration_histogram_us histogram" in metrics


def test_shared_memory_of_a_killed_server_is_removed(repository, start_server):
    from pathlib import Path

    from naiad.batching.processes import SHM_DIR
    server = serve_probe(start_server, repository, models.probe_config())
    call(server.grpc_url, 0)
    mine = lambda pid: sorted(Path(SHM_DIR).glob(f"naiad-{pid}-*"))
    assert mine(server.process.pid)  # the worker's input and output files
    server.kill()
    assert mine(server.process.pid)  # a killed server cannot clean up
    second = start_server(repository)
    assert call(second.grpc_url, 0)["BATCH"] == 1
    assert not mine(server.process.pid)
